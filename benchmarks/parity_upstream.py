"""Numerical parity of satseg with upstream SAT, running upstream's own code side by side (CPU, fp32, eval).

    python benchmarks/parity_upstream.py --upstream /tmp/sat-upstream --checks posenc seg text preprocess
    python benchmarks/parity_upstream.py --upstream /tmp/sat-upstream --checks seg-pro

Nothing of upstream is copied into satseg: upstream's modules are imported at run time from ``--upstream`` (a
checkout of github.com/zhaoziheng/SAT, with its vendored ``model/dynamic-network-architectures-main`` put on
``sys.path``). Needs einops, positional_encodings (6.0.1) and, for ``preprocess``, monai — install them in a
throw-away environment, not in satseg's.

Checks (each one a function below; results as JSON on stdout and appended to ``--json``):

* ``posenc``: upstream's ``PositionalEncoding3D(768)`` on the released 9×9×3 token grid, flattened in upstream's
  token order, vs :func:`satseg.model.posenc.sinusoidal_3d`.
* ``seg`` / ``seg-pro``: upstream ``Maskformer('UNET' | 'UNET-L', image_size=[64, 64, 32], deep_supervision=True)``
  with its own seeded init, saved in the released layout (``module.`` keys, as DDP saves them), loaded STRICTLY
  into ``satseg.model.build_sat`` with ``load_segmentation_checkpoint``; both run on one random image and one set of
  random queries through upstream's train path (``model(queries (B, N, 768), image)``, deep-supervision logits) and
  infer path (``model([queries (N, 768)], image)``); intermediates (image tokens, positional encoding, per-pixel
  maps) are compared too. Repeated after adding seeded noise to every 1-D parameter (biases, norm weights), which
  upstream's init leaves at 0 / 1 and would hide a swapped mapping.
* ``text``: upstream ``Knowledge_Encoder`` (real all-mpnet-base-v2 weights + seeded projection / modality
  layers), saved in the released text layout, loaded STRICTLY with ``load_text_checkpoint``; token ids of
  upstream's ``MyTokenizer`` vs :class:`satseg.model.text.SATTokenizer`, and query embeddings through upstream's
  ``Text_Encoder.forward`` (its modality-name → code map) vs ``TextEncoder.encode`` for ct / mri / pet.
* ``preprocess``: upstream ``Inference_Dataset`` (MONAI loading, orientation, spacing, foreground crop,
  normalisation, ``split_3d``, padding, 3-channel repeat) vs ``to_model_grid`` + ``normalize`` + ``window_slices``
  + ``extract_windows`` on TotalSegmentator's CT (30 and 112 slices) and small MR examples, and upstream's
  ``split_3d`` vs ``window_slices`` for every axis length 1…1000.

Run-time adaptations of upstream (never in its files): ``torch.cuda.current_device`` answers ``"cpu"`` (its text
tower moves token ids there), ``RANK=0`` (its ``is_master``), and ``Text_Encoder`` is built without running its
``__init__`` (which loads a second MPNet from the Hugging Face hub and wraps it in DDP); its ``forward`` is run
as it is on the ``Knowledge_Encoder`` under test. ``Maskformer.__init__`` builds all three U-Nets (UNET, UNET-L,
UNET-H: ≈1.1 B parameters) and keeps one; unless ``--full-build``, the two it discards are built on the meta
device (the kept one, and everything else, is built by upstream's code as it is; only the random-number stream
differs, which does not matter since satseg gets upstream's weights through the checkpoint file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

DATA = Path.home() / ".cache" / "satseg-test-data"
MPNET = DATA / "all-mpnet-base-v2"
REFERENCE = DATA / "totalseg" / "reference_files"
PROMPTS = [
    "liver",
    "left kidney",
    "intervertebral disc between lumbar vertebrae 4 (l4) and lumbar vertebrae 5 (l5)",
    "brain stem",
    "Left Kidney",  # upper case: upstream lower-cases in its dataset, satseg in its tokenizer
    "liver " * 300,  # longer than 256 ids: truncation
]
BACKBONES = {"seg": ("UNET", "nano"), "seg-pro": ("UNET-L", "pro")}


def use_upstream(upstream: Path) -> None:
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(upstream / "model" / "dynamic-network-architectures-main"))
    sys.path.insert(0, str(upstream))
    torch.cuda.current_device = lambda: "cpu"


def diff(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """Differences of satseg's tensor from upstream's (the reference)."""
    ours, theirs = ours.detach().double(), theirs.detach().double()
    if ours.shape != theirs.shape:
        return {"shape_ours": list(ours.shape), "shape_upstream": list(theirs.shape), "same_shape": False}
    abs_diff = (ours - theirs).abs()
    scale = theirs.abs().max().item()
    return {"shape": list(theirs.shape), "bit_identical": bool(torch.equal(ours, theirs)),
            "max_abs": abs_diff.max().item(), "max_abs_upstream": scale,
            "rel_to_max": abs_diff.max().item() / scale if scale else 0.0}


def check_posenc() -> dict:
    from einops import rearrange
    from positional_encodings.torch_encodings import PositionalEncoding3D

    from satseg.model.posenc import sinusoidal_3d

    grid = (288 // 32, 288 // 32, 96 // 32)
    theirs = PositionalEncoding3D(768)(torch.zeros(1, *grid, 768))
    theirs = rearrange(theirs, "b h w d c -> (h w d) b c")[:, 0]  # Maskformer's token order
    return {"check": "posenc", "grid": list(grid), "posenc": diff(sinusoidal_3d(grid, 768), theirs)}


def _save_official(module: torch.nn.Module, path: Path) -> None:
    """What ``torch.save`` of a DDP-wrapped model gives upstream: ``module.``-prefixed keys."""
    wrapper = torch.nn.Module()
    wrapper.module = module
    torch.save({"step": 0, "model_state_dict": wrapper.state_dict()}, path)


def _perturb_vectors(module: torch.nn.Module, seed: int) -> int:
    generator = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
                count += 1
    return count


def _upstream_outputs(theirs, image: torch.Tensor, queries: torch.Tensor) -> dict:
    with torch.no_grad():
        tokens, pos, per_pixel = theirs.vision_backbone_forward(image)
        return {"tokens": tokens, "pos": pos, "per_pixel": per_pixel, "train": theirs(queries, image),
                "infer": theirs([queries[0]], image)}


def _compare_seg(ours, reference: dict, image: torch.Tensor, queries: torch.Tensor) -> dict:
    with torch.no_grad():
        features = ours.encode_image(image)
        train = ours.decode(features, queries)
        infer = ours.decode(features, queries[0])
    out = {"image_tokens": diff(features.tokens, reference["tokens"]), "pos": diff(features.pos, reference["pos"])}
    for i, (a, b) in enumerate(zip(features.per_pixel, reference["per_pixel"])):
        out[f"per_pixel[{i}]"] = diff(a, b)
    out["per_pixel count (ours, upstream)"] = [len(features.per_pixel), len(reference["per_pixel"])]
    for name, a, b in zip(["full", "/2", "/4", "/8"], train, reference["train"]):
        out[f"train logits {name}"] = diff(a, b)
    out["train logits count (ours, upstream)"] = [len(train), len(reference["train"])]
    out["infer logits (deep-supervision build, full scale)"] = diff(infer[0], reference["infer"])
    # Diagnostic: upstream calls nn.MultiheadAttention with need_weights=True (explicit softmax(QK^T)V), satseg
    # with need_weights=False (fused scaled_dot_product_attention). Same maths, different rounding.
    for layer in ours.transformer_decoder.layers:
        layer.multihead_attn.forward = _needing_weights(layer.multihead_attn.forward)
    try:
        with torch.no_grad():
            train = ours.decode(features, queries)
    finally:
        for layer in ours.transformer_decoder.layers:
            del layer.multihead_attn.forward
    for name, a, b in zip(["full", "/2", "/4", "/8"], train, reference["train"]):
        out[f"train logits {name}, satseg attention run with need_weights=True"] = diff(a, b)
    return out


def _needing_weights(forward):
    def call(*args, **kwargs):
        return forward(*args, **{**kwargs, "need_weights": True})

    return call


def _lean_backbones(maskformer, wanted: tuple[int, ...]):
    """Upstream's Maskformer builds all three U-Nets (~1.1 B parameters) and keeps one: build the two it
    throws away on the meta device (no memory, no effect on the one it keeps)."""
    real = maskformer.PlainConvUNet

    def build(**kwargs):
        if tuple(kwargs["features_per_stage"]) == wanted:
            return real(**kwargs)
        with torch.device("meta"):
            return real(**kwargs)

    maskformer.PlainConvUNet = build
    return real


def check_seg(name: str, seed: int, lean: bool) -> dict:
    """Upstream's outputs are computed and its model freed before satseg's is built (memory)."""
    from model import maskformer

    from satseg.model import build_sat, count_parameters, get_config
    from satseg.model.checkpoint import load_segmentation_checkpoint

    backbone, variant = BACKBONES[name]
    result: dict = {"check": name, "backbone": backbone, "variant": variant, "seed": seed,
                    "unused upstream backbones built on meta device": lean}
    real = _lean_backbones(maskformer, get_config(variant).features) if lean else None
    torch.manual_seed(seed)
    start = time.perf_counter()
    try:
        theirs = maskformer.Maskformer(vision_backbone=backbone, image_size=[64, 64, 32], patch_size=[32, 32, 32],
                                       deep_supervision=True).eval()
    finally:
        if real is not None:
            maskformer.PlainConvUNet = real
    result["upstream_build_s"] = round(time.perf_counter() - start, 1)
    result["upstream_parameters"] = count_parameters(theirs)
    generator = torch.Generator().manual_seed(seed + 1)
    image = torch.randn(1, 3, 64, 64, 32, generator=generator)
    queries = torch.randn(1, 3, 768, generator=generator)
    labels = ("upstream init", "1-D params perturbed")
    with tempfile.TemporaryDirectory() as tmp:
        files, references = {}, {}
        for label in labels:
            if label != labels[0]:
                result["perturbed_tensors"] = _perturb_vectors(theirs, seed + 2)
            files[label] = Path(tmp) / f"{len(files)}.pth"
            _save_official(theirs, files[label])
            references[label] = _upstream_outputs(theirs, image, queries)
        del theirs
        for label in labels:
            ours = build_sat(variant, deep_supervision=True).eval()
            load_segmentation_checkpoint(ours, files[label])  # strict
            result["satseg_parameters"] = count_parameters(ours)
            result[label] = _compare_seg(ours, references[label], image, queries)
            del ours
            plain = build_sat(variant).eval()  # the inference build: the file's deep-supervision heads are dropped
            load_segmentation_checkpoint(plain, files[label])
            with torch.no_grad():
                result[label]["infer logits (inference build)"] = diff(plain(image, queries[0]),
                                                                       references[label]["infer"])
            del plain
    return result


def check_text(seed: int) -> dict:
    from model.knowledge_encoder import Knowledge_Encoder
    from model.text_encoder import Text_Encoder
    from model.tokenizer import MyTokenizer

    from satseg.model import build_text_encoder
    from satseg.model.checkpoint import load_text_checkpoint
    from satseg.model.text import SATTokenizer

    result: dict = {"check": "text", "seed": seed, "mpnet": str(MPNET)}
    torch.manual_seed(seed)
    knowledge = Knowledge_Encoder(biolord_checkpoint=str(MPNET)).eval()
    # upstream's Text_Encoder.forward (modality names → codes, batching) on this Knowledge_Encoder
    text_encoder = Text_Encoder.__new__(Text_Encoder)
    torch.nn.Module.__init__(text_encoder)
    text_encoder.model, text_encoder.device = knowledge, torch.device("cpu")

    their_tok = MyTokenizer(str(MPNET), 256).tokenize(PROMPTS)
    our_ids, our_mask = SATTokenizer(MPNET)(PROMPTS)
    result["token_ids_equal"] = bool(torch.equal(our_ids, their_tok["input_ids"]))
    result["attention_mask_equal"] = bool(torch.equal(our_mask, their_tok["attention_mask"]))
    result["token_ids_shape"] = list(their_tok["input_ids"].shape)
    result["token_ids"] = {p[:40]: their_tok["input_ids"][i][their_tok["attention_mask"][i] > 0].tolist()[:24]
                           for i, p in enumerate(PROMPTS)}

    ours = build_text_encoder("nano").eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "text.pth"
        _save_official(knowledge, path)
        load_text_checkpoint(ours, path)  # strict
    tokenizer = SATTokenizer(MPNET)
    lowered = [p.lower() for p in PROMPTS]  # upstream's Inference_Dataset lower-cases the labels
    for modality in ("ct", "mri", "pet"):
        with torch.no_grad():
            theirs = text_encoder(lowered, modality)
            mine = ours.encode(PROMPTS, modality, tokenizer)
            result[f"queries {modality}"] = diff(mine, theirs)
            per_prompt = (mine - theirs).abs().amax(dim=1)
            result[f"queries {modality} max_abs per prompt"] = [float(v) for v in per_prompt]
    return result


def check_preprocess(batch_size: int = 2) -> dict:
    import numpy as np
    from data import inference_dataset
    from data.inference_dataset import Inference_Dataset

    from satseg.geometry import to_model_grid
    from satseg.inference.sliding_window import (
        SAT_WINDOW,
        box_extent,
        extract_windows,
        window_slices,
    )
    from satseg.intensity import normalize
    from satseg.io import read_volume

    result: dict = {"check": "preprocess"}
    captured: dict = {}
    upstream_normalization = inference_dataset.Normalization

    def recording_normalization(image, modality):  # keep upstream's un-normalised model-grid image
        captured["raw"] = image.clone()
        return upstream_normalization(image, modality)

    inference_dataset.Normalization = recording_normalization
    for case, modality in (("example_ct_sm.nii.gz", "ct"), ("example_ct.nii.gz", "ct"), ("example_mr_sm.nii.gz", "mri")):
        scan = REFERENCE / case
        with tempfile.TemporaryDirectory() as tmp:
            jsonl = Path(tmp) / "cases.jsonl"
            jsonl.write_text(json.dumps({"image": str(scan), "label": ["Liver"], "modality": modality.upper(),
                                         "dataset": "parity"}) + "\n")
            start = time.perf_counter()
            item = Inference_Dataset(str(jsonl), max_queries=256, batch_size=batch_size)[0]
            upstream_s = time.perf_counter() - start
        start = time.perf_counter()
        raw, record = to_model_grid(read_volume(scan), "RAS")
        image = torch.from_numpy(normalize(raw, modality))
        boxes = window_slices(tuple(image.shape))
        ours_s = time.perf_counter() - start
        their_boxes = [tuple(b) for batch in item["batched_y1y2_x1x2_z1z2"] for b in batch]
        our_boxes = [(b[0].start, b[0].stop, b[1].start, b[1].stop, b[2].start, b[2].stop) for b in boxes]
        entry = {"input_shape": list(record.input_shape), "input_axcodes": record.input_axcodes,
                 "model_grid_shape ours/upstream": [list(image.shape), list(item["image"].shape[1:])],
                 "raw model grid (before normalisation)": diff(torch.from_numpy(raw), captured["raw"][0]),
                 "normalised image": diff(image, item["image"][0]),
                 "satseg normalize() on upstream's raw grid vs upstream Normalization": diff(
                     torch.from_numpy(normalize(captured["raw"][0].numpy(), modality)), item["image"][0]),
                 "windows ours/upstream": [len(our_boxes), len(their_boxes)],
                 "window boxes equal": our_boxes == their_boxes, "boxes": their_boxes,
                 "modality ours/upstream": [modality, item["modality"]],
                 "labels upstream": item["split_queries"], "seconds ours/upstream": [round(ours_s, 2),
                                                                                    round(upstream_s, 2)]}
        their_patches = torch.cat(item["batched_patches"])
        mine = extract_windows(image, boxes, SAT_WINDOW).expand(-1, 3, -1, -1, -1)
        entry["padded 3-channel patches"] = diff(mine, their_patches)
        entry["box extents"] = [list(box_extent(b)) for b in boxes]
        entry["normalised mean/std ours"] = [float(np.mean(image.numpy(), dtype=np.float64)),
                                             float(np.std(image.numpy(), dtype=np.float64))]
        result[case] = entry
    inference_dataset.Normalization = upstream_normalization
    result["split_3d sweep"] = _split_sweep()
    return result


def _split_sweep(longest: int = 1000) -> dict:
    """Upstream's ``split_3d`` vs ``window_slices`` for every axis length 1…``longest`` along each axis."""
    from data.inference_dataset import split_3d

    from satseg.inference.sliding_window import window_slices

    shapes = [shape for n in range(1, longest + 1) for shape in ((n, 300, 100), (300, n, 100), (300, 300, n))]
    mismatches = []
    for shape in shapes:
        _, theirs = split_3d(torch.zeros(1, 1, 1, 1).expand(1, *shape), crop_size=[288, 288, 96])
        ours = [[b[0].start, b[0].stop, b[1].start, b[1].stop, b[2].start, b[2].stop] for b in window_slices(shape)]
        if ours != theirs:
            mismatches.append(list(shape))
    return {"shapes compared": len(shapes), "axis lengths": [1, longest], "mismatching shapes": mismatches[:10],
            "mismatch count": len(mismatches)}


def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    for name in ("transformers", "numpy", "einops", "monai", "positional_encodings", "nibabel"):
        try:
            from importlib.metadata import version

            info[name] = version(name.replace("_", "-"))
        except Exception:  # noqa: BLE001 - report what is missing instead of failing
            info[name] = None
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, type=Path, help="checkout of github.com/zhaoziheng/SAT")
    parser.add_argument("--checks", nargs="+", default=["posenc", "seg", "text"],
                        choices=["posenc", "seg", "seg-pro", "text", "preprocess"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-build", action="store_true",
                        help="let upstream build all three U-Nets for real (≈4.4 GB) instead of the unused two on meta")
    parser.add_argument("--json", type=Path, default=None, help="append results to this JSON file")
    args = parser.parse_args(argv)

    upstream = args.upstream.resolve()
    use_upstream(upstream)
    results = []
    for check in args.checks:
        start = time.perf_counter()
        if check == "posenc":
            result = check_posenc()
        elif check in BACKBONES:
            result = check_seg(check, args.seed, lean=not args.full_build)
        elif check == "text":
            result = check_text(args.seed)
        else:
            result = check_preprocess()
        result["seconds"] = round(time.perf_counter() - start, 1)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    if args.json:
        previous = json.loads(args.json.read_text())["runs"] if args.json.is_file() else []
        previous.append({"environment": environment(), "upstream": str(upstream), "results": results})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": previous}, indent=1))


if __name__ == "__main__":
    main()
