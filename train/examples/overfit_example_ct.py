"""End-to-end overfit check on real CT, through the command line: prepare → fit → export → evaluate → segment.

    python train/examples/overfit_example_ct.py [--reference-files DIR] [--mpnet DIR] [--work DIR]

DIR defaults: ~/.cache/satseg-test-data/{totalseg/reference_files, all-mpnet-base-v2} (``tests/fetch_test_data.py``
fetches both: TotalSegmentator's example CTs and the MPNet tokenizer). In ``--work`` the script

1. writes a one-dataset manifest entry + SAT-DS scans jsonl for two example CTs: ``example_ct_sm`` (labels
   ``example_seg``: 1 spleen, 2 right kidney, 3 left kidney, 5 liver; the training scan) and ``example_ct``
   (labels ``example_seg_fast_force_split``, same ids; the test scan);
2. ``satseg train prepare`` → ``satseg train text --variant tiny`` (SAT's stage 1: contrastive pretraining of the
   small text tower on the SAT-Pretrain knowledge file, ~30 s, so each prompt gets its own code) →
   ``satseg train fit --config train/configs/tiny.yaml --text-init`` that tower (CPU) →
   ``satseg train export --name tiny-overfit`` (registered in ``WORK/satseg-home``, not your ``~/.satseg``) →
   ``satseg train evaluate --model tiny-overfit --split all`` (Dice and NSD on each scan's native grid);
3. ``satseg SCAN -p liver -p spleen -p "left kidney" -p "right kidney" -o OUT --model tiny-overfit`` on both
   scans, and Dice of the written masks against the label files.

Prints one JSON object: per-organ Dice of the segment masks on the trained scan, on the test scan, and on the
test scan's slices below the training scan (``example_ct_sm`` holds exactly the top 30 slices of ``example_ct``,
so only slices 0-81 of the test scan are anatomy the model never saw), plus the evaluate table and the times.
The labels are TotalSegmentator's predictions, not manual ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "train" / "configs" / "tiny.yaml"
DATA = Path.home() / ".cache" / "satseg-test-data"
KNOWLEDGE = REPO.parent / "shared" / "reference" / "sat" / "sat-pretrain" / "supplementary_lab2def_gpt.json"
# stage-1 text pretraining of the tiny tower: 300 steps of 64 pairs (~30 s on 2 CPU cores)
TEXT_ARGS = ("--variant", "tiny", "--steps", "300", "--batch", "64", "--lr", "1e-3", "--warmup", "20",
             "--open-layer", "-1", "--max-tokens", "64", "--device", "cpu")
DATASET = "TotalSegExample"
MODEL = "tiny-overfit"
# TotalSegmentator `total` id → (its class name, the SAT term and prompt)
ORGANS = {1: ("spleen", "spleen"), 2: ("kidney_right", "right kidney"), 3: ("kidney_left", "left kidney"),
          5: ("liver", "liver")}
SCANS = {"ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "train"),
         "ct": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "test")}
SEEN_SLICES = 82  # example_ct_sm == example_ct[:, :, 82:112] voxel for voxel


def write_dataset(reference_files: Path, root: Path) -> tuple[Path, Path]:
    """Copy the scans under ``root`` and write ``<DATASET>.json`` (manifest entry) and ``scans.jsonl``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lines = []
    for key, (image, labels, _) in SCANS.items():
        shutil.copy(reference_files / image, root / "images" / f"{key}.nii.gz")
        shutil.copy(reference_files / labels, root / "labels" / f"{key}.nii.gz")
        lines.append({"image": f"images/{key}.nii.gz", "mask": f"labels/{key}.nii.gz", "label": [],
                      "modality": "CT", "dataset": DATASET, "official_split": "unknown", "patient_id": key})
    test = sorted(key for key, (*_, split) in SCANS.items() if split == "test")
    entry = {
        "name": DATASET, "modality": "ct", "modality_fields": {"CT": len(SCANS)}, "region": "abdomen",
        "regions": ["abdomen"],
        "source": {"url": "https://github.com/wasserth/TotalSegmentator",
                   "licence": "Apache-2.0 (TotalSegmentator 2.18.0 sdist, tests/reference_files)"},
        "orientation": "RAS", "scans": len(SCANS), "mask": {"format": "label_values"},
        "labels": [{"raw": raw, "value": value, "term": term} for value, (raw, term) in ORGANS.items()],
        "merges": [], "terms": [term for _, term in ORGANS.values()],
        "split": {"source": "train/examples/overfit_example_ct.py", "sha256": "0" * 64,
                  "rule": "test patients as listed; every other patient is a training patient",
                  "train_patients": len(SCANS) - len(test), "test_patients": len(test), "test": test},
        "sampler": {"sampling_weight": 1.0, "pos_label_first_prob": 1.0, "foreground_crop_prob": 1.0,
                    "label_based_crop_prob": 0.5, "uncenter_prob": 0.0, "neg_label_ratio_threshold": 4.0},
        "notes": ["TotalSegmentator's example CTs; labels are TotalSegmentator predictions"],
    }
    manifest = root / f"{DATASET}.json"
    manifest.write_text(json.dumps(entry, indent=2))
    scans = root / "scans.jsonl"
    scans.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest, scans


def satseg(*args: str, env: dict) -> tuple[str, float]:
    """Run ``satseg ARGS`` (this interpreter's install); stdout and seconds. A failure ends the script."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "satseg.cli.main", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"satseg {' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"satseg {' '.join(args[:2])}: {seconds:.1f} s", file=sys.stderr)
    return done.stdout, seconds


def mask_dice(out: Path, labels: Path, below: int | None = None) -> dict[str, float]:
    """Dice per organ of ``out/<prompt>.nii.gz`` against the label map (only slices < ``below`` when given)."""
    import nibabel as nib

    from satseg.training.metrics import dice

    truth = np.asarray(nib.load(str(labels)).dataobj)
    scores = {}
    for value, (_, term) in ORGANS.items():
        predicted = np.asarray(nib.load(str(out / f"{term.replace(' ', '_')}.nii.gz")).dataobj) > 0
        expected = truth == value
        if below is not None:
            predicted, expected = predicted[:, :, :below], expected[:, :, :below]
        scores[term] = round(dice(predicted, expected), 4)
    return scores


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-files", type=Path, default=DATA / "totalseg" / "reference_files")
    parser.add_argument("--mpnet", type=Path, default=DATA / "all-mpnet-base-v2", help="MPNet tokenizer folder")
    parser.add_argument("--knowledge", type=Path, default=KNOWLEDGE,
                        help="SAT-Pretrain knowledge file (concept → definition, synonyms) for the text stage")
    parser.add_argument("--work", type=Path, default=Path("overfit-run"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for fit")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    env = {**os.environ, "SATSEG_HOME": str(work / "satseg-home")}
    data, cache, run, evaluation = work / "data", work / "cache", work / "run", work / "evaluation"
    manifest, scans = write_dataset(args.reference_files, data)
    seconds = {}
    _, seconds["prepare"] = satseg("train", "prepare", "--manifest", str(manifest), "--scans", str(scans),
                                   "--root", str(data), "--out", str(cache), "--dataset", DATASET, env=env)
    if not args.knowledge.is_file():
        raise SystemExit(f"no knowledge file at {args.knowledge}: pass --knowledge (SAT-Pretrain format)")
    _, seconds["text"] = satseg("train", "text", "--knowledge", str(args.knowledge), "--mpnet", str(args.mpnet),
                                "--out", str(work / "text"), *TEXT_ARGS, env=env)
    overrides = [f"data.datasets=[{DATASET}]", *args.overrides]
    _, seconds["fit"] = satseg("train", "fit", "--config", str(CONFIG), "--cache", str(cache), "--out", str(run),
                               "--tokenizer", str(args.mpnet), "--device", "cpu",
                               "--text-init", str(work / "text" / "text_encoder.pth"),
                               *[part for item in overrides for part in ("--set", item)], env=env)
    _, seconds["export"] = satseg("train", "export", "--name", MODEL, "--checkpoint",
                                  str(run / "checkpoints" / "latest.pt"), "--tokenizer", str(args.mpnet), env=env)
    _, seconds["evaluate"] = satseg("train", "evaluate", "--cache", str(cache), "--model", MODEL, "--split", "all",
                                    "--grid", "native", "--device", "cpu", "--out", str(evaluation), env=env)
    table = json.loads((evaluation / "evaluation.json").read_text())
    evaluate = {f"{c['patient_id']}:{c['term']}": round(c["dice"], 4) for c in table["cases"]}

    report: dict = {"dice_trained_scan": None, "dice_test_scan": None, "dice_test_scan_unseen_slices": None}
    prompts = [part for _, term in ORGANS.values() for part in ("-p", term)]
    for key, (image, labels, _) in SCANS.items():
        out = work / "segment" / key
        _, seconds[f"segment_{key}"] = satseg(str(data / "images" / f"{key}.nii.gz"), *prompts, "-o", str(out),
                                              "--model", MODEL, "--modality", "ct", "--device", "cpu", env=env)
        if key == "ct_sm":
            report["dice_trained_scan"] = mask_dice(out, args.reference_files / labels)
        else:
            report["dice_test_scan"] = mask_dice(out, args.reference_files / labels)
            report["dice_test_scan_unseen_slices"] = mask_dice(out, args.reference_files / labels, SEEN_SLICES)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report.update({"steps": metrics[-1]["step"], "last_loss": round(metrics[-1]["loss"], 4),
                   "evaluate_dice_native": evaluate, "seconds": {k: round(v, 1) for k, v in seconds.items()},
                   "load_average": [round(x, 2) for x in os.getloadavg()]})
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
