"""The weights manifest: named models (architecture variant, files, hashes, tokenizer) and where they are listed.

* ``satseg/weights_manifest.json`` (shipped with the package; the repository root holds an identical copy
  for readers) names the published models (``sat-nano``, ``sat-pro``): hub repo, revision, file paths,
  sizes and sha256 (``null`` = not recorded yet), architecture variant, paired text checkpoint, tokenizer.
* ``$SATSEG_MANIFEST`` (optional) is a second manifest in the same format whose entries are added to, or
  replace, the shipped ones: a site mirror can pin revisions and hashes without editing the package.
* ``$SATSEG_HOME/models.json`` is the local registry of imported models (:mod:`satseg.weights.registry`
  writes it), read here in the same format; a manifest name always wins over an imported one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satseg.errors import InputError, WeightsError

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).parents[1] / "weights_manifest.json"
SCHEMA_VERSION = 1
VARIANTS = ("nano", "pro", "tiny")
FORMATS = ("sat-official", "satseg-safetensors")
FILE_ROLES = ("checkpoint", "text_checkpoint")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class UnknownModelError(WeightsError, InputError):
    """A model name that is neither in the manifest nor imported: a usage error (exit code 2)."""


@dataclass(frozen=True)
class WeightFile:
    """One weights file: a path inside the hub repo (or an absolute local path) and what it must hash to."""

    path: str
    size: int | None = None
    sha256: str | None = None
    approx_size: str | None = None  # display only, e.g. "1.5 GB", while the exact size is unknown


@dataclass(frozen=True)
class TokenizerSource:
    """Where the text tokenizer comes from: files of a hub repo, or a local folder."""

    repo: str | None = None
    revision: str = "main"
    files: tuple[str, ...] = ()
    optional_files: tuple[str, ...] = ()
    path: Path | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A named model: architecture variant, weights files and their source."""

    name: str
    variant: str
    format: str
    checkpoint: WeightFile
    text_checkpoint: WeightFile
    tokenizer: TokenizerSource
    repo: str | None = None  # hub repo id; None = local files (imported)
    revision: str = "main"
    description: str = ""
    licence: str = ""
    origin: str = "manifest"  # "manifest" | "imported"

    @property
    def files(self) -> dict[str, WeightFile]:
        return {"checkpoint": self.checkpoint, "text_checkpoint": self.text_checkpoint}


def satseg_home() -> Path:
    """``$SATSEG_HOME``, default ``~/.satseg``: the imported-model registry and the hash/text-embedding caches."""
    return Path(os.environ.get("SATSEG_HOME") or "~/.satseg").expanduser()


def parse_manifest(data: Any, source: str, *, origin: str = "manifest") -> dict[str, ModelEntry]:
    """Validate a manifest document (``{"schema_version": 1, "models": {NAME: {...}}}``) and build entries."""

    def fail(where: str, why: str) -> WeightsError:
        return WeightsError(f"invalid weights manifest {source}: {where}: {why}")

    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise fail("schema_version", f"expected {SCHEMA_VERSION}")
    models = data.get("models")
    if not isinstance(models, dict):
        raise fail("models", "expected an object of named models")
    entries = {}
    for name, spec in models.items():
        where = f"models.{name}"
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(where, "names are lower-case letters, digits, '.', '_' or '-'")
        if not isinstance(spec, dict):
            raise fail(where, "expected an object")
        variant, fmt = spec.get("variant"), spec.get("format")
        if variant not in VARIANTS:
            raise fail(f"{where}.variant", f"{variant!r} is not one of {', '.join(VARIANTS)}")
        if fmt not in FORMATS:
            raise fail(f"{where}.format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
        hub = spec.get("hub")
        if hub is not None and not (isinstance(hub, dict) and isinstance(hub.get("repo"), str)):
            raise fail(f"{where}.hub", 'expected {"repo": "owner/name", "revision": "main"}')
        files = spec.get("files")
        if fmt == "satseg-safetensors" and isinstance(files, dict) and set(files) == {"checkpoint"}:
            files = {**files, "text_checkpoint": files["checkpoint"]}  # one file holds sat.* and text.*
        if not isinstance(files, dict) or set(files) != set(FILE_ROLES):
            raise fail(f"{where}.files", f"expected exactly {', '.join(FILE_ROLES)}"
                       + (" (or only checkpoint for satseg-safetensors)" if fmt == "satseg-safetensors" else ""))
        weight_files = {role: _parse_file(files[role], f"{where}.files.{role}", hub is None, fail)
                        for role in FILE_ROLES}
        entries[name] = ModelEntry(
            name=name, variant=variant, format=fmt,
            checkpoint=weight_files["checkpoint"], text_checkpoint=weight_files["text_checkpoint"],
            tokenizer=_parse_tokenizer(spec.get("tokenizer"), f"{where}.tokenizer", fail),
            repo=hub["repo"] if hub else None, revision=str(hub.get("revision") or "main") if hub else "main",
            description=str(spec.get("description", "")), licence=str(spec.get("licence", "")), origin=origin,
        )
    return entries


def _parse_file(spec: Any, where: str, local: bool, fail) -> WeightFile:
    if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or not spec["path"]:
        raise fail(where, 'expected {"path": ..., "size": ..., "sha256": ...}')
    if local and not Path(spec["path"]).is_absolute():
        raise fail(f"{where}.path", "a model without a hub repo needs absolute file paths")
    size, sha = spec.get("size"), spec.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise fail(f"{where}.size", "expected a byte count or null")
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
        raise fail(f"{where}.sha256", "expected 64 lower-case hex characters or null")
    return WeightFile(path=spec["path"], size=size, sha256=sha, approx_size=spec.get("approx_size"))


def _parse_tokenizer(spec: Any, where: str, fail) -> TokenizerSource:
    if not isinstance(spec, dict):
        raise fail(where, 'expected {"hub": {...}, "files": [...]} or {"path": "/folder"}')
    if "path" in spec:
        return TokenizerSource(path=Path(spec["path"]))
    hub, files = spec.get("hub"), spec.get("files")
    if not (isinstance(hub, dict) and isinstance(hub.get("repo"), str)):
        raise fail(f"{where}.hub", 'expected {"repo": "owner/name", "revision": "main"}')
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise fail(f"{where}.files", "expected a non-empty list of file names")
    optional = spec.get("optional_files", [])
    return TokenizerSource(repo=hub["repo"], revision=str(hub.get("revision") or "main"), files=tuple(files),
                           optional_files=tuple(optional))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON: {exc}") from None


def _registry_path() -> Path:
    return satseg_home() / "models.json"


def _manifest_entries() -> dict[str, ModelEntry]:
    entries = parse_manifest(_read_json(MANIFEST_PATH), str(MANIFEST_PATH))
    extra = os.environ.get("SATSEG_MANIFEST")
    if extra:
        extra_path = Path(extra).expanduser()
        if not extra_path.is_file():
            raise WeightsError(f"SATSEG_MANIFEST names {extra_path}, which does not exist")
        entries.update(parse_manifest(_read_json(extra_path), str(extra_path)))
    return entries


def _imported_entries() -> dict[str, ModelEntry]:
    path = _registry_path()
    if not path.is_file():
        return {}
    return parse_manifest(_read_json(path), str(path), origin="imported")


def list_models() -> list[ModelEntry]:
    """Every named model: the manifest's, then the imported ones (a manifest name always wins)."""
    entries = _manifest_entries()
    for name, entry in _imported_entries().items():
        if name in entries:
            logger.warning("imported model %r is shadowed by the manifest entry of the same name", name)
        else:
            entries[name] = entry
    return list(entries.values())


def get_model(name: str) -> ModelEntry:
    """The entry named ``name``; an unknown name raises :class:`UnknownModelError` listing the known ones."""
    entries = {entry.name: entry for entry in list_models()}
    if name not in entries:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(entries) or 'none'}")
    return entries[name]
