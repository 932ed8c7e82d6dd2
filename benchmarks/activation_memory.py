"""Peak bytes of live tensors in one SAT window pass, counted on the ``meta`` device (no GPU, no computation).

    python benchmarks/activation_memory.py --variant nano pro --dtype float16 --prompts 10

Every tensor an operator returns is counted from its creation until it is freed (weak references), so the
peak is what the network's own tensors need at once: weights, activations, temporaries. It leaves out what
a GPU adds on top: cuDNN workspaces, the caching allocator's rounding and fragmentation, the CUDA context.
The model runs in ``--dtype`` throughout (weights included), which is how much autocast's activations take,
but not its float32 weight copies. The same code path as on CUDA is taken for the norm
(``instance_norm_leaky_relu``) unless ``--modules``.
"""

from __future__ import annotations

import argparse
import json
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from satseg.model import build_sat
from satseg.model import unet


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        size = storage.nbytes()
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.track(item)
        return out


def measure(variant: str, dtype: torch.dtype, prompts: int, fused: bool) -> dict:
    model = build_sat(variant, device="meta").to(dtype).eval()
    original = unet.ConvNormAct.finish
    if fused:  # the CUDA branch of ConvNormAct, taken on meta tensors too
        unet.ConvNormAct.finish = lambda self, y: unet.instance_norm_leaky_relu(
            y, self.norm.weight, self.norm.bias, self.norm.eps, self.act.negative_slope)
    try:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        with torch.inference_mode(), LiveBytes() as mode:
            image = torch.zeros(1, 3, *model.config.window, device="meta", dtype=dtype)
            queries = torch.zeros(prompts, model.config.query_dim, device="meta", dtype=dtype)
            features = model.encode_image(image)
            after_encode = mode.live
            logits = model.decode(features, queries)
            probs = torch.sigmoid(logits.float())
            del logits, probs, features
    finally:
        unet.ConvNormAct.finish = original
    return {"variant": variant, "dtype": str(dtype).replace("torch.", ""), "prompts": prompts, "fused_norm": fused,
            "weights_gib": weights / 2**30, "peak_live_gib": mode.peak / 2**30 + weights / 2**30,
            "live_after_encode_gib": after_encode / 2**30 + weights / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["nano"], choices=["tiny", "nano", "pro"])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--modules", action="store_true", help="count nn.InstanceNorm3d + LeakyReLU instead")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [measure(v, getattr(torch, args.dtype), args.prompts, not args.modules) for v in args.variant]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
