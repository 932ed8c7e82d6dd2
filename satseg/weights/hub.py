"""Hugging Face hub access: download into the HF cache, cache look-ups without network, the tokenizer files.

Hub files are fetched with ``huggingface_hub.hf_hub_download`` into the HF cache (``HF_HUB_CACHE`` /
``HF_HOME``), from ``HF_ENDPOINT`` when set, never when ``HF_HUB_OFFLINE`` is set. These variables are read
on each call (huggingface_hub reads them once at import).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from satseg.errors import WeightsError
from satseg.weights.manifest import ModelEntry

logger = logging.getLogger(__name__)


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
