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
from pathlib import Path

from satseg.model.training_state import TrainingCheckpoint, read_training_state

log = logging.getLogger(__name__)

__all__ = ["TrainingCheckpoint", "convert_official", "export_training_checkpoint", "manifest_entry",
           "read_training_checkpoint"]


def read_training_checkpoint(path: str | Path) -> TrainingCheckpoint:
    """A training checkpoint's model parts (:func:`satseg.model.training_state.read_training_state`, the one reader).

    Raises:
        CheckpointError: unreadable, not a ``satseg-train`` checkpoint, or missing the model parts.
    """
    return read_training_state(path)


def export_training_checkpoint(checkpoint: str | Path | TrainingCheckpoint, out: str | Path, *,
                               fp16: bool = False) -> Path:
    """A ``satseg train fit`` checkpoint (path, or one already read) → satseg safetensors at ``out``.

    The trained architecture is built and loaded strictly first (:func:`satseg.load_model`); the deep-supervision
    heads, the optimizer state and everything else a resume needs are left out.
    """
    from satseg.model.factory import load_model
    from satseg.model.satseg_file import save_satseg_weights

    run = checkpoint if isinstance(checkpoint, TrainingCheckpoint) else read_training_checkpoint(checkpoint)
    loaded = load_model(run)
    metadata = {"source": f"satseg train fit checkpoint {run.path.name}", "step": run.step}
    path = save_satseg_weights(loaded.model, loaded.text_encoder, out, fp16=fp16, metadata=metadata)
    log.info("exported %s (SAT-%s, step %d) to %s", run.path, run.variant, run.step, path)
    return path


def convert_official(checkpoint: str | Path, text_checkpoint: str | Path, variant: str, out: str | Path, *,
                     fp16: bool = False) -> Path:
    """A released SAT checkpoint pair → satseg safetensors at ``out`` (loaded strictly first: :func:`satseg.load_model`)."""
    from satseg.model.factory import load_model
    from satseg.model.satseg_file import save_satseg_weights

    loaded = load_model((checkpoint, text_checkpoint), variant=variant)
    model, text = loaded.model, loaded.text_encoder
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
