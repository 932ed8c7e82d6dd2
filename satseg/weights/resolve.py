"""Resolution of a model name to local, verified files ready to load (manifest → hub or local files → sha256)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import WeightsError
from satseg.weights.hub import _commit_of, _hub_download, _hub_tokenizer, hf_offline
from satseg.weights.manifest import FILE_ROLES, get_model
from satseg.weights.verification import _check_before_use

logger = logging.getLogger(__name__)


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


def _local_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist; register the files again with `satseg weights import`")
    return path


def resolve_model(name: str, *, download: bool = True, verify: bool = True) -> ModelFiles:
    """Local, verified paths of model ``name``; downloads missing hub files unless ``download`` is False.

    Raises :class:`WeightsError` when a file cannot be found or fetched, or does not match its recorded
    size/sha256 (a mismatching hub file is deleted from the HF cache first). ``verify=False`` skips the size and
    sha256 checks (``verified`` is then None): for files checked by other means, e.g. a read-only site mirror.
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
    if verify:
        results = [_check_before_use(entry, role, paths[role]) for role in FILE_ROLES]
    else:
        logger.warning("%s: used without checking its files against their recorded sha256 (verify=False)", name)
        results = [None]
    verified = None if None in results else True
    return ModelFiles(name=name, variant=entry.variant, format=entry.format, checkpoint=paths["checkpoint"],
                      text_checkpoint=paths["text_checkpoint"], tokenizer=Path(tokenizer), verified=verified,
                      commit=commit)
