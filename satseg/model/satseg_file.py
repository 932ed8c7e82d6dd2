"""satseg's own weights format: one safetensors file, ``sat.*`` and ``text.*`` tensors (float32 or float16), no
optimizer state and no deep-supervision heads, the architecture in the metadata (``format``: ``"satseg"``,
``variant``, ``config``: ``SATConfig.to_dict()`` as JSON, ``dtype``, plus free-form provenance entries)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from satseg.errors import CheckpointError
from satseg.model.checkpoint import HEADS, load_strict


def save_satseg_weights(model: nn.Module, text_encoder: nn.Module, path: str | Path, *, fp16: bool = False,
                        metadata: dict | None = None) -> Path:
    """Write satseg's own format: one safetensors file (``sat.*``, ``text.*``), no optimizer state."""
    from safetensors.torch import save_file

    from satseg.io.atomic import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("sat.", model), ("text.", text_encoder)):
        for key, tensor in module.state_dict().items():
            if key.startswith(HEADS):
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
    """The metadata of a safetensors file (str → str); CheckpointError when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as satseg weights (truncated or corrupt?): {exc}") from None


def file_config(metadata: dict):
    """The architecture (:class:`~satseg.model.config.SATConfig`) recorded in a satseg file's metadata.

    Falls back to the preset of the recorded variant for files without a ``config`` entry. A trained model
    may differ from its variant's preset (e.g. a tiny U-Net with the 768-d MPNet text tower).
    """
    from satseg.model.config import SATConfig, get_config

    if "config" not in metadata:
        return get_config(metadata.get("variant", ""))
    try:
        return SATConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"the architecture recorded in the file's metadata is unreadable: {exc}") from None


def read_satseg_file(path: str | Path) -> tuple[object, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(architecture, segmentation state, text state) of a satseg safetensors file (tensors as stored)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_satseg_metadata(path)
    if meta.get("format") != "satseg":
        raise CheckpointError(f"{path} is not a satseg weights file (metadata format={meta.get('format')!r})")
    config = file_config(meta)
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} (truncated or corrupt?): {exc}") from None
    parts = [{k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)} for prefix in ("sat.", "text.")]
    return config, parts[0], parts[1]


def load_satseg_weights(model: nn.Module, text_encoder: nn.Module, path: str | Path, *, assign: bool = False) -> None:
    """Load satseg's safetensors format strictly into both modules (fp16 files are cast up)."""
    if getattr(model, "deep_supervision", False):
        raise CheckpointError("satseg weights files carry no deep-supervision heads; build without them")
    _, seg, text = read_satseg_file(path)
    load_strict(model, seg, path, f"SAT-{model.config.name}", assign=assign)
    load_strict(text_encoder, text, path, "the text encoder", assign=assign)
