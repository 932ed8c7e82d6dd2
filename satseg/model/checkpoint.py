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
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    scalar = multiarray.scalar
    allowed: list = [
        collections.OrderedDict,
        codecs.encode,
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),  # numpy 1.x pickles (the released files)
        (scalar, "numpy._core.multiarray.scalar"),  # numpy 2.x pickles
        np.ndarray,  # plain numeric arrays (e.g. a numpy generator state in a training checkpoint)
        multiarray._reconstruct,
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


HEADS = "mid_mask_embed_proj."  # deep-supervision heads: training only


def check_strict(expected, found, source: Path | str, what: str, *, may_stay_fresh: tuple[str, ...] = ()) -> list[str]:
    """The one strict key comparison: raise CheckpointError naming the first missing / unexpected / mis-shaped keys.

    Args:
        expected: a module, or its ``state_dict()`` shapes as name → shape.
        found: the weights as name → tensor (or name → shape).
        source: the file, for the message; what: what it was meant to fit, e.g. ``"SAT-nano"``.
        may_stay_fresh: key prefixes that may be absent from ``found`` (they keep the module's initialisation).

    Returns:
        The keys of ``expected`` absent from ``found`` under ``may_stay_fresh``.
    """
    if isinstance(expected, nn.Module):
        expected = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in found.items()}
    absent = [k for k in expected if k not in shapes]
    fresh = [k for k in absent if may_stay_fresh and k.startswith(may_stay_fresh)]
    missing = [k for k in absent if k not in fresh]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [f"{k} (file {list(shapes[k])}, model {list(expected[k])})"
                  for k in expected if k in shapes and shapes[k] != tuple(expected[k])]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                parts.append(f"{len(items)} {label} (first: {', '.join(items[:3])})")
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(parts))
    return fresh


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str, what: str, *,
                assign: bool = False, may_stay_fresh: tuple[str, ...] = ()) -> list[str]:
    """The one strict loader: :func:`check_strict`, then ``load_state_dict`` (tensors cast to the module's dtypes,
    e.g. float16 files into a float32 model). ``assign=True`` puts the file's tensors into a ``meta`` module
    without copying. Returns the keys left fresh (see ``may_stay_fresh``)."""
    fresh = check_strict(module, state, source, what, may_stay_fresh=may_stay_fresh)
    reference = module.state_dict()
    state = {k: v.to(reference[k].dtype) if v.dtype != reference[k].dtype else v for k, v in state.items()}
    module.load_state_dict(state, strict=not fresh, assign=assign)
    if fresh:
        log.warning("%s has no %s; they start from a fresh initialisation", source,
                    ", ".join(sorted({p for p in may_stay_fresh if any(k.startswith(p) for k in fresh)})))
    return fresh


def describe_variant(state: dict[str, torch.Tensor]) -> str:
    """The preset (``nano``, ``pro``, ``tiny``) whose first U-Net convolution fits ``state``; ``""`` if none."""
    weight = state.get(_SEG_MARKER)
    if weight is None:
        return ""
    from satseg.model.config import VARIANTS

    for name, cfg in VARIANTS.items():
        if weight.shape[0] == cfg.features[0] and weight.shape[1] == cfg.in_channels:
            return name
    return ""


def read_segmentation_state(path: str | Path, *, keep_deep_supervision: bool = False,
                            variant: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """A released (or satseg-written ``.pth``) segmentation file → (satseg-named state, its variant).

    Refuses a text-encoder or SAT-Pretrain file, and a file of another variant than ``variant`` (when given).
    """
    path = Path(path)
    state = _state_dict_of(safe_load(path), path)
    kind = _kind_of(state)
    if kind == "text":
        raise CheckpointError(f"{path} is a text-encoder checkpoint, not a segmentation model "
                              "(were the two files of the model swapped?)")
    if kind == "pretrain":
        raise CheckpointError(f"{path} is a SAT-Pretrain text checkpoint, not a segmentation model")
    mapped = map_segmentation_state(state, keep_deep_supervision=keep_deep_supervision, path=path)
    found = describe_variant(mapped)
    if variant and found and found != variant:
        raise CheckpointError(f"{path} holds a SAT-{found} model, but SAT-{variant} was asked for "
                              f"(use --variant {found})")
    return mapped, variant or found


def read_text_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A released (or satseg-written ``.pth``) text-encoder file → satseg-named state (swapped files refused)."""
    path = Path(path)
    state = _state_dict_of(safe_load(path), path)
    kind = _kind_of(state)
    if kind == "segmentation":
        raise CheckpointError(f"{path} is a segmentation model, not a text encoder "
                              "(were the two files of the model swapped?)")
    if kind == "pretrain":
        raise CheckpointError(f"{path} is a SAT-Pretrain knowledge-encoder checkpoint (atlas tower / "
                              "temperature keys); segmentation needs the text encoder paired with the model")
    return map_text_state(state, path)


def load_segmentation_checkpoint(model: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load an official (or satseg-written ``.pth``) segmentation checkpoint into ``model``, strictly."""
    state, _ = read_segmentation_state(path, keep_deep_supervision=getattr(model, "deep_supervision", False),
                                       variant=model.config.name)
    load_strict(model, state, path, f"SAT-{model.config.name}", assign=assign)


def load_text_checkpoint(encoder: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load an official (or satseg-written ``.pth``) text-encoder checkpoint into ``encoder``, strictly."""
    load_strict(encoder, read_text_state(path), path, "the SAT text encoder", assign=assign)


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
    load_strict(text_encoder.mpnet, state, folder, "the MPNet text tower")


def validate_official_files(variant: str, checkpoint: str | Path, text_checkpoint: str | Path | None) -> None:
    """Check that files fit ``variant`` exactly (keys and shapes) without building real weights."""
    from satseg.model.build import build_sat, build_text_encoder

    state, _ = read_segmentation_state(checkpoint, variant=variant)
    check_strict(build_sat(variant, device="meta"), state, checkpoint, f"SAT-{variant}")
    if text_checkpoint is not None:
        check_strict(build_text_encoder(variant, device="meta"), read_text_state(text_checkpoint),
                     text_checkpoint, "the SAT text encoder")


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


# satseg's own safetensors format lives in satseg.model.satseg_file; importable from here as before
from satseg.model.satseg_file import (  # noqa: E402, F401  (it uses load_strict, defined above)
    load_satseg_weights,
    read_satseg_metadata,
    save_satseg_weights,
)
