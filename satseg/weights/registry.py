"""Import of local weights into ``$SATSEG_HOME/models.json``: official-format files or one satseg safetensors file.

:func:`import_model` registers official-format files already on disk (for air-gapped sites) and
:func:`import_satseg_weights` one satseg safetensors file (e.g. from ``satseg train export``; format
``satseg-safetensors`` entries may list only ``checkpoint``, which then also serves as ``text_checkpoint``). The
registry records the files' absolute paths and their sha256 at import time; the files are referenced, not copied.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from satseg.errors import InputError
from satseg.io.atomic import write_text_atomic
from satseg.weights.manifest import (_NAME_RE, SCHEMA_VERSION, VARIANTS, ModelEntry, _imported_entries,
                                     _manifest_entries, _read_json, _registry_path, parse_manifest)
from satseg.weights.verification import file_sha256

logger = logging.getLogger(__name__)


def import_model(name: str, variant: str, checkpoint: str | os.PathLike, text_checkpoint: str | os.PathLike,
                 tokenizer_dir: str | os.PathLike, *, replace: bool = False) -> ModelEntry:
    """Validate official-format files by a strict structural load and register them as model ``name``.

    The files stay where they are: ``$SATSEG_HOME/models.json`` records their absolute paths, sizes and
    sha256, so a later change to a file is refused at use. ``replace`` overwrites an earlier import.
    """
    if not _NAME_RE.match(name):
        raise InputError(f"model name {name!r}: use lower-case letters, digits, '.', '_' or '-'")
    if variant not in VARIANTS:
        raise InputError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    check_new_model_name(name, replace)
    files = {"checkpoint": Path(checkpoint), "text_checkpoint": Path(text_checkpoint)}
    for role, path in files.items():
        if not path.is_file():
            raise InputError(f"{role.replace('_', ' ')} file {path} does not exist")
    tokenizer = check_tokenizer_dir(tokenizer_dir)

    from satseg.model.checkpoint import validate_official_files

    validate_official_files(variant, files["checkpoint"], files["text_checkpoint"])
    spec = {
        "description": f"imported {variant} checkpoint",
        "variant": variant,
        "format": "sat-official",
        "files": {role: {"path": str(path.resolve()), "size": path.stat().st_size,
                         "sha256": file_sha256(path)} for role, path in files.items()},
        "tokenizer": {"path": str(tokenizer.resolve())},
    }
    return _register(name, spec)


def import_satseg_weights(name: str, weights_file: str | os.PathLike, tokenizer_dir: str | os.PathLike, *,
                          replace: bool = False, description: str = "") -> ModelEntry:
    """Register one satseg safetensors file (``sat.*`` + ``text.*``, e.g. from ``satseg train export``).

    The variant is read from the file's metadata and every tensor name and shape is checked against that
    architecture (without reading the weights). Like :func:`import_model`, the file is referenced by its
    absolute path, size and sha256.
    """
    check_new_model_name(name, replace)
    path = Path(weights_file)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    tokenizer = check_tokenizer_dir(tokenizer_dir)
    variant = validate_satseg_file(path)
    record = {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": file_sha256(path)}
    spec = {
        "description": description or f"{variant} weights in satseg format",
        "variant": variant,
        "format": "satseg-safetensors",
        "files": {"checkpoint": record},
        "tokenizer": {"path": str(tokenizer.resolve())},
    }
    return _register(name, spec)


def satseg_file_config(metadata: dict):
    """The architecture recorded in a satseg file's metadata (:func:`satseg.model.satseg_file.file_config`)."""
    from satseg.model.satseg_file import file_config

    return file_config(metadata)


def validate_satseg_file(path: Path) -> str:
    """The variant of a satseg safetensors file whose tensor names and shapes fit its recorded architecture
    exactly (:func:`satseg_file_config`); else raise. The weights themselves are not read."""
    from safetensors import safe_open

    from satseg.errors import CheckpointError
    from satseg.model.build import build_sat, build_text_encoder
    from satseg.model.checkpoint import check_strict

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as satseg weights (truncated or corrupt?): {exc}") from None
    variant = meta.get("variant")
    if meta.get("format") != "satseg" or variant not in VARIANTS:
        raise CheckpointError(f"{path} is not a satseg weights file (metadata format={meta.get('format')!r}, "
                              f"variant={variant!r})")
    config = satseg_file_config(meta)
    if config.name != variant:
        raise CheckpointError(f"{path}: metadata variant {variant!r} differs from its architecture {config.name!r}")
    expected = {}
    for prefix, module in (("sat.", build_sat(config, device="meta")), ("text.", build_text_encoder(config, device="meta"))):
        expected.update({prefix + k: tuple(v.shape) for k, v in module.state_dict().items()})
    check_strict(expected, shapes, path, f"SAT-{variant}")
    return variant


def check_new_model_name(name: str, replace: bool = False) -> None:
    """Refuse a badly formed name, a published name, or an imported one (unless ``replace``)."""
    if not _NAME_RE.match(name):
        raise InputError(f"model name {name!r}: use lower-case letters, digits, '.', '_' or '-'")
    if name in _manifest_entries():
        raise InputError(f"{name!r} is a published model name; choose another name for the imported files")
    if name in _imported_entries() and not replace:
        raise InputError(f"a model named {name!r} is already imported; pass replace=True (--replace) to overwrite")


def check_tokenizer_dir(tokenizer_dir: str | os.PathLike) -> Path:
    """``tokenizer_dir`` as a Path if it holds tokenizer.json or vocab.txt; else InputError."""
    tokenizer = Path(tokenizer_dir)
    if not tokenizer.is_dir() or not any((tokenizer / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise InputError(f"tokenizer folder {tokenizer} has neither tokenizer.json nor vocab.txt")
    return tokenizer


def _register(name: str, spec: dict) -> ModelEntry:
    """Add (or replace) ``name`` in ``$SATSEG_HOME/models.json`` after validating the entry."""
    path = _registry_path()
    document = _read_json(path) if path.is_file() else {"schema_version": SCHEMA_VERSION, "models": {}}
    document["models"][name] = spec
    entry = parse_manifest(document, str(path), origin="imported")[name]
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    logger.info("registered %s (%s) in %s", name, spec["variant"], path)
    return entry
