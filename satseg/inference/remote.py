"""Scans that live on a PACS: a DICOMweb series URL read through a temporary folder, results stored back.

The DICOMweb traffic itself is :mod:`satseg.io.dicomweb`'s (credentials from the environment only, never shown).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def is_remote(scan) -> bool:
    """Whether ``scan`` names a DICOMweb series (an http(s) URL) rather than a local path."""
    from satseg.io.dicomweb import is_dicomweb_url

    return isinstance(scan, str) and is_dicomweb_url(scan)


def check_remote(scan, store_to: str | None) -> None:
    """Refuse a malformed series URL, ``--store-to`` URL or credential set-up before anything is fetched or run."""
    from satseg.io.dicomweb import credentials_source, parse_series_url, parse_store_url

    if is_remote(scan) or store_to:
        credentials_source()
    if is_remote(scan):
        parse_series_url(scan)
    if store_to:
        parse_store_url(store_to)


@contextlib.contextmanager
def local_scan(scan, stage=None) -> Iterator:
    """``scan`` as something the readers open: a local path unchanged, or a DICOMweb series fetched (WADO-RS) into a
    temporary folder that is removed when the block ends."""
    if not is_remote(scan):
        yield scan
        return
    from satseg.io.dicomweb import fetch_series, parse_series_url

    base, _study, series = parse_series_url(scan)
    folder = Path(tempfile.mkdtemp(prefix="satseg-dicomweb-"))
    try:
        if stage is not None:
            stage(f"fetching series {series} from {base}")
        yield fetch_series(scan, folder / "series")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def store_results(store_to: str, paths: list[Path], stage=None) -> dict | None:
    """Send the DICOM objects among ``paths`` (SEG, RTSTRUCT) to ``store_to`` with STOW-RS; ``None`` when there is
    none. A refusal raises :class:`~satseg.errors.SatsegError` with the server's answer; the local files stay."""
    from satseg.io.dicomweb import store_instances

    objects = [p for p in paths if p.name.endswith(".dcm")]
    if not objects:
        log.warning("--store-to: no DICOM object was written (every mask empty, or no DICOM --output-type)")
        return None
    if stage is not None:
        stage(f"storing {len(objects)} object(s) to {store_to}")
    return store_instances(store_to, objects)
