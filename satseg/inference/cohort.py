"""Cohorts: which scans, which prompts, which shard, what is already done.

Inputs can be scan paths, folders (their scans, or one DICOM series per sub-folder), text files with one
path a line, ``-`` for standard input, or a ``jobs.jsonl`` whose lines give per-case prompts::

    {"image": "a.nii.gz", "prompts": ["liver"], "modality": "ct", "case": "patient_a"}

(upstream SAT's ``{"image", "label", "modality"}`` lines work too).
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from satseg.errors import InputError
from satseg.outputs.names import safe_folder_name

SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


@dataclass
class Case:
    """One scan of a cohort: where it is, what to call it, and optional per-case settings."""

    path: Path | str
    """The scan's path, or a DICOMweb series URL (a ``str``)."""
    name: str
    prompts: list[str] | None = None
    modality: str | None = None
    orientation: str | None = None
    extra: dict = field(default_factory=dict)
    origin: str | None = None
    """Where the case was named: ``jobs.jsonl:3`` (file and line), for messages."""
    prepared: object = None
    """The case already read and its prompts resolved (a :class:`~satseg.inference.prepare.PreparedCase`), e.g. by
    ``satseg SCAN`` to refuse bad input before anything else: the engine does not read it again."""


def is_scan_path(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_SUFFIXES)


def case_name(path: Path | str) -> str:
    """The case folder name for a scan: its file name without the scan suffix, made a safe folder name
    (a scan called ``...nii.gz`` gives ``__``, never ``..``); for a DICOMweb series URL, its series UID."""
    if isinstance(path, str):
        return safe_folder_name(path.rstrip("/").rsplit("/", 1)[-1])
    name = path.name
    for suffix in SCAN_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_folder_name(name)


def _from_folder(folder: Path) -> list[Path]:
    scans = sorted(p for p in folder.iterdir() if p.is_file() and is_scan_path(p) and not p.name.startswith("."))
    if scans:
        return scans
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subfolders:
        return subfolders  # one DICOM series per sub-folder
    return [folder]  # the folder itself is a DICOM series


def _decoded_lines(data: bytes | str, origin: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of a list or jobs file; a line that is not UTF-8 is refused with its number."""
    if isinstance(data, str):
        return list(enumerate(data.splitlines(), start=1))
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            lines.append((number, raw.decode("utf-8-sig" if number == 1 else "utf-8")))
        except UnicodeDecodeError as exc:
            raise InputError(f"{origin}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                             f"{exc.start + 1}); save the file as UTF-8") from None
    return lines


def _lines(data: bytes | str, origin: str) -> list[Path]:
    paths = []
    for _number, line in _decoded_lines(data, origin):
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(Path(line.split(",")[0].strip()) if origin.endswith(".csv") else Path(line))
    return paths


def _read_list_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read list file {path}: {exc.strerror or exc}") from None


def expand_inputs(inputs: list[str], stdin=None) -> list[Case]:
    """Scan paths, folders, list files and ``-`` → cases with unique names (in input order)."""
    if not inputs:
        raise InputError("no inputs: give scans, a folder, a list file, or - to read paths from standard input")
    paths: list[Path | str] = []
    for item in inputs:
        if _is_series_url(item):
            paths.append(item)  # a DICOMweb series, fetched when its case is read
            continue
        if item == "-":
            stream = stdin or sys.stdin
            paths += _lines(getattr(stream, "buffer", stream).read(), "standard input")
            continue
        path = Path(item)
        if path.is_dir():
            paths += _from_folder(path)
        elif path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
            base = path.parent
            paths += [p if p.is_absolute() else base / p for p in _lines(_read_list_file(path), str(path))]
        else:
            paths.append(path)  # a scan (missing files fail as that case, not the whole cohort)
    return _unique([Case(path=p, name=case_name(p)) for p in paths])


def _is_series_url(item) -> bool:
    from satseg.inference.remote import is_remote

    return is_remote(item)


def read_jobs(path: Path) -> list[Case]:
    """Cases from a jobs.jsonl file (one JSON object a line).

    A ``"case"`` name must be a plain folder name (no ``/``, no leading ``.``): it names a folder inside the
    output folder, and a name that would land elsewhere is refused with its line number.
    """
    cases = []
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read jobs file {path}: {exc.strerror or exc}") from None
    for number, line in _decoded_lines(data, str(path)):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            job = json.loads(line)
            image = Path(job["image"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{where}: expected a JSON object with an \"image\" path") from None
        if not image.is_absolute():
            image = Path(path).parent / image
        prompts = job.get("prompts", job.get("label"))
        if isinstance(prompts, str):
            prompts = [prompts]
        if prompts is not None and not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
            raise InputError(f"{where}: \"prompts\" must be a list of strings")
        name = job.get("case")
        if name is not None and name != "":
            name = unicodedata.normalize("NFC", str(name)) if isinstance(name, (str, int)) else None
            if name is None or safe_folder_name(name) != name:
                raise InputError(f"{where}: \"case\" must be a plain folder name (no '/', '\\', leading '.' or "
                                 f"control characters), got {job['case']!r}")
        cases.append(Case(path=image, name=name or case_name(image), prompts=prompts,
                          modality=job.get("modality"), orientation=job.get("orientation_code"), origin=where))
    if not cases:
        raise InputError(f"jobs file {path} holds no jobs")
    return _unique(cases)


def _unique(cases: list[Case]) -> list[Case]:
    """Make case names unique by prefixing parent folder names where two scans share a name.

    Names are compared case-insensitively (``Case`` and ``case`` are one folder on macOS, Windows and exFAT)."""
    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    counts: dict[str, int] = {}
    for case in cases:
        counts[key(case.name)] = counts.get(key(case.name), 0) + 1
    seen: set[str] = set()
    for case in cases:
        if counts[key(case.name)] > 1:
            parent = (case.path.parent.name if isinstance(case.path, Path) else "") or "case"
            case.name = safe_folder_name(f"{parent}_{case.name}")
        base, k = case.name, 2
        while key(case.name) in seen:
            case.name = f"{base}_{k}"
            k += 1
        seen.add(key(case.name))
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


def environment_shards(environ=None) -> list[tuple[int, int, str]]:
    """The shares of a cohort that the launcher gave this process, outermost first: a Slurm job array's task
    (``SLURM_ARRAY_TASK_ID`` of ``SLURM_ARRAY_TASK_COUNT``, with the array's MIN and STEP), then torchrun's rank
    (``RANK`` of ``WORLD_SIZE``). Each is ``(K, N, where)`` with K from 1; none when not launched so.

    Raises:
        InputError: the variables are set but make no sense (a rank outside the world, an id off the array).
    """
    env = os.environ if environ is None else environ
    shards = []
    if env.get("SLURM_ARRAY_TASK_COUNT") and env.get("SLURM_ARRAY_TASK_ID"):
        try:
            count, task = int(env["SLURM_ARRAY_TASK_COUNT"]), int(env["SLURM_ARRAY_TASK_ID"])
            first, step = int(env.get("SLURM_ARRAY_TASK_MIN", "0")), int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
        except ValueError:
            raise InputError("the SLURM_ARRAY_TASK_* variables are not numbers") from None
        index, off_step = divmod(task - first, step)
        if off_step or not 0 <= index < count:
            raise InputError(f"SLURM_ARRAY_TASK_ID {task} is not one of the array's {count} tasks "
                             f"(from {first}, step {step})")
        if count > 1:
            shards.append((index + 1, count, f"Slurm array task {task}"))
    if env.get("WORLD_SIZE") and env.get("RANK"):
        try:
            world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        except ValueError:
            raise InputError("RANK and WORLD_SIZE are not numbers") from None
        if not 0 <= rank < world:
            raise InputError(f"RANK {rank} is outside WORLD_SIZE {world}")
        if world > 1:
            shards.append((rank + 1, world, f"rank {rank} of {world}"))
    return shards


def select_shard(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """Cases of shard K of N: every N-th case by sorted name, so shards are disjoint and cover the cohort."""
    if shard is None:
        return cases
    k, n = shard
    ordered = sorted(cases, key=lambda c: c.name)
    chosen = {c.name for i, c in enumerate(ordered) if i % n == k - 1}
    return [c for c in cases if c.name in chosen]


def local_device(device: str, environ=None) -> str:
    """Under torchrun on a machine with GPUs, ``--device auto`` is this process's own GPU (``LOCAL_RANK``)."""
    env = os.environ if environ is None else environ
    local_rank = env.get("LOCAL_RANK")
    if (device or "auto").lower() != "auto" or local_rank is None or not local_rank.isdigit():
        return device
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > int(local_rank):
        return f"cuda:{local_rank}"
    return device
