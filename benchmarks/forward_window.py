"""Time one SAT forward pass on a single 288×288×96 window (random weights of the real shapes).

    python benchmarks/forward_window.py --variant nano --prompts 4 [--device cpu] [--json out.json]

Prints the backbone and decoder times and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from satseg.model import build_sat


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="nano")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_sat(args.variant).eval().to(args.device)
    build_s = time.perf_counter() - start
    window = model.config.window
    image = torch.randn(1, 3, *window, device=args.device)
    queries = torch.randn(args.prompts, model.config.query_dim, device=args.device)
    rows = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            features = model.encode_image(image)
            t1 = time.perf_counter()
            logits = model.decode(features, queries)
            t2 = time.perf_counter()
            rows.append({"backbone_s": t1 - t0, "decode_s": t2 - t1})
            del features, logits
    result = {
        "variant": args.variant, "window": list(window), "prompts": args.prompts, "device": args.device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "build_s": round(build_s, 2), "runs": rows, "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
