"""End-to-end benchmark of satseg: read → write, per stage, with peak memory (random weights of the real shapes).

    python benchmarks/run.py --variant nano --case ct_sm --prompts 1 10 [--device cpu] [--reference]
    python benchmarks/run.py --quick            # nano, example_ct_sm, 1 and 10 prompts

Cases: ``ct_sm`` / ``ct`` (TotalSegmentator's example CTs), ``synthetic`` (a 512×512×300 CT at 0.8×0.8×1 mm: an
ellipse of soft tissue with fat, bone and organs in air, written to a temporary .nii.gz so reading is timed).
Stages: read, preprocess, text, backbone, decode + aggregate, to_input_grid, write. ``--reference`` also runs
the plain fp32 loop (``tests/reference_sliding_window.py``, no memoisation, full-window decode) on the
same weights and reports max |Δp| and the Dice of the masks. Results are appended to a JSON file and the
markdown table is printed and written next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import satseg  # noqa: F401  (first: its process settings, e.g. huge pages for CPU tensors, apply before torch)
import numpy as np
import torch

DATA = Path(os.environ.get("SATSEG_BENCH_DATA", "~/.cache/satseg-test-data")).expanduser()
CASES = {
    "ct_sm": DATA / "totalseg/reference_files/example_ct_sm.nii.gz",
    "ct": DATA / "totalseg/reference_files/example_ct.nii.gz",
}
STAGES = ("read", "preprocess", "text", "backbone", "decode_aggregate", "to_input_grid", "write")


class PeakRSS:
    """Samples the process's resident memory every 20 ms between start() and stop() (GiB)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _loop(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def synthetic_ct(path: Path, shape=(512, 512, 300), spacing=(0.8, 0.8, 1.0)) -> Path:
    """A body-shaped CT in HU: air, an elliptic trunk (fat rim, soft tissue), a spine, two kidneys, a liver."""
    import nibabel as nib

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    x = (np.arange(shape[0]) - shape[0] / 2)[:, None] * spacing[0]
    y = (np.arange(shape[1]) - shape[1] / 2)[None, :] * spacing[1]
    trunk = (x / 170) ** 2 + (y / 120) ** 2
    plane = np.full(shape[:2], -1000, np.int16)
    plane[trunk < 1.0] = -100  # fat
    plane[trunk < 0.8] = 40  # soft tissue
    plane[((x - 0) / 18) ** 2 + ((y + 70) / 18) ** 2 < 1] = 700  # vertebra
    plane[((x - 60) / 30) ** 2 + ((y + 40) / 20) ** 2 < 1] = 150  # kidneys (contrast)
    plane[((x + 60) / 30) ** 2 + ((y + 40) / 20) ** 2 < 1] = 150
    plane[((x + 70) / 70) ** 2 + ((y - 20) / 60) ** 2 < 1] = 60  # liver
    volume = np.repeat(plane[:, :, None], shape[2], axis=2)
    body = volume > -1000
    volume = volume + (rng.normal(0, 10, shape).astype(np.float32) * body).astype(np.int16)
    affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), path)
    return path


def ct_prompts(n: int) -> list[str]:
    from satseg.vocabulary import modality_terms

    names = list(dict.fromkeys(t.name for t in modality_terms("ct") if not t.abnormal))
    return names[:n]


def build_predictor(variant: str, device: str, precision: str, compile_model: bool = False):
    from satseg.inference.options import RuntimeOptions
    from satseg.inference.predictor import Predictor
    from satseg.model import build_sat, build_text_encoder
    from satseg.model.text import SATTokenizer

    torch.manual_seed(0)
    model = build_sat(variant)
    text = build_text_encoder(variant)
    tokenizer = SATTokenizer(DATA / "all-mpnet-base-v2", max_tokens=model.config.text.max_tokens)
    return Predictor(model, text, tokenizer, name=f"{variant}-random",
                     runtime=RuntimeOptions(device=device, precision=precision, compile=compile_model),
                     embedding_cache=None)


def run_case(predictor, scan: Path, prompts: list[str], out_dir: Path, reference: bool) -> dict:
    from satseg.outputs.masks import gzip_backend, write_masks

    cuda = predictor.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    predictor.text._embeddings.clear()
    start = time.perf_counter()
    with PeakRSS() as rss:
        seg = predictor.segment(scan, prompts, probabilities=reference)
        t_write = time.perf_counter()
        write_masks(seg.masks, seg.volume, out_dir)
        write_s = time.perf_counter() - t_write
    total = time.perf_counter() - start
    stats = predictor.window_stats
    stages = {
        "read": seg.timings.get("read", 0.0), "preprocess": seg.timings.get("preprocess", 0.0),
        "text": seg.timings.get("text", 0.0), "backbone": stats.backbone_s,
        "decode_aggregate": seg.timings["model"] - stats.backbone_s,
        "to_input_grid": seg.timings.get("to_input_grid", 0.0), "write": write_s,
    }
    row = {"total_s": total, "stages_s": stages, "peak_rss_gib": rss.peak / 2**30,
           "windows": stats.planned, "windows_computed": stats.computed, "gzip": gzip_backend(),
           "crop_stop": list(seg.grid_dict().get("crop_stop", [])), "input_shape": list(seg.volume.shape)}
    if cuda:
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if reference:
        row["reference"] = compare_with_reference(predictor, seg, prompts)
    return row


def compare_with_reference(predictor, seg, prompts: list[str]) -> dict:
    """The plain fp32 loop on the same model grid and queries, brought back to the input grid like the fast
    path's: max |Δp| and mask Dice against ``seg`` (which must hold probabilities)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # upstream's loop, kept with the tests
    from reference_sliding_window import sliding_window_probabilities
    from satseg.geometry import to_model_grid
    from satseg.inference.prepare import choose_orientation
    from satseg.intensity import normalize

    raw, record = to_model_grid(seg.volume, orientation=choose_orientation(seg.volume, "auto"),
                                spacing_mm=predictor.model.config.spacing)
    image = torch.from_numpy(normalize(raw, seg.modality))
    terms = list(dict.fromkeys(t for p in seg.prompts for t in p.terms))
    queries = predictor.embed(terms, seg.modality)
    start = time.perf_counter()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a true fp32 reference
    try:
        with predictor.full_precision() as model, torch.inference_mode():
            ref = sliding_window_probabilities(
                image, lambda p: model(p.to(predictor.device), queries.to(predictor.device)).float().cpu(),
                len(terms), window=model.config.window, stride=model.config.stride)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    ref_s = time.perf_counter() - start
    index = {t: i for i, t in enumerate(terms)}
    worst, inter, total = 0.0, 0, 0
    for prompt in seg.prompts:
        name = prompt.output_name
        prob = record.to_input_grid(ref[[index[t] for t in prompt.terms]].amax(dim=0).numpy(), order="linear")
        worst = max(worst, float(np.abs(prob - seg.probabilities[name]).max()))
        a, b = prob > 0.5, seg.masks[name].astype(bool)
        inter, total = inter + int((a & b).sum()), total + int(a.sum() + b.sum())
    return {"max_abs_dp": worst, "dice": 1.0 if total == 0 else 2 * inter / total, "reference_model_s": ref_s}


def machine() -> dict:
    load = os.getloadavg()
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": _cpu_name(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "loadavg_start": load}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(rows: list[dict]) -> str:
    head = ("| variant | case | prompts | device | precision | windows (run) | " + " | ".join(STAGES)
            + " | total s | peak RAM GiB | peak GPU GiB | load | ref max|Δp| | ref Dice |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref = r.get("reference") or {}
        lines.append(
            f"| {r['variant']} | {r['case']} | {r['prompts']} | {r['device']} | {r['precision']} | "
            f"{r['windows']} ({r['windows_computed']}) | "
            + " | ".join(f"{r['stages_s'][s]:.2f}" for s in STAGES)
            + f" | {r['total_s']:.1f} | {r['peak_rss_gib']:.2f} | "
            + (f"{r['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in r else "–")
            + f" | {r['loadavg'][0]:.2f} | "
            + (f"{ref['max_abs_dp']:.1e} | {ref['dice']:.5f} |" if ref else "– | – |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["nano"], choices=["tiny", "nano", "pro"])
    parser.add_argument("--case", nargs="+", default=["ct_sm"], choices=[*CASES, "synthetic"])
    parser.add_argument("--prompts", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--reference", action="store_true", help="also run the plain fp32 loop and compare")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image side (CUDA)")
    parser.add_argument("--quick", action="store_true", help="nano, example_ct_sm, 1 and 10 prompts")
    parser.add_argument("--json", default="benchmarks/results/run.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.variant, args.case, args.prompts = ["nano"], ["ct_sm"], [1, 10]

    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out_json.read_text())["rows"] if out_json.is_file() else []
    info = machine()
    for variant in args.variant:
        build_start = time.perf_counter()
        predictor = build_predictor(variant, args.device, args.precision, args.compile)
        build_s = time.perf_counter() - build_start
        precision = str(predictor.autocast).replace("torch.", "") if predictor.autocast else "float32"
        for case in args.case:
            scan = CASES.get(case) or synthetic_ct(Path(tempfile.gettempdir()) / "satseg-bench" / "synthetic_ct.nii.gz")
            for n in args.prompts:
                with tempfile.TemporaryDirectory() as tmp:
                    row = run_case(predictor, scan, ct_prompts(n), Path(tmp), args.reference)
                row.update(variant=variant, case=case, prompts=n, device=str(predictor.device), precision=precision,
                           compiled=args.compile,
                           build_s=build_s, loadavg=os.getloadavg(), threads=torch.get_num_threads(),
                           thp=os.environ.get("THP_MEM_ALLOC_ENABLE"))
                rows.append(row)
                print(markdown([row]).splitlines()[-1], flush=True)
                out_json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
        del predictor
    table = markdown(rows)
    out_json.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    sys.exit(main())
