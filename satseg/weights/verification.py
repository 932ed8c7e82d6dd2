"""sha256 checks of weights files: hashing, the hash cache, the check before use (fail closed), ``verify``.

Before first use a file is checked against its recorded size and sha256; a mismatch deletes the file from the
HF cache and raises (fail closed). Computed hashes are remembered in ``$SATSEG_HOME/sha256-cache.json``, so a
6 GB file is hashed once, not on every run. A file without a recorded hash is used with the warning
"unverified: no recorded hash".

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
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import WeightsError
from satseg.io.atomic import write_text_atomic
from satseg.weights.hub import _hub_cached
from satseg.weights.manifest import _SHA256_RE, ModelEntry, get_model, list_models, satseg_home

logger = logging.getLogger(__name__)

_HASH_CHUNK = 8 * 1024 * 1024


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
