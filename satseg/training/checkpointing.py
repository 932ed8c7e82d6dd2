"""Training checkpoints: atomic writes, exact resume, and rebuilding the models from a checkpoint.

A checkpoint is one ``torch.save`` dict, read back by :func:`satseg.model.training_state.read_training_state`
(the one reader of the format, restricted unpickling)::

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

from satseg.io.atomic import atomic_path
from satseg.model.training_state import FORMAT, read_training_state, training_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "LATEST", "build_from_checkpoint", "checkpoint_dir", "latest_checkpoint", "load_checkpoint",
           "model_config_from_dict", "restore_rng", "rng_state", "save_checkpoint"]

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
    """The whole payload of a satseg training checkpoint (tensors and plain containers only), checked by
    :func:`satseg.model.training_state.read_training_state`.

    Raises:
        CheckpointError: missing, unreadable, or not a ``satseg-train`` checkpoint.
    """
    return read_training_state(path).payload


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
    """(SAT, TextEncoder) with the weights of a checkpoint payload (:func:`satseg.load_model`, strict); without deep
    supervision the heads are left out."""
    from satseg.model.factory import load_model

    loaded = load_model(training_checkpoint(payload), device=device, deep_supervision=deep_supervision)
    return loaded.model, loaded.text_encoder
