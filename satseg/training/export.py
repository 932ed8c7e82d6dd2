"""Export trained weights to satseg's own format: one safetensors file, a manifest entry, a local name.

Two inputs:

* a training checkpoint written by ``satseg train fit`` (a ``torch.save`` dict with ``"format":
  "satseg-train"``, ``"variant"``, ``"model_config"`` (optional: the built architecture, which may differ
  from the variant's preset, e.g. a tiny U-Net with the 768-d MPNet tower), ``"step"``, ``"model"`` (the SAT
  state dict, deep-supervision heads ``mid_mask_embed_proj.*`` included when trained with them),
  ``"text_encoder"``, ``"tokenizer"`` (optional: the run's tokenizer folder), plus optimizer state etc.);
  it is read with the restricted unpickler of :func:`satseg.model.checkpoint.safe_load`;
* a released SAT checkpoint pair (``nano.pth`` + ``nano_text_encoder.pth``), to convert it (optionally
  to fp16: about a quarter of the download, as the released segmentation files also carry AdamW moments).

Either way the architecture is built and loaded **strictly** before anything is written,
then :func:`satseg.model.checkpoint.save_satseg_weights` writes the weights without optimizer state and
without the training-only heads. :func:`manifest_entry` gives the ``weights_manifest.json`` entry (sizes,
sha256, tokenizer source) and :func:`satseg.weights.import_satseg_weights` registers the file locally so
``satseg scan.nii.gz --model NAME`` works at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import CheckpointError, InputError
from satseg.training.checkpointing import FORMAT

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile


@dataclass(frozen=True)
class TrainingCheckpoint:
    """The parts of a ``satseg train fit`` checkpoint that export needs (tensors stay memory-mapped)."""

    path: Path
    variant: str
    step: int
    model: dict  # SAT state dict (name → tensor)
    text_encoder: dict  # TextEncoder state dict
    model_config: dict | None = None  # SATConfig.to_dict() of the trained architecture
    tokenizer: str | None = None  # the tokenizer folder the run used


def _unwrap(state: dict) -> dict:
    out = {}
    for key, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = tensor
    return out


def read_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """Read a training checkpoint without running arbitrary pickled code.

    Raises:
        CheckpointError: unreadable, not a ``satseg-train`` checkpoint, or missing the model parts.
    """
    import numpy as np
    import torch

    from satseg.model.checkpoint import safe_load

    path = Path(path)
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    # numpy arrays (e.g. a saved numpy RNG state) are plain data: allow their reconstruction as well
    with torch.serialization.safe_globals([np.ndarray, multiarray._reconstruct]):
        data = safe_load(path)
    if data.get("format") != FORMAT:
        hint = (" (a released SAT checkpoint: use --official with --text-checkpoint and --variant)"
                if "model_state_dict" in data else "")
        raise CheckpointError(f"{path} is not a satseg training checkpoint (format={data.get('format')!r}){hint}")
    missing = [k for k in ("variant", "model", "text_encoder") if k not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; is the file complete?")
    for part in ("model", "text_encoder"):
        if not isinstance(data[part], dict) or not all(isinstance(v, torch.Tensor) for v in data[part].values()):
            raise CheckpointError(f"{path}: {part!r} is not a state dict of tensors")
    config = data.get("model_config")
    return TrainingCheckpoint(path=path, variant=str(data["variant"]).lower(), step=int(data.get("step", 0)),
                              model=_unwrap(data["model"]), text_encoder=_unwrap(data["text_encoder"]),
                              model_config=config if isinstance(config, dict) else None,
                              tokenizer=str(data["tokenizer"]) if data.get("tokenizer") else None)


def _compare_strictly(module, state: dict, path: Path, what: str) -> None:
    """Load ``state`` into ``module`` strictly, naming the first differences on failure."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        parts = [f"{len(items)} {label} (first: {', '.join(items[:3])})" for label, items in groups if items]
        raise CheckpointError(f"{path} does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True, assign=True)


def export_training_checkpoint(checkpoint: str | Path | TrainingCheckpoint, out: str | Path, *,
                               fp16: bool = False) -> Path:
    """A ``satseg train fit`` checkpoint (path, or one already read) → satseg safetensors at ``out``.

    The trained architecture is built and loaded strictly first.
    """
    import json

    from satseg.model.build import build_sat, build_text_encoder
    from satseg.model.checkpoint import save_satseg_weights
    from satseg.weights import satseg_file_config

    run = checkpoint if isinstance(checkpoint, TrainingCheckpoint) else read_training_checkpoint(checkpoint)
    metadata = {"variant": run.variant}
    if run.model_config is not None:
        metadata["config"] = json.dumps(run.model_config)
    try:
        config = satseg_file_config(metadata)
    except InputError:
        raise CheckpointError(f"{run.path} names an unknown variant {run.variant!r}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{run.path}: {exc}") from None
    deep = any(k.startswith("mid_mask_embed_proj.") for k in run.model)
    model = build_sat(config, deep_supervision=deep, device="meta")
    text = build_text_encoder(config, device="meta")
    _compare_strictly(model, run.model, run.path, f"SAT-{run.variant}")
    _compare_strictly(text, run.text_encoder, run.path, "the text encoder")
    metadata = {"source": f"satseg train fit checkpoint {run.path.name}", "step": run.step}
    path = save_satseg_weights(model, text, out, fp16=fp16, metadata=metadata)
    log.info("exported %s (SAT-%s, step %d) to %s", run.path, run.variant, run.step, path)
    return path


def convert_official(checkpoint: str | Path, text_checkpoint: str | Path, variant: str, out: str | Path, *,
                     fp16: bool = False) -> Path:
    """A released SAT checkpoint pair → satseg safetensors at ``out`` (loaded strictly first)."""
    from satseg.model.build import build_sat, build_text_encoder
    from satseg.model.checkpoint import load_segmentation_checkpoint, load_text_checkpoint, save_satseg_weights

    model = build_sat(variant, device="meta")
    text = build_text_encoder(variant, device="meta")
    load_segmentation_checkpoint(model, checkpoint, assign=True)
    load_text_checkpoint(text, text_checkpoint, assign=True)
    metadata = {"source": f"SAT release {Path(checkpoint).name} + {Path(text_checkpoint).name}"}
    path = save_satseg_weights(model, text, out, fp16=fp16, metadata=metadata)
    log.info("converted %s + %s (SAT-%s) to %s", checkpoint, text_checkpoint, variant, path)
    return path


def manifest_entry(name: str, variant: str, weights_file: str | Path, tokenizer_dir: str | Path, *,
                   hub_repo: str | None = None, description: str = "") -> dict:
    """``{name: {...}}`` in the ``weights_manifest.json`` schema for one satseg safetensors file.

    Without ``hub_repo`` the entry points at the local file and tokenizer folder (absolute paths, the
    form of ``$SATSEG_HOME/models.json``). With ``hub_repo`` it is the publishable form: the file by its
    name inside that repo, and the tokenizer files of ``tokenizer_dir`` expected beside it in the repo.
    """
    from satseg.weights import file_sha256

    weights_file, tokenizer_dir = Path(weights_file), Path(tokenizer_dir)
    record = {"size": weights_file.stat().st_size, "sha256": file_sha256(weights_file)}
    spec: dict = {"description": description or f"SAT-{variant} weights exported by satseg",
                  "variant": variant, "format": "satseg-safetensors"}
    if hub_repo:
        spec["hub"] = {"repo": hub_repo, "revision": "main"}
        spec["files"] = {"checkpoint": {"path": weights_file.name, **record}}
        present = [f for f in ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json")
                   if (tokenizer_dir / f).is_file()]
        required = [f for f in present if f in ("tokenizer_config.json", "vocab.txt")] or present[:1]
        spec["tokenizer"] = {"hub": {"repo": hub_repo, "revision": "main"}, "files": required,
                             "optional_files": [f for f in present if f not in required]}
    else:
        spec["files"] = {"checkpoint": {"path": str(weights_file.resolve()), **record}}
        spec["tokenizer"] = {"path": str(tokenizer_dir.resolve())}
    return {name: spec}
