"""Cohorts: which scans, which prompts, which shard, what is already done.

Inputs can be scan paths, folders (their scans, or one DICOM series per sub-folder), text files with one
path a line, ``-`` for standard input, or a ``jobs.jsonl`` whose lines give per-case prompts::

    {"image": "a.nii.gz", "prompts": ["liver"], "modality": "ct", "case": "patient_a"}

(upstream SAT's ``{"image", "label", "modality"}`` lines work too).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from satseg.errors import InputError

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


@dataclass
class Case:
    """One scan of a cohort: where it is, what to call it, and optional per-case settings."""

    path: Path
    name: str
    prompts: list[str] | None = None
    modality: str | None = None
    orientation: str | None = None
    extra: dict = field(default_factory=dict)


def is_scan_path(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_SUFFIXES)


def case_name(path: Path) -> str:
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _from_folder(folder: Path) -> list[Path]:
    scans = sorted(p for p in folder.iterdir() if p.is_file() and is_scan_path(p) and not p.name.startswith("."))
    if scans:
        return scans
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        return subfolders  # one DICOM series per sub-folder
    return [folder]  # the folder itself is a DICOM series


def _lines(text: str, origin: str) -> list[Path]:
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(Path(line.split(",")[0].strip()) if origin.endswith(".csv") else Path(line))
    return paths


def expand_inputs(inputs: list[str], stdin=None) -> list[Case]:
    """Scan paths, folders, list files and ``-`` → cases with unique names (in input order)."""
    if not inputs:
        raise InputError("no inputs: give scans, a folder, a list file, or - to read paths from standard input")
    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            paths += _lines((stdin or sys.stdin).read(), "stdin")
            continue
        path = Path(item)
        if path.is_dir():
            paths += _from_folder(path)
        elif path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
            base = path.parent
            paths += [p if p.is_absolute() else base / p for p in _lines(path.read_text(), path.name)]
        else:
            paths.append(path)  # a scan (missing files fail as that case, not the whole cohort)
    return _unique([Case(path=p, name=case_name(p)) for p in paths])


def read_jobs(path: Path) -> list[Case]:
    """Cases from a jobs.jsonl file (one JSON object a line)."""
    cases = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read jobs file {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
            image = Path(job["image"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{number}: expected a JSON object with an \"image\" path") from None
        if not image.is_absolute():
            image = Path(path).parent / image
        prompts = job.get("prompts", job.get("label"))
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is not None and not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise InputError(f"{path}:{number}: \"prompts\" must be a list of strings")
        cases.append(Case(path=image, name=str(job.get("case") or case_name(image)), prompts=prompts,
                          modality=job.get("modality"), orientation=job.get("orientation_code")))
    if not cases:
        raise InputError(f"jobs file {path} holds no jobs")
    return _unique(cases)


def _unique(cases: list[Case]) -> list[Case]:
    """Make case names unique by prefixing parent folder names where two scans share a name."""
    counts: dict[str, int] = {}
    for case in cases:
        counts[case.name] = counts.get(case.name, 0) + 1
    seen: set[str] = set()
    for case in cases:
        if counts[case.name] > 1:
            parent = case.path.parent.name or "case"
            case.name = f"{parent}_{case.name}"
        base, k = case.name, 2
        while case.name in seen:
            case.name = f"{base}_{k}"
            k += 1
        seen.add(case.name)
    return cases


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (K from 1 to N) → (K, N)."""
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like K/N (e.g. 2/4), got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise InputError(f"--shard {text}: K must be between 1 and N")
    return k, n


def select_shard(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """Cases of shard K of N: every N-th case by sorted name, so shards are disjoint and cover the cohort."""
    if shard is None:
        return cases
    k, n = shard
    ordered = sorted(cases, key=lambda c: c.name)
    chosen = {c.name for i, c in enumerate(ordered) if i % n == k - 1}
    return [c for c in cases if c.name in chosen]
