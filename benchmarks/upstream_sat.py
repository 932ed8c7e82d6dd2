"""Run upstream SAT's own inference pipeline, per stage, for a side-by-side with benchmarks/run.py.

    python benchmarks/upstream_sat.py --upstream /tmp/sat-upstream --variant nano --case ct_sm --prompts 1 10
    python benchmarks/upstream_sat.py --upstream /tmp/sat-upstream --device cuda ...   # upstream's own fp16 autocast

Nothing of upstream is copied: its modules are imported from ``--upstream`` (a checkout of
github.com/zhaoziheng/SAT) and run as they are — ``data/inference_dataset.py`` (MONAI loading, orientation,
1×1×3 mm spacing, foreground crop, normalisation, ``split_3d``), ``model/maskformer.py`` and
``model/text_encoder.py`` (random weights), ``evaluate/inference_engine.py:inference`` (Gaussian aggregation,
thresholding, writing). Upstream assumes CUDA and DDP; at run time only (never in their files) this harness
makes ``DistributedDataParallel`` and ``convert_sync_batchnorm`` pass the module through (on CUDA moving tensor
inputs to the GPU, as DDP does), on the CPU makes
``torch.cuda.current_device()`` answer ``"cpu"``, points the text tower at the local MPNet folder (``--mpnet``),
and sets ``RANK=0``. On the CPU ``torch.cuda.amp.autocast`` is inactive: everything runs in fp32; on CUDA
upstream runs as it ships (fp16 autocast, float32 sums on the CPU), and each timed stage ends with a
``torch.cuda.synchronize()`` so GPU work is charged to the stage that queued it.

Needs monai, einops, positional_encodings (pip) and the vendored dynamic-network-architectures (put on
``sys.path`` from the checkout). Stages are timed by wrapping upstream functions: read (MONAI LoadImaged),
preprocess (the rest of ``load_image`` + ``split_3d`` + batching), text (``Text_Encoder.forward``), backbone
(``Maskformer.vision_backbone_forward``), decode + aggregate (the rest of the inference loop), write
(``nib.save``). Upstream has no "back to input grid" stage: it writes on the processed grid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Upstream as it ships: PyTorch's default CPU allocation (satseg, imported below through run.py, would turn
# on huge pages).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CASES, DATA, PeakRSS, ct_prompts, machine, synthetic_ct

BACKBONES = {"nano": "UNET", "pro": "UNET-L"}


class Timers(dict):
    cuda = False

    def wrap(self, owner, name: str, stage: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.cuda:
                    torch.cuda.synchronize()
                self[stage] = self.get(stage, 0.0) + time.perf_counter() - start

        setattr(owner, name, timed)


def _inputs_to(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """What DistributedDataParallel does to inputs in a one-process run: move tensor arguments to ``device``
    (upstream builds some of them, e.g. the modality codes, on the CPU and relies on DDP for the move)."""
    if device.type == "cpu":
        return module

    def move(_module, args, kwargs):
        return (tuple(a.to(device) if torch.is_tensor(a) else a for a in args),
                {k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()})

    module.register_forward_pre_hook(move, with_kwargs=True)
    return module


def patch_upstream(upstream: Path, timers: Timers, device: torch.device, mpnet: Path):
    """Import upstream's modules from ``upstream`` and adapt them to a single-process run on ``device``."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(upstream / "model" / "dynamic-network-architectures-main"))
    sys.path.insert(0, str(upstream))
    torch.nn.parallel.DistributedDataParallel = lambda module, *a, **k: _inputs_to(module, device)
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = staticmethod(lambda module, *a, **k: module)
    if device.type == "cpu":
        torch.cuda.current_device = lambda: "cpu"

    import monai
    import nibabel
    from data import inference_dataset
    from evaluate import inference_engine
    from model import knowledge_encoder, maskformer, text_encoder

    knowledge_encoder.Knowledge_Encoder.__init__.__defaults__ = (str(mpnet),)
    timers.wrap(monai.transforms.LoadImaged, "__call__", "read")
    timers.wrap(inference_dataset.Inference_Dataset, "__getitem__", "read+preprocess")
    timers.wrap(text_encoder.Text_Encoder, "forward", "text")
    timers.wrap(maskformer.Maskformer, "vision_backbone_forward", "backbone")
    timers.wrap(maskformer.Maskformer, "infer_forward", "decode")
    timers.wrap(inference_engine, "inference", "inference")
    timers.wrap(nibabel, "save", "write")
    inference_engine.nib = nibabel
    return inference_dataset, inference_engine, maskformer, text_encoder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, type=Path, help="checkout of github.com/zhaoziheng/SAT")
    parser.add_argument("--variant", default="nano", choices=sorted(BACKBONES))
    parser.add_argument("--case", default="ct_sm", choices=[*CASES, "synthetic"])
    parser.add_argument("--prompts", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (upstream's fp16 autocast)")
    parser.add_argument("--mpnet", type=Path, default=DATA / "all-mpnet-base-v2",
                        help="MPNet folder (weights + tokenizer) for upstream's text tower")
    parser.add_argument("--json", default="benchmarks/results/upstream.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    timers = Timers()
    timers.cuda = device.type == "cuda"
    inference_dataset, inference_engine, maskformer, text_encoder = patch_upstream(
        args.upstream.resolve(), timers, device, args.mpnet)
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    start = time.perf_counter()
    model = maskformer.Maskformer(BACKBONES[args.variant], [288, 288, 96], [32, 32, 32], False).to(device).eval()
    text = text_encoder.Text_Encoder(text_encoder="ours", device=device, gpu_id=None).eval()
    build_s = time.perf_counter() - start
    scan = CASES.get(args.case) or synthetic_ct(Path(tempfile.gettempdir()) / "satseg-bench" / "synthetic_ct.nii.gz")
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out_json.read_text())["rows"] if out_json.is_file() else []
    info = machine()
    for n in args.prompts:
        timers.clear()
        if timers.cuda:
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as tmp:
            jsonl = Path(tmp) / "cases.jsonl"
            jsonl.write_text(json.dumps({"image": str(scan), "label": ct_prompts(n), "modality": "ct",
                                         "dataset": "bench"}) + "\n")
            dataset = inference_dataset.Inference_Dataset(str(jsonl), max_queries=256, batch_size=1)
            loader = DataLoader(dataset, batch_size=1, num_workers=0, collate_fn=inference_dataset.collate_fn)
            (Path(tmp) / "out").mkdir()  # upstream's inference.py creates --rcd_dir before inference()
            begin = time.perf_counter()
            with PeakRSS() as rss, contextlib.redirect_stdout(sys.stderr):
                inference_engine.inference(model=model, text_encoder=text, device=device,
                                           testset=dataset, testloader=loader, nib_dir=str(Path(tmp) / "out"))
            total = time.perf_counter() - begin
        read = timers.get("read", 0.0)
        loop = timers["inference"] - timers["read+preprocess"]
        stages = {"read": read, "preprocess": timers["read+preprocess"] - read, "text": timers.get("text", 0.0),
                  "backbone": timers["backbone"],
                  "decode_aggregate": loop - timers.get("text", 0.0) - timers["backbone"] - timers.get("write", 0.0),
                  "to_input_grid": 0.0, "write": timers.get("write", 0.0)}
        row = {"variant": args.variant, "case": args.case, "prompts": n, "device": str(device),
               "precision": "float16 autocast" if timers.cuda else "float32",
               "pipeline": "upstream SAT", "total_s": total, "stages_s": stages, "peak_rss_gib": rss.peak / 2**30,
               "build_s": build_s, "loadavg": os.getloadavg(), "threads": torch.get_num_threads(),
               "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}
        if timers.cuda:
            row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        print(json.dumps(row), flush=True)
        out_json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
