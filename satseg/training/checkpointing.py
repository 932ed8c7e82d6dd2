"""Training checkpoints: atomic writes, exact resume, and rebuilding the models from a checkpoint.

A checkpoint is one ``torch.save`` dict (read back with ``weights_only=True``)::

    format          "satseg-train"
    variant         "tiny" | "nano" | "pro" (the U-Net preset)
    config          the run's configuration (the YAML after --set overrides)
    model_config    SATConfig.to_dict() of the built model, text tower included (its width may differ from
                    the variant's preset: a tiny U-Net with the 768-d MPNet tower, say)
    step            optimizer steps done
    model           SAT state dict, deep-supervision heads (``mid_mask_embed_proj.*``) included
    text_encoder    TextEncoder state dict (``mpnet.*``, ``projection_layer.*``, ``modality_embed.*``)
    optimizer, scheduler, scaler    their state dicts (scaler: {} when no GradScaler)
    rng             per rank: python / numpy / torch (+ CUDA) generator states, indexed by rank
    sampler         {"seed", "world_size", "next_draw"}: the sampler's stream position
    tokenizer       the tokenizer folder the run used (for export)

Files: ``RUN/checkpoints/step_{k}.pt`` (kept) and ``RUN/checkpoints/latest.pt`` (always the newest).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from satseg.errors import CheckpointError
from satseg.io.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = "satseg-train"
LATEST = "latest.pt"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, payload: dict, *, keep: bool) -> Path:
    """Write ``payload`` atomically as ``latest.pt`` (and as ``step_{k}.pt`` when ``keep``)."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    latest = folder / LATEST
    with atomic_path(latest, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    if keep:
        kept = folder / f"step_{payload['step']}.pt"
        with atomic_path(kept, suffix=".pt") as tmp:
            tmp.unlink(missing_ok=True)
            os.link(latest, tmp)  # same bytes, no second write
    return latest


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    path = checkpoint_dir(run_dir) / LATEST
    return path if path.is_file() else None


def load_checkpoint(path: str | Path) -> dict:
    """Read a satseg training checkpoint (tensors and plain containers only).

    Raises:
        CheckpointError: missing, unreadable, or not a ``satseg-train`` checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"cannot read {path} (truncated or not a satseg training checkpoint?): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a satseg training checkpoint (format {found!r})")
    return payload


# -- random generators ----------------------------------------------------------------------------------


def rng_state() -> dict:
    """This process's global generator states (python, numpy, torch CPU and every CUDA device)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- models from a checkpoint -----------------------------------------------------------------------------


def model_config_from_dict(data: dict):
    """Inverse of ``SATConfig.to_dict()``."""
    from satseg.model.config import SATConfig

    return SATConfig.from_dict(data)


def build_from_checkpoint(payload: dict, *, deep_supervision: bool = False, device: str | torch.device = "cpu"):
    """(SAT, TextEncoder) with the checkpoint's weights; without deep supervision the heads are left out."""
    from satseg.model.sat import SAT
    from satseg.model.text import TextEncoder

    config = model_config_from_dict(payload["model_config"])
    with torch.device(device):
        model = SAT(config, deep_supervision=deep_supervision)
        text = TextEncoder(config.text, query_dim=config.query_dim)
    state = {k: v for k, v in payload["model"].items()
             if deep_supervision or not k.startswith("mid_mask_embed_proj.")}
    model.load_state_dict(state, strict=True)
    text.load_state_dict(payload["text_encoder"], strict=True)
    return model, text


# -- starting points: MPNet folders and released SAT weights ---------------------------------------------


def text_config_from_mpnet(folder: str | Path):
    """TextConfig of an MPNet folder (its ``config.json``), e.g. all-mpnet-base-v2 or BioLORD-2023-C."""
    import json

    from satseg.errors import InputError
    from satseg.model.config import TextConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not an MPNet folder (no config.json)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "mpnet":
        raise InputError(f"{folder} holds a {cfg.get('model_type')!r} model; the SAT text tower is MPNet")
    return TextConfig(vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                      heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
                      max_positions=cfg["max_position_embeddings"],
                      relative_attention_buckets=cfg.get("relative_attention_num_buckets", 32),
                      layer_norm_eps=cfg.get("layer_norm_eps", 1e-5), pad_token_id=cfg.get("pad_token_id", 1))


def load_segmentation_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load satseg-named segmentation weights; deep-supervision heads missing from ``state`` stay freshly
    initialised (released inference files may lack them). Returns the names of the keys left fresh."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    fresh = [k for k in missing if k.startswith("mid_mask_embed_proj.")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if len(fresh) != len(missing) or unexpected or wrong:
        raise CheckpointError(f"{source} does not fit SAT-{model.config.name}: missing "
                              f"{[k for k in missing if k not in fresh][:3]}, unexpected {unexpected[:3]}, "
                              f"wrong shape {wrong[:3]}")
    model.load_state_dict(state, strict=False)
    if fresh:
        log.warning("%s has no deep-supervision heads; they start from a fresh initialisation", source)
    return fresh


def load_released(model: torch.nn.Module, text_encoder: torch.nn.Module | None, files) -> None:
    """Load a resolved named model (``satseg.weights.resolve_model``) into training modules.

    Official ``.pth`` files and satseg safetensors are both accepted; text weights are loaded when
    ``text_encoder`` is given.
    """
    from satseg.model.checkpoint import (
        _state_dict_of,
        load_text_checkpoint,
        map_segmentation_state,
        safe_load,
    )

    if files.format == "satseg-safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(files.checkpoint))
        seg = {k[4:]: v for k, v in tensors.items() if k.startswith("sat.")}
        load_segmentation_state(model, seg, str(files.checkpoint))
        if text_encoder is not None:
            text = {k[5:]: v.to(torch.float32) for k, v in tensors.items() if k.startswith("text.")}
            text_encoder.load_state_dict(text, strict=True)
        return
    state = _state_dict_of(safe_load(files.checkpoint), Path(files.checkpoint))
    mapped = map_segmentation_state(state, keep_deep_supervision=True, path=files.checkpoint)
    load_segmentation_state(model, {k: v.to(torch.float32) for k, v in mapped.items()}, str(files.checkpoint))
    if text_encoder is not None:
        load_text_checkpoint(text_encoder, files.text_checkpoint)
