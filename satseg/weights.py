"""Named model weights: the manifest, hub download into the Hugging Face cache, sha256 checks, local import.

Where a model's files come from:

* ``satseg/weights_manifest.json`` (shipped with the package; the repository root holds an identical copy
  for readers) names the published models (``sat-nano``, ``sat-pro``): hub repo, revision, file paths,
  sizes and sha256 (``null`` = not recorded yet), architecture variant, paired text checkpoint, tokenizer.
* ``$SATSEG_MANIFEST`` (optional) is a second manifest in the same format whose entries are added to, or
  replace, the shipped ones: a site mirror can pin revisions and hashes without editing the package.
* ``$SATSEG_HOME/models.json`` is the local registry written by :func:`import_model` (official-format files
  already on disk, for air-gapped sites) and :func:`import_satseg_weights` (one satseg safetensors file,
  e.g. from ``satseg train export``; format ``satseg-safetensors`` entries may list only ``checkpoint``,
  which then also serves as ``text_checkpoint``). It records the files' absolute paths and their sha256 at import time;
  the files are referenced, not copied.

Hub files are fetched with ``huggingface_hub.hf_hub_download`` into the HF cache (``HF_HUB_CACHE`` /
``HF_HOME``), from ``HF_ENDPOINT`` when set, never when ``HF_HUB_OFFLINE`` is set. These variables are read
on each call (huggingface_hub reads them once at import). Before first use a file is checked against its
recorded size and sha256; a mismatch deletes the file from the HF cache and raises (fail closed). Computed
hashes are remembered in ``$SATSEG_HOME/sha256-cache.json`` (see below), so a 6 GB file is hashed once, not
on every run. A file without a recorded hash is used with the warning "unverified: no recorded hash".

What the sha256 cache trusts. A remembered hash is used only while the file's path, device, inode, size,
mtime *and* ctime (``st_ctime_ns``, the inode's change time) are unchanged. A user process cannot set ctime:
every write, truncation, ``os.utime`` or chmod moves it to the current time. So the cache notices

* accidental or tool-made changes in place, even of the same size (an editor, a script, a partial
  re-download into the same file);
* such a change with its mtime restored afterwards (``touch -r``, ``cp -p``, ``os.utime``, ``rsync -t``);
* another file copied or moved over the path (the same inode with a new ctime, or a new inode).

It does not protect against someone who can set the system clock while writing (root), edit the disk below
the file system, or edit ``sha256-cache.json`` itself (whoever can write the weights as the user can usually
write it too); nor against a second change within the same clock tick (a few ms on file systems with coarse
timestamps) as the previous change and the hashing. On Windows ``st_ctime`` is the creation time, so an
in-place write with its mtime restored goes unnoticed there. ``satseg weights verify`` (:func:`verify`)
hashes every file again without the cache. There is no per-use spot check of sampled blocks: what it could
catch beyond ctime is an edit by someone able to avoid the sampled blocks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satseg.errors import InputError, WeightsError
from satseg.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST_PATH = Path(__file__).with_name("weights_manifest.json")
SCHEMA_VERSION = 1
VARIANTS = ("nano", "pro", "tiny")
FORMATS = ("sat-official", "satseg-safetensors")
FILE_ROLES = ("checkpoint", "text_checkpoint")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 8 * 1024 * 1024


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


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of a resolved model, ready to load.

    ``verified`` is True when every file matched its recorded sha256, None when a file has no recorded hash.
    """

    name: str
    variant: str
    format: str
    checkpoint: Path
    text_checkpoint: Path
    tokenizer: Path
    verified: bool | None
    commit: str | None = None  # hub commit the files came from


@dataclass(frozen=True)
class FileCheck:
    """Result of checking one file. ``status``: ok | mismatch | unverified | unchecked | missing."""

    model: str
    role: str
    path: Path | None
    status: str
    expected_sha256: str | None = None
    sha256: str | None = None
    size: int | None = None


# --------------------------------------------------------------------------------------------------------
# Folders and environment


def satseg_home() -> Path:
    """``$SATSEG_HOME``, default ``~/.satseg``: the imported-model registry and the hash/text-embedding caches."""
    return Path(os.environ.get("SATSEG_HOME") or "~/.satseg").expanduser()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment names it now (``HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache / "huggingface" / "hub"


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_endpoint() -> str | None:
    endpoint = os.environ.get("HF_ENDPOINT")
    return endpoint.rstrip("/") if endpoint else None


# --------------------------------------------------------------------------------------------------------
# Manifest and registry


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


# --------------------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 8 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_cache_path() -> Path:
    return satseg_home() / "sha256-cache.json"


def _load_hash_cache() -> dict[str, dict]:
    try:
        data = json.loads(_hash_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_hash_cache(cache: dict[str, dict]) -> None:
    try:
        write_text_atomic(_hash_cache_path(), json.dumps(cache, indent=1, sort_keys=True))
    except OSError as exc:  # a read-only home only costs re-hashing
        logger.debug("cannot write the sha256 cache: %s", exc)


def _file_identity(stat: os.stat_result) -> dict[str, int]:
    """What the sha256 cache compares to decide a file is unchanged (see the module docstring).

    ctime is the field that a rewrite cannot keep; the inode and device catch a different file put in the
    path's place; size and mtime are kept as a first, obvious check.
    """
    return {"device": stat.st_dev, "inode": stat.st_ino, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def file_identity(path: str | os.PathLike) -> str:
    """The identity the sha256 cache trusts, as one string: a key for caches derived from the file.

    Any rewrite of the file (in place, restored mtime, or another file copied or moved over it) gives a
    new string; so may a harmless chmod or hard link (both move ctime).
    """
    identity = _file_identity(Path(path).resolve().stat())
    return ":".join(f"{key}={value}" for key, value in identity.items())


def cached_sha256(path: Path) -> str | None:
    """The remembered sha256 of ``path`` if the file's identity (:func:`file_identity`) is unchanged since
    it was hashed; None otherwise (also for records written by satseg versions that kept only size and mtime)."""
    real = Path(path).resolve()
    record = _load_hash_cache().get(str(real))
    if not isinstance(record, dict):
        return None
    identity = _file_identity(real.stat())
    digest = record.get("sha256")
    if all(record.get(key) == value for key, value in identity.items()) and isinstance(digest, str) \
            and _SHA256_RE.match(digest):
        return digest
    return None


def file_sha256(path: Path, *, rehash: bool = False) -> str:
    """sha256 of ``path``, taken from the hash cache when the file is unchanged (unless ``rehash``)."""
    real = Path(path).resolve()
    if not rehash and (known := cached_sha256(real)) is not None:
        return known
    before = real.stat()
    logger.info("computing sha256 of %s (%.1f MB)", real, before.st_size / 1e6)
    digest = sha256_file(real)
    identity = _file_identity(before)
    if _file_identity(real.stat()) != identity:  # written to while it was read: the digest may be of neither
        logger.debug("%s changed while it was hashed; its sha256 is not remembered", real)
        return digest
    cache = _load_hash_cache()
    cache[str(real)] = {**identity, "sha256": digest}
    _store_hash_cache(cache)
    return digest


def _forget_hash(path: Path) -> None:
    cache = _load_hash_cache()
    if cache.pop(str(Path(path).resolve()), None) is not None:
        _store_hash_cache(cache)


# --------------------------------------------------------------------------------------------------------
# Hub access


def _hub_download(repo: str, filename: str, revision: str, *, offline: str | None, model: str) -> Path:
    """Fetch one file into the HF cache, or only look there when ``offline`` (the reason); the snapshot path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=hf_cache_dir(),
                                    endpoint=_hf_endpoint(), local_files_only=offline is not None))
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"{model}: {repo}/{filename} is not in the Hugging Face cache {hf_cache_dir()} "
            f"({offline or 'the hub cannot be reached'}); run "
            f"`satseg weights download {model}` on a connected machine (and copy its HF cache), or register "
            "local files with `satseg weights import`") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"{model}: hub repository {repo} not found (or not accessible)") from None
    except RevisionNotFoundError:
        raise WeightsError(f"{model}: revision {revision!r} not found in hub repository {repo}") from None
    except EntryNotFoundError:
        raise WeightsError(f"{model}: file {filename} not found in hub repository {repo}@{revision}") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsError(f"{model}: download of {repo}/{filename} failed: {_one_line(exc)}") from None
    except Exception as exc:  # httpx transport errors that survived huggingface_hub's retries
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "huggingface_hub"):
            raise
        raise WeightsError(f"{model}: download of {repo}/{filename} failed: "
                           f"{type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _hub_cached(repo: str, filename: str, revision: str) -> Path | None:
    """The cached snapshot path of a hub file, without network; None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) else None


def _commit_of(snapshot_path: Path) -> str | None:
    parts = snapshot_path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _hub_tokenizer(entry: ModelEntry, *, offline: str | None) -> Path:
    source = entry.tokenizer
    folders = {_hub_download(source.repo, f, source.revision, offline=offline, model=entry.name).parent
               for f in source.files}
    for optional in source.optional_files:
        try:
            _hub_download(source.repo, optional, source.revision, offline=offline, model=entry.name)
        except WeightsError as exc:
            logger.debug("optional tokenizer file %s skipped: %s", optional, exc)
    if len(folders) != 1:
        raise WeightsError(f"{entry.name}: tokenizer files of {source.repo} come from different revisions "
                           f"({', '.join(map(str, folders))}); pin the tokenizer revision in the manifest")
    return folders.pop()


def _local_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; register the files again with `satseg weights import`")
    return path


# --------------------------------------------------------------------------------------------------------
# Resolution and verification


def resolve_model(name: str, *, download: bool = True) -> ModelFiles:
    """Local, verified paths of model ``name``; downloads missing hub files unless ``download`` is False.

    Raises :class:`WeightsError` when a file cannot be found or fetched, or does not match its recorded
    size/sha256 (a mismatching hub file is deleted from the HF cache first).
    """
    entry = get_model(name)
    commit = None
    if entry.repo is None:
        paths = {role: _local_file(Path(f.path), f"{name}: {role.replace('_', ' ')}")
                 for role, f in entry.files.items()}
        tokenizer = entry.tokenizer.path
        if tokenizer is None or not tokenizer.is_dir():
            raise WeightsError(f"{name}: tokenizer folder {tokenizer} does not exist; register the model again")
    else:
        offline = "offline mode: HF_HUB_OFFLINE is set" if hf_offline() else (
            None if download else "not downloaded")
        paths = {role: _hub_download(entry.repo, f.path, entry.revision, offline=offline, model=name)
                 for role, f in entry.files.items()}
        commit = _commit_of(paths["checkpoint"])
        tokenizer = entry.tokenizer.path or _hub_tokenizer(entry, offline=offline)
    results = [_check_before_use(entry, role, paths[role]) for role in FILE_ROLES]
    verified = None if None in results else True
    return ModelFiles(name=name, variant=entry.variant, format=entry.format, checkpoint=paths["checkpoint"],
                      text_checkpoint=paths["text_checkpoint"], tokenizer=Path(tokenizer), verified=verified,
                      commit=commit)


def _check_before_use(entry: ModelEntry, role: str, path: Path) -> bool | None:
    """True if ``path`` matches the recorded size and sha256, None if no hash is recorded; else fail closed."""
    expected = entry.files[role]
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        _refuse(entry, role, path, f"size {size} bytes, expected {expected.size}")
    if expected.sha256 is None:
        logger.warning("%s %s unverified: no recorded hash (%s)", entry.name, role.replace("_", " "), path)
        return None
    actual = file_sha256(path)
    if actual != expected.sha256:
        _refuse(entry, role, path, f"sha256 {actual}, expected {expected.sha256}")
    return True


def _refuse(entry: ModelEntry, role: str, path: Path, why: str) -> None:
    what = f"{entry.name} {role.replace('_', ' ')} {entry.files[role].path}"
    if entry.repo is None:
        raise WeightsError(f"{what} does not match what was imported ({why}); refusing to use it - import it "
                           "again if the change is intended")
    blob = path.resolve()
    _forget_hash(blob)
    for doomed in (path, blob):  # the snapshot link, then the blob it points to
        try:
            doomed.unlink()
        except FileNotFoundError:
            pass
    raise WeightsError(f"{what} does not match the manifest ({why}); refusing to use it and deleted it from "
                       f"the Hugging Face cache ({blob})")


def verify(name: str | None = None, *, rehash: bool = True) -> list[FileCheck]:
    """Check the local files of one model (or all) against their recorded hashes, without downloading.

    ``rehash`` hashes every present file again; otherwise only remembered hashes are used and files not
    hashed yet report ``unchecked``. Nothing is deleted here: :func:`resolve_model` is what fails closed.
    """
    entries = [get_model(name)] if name is not None else list_models()
    checks = []
    for entry in entries:
        for role, wf in entry.files.items():
            path = Path(wf.path) if entry.repo is None else _hub_cached(entry.repo, wf.path, entry.revision)
            if path is None or not path.is_file():
                checks.append(FileCheck(entry.name, role, path, "missing", wf.sha256))
                continue
            size = path.stat().st_size
            digest = file_sha256(path, rehash=True) if rehash else cached_sha256(path)
            if wf.size is not None and size != wf.size:
                status = "mismatch"
            elif digest is None:
                status = "unchecked"
            elif wf.sha256 is None:
                status = "unverified"
            else:
                status = "ok" if digest == wf.sha256 else "mismatch"
            checks.append(FileCheck(entry.name, role, path, status, wf.sha256, digest, size))
    return checks


# --------------------------------------------------------------------------------------------------------
# Import of local files (official format, or satseg's safetensors)


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
    """The architecture (:class:`~satseg.model.config.SATConfig`) recorded in a satseg file's metadata.

    Falls back to the preset of the recorded variant for files without a ``config`` entry. A trained model
    may differ from its variant's preset (e.g. a tiny U-Net with the 768-d MPNet text tower).
    """

    from satseg.errors import CheckpointError
    from satseg.model.config import SATConfig, get_config

    if "config" not in metadata:
        return get_config(metadata.get("variant", ""))
    try:
        return SATConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"the architecture recorded in the file's metadata is unreadable: {exc}") from None


def validate_satseg_file(path: Path) -> str:
    """The variant of a satseg safetensors file whose tensor names and shapes fit its recorded architecture
    exactly (:func:`satseg_file_config`); else raise."""
    from safetensors import safe_open

    from satseg.errors import CheckpointError
    from satseg.model.build import build_sat, build_text_encoder

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
    parts = (("sat.", build_sat(config, device="meta")), ("text.", build_text_encoder(config, device="meta")))
    for prefix, module in parts:
        expected.update({prefix + k: tuple(v.shape) for k, v in module.state_dict().items()})
    differences = sorted(set(expected) ^ set(shapes))
    differences += sorted(k for k in expected if k in shapes and shapes[k] != expected[k])
    if differences:
        raise CheckpointError(f"{path} does not fit SAT-{variant}: {len(differences)} missing, unexpected or "
                              f"mis-shaped tensors (first: {', '.join(differences[:3])})")
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
