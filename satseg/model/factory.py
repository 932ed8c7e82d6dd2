"""One model factory: a name or a weights file in, a verified, strictly loaded SAT model out.

:func:`load_model` is the one place that turns a source into modules (open_clip's ``create_model`` plays this
role there). What ``source`` may be:

* a model name: a published one (``sat-nano``, ``sat-pro``: ``satseg weights list``) or an imported one
  (``satseg weights import``, ``satseg train export``); its files are resolved by
  :func:`satseg.weights.resolve_model`: downloaded into the Hugging Face cache unless ``download=False`` and
  checked against their recorded size and sha256 unless ``verify=False``;
* a satseg ``.safetensors`` file: the architecture is the one recorded in its metadata;
* a ``satseg train fit`` state file (``RUN/checkpoints/latest.pt``, :mod:`satseg.model.training_state`), or
  such a file already read (a :class:`~satseg.model.training_state.TrainingCheckpoint`);
* a released SAT pair ``(segmentation.pth, text_encoder.pth)``; ``(segmentation.pth, None)`` loads the
  segmentation model alone (``text_encoder`` is then None: a starting point for training).

Every source goes through the same steps: read (restricted unpickling or safetensors), map to satseg's key
names, build on the ``meta`` device, :func:`~satseg.model.checkpoint.load_strict` (the one strict comparison:
missing, unexpected or mis-shaped keys are refused with the first ones named), cast, move, eval mode.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from satseg.errors import CheckpointError, InputError
from satseg.model.checkpoint import HEADS, load_strict

log = logging.getLogger(__name__)

PRECISIONS = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and where it came from.

    Attributes:
        model: the :class:`~satseg.model.sat.SAT` segmentation model, in eval mode.
        text_encoder: the paired :class:`~satseg.model.text.TextEncoder`, in eval mode (None only for a lone
            released segmentation file).
        tokenizer: a :class:`~satseg.model.text.SATTokenizer`, or None when no tokenizer folder is known.
        name: the model name, or the file name for a file source.
        files: the weights files read, in order (segmentation, text; one file holds both for satseg files,
            which a named model lists twice).
        cache_key: identity of these exact weights: the name and each file's sha256 when known, else its file
            identity (inode, size, mtime, ctime): a rewritten file gives a new key.
        verified: True when every file matched its recorded sha256; None when nothing was recorded (files
            given by path) or checking was turned off.
        tokenizer_dir: the tokenizer folder, when known.
        step: training steps of a training state file; None otherwise.
    """

    model: torch.nn.Module
    text_encoder: torch.nn.Module | None
    tokenizer: object | None
    name: str
    files: tuple[Path, ...]
    cache_key: str
    verified: bool | None = None
    tokenizer_dir: Path | None = None
    step: int | None = None

    @property
    def config(self):
        """The architecture (:class:`~satseg.model.config.SATConfig`) of :attr:`model`."""
        return self.model.config


@dataclass
class _Weights:
    """A source read into memory, before any module exists."""

    config: object
    seg: dict[str, torch.Tensor]
    text: dict[str, torch.Tensor] | None
    files: tuple[Path, ...]
    name: str
    tokenizer_dir: Path | None = None
    verified: bool | None = None
    step: int | None = None


def load_model(source, *, device: str | torch.device = "cpu", precision: str | None = None, download: bool = True,
               verify: bool = True, tokenizer: str | os.PathLike | None = None, variant: str | None = None,
               deep_supervision: bool = False) -> LoadedModel:
    """Resolve, verify and strictly load a SAT model (see the module docstring for what ``source`` may be).

    Args:
        source: a model name, a path (``.safetensors`` or a training state file), or a released pair of paths.
        device: where the modules are put (``"cpu"``, ``"cuda"``, a ``torch.device``).
        precision: None or ``"fp32"`` (float32 weights; float16 files are cast up), ``"bf16"`` or ``"fp16"``
            (every floating-point weight cast to that type).
        download: fetch a named model's missing hub files (else only the Hugging Face cache is looked in).
        verify: check a named model's files against their recorded size and sha256 (fail closed).
        tokenizer: the tokenizer folder, for file sources (a named model brings its own; a training state file
            records the run's, used when this is not given).
        variant: for a released pair, the preset it must be (``nano``, ``pro``, ``tiny``); default: detected.
        deep_supervision: keep the deep-supervision heads a file carries (for training); inference drops them.

    Raises:
        InputError: a file that does not exist, an unknown precision.
        WeightsError: a named model that cannot be resolved or fails verification.
        CheckpointError: a file that cannot be read, or whose keys or shapes do not fit its architecture.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: use one of fp32, bf16, fp16 (or None)")
    weights = _read(source, download=download, verify=verify, variant=variant, deep_supervision=deep_supervision)
    if tokenizer is not None:
        weights.tokenizer_dir = Path(tokenizer)
    return _build(weights, torch.device(device), PRECISIONS[precision], deep_supervision)


def _read(source, *, download: bool, verify: bool, variant: str | None, deep_supervision: bool) -> _Weights:
    if isinstance(source, (tuple, list)):
        if len(source) != 2 or source[0] is None:
            raise InputError("a released model is a pair: (segmentation .pth, text encoder .pth or None)")
        return _released(_existing(source[0]), _existing(source[1]) if source[1] is not None else None, variant,
                         deep_supervision)
    from satseg.model.training_state import TrainingCheckpoint

    if isinstance(source, TrainingCheckpoint):
        return _training_state(source)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or (os.altsep and os.altsep in text) \
            or path.suffix in (".pt", ".pth", ".safetensors", ".ckpt"):
        path = _existing(path)
        if path.suffix == ".safetensors":
            return _satseg_file(path)
        return _training_state(path)
    return _named(text, download=download, verify=verify, deep_supervision=deep_supervision)


def _existing(path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a weights file or a model name")
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    return path


def _named(name: str, *, download: bool, verify: bool, deep_supervision: bool) -> _Weights:
    from satseg import weights

    files = weights.resolve_model(name, download=download, verify=verify)
    if files.format == "satseg-safetensors":
        read = _satseg_file(files.checkpoint)
    else:
        read = _released(files.checkpoint, files.text_checkpoint, files.variant, deep_supervision)
    read.files, read.name = (files.checkpoint, files.text_checkpoint), files.name
    read.tokenizer_dir, read.verified = files.tokenizer, files.verified
    return read


def _satseg_file(path: Path) -> _Weights:
    from satseg.model.satseg_file import read_satseg_file

    config, seg, text = read_satseg_file(path)
    return _Weights(config, seg, text, (path,), path.name)


def _training_state(path_or_run) -> _Weights:
    from satseg.model.training_state import TrainingCheckpoint, read_training_state

    run = path_or_run if isinstance(path_or_run, TrainingCheckpoint) else read_training_state(path_or_run)
    files = (run.path,) if run.path.is_file() else ()  # () for a payload that is only in memory
    tokenizer = Path(run.tokenizer) if run.tokenizer and Path(run.tokenizer).is_dir() else None
    return _Weights(run.architecture(), run.model, run.text_encoder, files, run.path.name, tokenizer, step=run.step)


def _released(seg_path: Path, text_path: Path | None, variant: str | None, deep_supervision: bool) -> _Weights:
    from satseg.model.checkpoint import read_segmentation_state, read_text_state
    from satseg.model.config import get_config

    seg, found = read_segmentation_state(seg_path, keep_deep_supervision=deep_supervision, variant=variant)
    if not found:
        raise CheckpointError(f"{seg_path}: its first convolution fits no SAT preset; pass the variant")
    text = read_text_state(text_path) if text_path is not None else None
    files = (seg_path,) if text_path is None else (seg_path, text_path)
    return _Weights(get_config(found), seg, text, files, seg_path.name)


def _build(weights: _Weights, device: torch.device, dtype: torch.dtype | None, deep_supervision: bool) -> LoadedModel:
    from satseg.model.build import build_sat, build_text_encoder
    from satseg.model.text import SATTokenizer

    config = weights.config
    source, text_source = (weights.files[0], weights.files[-1]) if weights.files else (weights.name, weights.name)
    heads = deep_supervision and any(k.startswith(HEADS) for k in weights.seg)
    seg = weights.seg if heads else {k: v for k, v in weights.seg.items() if not k.startswith(HEADS)}
    model = build_sat(config, deep_supervision=heads, device="meta")
    load_strict(model, seg, source, f"SAT-{config.name}", assign=True)
    text = None
    if weights.text is not None:
        text = build_text_encoder(config, device="meta")
        load_strict(text, weights.text, text_source, "the SAT text encoder", assign=True)
    for module in (model, text):
        if module is not None:
            _materialise_buffers(module)
            module.to(device=device, dtype=dtype).eval()  # dtype None: as loaded (float32)
    tokenizer = None
    if weights.tokenizer_dir is not None:
        tokenizer = SATTokenizer(weights.tokenizer_dir, max_tokens=config.text.max_tokens)
    return LoadedModel(model=model, text_encoder=text, tokenizer=tokenizer, name=weights.name, files=weights.files,
                       cache_key=cache_key(weights.name, weights.files), verified=weights.verified,
                       tokenizer_dir=weights.tokenizer_dir, step=weights.step)


def _materialise_buffers(module: torch.nn.Module) -> None:
    """Give the buffers that no file holds (non-persistent ones, still on ``meta``) their values.

    The only one is Hugging Face MPNet's ``embeddings.position_ids`` (0…n-1), which it builds at construction.
    """
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise CheckpointError(f"buffer {name} is not in the weights and has no known value")
        owner = module.get_submodule(name.rpartition(".")[0])
        owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)


def cache_key(name: str, files) -> str:
    """``name:ID:ID…``: each file's sha256 when the sha256 cache holds it for the file as it is now, else the file
    identity the sha256 cache trusts (:func:`satseg.weights.file_identity`)."""
    from satseg import weights

    return ":".join([name] + [weights.cached_sha256(p) or weights.file_identity(p) for p in files])
