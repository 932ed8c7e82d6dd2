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
    none. A refusal raises :class:`~satseg.errors.SatsegError` with the server's answer; the local files stay.

    Once the server has taken them, the case folder holding them records it (:data:`STORED_RECORD`: the URL and the
    SOP Instance UIDs sent), so that a later run of the same cohort knows what is on the server already
    (:func:`unstored`)."""
    from satseg.io.dicomweb import store_instances

    objects = _dicom_objects(paths)
    if not objects:
        log.warning("--store-to: no DICOM object was written (every mask empty, or no DICOM --output-type)")
        return None
    if stage is not None:
        stage(f"storing {len(objects)} object(s) to {store_to}")
    answer = store_instances(store_to, objects)
    _record_stored(store_to, objects)
    return answer


# Beside the DICOM objects of a case, after a store the server took: {"stored": {url: [SOP Instance UIDs]}}.
STORED_RECORD = ".satseg-stored.json"


def unstored(store_to: str, case_dir: Path) -> list[Path]:
    """The DICOM objects of a finished case folder that were never stored to ``store_to`` as they are now (no record
    of a store there, or a record of other instances): what a rerun must still send. A store that failed (server
    down, credentials refused) fails its case, but the case's files are written and a rerun skips it: without this
    the rerun would end without storing anything, and without a word."""
    objects = _dicom_objects(sorted(Path(case_dir).glob("*.dcm")))
    if not objects:
        return []
    return [] if _stored(case_dir).get(store_to) == _instance_uids(objects) else objects


def _dicom_objects(paths) -> list[Path]:
    return [Path(p) for p in paths if Path(p).name.endswith(".dcm")]


def _instance_uids(objects: list[Path]) -> list[str]:
    import pydicom

    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                  for p in objects)


def _stored(case_dir: Path) -> dict:
    import json

    try:
        record = json.loads((Path(case_dir) / STORED_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    stored = record.get("stored") if isinstance(record, dict) else None
    return stored if isinstance(stored, dict) else {}


def _record_stored(store_to: str, objects: list[Path]) -> None:
    """Add ``store_to`` → the objects' UIDs to the record in their folder (written atomically). A record that cannot
    be written only costs a second store on a rerun: it is warned about, not raised."""
    import json

    from satseg.io.atomic import atomic_path

    folder = objects[0].parent
    stored = dict(_stored(folder), **{store_to: _instance_uids(objects)})
    try:
        with atomic_path(folder / STORED_RECORD) as tmp:
            tmp.write_text(json.dumps({"stored": stored}, indent=1), encoding="utf-8")
    except OSError as exc:
        log.warning("%s: stored, but the record of it could not be written (%s); a rerun will store again", folder,
                    exc)
