"""Reading a ``satseg train fit`` state file (``RUN/checkpoints/latest.pt``): the one reader of that format.

The file is one ``torch.save`` dict (written by :mod:`satseg.training.checkpointing`), read here with the restricted
unpickler of :func:`satseg.model.checkpoint.safe_load` (tensors stay memory-mapped)::

    format          "satseg-train"
    variant         "tiny" | "nano" | "pro" (the U-Net preset)
    model_config    SATConfig.to_dict() of the built model (optional in older files: then the variant's preset)
    step            optimizer steps done
    model           SAT state dict, deep-supervision heads (``mid_mask_embed_proj.*``) included when trained with them
    text_encoder    TextEncoder state dict
    tokenizer       the tokenizer folder the run used (optional)
    config, optimizer, scheduler, scaler, rng, sampler    what an exact resume needs

The model package reads it (inference and export load trained weights); only training writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from satseg.errors import CheckpointError

FORMAT = "satseg-train"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass(frozen=True)
class TrainingCheckpoint:
    """The model parts of a training state file (tensors stay memory-mapped); ``payload`` is the whole dict."""

    path: Path
    variant: str
    step: int
    model: dict  # SAT state dict (name → tensor), wrapper prefixes removed
    text_encoder: dict  # TextEncoder state dict
    model_config: dict | None = None  # SATConfig.to_dict() of the trained architecture
    tokenizer: str | None = None  # the tokenizer folder the run used
    payload: dict | None = None

    def architecture(self):
        """The :class:`~satseg.model.config.SATConfig` the run built (its recorded one, else the variant's preset)."""
        from satseg.model.config import SATConfig, get_config

        if self.model_config is not None:
            return SATConfig.from_dict(self.model_config)
        try:
            return get_config(self.variant)
        except Exception:
            raise CheckpointError(f"{self.path} names an unknown variant {self.variant!r}") from None


def _unwrap(state: dict) -> dict:
    out = {}
    for key, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = tensor
    return out


def read_training_state(path: str | Path) -> TrainingCheckpoint:
    """Read and check a training state file without running arbitrary pickled code.

    Raises:
        CheckpointError: missing, unreadable, not a ``satseg-train`` file, or missing the model parts.
    """
    from satseg.model.checkpoint import safe_load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    return training_checkpoint(safe_load(path), path)


def training_checkpoint(data: dict, path: str | Path = "training checkpoint") -> TrainingCheckpoint:
    """Check a training state payload already in memory (e.g. the dict about to be saved) and wrap it."""
    path = Path(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        hint = (" (a released SAT checkpoint: use --official with --text-checkpoint and --variant; in Python, "
                "load_model((checkpoint, text_checkpoint)))" if isinstance(data, dict) and "model_state_dict" in data
                else "")
        raise CheckpointError(f"{path} is not a satseg training checkpoint (format={found!r}){hint}")
    missing = [k for k in ("variant", "model", "text_encoder") if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; is the file complete?")
    for part in ("model", "text_encoder"):
        if not isinstance(data[part], dict) or not all(isinstance(v, torch.Tensor) for v in data[part].values()):
            raise CheckpointError(f"{path}: {part!r} is not a state dict of tensors")
    data["model"], data["text_encoder"] = _unwrap(data["model"]), _unwrap(data["text_encoder"])
    config = data.get("model_config")
    return TrainingCheckpoint(path=path, variant=str(data["variant"]).lower(), step=int(data.get("step", 0)),
                              model=data["model"], text_encoder=data["text_encoder"],
                              model_config=config if isinstance(config, dict) else None,
                              tokenizer=str(data["tokenizer"]) if data.get("tokenizer") else None, payload=data)
