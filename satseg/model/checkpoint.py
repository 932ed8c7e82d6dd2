"""Reading and writing SAT weights, safely and strictly.

Official SAT files (``Nano/nano.pth``, ``Pro/SAT_Pro.pth`` and their paired text encoders) are PyTorch
pickles of ``{"step", "model_state_dict", "optimizer_state_dict"?}`` saved from a DistributedDataParallel
model. Name mapping from an official key to satseg's module names:

* the leading ``module.`` is removed;
* segmentation: ``….convs.{i}.all_modules.0.*`` / ``….all_modules.1.*`` are duplicates of
  ``….convs.{i}.conv.*`` / ``….convs.{i}.norm.*`` (the vendored U-Net registers each module twice): they
  must equal their twin and are dropped; ``mid_mask_embed_proj.*`` (deep-supervision heads) is dropped
  unless the model is built for training with deep supervision;
* text: ``text_tower.biolord.*`` → ``mpnet.*``; ``embeddings.position_ids`` (a buffer saved by old
  transformers versions) is checked to be 0…n-1 and dropped.

Unpickling is restricted to tensors, containers and the few numpy globals the released files contain
(``numpy.core.multiarray.scalar``, ``numpy.dtype``, ``_codecs.encode``): a file that needs any other global
is refused without running it. Loading is strict: a file whose keys or shapes differ from the
architecture is refused with the first missing / unexpected / mismatched keys named.

satseg's own format: one safetensors file with ``sat.*`` and ``text.*`` tensors (optionally fp16), no
optimizer state, the architecture in the metadata.
"""

from __future__ import annotations

import codecs
import collections
import json
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from satseg.errors import CheckpointError

log = logging.getLogger(__name__)

_SEG_MARKER = "backbone.encoder.stages.0.0.convs.0.conv.weight"
_TEXT_PREFIX_OFFICIAL = "text_tower.biolord."
_TEXT_PREFIX_OURS = "mpnet."


def _allowed_globals() -> list:
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list = [
        collections.OrderedDict,
        codecs.encode,
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),  # numpy 1.x pickles (the released files)
        (scalar, "numpy._core.multiarray.scalar"),  # numpy 2.x pickles
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy ≥ 1.25 pickles dtypes through their classes
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def safe_load(path: str | Path) -> dict:
    """Unpickle a ``.pth`` file with only the allow-listed globals (memory-mapped when possible).

    Raises:
        CheckpointError: missing, truncated/corrupt, or needing a global outside the allow-list.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CheckpointError(f"refusing to unpickle {path}: it needs a global that is not on the allow-list "
                                  f"({_global_name(str(exc))}); only SAT weights files are accepted") from None
        raise CheckpointError(f"cannot read {path}: {first}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read {path} (truncated or corrupt file?): {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return obj


def _global_name(message: str) -> str:
    import re

    match = re.search(r"GLOBAL\s+([\w.]+)", message)
    return match.group(1) if match else "unknown global"


def _state_dict_of(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("model_state_dict", obj.get("state_dict", obj))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} has no model_state_dict of tensors (keys: {', '.join(list(obj)[:5])})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _kind_of(keys) -> str:
    keys = list(keys)
    if any(k.startswith(("atlas_tower.", "temperature")) for k in keys):
        return "pretrain"
    if any(k.startswith(_TEXT_PREFIX_OFFICIAL) or k.startswith(_TEXT_PREFIX_OURS) for k in keys):
        return "text"
    if any(k.startswith("backbone.") for k in keys):
        return "segmentation"
    return "unknown"


def map_segmentation_state(state: dict[str, torch.Tensor], *, keep_deep_supervision: bool,
                           path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official segmentation keys (``module.`` already stripped) → satseg keys (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".all_modules.0." in key:
            aliases[key.replace(".all_modules.0.", ".conv.")] = tensor
        elif ".all_modules.1." in key:
            aliases[key.replace(".all_modules.1.", ".norm.")] = tensor
        elif key.startswith("mid_mask_embed_proj.") and not keep_deep_supervision:
            continue
        else:
            out[key] = tensor
    for key, tensor in aliases.items():
        twin = out.get(key)
        if twin is None:
            out[key] = tensor  # a file that kept only the alias
        elif not _same_tensor(twin, tensor):
            raise CheckpointError(f"{path}: {key} and its all_modules alias differ; the file is inconsistent")
    return out


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors hold the same values (cheap when they are views of one storage)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return True
    if (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset() and a.stride() == b.stride()):
        return True
    return torch.equal(a, b)


def map_text_state(state: dict[str, torch.Tensor], path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official text-encoder keys (``module.`` already stripped) → satseg keys (see module doc)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(_TEXT_PREFIX_OFFICIAL):
            key = _TEXT_PREFIX_OURS + key[len(_TEXT_PREFIX_OFFICIAL):]
        if key.endswith("embeddings.position_ids"):
            expected = torch.arange(tensor.shape[-1])
            if not torch.equal(tensor.reshape(-1).long(), expected):
                raise CheckpointError(f"{path}: embeddings.position_ids is not 0…{tensor.shape[-1] - 1}")
            continue
        out[key] = tensor
    return out


def _compare(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str, what: str) -> None:
    """Raise CheckpointError naming the first missing / unexpected / mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {list(state[k].shape)}, model {list(expected[k])})"
                  for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            parts.append(f"{len(items)} {label} (first: {', '.join(items[:3])})")
    raise CheckpointError(f"{path} does not fit {what}: " + "; ".join(parts))


def _describe_variant(state: dict[str, torch.Tensor]) -> str:
    weight = state.get(_SEG_MARKER)
    if weight is None:
        return ""
    from satseg.model.config import VARIANTS

    for name, cfg in VARIANTS.items():
        if weight.shape[0] == cfg.features[0] and weight.shape[1] == cfg.in_channels:
            return name
    return ""


def load_segmentation_checkpoint(model: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load an official (or satseg-written ``.pth``) segmentation checkpoint into ``model``, strictly."""
    path = Path(path)
    state = _state_dict_of(safe_load(path), path)
    check_segmentation_state(model, state, path)
    model.load_state_dict(map_segmentation_state(state, keep_deep_supervision=model.deep_supervision, path=path),
                          strict=True, assign=assign)


def check_segmentation_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    kind = _kind_of(state)
    if kind == "text":
        raise CheckpointError(f"{path} is a text-encoder checkpoint, not a segmentation model "
                              "(were the two files of the model swapped?)")
    if kind == "pretrain":
        raise CheckpointError(f"{path} is a SAT-Pretrain text checkpoint, not a segmentation model")
    mapped = map_segmentation_state(state, keep_deep_supervision=getattr(model, "deep_supervision", False),
                                    path=path)
    variant = _describe_variant(mapped)
    expected = model.config.name
    if variant and variant != expected:
        raise CheckpointError(f"{path} holds a SAT-{variant} model, but SAT-{expected} was asked for "
                              f"(use --variant {variant})")
    _compare(model, mapped, path, f"SAT-{expected}")


def load_text_checkpoint(encoder: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load an official (or satseg-written ``.pth``) text-encoder checkpoint into ``encoder``, strictly."""
    path = Path(path)
    state = _state_dict_of(safe_load(path), path)
    mapped = check_text_state(encoder, state, path)
    encoder.load_state_dict(mapped, strict=True, assign=assign)


def check_text_state(encoder: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> dict:
    kind = _kind_of(state)
    if kind == "segmentation":
        raise CheckpointError(f"{path} is a segmentation model, not a text encoder "
                              "(were the two files of the model swapped?)")
    if kind == "pretrain":
        raise CheckpointError(f"{path} is a SAT-Pretrain knowledge-encoder checkpoint (atlas tower / "
                              "temperature keys); segmentation needs the text encoder paired with the model")
    mapped = map_text_state(state, path)
    _compare(encoder, mapped, path, "the SAT text encoder")
    return mapped


def load_mpnet_folder(text_encoder: nn.Module, folder: str | Path) -> None:
    """Load a Hugging Face MPNet folder (e.g. all-mpnet-base-v2: ``model.safetensors`` or ``pytorch_model.bin``,
    MPNet's own key names) into ``text_encoder.mpnet``, strictly.

    The projection and modality embedding are not part of such a folder and keep their initialisation; the
    ``embeddings.position_ids`` buffer of old files and a masked-LM head are dropped.
    """
    from satseg.errors import InputError

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise InputError(f"{folder} has no model.safetensors or pytorch_model.bin (expected an MPNet folder such "
                         "as all-mpnet-base-v2)")
    prefix = next((p for p in ("mpnet.", "model.") if any(k.startswith(p) for k in state)), "")
    state = {k[len(prefix):]: v for k, v in state.items()
             if k.startswith(prefix) and not k.startswith("lm_head.") and not k.endswith("embeddings.position_ids")}
    _compare(text_encoder.mpnet, state, folder, "the MPNet text tower")
    text_encoder.mpnet.load_state_dict(state, strict=True)


def validate_official_files(variant: str, checkpoint: str | Path, text_checkpoint: str | Path | None) -> None:
    """Check that files fit ``variant`` exactly (keys and shapes) without building real weights."""
    from satseg.model.build import build_sat, build_text_encoder

    checkpoint = Path(checkpoint)
    model = build_sat(variant, device="meta")
    check_segmentation_state(model, _state_dict_of(safe_load(checkpoint), checkpoint), checkpoint)
    if text_checkpoint is not None:
        text_checkpoint = Path(text_checkpoint)
        encoder = build_text_encoder(variant, device="meta")
        check_text_state(encoder, _state_dict_of(safe_load(text_checkpoint), text_checkpoint), text_checkpoint)


# -- writing ------------------------------------------------------------------------------------------


def official_segmentation_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """satseg segmentation keys → the official layout (``module.`` prefix + ``all_modules`` aliases)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        out["module." + key] = tensor
        if ".convs." in key and (".conv." in key or ".norm." in key):
            alias = key.replace(".conv.", ".all_modules.0.").replace(".norm.", ".all_modules.1.")
            out["module." + alias] = tensor
    return out


def official_text_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """satseg text keys → the official layout (``module.text_tower.biolord.*`` ...)."""
    return {"module." + (_TEXT_PREFIX_OFFICIAL + k[len(_TEXT_PREFIX_OURS):] if k.startswith(_TEXT_PREFIX_OURS) else k): v
            for k, v in state.items()}


def write_official_checkpoint(model_or_state: nn.Module | dict, path: str | Path, *, text: bool = False,
                              step: int = 0, optimizer_state: dict | None = None) -> Path:
    """Write weights in the released SAT layout (what ``torch.save`` of a DDP model gives upstream).

    Used to interoperate with upstream SAT code and to test the official loader. For segmentation
    checkpoints an ``optimizer_state_dict`` is included when given (upstream saves one).
    """
    from satseg.io.atomic import atomic_path

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else dict(model_or_state)
    payload: dict = {"step": step,
                     "model_state_dict": official_text_state(state) if text else official_segmentation_state(state)}
    if optimizer_state is not None:
        payload["optimizer_state_dict"] = optimizer_state
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(payload, tmp)
    return Path(path)


def save_satseg_weights(model: nn.Module, text_encoder: nn.Module, path: str | Path, *, fp16: bool = False,
                        metadata: dict | None = None) -> Path:
    """Write satseg's own format: one safetensors file (``sat.*``, ``text.*``), no optimizer state."""
    from safetensors.torch import save_file

    from satseg.io.atomic import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("sat.", model), ("text.", text_encoder)):
        for key, tensor in module.state_dict().items():
            if key.startswith("mid_mask_embed_proj."):
                continue  # training-only heads
            tensor = tensor.detach().to("cpu")
            if fp16 and tensor.is_floating_point():
                tensor = tensor.half()
            tensors[prefix + key] = tensor.contiguous()
    meta = {"format": "satseg", "variant": model.config.name, "config": json.dumps(model.config.to_dict()),
            "dtype": "float16" if fp16 else "float32"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_satseg_metadata(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as satseg weights (truncated or corrupt?): {exc}") from None


def load_satseg_weights(model: nn.Module, text_encoder: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load satseg's safetensors format strictly into both modules (fp16 files are cast up)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_satseg_metadata(path)
    if meta.get("format") != "satseg":
        raise CheckpointError(f"{path} is not a satseg weights file (metadata format={meta.get('format')!r})")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {exc}") from None
    for prefix, module, what in (("sat.", model, f"SAT-{model.config.name}"), ("text.", text_encoder, "the text encoder")):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if isinstance(module, nn.Module) and getattr(module, "deep_supervision", False):
            raise CheckpointError("satseg weights files carry no deep-supervision heads; build without them")
        _compare(module, part, path, what)
        reference = module.state_dict()
        part = {k: v.to(reference[k].dtype) for k, v in part.items()}
        module.load_state_dict(part, strict=True, assign=assign)
