"""The per-scan lists of ``satseg train prepare``: SAT-DS jsonl files (``image``, ``mask``, ``modality``, ``dataset``,
``patient_id``; paths relative to ``--root``). Gzip copies of SAT-DS's 72 files ship in
``train/scans/<NAME>.jsonl.gz``."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import InputError
from satseg.training.manifest import DEFAULT_DIR

BUNDLED_SCANS = DEFAULT_DIR.parent / "scans"
# SAT-DS jsonl paths start with this prefix (their data root); --root may point at SAT-DS's root or at data/nii.
SAT_DS_PREFIX = "data/nii/"
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ScanItem:
    """One line of a scans jsonl: a scan and its mask."""

    image: str
    mask: str
    patient_id: str
    modality: str = ""
    dataset: str = ""

    @property
    def sample_id(self) -> str:
        """Stable id within the dataset: the patient id plus a short hash of the (image, mask) paths."""
        digest = hashlib.sha1(f"{self.image}\0{self.mask}".encode()).hexdigest()[:8]
        return f"{_ID_CHARS.sub('-', self.patient_id).strip('-') or 'scan'}_{digest}"



# -- the scan list ---------------------------------------------------------------------------------------


def bundled_scans(name: str) -> Path:
    """``train/scans/<name>.jsonl.gz``: SAT-DS's per-scan list for one of the 72 datasets."""
    path = BUNDLED_SCANS / f"{name}.jsonl.gz"
    if not path.is_file():
        raise InputError(f"no bundled scan list for {name!r} ({path}); pass --scans FILE.jsonl")
    return path


def find_scans(name: str, scans: str | Path | None) -> Path:
    """The scans file of dataset ``name``: ``scans`` itself, ``scans/<name>.jsonl[.gz]`` when it is a folder
    (e.g. SAT-DS's ``data/jsonl``), or the bundled copy when ``scans`` is None."""
    if scans is None:
        return bundled_scans(name)
    path = Path(scans).expanduser()
    if path.is_dir():
        for candidate in (path / f"{name}.jsonl", path / f"{name}.jsonl.gz"):
            if candidate.is_file():
                return candidate
        raise InputError(f"no {name}.jsonl in {path}")
    if not path.is_file():
        raise InputError(f"scans file not found: {path}")
    return path


def read_scans(path: str | Path, dataset: str | None = None) -> list[ScanItem]:
    """Read a SAT-DS-style jsonl (plain or ``.gz``); keep lines of ``dataset`` when a line names its dataset.

    Raises:
        InputError: unreadable file, a line that is not JSON, or a line without ``image``/``mask``/``patient_id``.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read scans file {path}: {exc}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise InputError(f"{path.name} line {number} is not JSON") from None
        missing = [k for k in ("image", "mask", "patient_id") if not isinstance(data.get(k), (str, int))]
        if missing:
            raise InputError(f"{path.name} line {number} lacks {', '.join(missing)}")
        if dataset and data.get("dataset") not in (None, "", dataset):
            continue
        items.append(ScanItem(image=str(data["image"]), mask=str(data["mask"]), patient_id=str(data["patient_id"]),
                              modality=str(data.get("modality") or ""), dataset=str(data.get("dataset") or "")))
    return items


def resolve_path(root: str | Path, relative: str) -> Path:
    """``root / relative``; for SAT-DS paths (``data/nii/...``) also ``root / <rest>`` so that ``--root`` may be
    SAT-DS's root or its ``data/nii`` folder. Absolute paths are kept."""
    path = Path(relative).expanduser()
    if path.is_absolute():
        return path
    direct = Path(root) / path
    if not direct.exists() and relative.startswith(SAT_DS_PREFIX):
        stripped = Path(root) / relative[len(SAT_DS_PREFIX):]
        if stripped.exists():
            return stripped
    return direct


