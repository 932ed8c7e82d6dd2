"""Time SAT's forward pass on 288×288×96 windows (random weights of the real shapes).

    python benchmarks/forward_window.py --variant nano --prompts 4                      # CPU, fp32, one window
    python benchmarks/forward_window.py --variant nano pro --device cuda --precision bf16 fp32 \\
        --batch 1 2 4 --repeats 5 --json out.json                                      # GPU sweep

For every (variant, precision, batch) it prints the backbone and decoder times per window, the backbone's
FLOP count (``torch.utils.flop_counter``, convolutions and matrix products, counted on the run itself) and the
throughput that gives, the peak resident memory and, on CUDA, the peak GPU memory and the bf16 dense matrix
product rate measured on the same GPU (8192³, the "dense peak" the throughput is compared with).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import time

import satseg  # noqa: F401  (first: huge pages for CPU tensors, as the CLI runs)
import torch

from satseg.model import build_sat

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """bf16 n×n×n matrix products per second on ``device`` (TFLOP/s; mean of ``repeats`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def backbone_flops(model, image: torch.Tensor, cast) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), cast, counter:
        model.encode_image(image)
    return counter.get_total_flops()


def measure(model, device: torch.device, precision: str, batch: int, prompts: int, repeats: int,
            channels_last: bool) -> dict:
    window = model.config.window
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    image = torch.randn(batch, 3, *window, device=device).contiguous(memory_format=layout)
    queries = torch.randn(prompts, model.config.query_dim, device=device)
    dtype = DTYPES[precision]
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    flops = backbone_flops(model, image, cast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    with torch.inference_mode(), cast:
        for _ in range(repeats + 1):  # the first run is a warm-up (cuDNN autotuning, allocator)
            sync(device)
            t0 = time.perf_counter()
            features = model.encode_image(image)
            sync(device)
            t1 = time.perf_counter()
            logits = model.decode(features, queries.to(features.tokens.dtype))
            sync(device)
            t2 = time.perf_counter()
            runs.append({"backbone_s": t1 - t0, "decode_s": t2 - t1})
            del features, logits
    timed = runs[1:] if len(runs) > 1 else runs
    backbone = sorted(r["backbone_s"] for r in timed)[len(timed) // 2]
    decode = sorted(r["decode_s"] for r in timed)[len(timed) // 2]
    row = {"precision": precision, "batch": batch, "prompts": prompts, "channels_last": channels_last,
           "backbone_s_per_window": backbone / batch, "decode_s_per_window": decode / batch,
           "backbone_tflop_per_window": flops / batch / 1e12, "backbone_tflops": flops / backbone / 1e12,
           "runs": runs}
    if device.type == "cuda":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["nano"], choices=["tiny", "nano", "pro"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--contiguous", action="store_true", help="keep the default layout (not channels_last_3d)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": []}
    if device.type == "cuda":
        result["bf16_matmul_tflops"] = matmul_tflops(device)
        result["cudnn"] = torch.backends.cudnn.version()
    for variant in args.variant:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = build_sat(variant).eval().to(device)
        if not args.contiguous:
            model = model.to(memory_format=torch.channels_last_3d)
        build_s = time.perf_counter() - start
        for precision in args.precision:
            for batch in args.batch:
                try:
                    row = measure(model, device, precision, batch, args.prompts, args.repeats, not args.contiguous)
                except torch.cuda.OutOfMemoryError as exc:
                    row = {"precision": precision, "batch": batch, "error": f"out of memory: {exc}"[:200]}
                    torch.cuda.empty_cache()
                row.update(variant=variant, build_s=build_s, peak_rss_gib=peak_rss_gib())
                if "bf16_matmul_tflops" in result and "backbone_tflops" in row:
                    row["share_of_matmul_peak"] = row["backbone_tflops"] / result["bf16_matmul_tflops"]
                result["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "runs"}), flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
