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

    Once the server has taken them, the case folder holding them records it (:data:`STORED_RECORD`: per store URL,
    the SOP Instance UIDs sent there), so that a later run of the same cohort knows what is on the server already
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


# Beside the DICOM objects of a case, after a store the server took: {"stored": {store URL: [SOP Instance UIDs]}}.
STORED_RECORD = ".satseg-stored.json"


def unstored(store_to: str, case_dir: Path, outputs) -> list[Path]:
    """The DICOM objects among a finished case's ``outputs`` (its completion record's files, relative to
    ``case_dir``: this request's own results, not older ones kept beside them) that were never stored to
    ``store_to``: what a rerun must still send. A store that failed (server down, credentials refused) fails its
    case, but the case's files are written and a rerun skips it: without this the rerun would end without storing
    anything, and without a word."""
    objects = _dicom_objects(Path(case_dir) / rel for rel in outputs)
    if not objects:
        return []
    sent = set(_stored(case_dir).get(_url_key(store_to), []))
    return [p for p, uid in zip(objects, _instance_uids(objects)) if uid not in sent]


def _url_key(store_to: str) -> str:
    """One spelling per store destination (``…/dicom-web/`` and ``…/dicom-web`` are the same)."""
    from satseg.io.dicomweb import parse_store_url

    base, study = parse_store_url(store_to)
    return base if study is None else f"{base}/studies/{study}"


def _dicom_objects(paths) -> list[Path]:
    return [Path(p) for p in paths if Path(p).name.endswith(".dcm") and Path(p).is_file()]


def _instance_uids(objects: list[Path]) -> list[str]:
    import pydicom

    return [str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for p in objects]


def _stored(case_dir: Path) -> dict:
    import json

    try:
        record = json.loads((Path(case_dir) / STORED_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    stored = record.get("stored") if isinstance(record, dict) else None
    return stored if isinstance(stored, dict) else {}


def _record_stored(store_to: str, objects: list[Path]) -> None:
    """Add the objects' UIDs to what the record in their folder says was stored to ``store_to`` (written
    atomically). A record that cannot be written only costs a second store on a rerun: warned about, not raised."""
    import json

    from satseg.io.atomic import atomic_path

    folder = objects[0].parent
    stored = _stored(folder)
    key = _url_key(store_to)
    sent = stored.get(key) if isinstance(stored.get(key), list) else []
    stored[key] = sorted(set(sent) | set(_instance_uids(objects)))
    try:
        with atomic_path(folder / STORED_RECORD) as tmp:
            tmp.write_text(json.dumps({"stored": stored}, indent=1), encoding="utf-8")
    except OSError as exc:
        log.warning("%s: stored, but the record of it could not be written (%s); a rerun will store again", folder,
                    exc)
