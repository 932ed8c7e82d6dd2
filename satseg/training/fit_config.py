"""``satseg train fit``'s configuration: the YAML (``train/configs/*.yaml``) with ``--set`` overrides, the options the
command line adds, and the model configuration a run derives from them (architecture overrides, the training
window, the model grid)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from satseg.errors import InputError


@dataclass
class FitOptions:
    """What the command line adds to a config.

    Attributes:
        cache: prepared cache folder (``satseg train prepare``).
        out: run folder.
        resume: continue from ``out/checkpoints/latest.pt`` when it exists.
        init: ``None``, a named model (``sat-nano``) or a checkpoint file to start the weights from.
        text_init: MPNet folder, SAT text checkpoint, or ``"random"`` (overrides ``text_encoder.init``).
        tokenizer: tokenizer folder (default: the MPNet folder or the named model's).
        stop_at: stop after this optimizer step (the schedule still spans ``schedule.steps``).
        device: ``auto``, ``cpu``, ``cuda``.
        tensorboard: override ``logging.tensorboard``.
        progress: show a rich progress bar (rank 0).
    """

    cache: Path
    out: Path
    resume: bool = False
    init: str | None = None
    text_init: str | None = None
    tokenizer: Path | None = None
    stop_at: int | None = None
    device: str = "auto"
    tensorboard: bool | None = None
    progress: bool = False


REQUIRED = {"model": ("variant",), "data": ("crop_size", "max_queries"), "optim": ("lr",), "schedule": ("steps",),
            "batch": (), "loss": ()}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read a training YAML (train/configs/*.yaml) and apply ``section.key=value`` overrides (values in YAML)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise InputError(f"config {path} must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: use SECTION.KEY=VALUE, e.g. schedule.steps=50")
        node = config
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    for section, keys in REQUIRED.items():
        if not isinstance(config.get(section), dict):
            raise InputError(f"config {path}: section {section!r} is missing")
        for key in keys:
            if key not in config[section]:
                raise InputError(f"config {path}: {section}.{key} is missing")
    crop = config["data"]["crop_size"]
    if not (isinstance(crop, list) and len(crop) == 3 and all(isinstance(c, int) and c > 0 and c % 32 == 0
                                                               for c in crop)):
        raise InputError(f"data.crop_size {crop!r}: three positive multiples of 32 (the U-Net halves 5 times)")
    return config


# Numbers of the segmentation model a fresh run may change (``model.architecture``); the code stays the same.
ARCHITECTURE_KEYS = ("features", "encoder_convs", "decoder_convs", "projection_hidden", "mask_hidden",
                     "mid_mask_hidden", "query_dim", "decoder_layers", "decoder_heads", "decoder_ffn")


def with_architecture(model_config, overrides):
    """The variant's preset with ``model.architecture`` applied (fresh runs only: a started model keeps its own)."""
    if not overrides:
        return model_config
    if not isinstance(overrides, dict):
        raise InputError(f"model.architecture must map names to numbers ({', '.join(ARCHITECTURE_KEYS)})")
    unknown = sorted(set(overrides) - set(ARCHITECTURE_KEYS))
    if unknown:
        raise InputError(f"model.architecture: unknown {', '.join(unknown)}; known: {', '.join(ARCHITECTURE_KEYS)}")
    values = {}
    for key, value in overrides.items():
        if isinstance(value, list):
            value = tuple(value)
        default = getattr(model_config, key)
        shape_ok = (isinstance(value, tuple) and len(value) == len(default)) if isinstance(default, tuple) \
            else isinstance(value, int)
        numbers = value if isinstance(value, tuple) else (value,)
        if not shape_ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in numbers):
            raise InputError(f"model.architecture.{key} {overrides[key]!r}: "
                             + (f"{len(default)} positive integers" if isinstance(default, tuple)
                                else "a positive integer"))
        values[key] = value
    config = replace(model_config, **values)
    if config.query_dim % config.decoder_heads:
        raise InputError(f"model.architecture: query_dim {config.query_dim} is not divisible by decoder_heads "
                         f"{config.decoder_heads}")
    return config


def with_model_grid(model_config, wanted, cache: Path, *, fixed: bool):
    """The model's voxel size: ``model.spacing`` from the config, else the init's (``fixed``), else the cache's.
    The cache must have been prepared on that grid (``satseg train prepare --spacing``)."""
    from satseg.training.cache import cache_spacing, mm_text, require_grid, same_grid

    if wanted is not None:
        given = wanted
        try:
            wanted = tuple(float(v) for v in given)
        except (TypeError, ValueError):
            wanted = ()
        if len(wanted) != 3 or any(not v > 0 for v in wanted):
            raise InputError(f"model.spacing {given!r}: three positive voxel sizes in mm, e.g. [1.0, 1.0, 3.0]")
        if fixed and not same_grid(wanted, model_config.spacing):
            raise InputError(f"model.spacing {mm_text(wanted)}: the weights this run starts from work on a "
                             f"{mm_text(model_config.spacing)} grid")
    target = wanted if wanted is not None else (tuple(model_config.spacing) if fixed else cache_spacing(cache))
    require_grid(cache, target)
    return replace(model_config, spacing=tuple(target))


def with_training_window(model_config, crop_size: Sequence[int]):
    """The model's inference window is its training crop, at a stride of half a window (SAT's rule: 288×288×96
    crops, 288×288×96 windows), so exported weights segment with the windows they were trained on."""
    window = tuple(int(c) for c in crop_size)
    return replace(model_config, window=window, stride=tuple(c // 2 for c in window))
