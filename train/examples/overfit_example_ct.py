"""Overfit check: the tiny model learns liver, spleen and both kidneys of one real CT, on a CPU.

    python train/examples/overfit_example_ct.py --reference-files DIR --mpnet DIR --work /tmp/overfit

DIR: TotalSegmentator's ``tests/reference_files`` and an all-mpnet-base-v2 folder (``tests/fetch_test_data.py``
fetches both to ~/.cache/satseg-test-data). Steps:

1. a prepared cache of ``example_ct_sm.nii.gz`` with its organ labels (``example_seg.nii.gz``: 1 spleen,
   2 right kidney, 3 left kidney, 5 liver), on the model grid as ``satseg train prepare`` stores it;
2. ``satseg train fit`` with ``train/configs/tiny.yaml`` (the tiny preset's own small text tower, trained from
   scratch; the MPNet folder gives the tokenizer), the config's steps unless ``--steps``;
3. sliding-window inference (windows of the training crop) on the whole training scan and Dice per organ on the model grid; the same on a
   scan it never saw (``example_ct.nii.gz`` vs ``example_seg_fast_force_split.nii.gz``).

Prints one JSON object: Dice per organ on both scans, training seconds and the last loss. The labels are
TotalSegmentator predictions, not manual ground truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 5: "liver"}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
DATA = Path.home() / ".cache" / "satseg-test-data"


def model_grid(reference_files: Path, image_name: str, label_name: str):
    """(normalised image (H, W, D), organ masks (4, H, W, D) bool, GridRecord) of one example scan."""
    from satseg.geometry import to_model_grid
    from satseg.intensity import normalize
    from satseg.io import read_volume

    raw, grid = to_model_grid(read_volume(reference_files / image_name))
    labels = np.asarray(read_volume(reference_files / label_name).array)
    channels = np.stack([labels == value for value in ORGANS]).astype(np.uint8)
    return normalize(raw, "ct"), grid.from_input_grid(channels, order="nearest").astype(bool), grid


def build_cache(reference_files: Path, root: Path) -> Path:
    from satseg.training.cache import CachedSample, append_index, write_sample

    image, masks, grid = model_grid(reference_files, "example_ct_sm.nii.gz", "example_seg.nii.gz")
    sample = CachedSample(dataset="TotalSegmentator_Organs", sample_id="example_ct_sm", patient_id="example_ct_sm",
                          split="train", modality="ct", terms=list(ORGANS.values()), shape=[])
    append_index(root, write_sample(root, sample, image, masks, grid.to_dict()))
    return root


def dice_scores(checkpoint: Path, tokenizer: Path, image: np.ndarray, masks: np.ndarray,
                window) -> dict[str, float]:
    """Sliding-window prediction of the four organs on a model-grid image → Dice per organ."""
    from satseg.inference.options import RuntimeOptions
    from satseg.inference.predictor import Predictor
    from satseg.model.text import SATTokenizer
    from satseg.training.checkpointing import build_from_checkpoint, load_checkpoint

    model, text = build_from_checkpoint(load_checkpoint(checkpoint))
    tok = SATTokenizer(tokenizer)
    # windows of the training crop, half-overlapping (the tiny preset's default window is 64x64x32)
    model.config = replace(model.config, window=tuple(window), stride=tuple(w // 2 for w in window))
    predictor = Predictor(model.eval(), text.eval(), tok, runtime=RuntimeOptions(device="cpu"))
    terms = list(ORGANS.values())
    queries = text.encode(terms, "ct", tok)
    probabilities = predictor.probabilities(image, queries).numpy()
    scores = {}
    for term, prob, truth in zip(terms, probabilities, masks):
        predicted = prob > 0.5
        scores[term] = round(float(2 * (predicted & truth).sum() / max(1, predicted.sum() + truth.sum())), 4)
    return scores


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-files", type=Path, default=DATA / "totalseg" / "reference_files")
    parser.add_argument("--mpnet", type=Path, default=DATA / "all-mpnet-base-v2")
    parser.add_argument("--work", type=Path, default=Path("overfit-run"))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = parser.parse_args(argv)

    from satseg.training.fit import FitOptions, fit, load_config

    shutil.rmtree(args.work, ignore_errors=True)
    cache = build_cache(args.reference_files, args.work / "cache")
    overrides = list(args.overrides) + ([f"schedule.steps={args.steps}"] if args.steps else [])
    config = load_config(CONFIG, overrides)
    started = time.perf_counter()
    result = fit(config, FitOptions(cache=cache, out=args.work / "run", tokenizer=args.mpnet, device="cpu"))
    seconds = time.perf_counter() - started
    image, masks, _ = model_grid(args.reference_files, "example_ct_sm.nii.gz", "example_seg.nii.gz")
    window = config["data"]["crop_size"]
    trained = dice_scores(result.checkpoint, args.mpnet, image, masks, window)
    image, masks, _ = model_grid(args.reference_files, "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")
    unseen = dice_scores(result.checkpoint, args.mpnet, image, masks, window)
    report = {"steps": result.step, "train_seconds": round(seconds, 1), "last_loss": result.loss,
              "dice_trained_scan": trained, "dice_unseen_scan": unseen}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
