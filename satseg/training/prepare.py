"""``satseg train prepare``: standardise a dataset's scans as SAT-DS does and write them to the training cache.

Per scan (SAT-DS ``loader.py``, spec 7.2), with the inference code, not a copy of it:

1. read the image and its mask;
2. :func:`satseg.geometry.to_model_grid` with the dataset's orientation (RAS unless the manifest says ASR, IPL,
   LPS): reorient, resample to 1×1×3 mm (linear; ``--spacing`` picks another grid), crop to voxels > 0 — the
   :class:`~satseg.geometry.GridRecord` says what it did;
3. push the mask through the same record with nearest-neighbour sampling (SAT-DS: ``Spacingd(mode="nearest")``
   for labels, same crop box);
4. turn raw labels into the dataset's SAT terms (:func:`iter_term_masks`: label values / channels / binary,
   then the manifest's merges);
5. :func:`satseg.intensity.normalize` (CT clip + z-score, MR/PET percentile clip + z-score);
6. :func:`satseg.training.cache.write_sample` + :func:`~satseg.training.cache.append_index`.

The per-scan list is a SAT-DS jsonl (``image``, ``mask``, ``modality``, ``dataset``, ``patient_id``; paths
relative to ``--root``). Gzip copies of SAT-DS's 72 files ship in ``train/scans/<NAME>.jsonl.gz``. The patient-level
split comes from the manifest, never from the jsonl.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from satseg.errors import InputError, SatsegError
from satseg.geometry import MODEL_SPACING_MM
from satseg.training.manifest import DEFAULT_DIR, DatasetEntry, load_manifest

log = logging.getLogger(__name__)

BUNDLED_SCANS = DEFAULT_DIR.parent / "scans"
REPORT = "prepare_report.json"
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


@dataclass
class Failure:
    """A scan that could not be prepared. ``kind``: ``missing`` | ``unreadable`` | ``error``."""

    sample_id: str
    patient_id: str
    image: str
    mask: str
    kind: str
    reason: str


@dataclass
class PrepareReport:
    """What one ``prepare`` run did for one dataset."""

    dataset: str
    scans: int = 0
    prepared: int = 0
    already_done: int = 0
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["failed_count"] = len(self.failed)
        return data


class PrepareFailed(SatsegError):
    """Raised for one scan; ``kind`` goes into the report."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


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


# -- labels → terms --------------------------------------------------------------------------------------


def iter_term_masks(mask: np.ndarray, entry: DatasetEntry) -> Iterator[tuple[str, np.ndarray]]:
    """The dataset's term masks, one at a time, in ``entry.terms`` order, on whatever grid ``mask`` lives.

    Args:
        mask: ``label_values`` / ``binary``: (I, J, K) label map; ``channels``: (C, I, J, K).
        entry: the dataset's manifest entry (labels, merges).

    Yields:
        ``(term, bool (I, J, K))``; a merged term is the union of its raw labels' voxels.
    """
    raw = _raw_label_fn(mask, entry)
    for term, sources in entry.term_sources().items():
        union = None
        for name in sorted(sources):
            voxels = raw(name)
            union = voxels if union is None else (union | voxels)
        yield term, union


def term_masks(mask: np.ndarray, entry: DatasetEntry) -> np.ndarray:
    """:func:`iter_term_masks` stacked: (N, I, J, K) bool, N = len(entry.terms)."""
    return np.stack([m for _, m in iter_term_masks(mask, entry)])


def _raw_label_fn(mask: np.ndarray, entry: DatasetEntry) -> Callable[[str], np.ndarray]:
    labels = {lab.raw: lab for lab in entry.labels}
    if entry.mask_format == "label_values":
        return lambda name: mask == labels[name].value
    if entry.mask_format == "channels":
        if mask.ndim != 4:
            raise PrepareFailed("unreadable", f"expected a multi-channel (C, I, J, K) mask, got shape {mask.shape}")
        top = max(lab.channel for lab in entry.labels)
        if mask.shape[0] <= top:
            raise PrepareFailed("unreadable", f"mask has {mask.shape[0]} channels, the manifest needs {top + 1}")
        return lambda name: mask[labels[name].channel] > 0.5
    values = np.asarray(mask, dtype=np.float32)
    if entry.binarise == "minmax":  # rescale to 0..1 (on the grid given, as SAT-DS after its crop), keep > 0.5
        lo, hi = float(values.min()), float(values.max())
        binary = (values - lo) > 0.5 * (hi - lo) if hi > lo else np.zeros(values.shape, dtype=bool)
    else:
        binary = values > 0.5
    return lambda name: binary


# -- one scan --------------------------------------------------------------------------------------------


def read_mask(path: Path, image_shape: tuple[int, ...], mask_format: str) -> np.ndarray:
    """Read a mask as (I, J, K), or (C, I, J, K) for ``channels`` (SAT-DS stores channels first; channels last
    is accepted too). Its array must be on the image's voxel grid."""
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            array = np.asanyarray(nib.load(str(path)).dataobj)
        else:
            from satseg.io.readers import read_volume

            array = np.asarray(read_volume(path).array)
    except InputError as exc:
        raise PrepareFailed("unreadable", str(exc)) from None
    except Exception as exc:  # nibabel raises many types for damaged files
        raise PrepareFailed("unreadable", f"{path.name}: cannot read the mask ({_one_line(exc)})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    shape = tuple(image_shape)
    if mask_format == "channels" and array.ndim == 4:
        if array.shape[1:] == shape:
            return array
        if array.shape[:3] == shape:
            return np.moveaxis(array, -1, 0)
    elif array.shape == shape:
        return array
    raise PrepareFailed("error", f"{path.name}: mask shape {array.shape} does not match image shape {shape}")


def standardise(image_path: Path, mask_path: Path, entry: DatasetEntry, modality: str | None = None,
                spacing_mm=MODEL_SPACING_MM):
    """One scan → (image float32 (H, W, D), masks bool (N, H, W, D), GridRecord, modality), on a grid of
    ``spacing_mm`` voxels (SAT: 1×1×3 mm).

    Raises:
        PrepareFailed: missing or unreadable files, or a mask that does not fit the image.
    """
    from satseg.geometry import to_model_grid
    from satseg.intensity import normalize
    from satseg.io.readers import read_volume
    from satseg.vocabulary import normalize_modality

    for path in (image_path, mask_path):
        if not path.exists():
            raise PrepareFailed("missing", f"{path}: no such file")
    try:
        volume = read_volume(image_path)
    except InputError as exc:
        raise PrepareFailed("unreadable", str(exc)) from None
    modality = normalize_modality(modality) if modality else entry.modality
    mask = read_mask(mask_path, volume.shape, entry.mask_format)
    raw, record = to_model_grid(volume, orientation=entry.orientation, spacing_mm=spacing_mm)
    del volume
    on_grid = record.from_input_grid(mask, order="nearest")
    del mask
    masks = term_masks(on_grid, entry)
    image = normalize(raw, modality)
    return image, masks, record, modality


def prepare_one(item: ScanItem, entry: DatasetEntry, root: Path, out: Path, manifest_path: Path,
                spacing_mm=MODEL_SPACING_MM):
    """Standardise one scan and write it to the cache (not yet to the index); returns its CachedSample."""
    from satseg.training.cache import CachedSample, write_sample

    image_path = resolve_path(root, item.image).resolve()
    mask_path = resolve_path(root, item.mask).resolve()
    image, masks, record, modality = standardise(image_path, mask_path, entry, item.modality, spacing_mm)
    sample = CachedSample(dataset=entry.name, sample_id=item.sample_id, patient_id=item.patient_id,
                          split="test" if entry.split.is_test(item.patient_id) else "train", modality=modality,
                          terms=list(entry.terms), shape=list(image.shape), source=str(image_path))
    grid = record.to_dict()
    # enough to find the native-grid ground truth again (``satseg train evaluate``)
    grid.update({"image": str(image_path), "mask": str(mask_path), "manifest": str(manifest_path)})
    return write_sample(out, sample, image, masks, grid=grid)


# -- a whole dataset ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _entry_in_worker(manifest_path: str, name: str) -> DatasetEntry:
    return load_manifest(manifest_path)[name]


def _work(item: ScanItem, manifest_path: str, name: str, root: str, out: str,
          spacing_mm: tuple[float, float, float]) -> tuple[str, str]:
    """Runs in a worker process: ("ok", sample json) or (kind, reason)."""
    try:
        entry = _entry_in_worker(manifest_path, name)
        sample = prepare_one(item, entry, Path(root), Path(out), Path(manifest_path), spacing_mm)
        return "ok", sample.to_json()
    except PrepareFailed as exc:
        return exc.kind, str(exc)
    except SatsegError as exc:
        return "unreadable", str(exc)
    except MemoryError:
        return "error", "out of memory (use fewer --workers)"
    except Exception as exc:  # one bad scan must not stop the dataset; the report says what happened
        log.debug("scan %s failed", item.image, exc_info=True)
        return "error", f"{type(exc).__name__}: {_one_line(exc)}"


def prepare_dataset(entry: DatasetEntry, scans: list[ScanItem], root: str | Path, out: str | Path, *,
                    manifest_path: str | Path | None = None, workers: int = 1, limit: int | None = None,
                    spacing_mm=MODEL_SPACING_MM,
                    progress: Callable[[int, int, str, str], None] | None = None) -> PrepareReport:
    """Prepare every scan of one dataset not yet in the cache ``out``.

    Args:
        entry: the dataset's manifest entry.
        scans: its scan list (see :func:`read_scans`).
        root: folder the scan paths are relative to.
        out: cache folder (created).
        manifest_path: the manifest file/folder ``entry`` came from (workers reload it; stored for evaluate).
        workers: processes; 1 runs in this process.
        limit: prepare at most this many new scans (smoke runs).
        spacing_mm: voxel size of the model grid (SAT: 1×1×3 mm); a cache holds one grid only.
        progress: called as ``progress(done, total, sample_id, status)`` after each scan.

    Returns:
        The report; failures are listed, never raised.
    """
    from satseg.training.cache import CachedSample, append_index, claim_spacing, open_cache

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spacing_mm = claim_spacing(out, spacing_mm)
    manifest_path = Path(manifest_path or DEFAULT_DIR / f"{entry.name}.json").resolve()
    report = PrepareReport(dataset=entry.name, scans=len(scans))
    indexed = open_cache(out, datasets=[entry.name]) if (out / "index.jsonl").exists() else []
    done = {s.sample_id for s in indexed if s.path.is_file()}  # a deleted .npz is prepared again
    unique = list({item.sample_id: item for item in scans}.values())
    todo = [item for item in unique if item.sample_id not in done]
    report.already_done = len(unique) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    args = (str(manifest_path), entry.name, str(Path(root).resolve()), str(out), spacing_mm)

    def finish(item: ScanItem, status: str, detail: str, count: int) -> None:
        if status == "ok":
            append_index(out, CachedSample(**json.loads(detail), root=out))
            report.prepared += 1
        else:
            report.failed.append(Failure(item.sample_id, item.patient_id, item.image, item.mask, status, detail))
            log.warning("%s %s: %s", entry.name, item.sample_id, detail)
        if progress is not None:
            progress(count, len(todo), item.sample_id, status)

    if workers <= 1:
        for count, item in enumerate(todo, start=1):
            finish(item, *_work(item, *args), count)
    else:
        _run_pool(todo, args, workers, finish)
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def _run_pool(todo: list[ScanItem], args: tuple, workers: int, finish) -> None:
    """At most ``2 × workers`` scans in flight (bounded memory); each worker process is recycled after a few
    scans so that memory fragmentation from large volumes does not pile up."""
    pending: dict = {}
    items = iter(todo)
    count = 0
    with ProcessPoolExecutor(max_workers=workers, max_tasks_per_child=8) as pool:
        while True:
            while len(pending) < 2 * workers:
                item = next(items, None)
                if item is None:
                    break
                pending[pool.submit(_work, item, *args)] = item
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                item = pending.pop(future)
                count += 1
                try:
                    status, detail = future.result()
                except Exception as exc:  # the worker died (killed for memory, ...)
                    status, detail = "error", f"worker failed: {type(exc).__name__}: {_one_line(exc)}"
                finish(item, status, detail, count)


def write_report(out: str | Path, reports: list[PrepareReport]) -> Path:
    """Write ``prepare_report.json`` in the cache folder (this run's datasets) and return its path."""
    from satseg.io.atomic import write_text_atomic

    path = Path(out) / REPORT
    document = {
        "datasets": [r.to_dict() for r in reports],
        "prepared": sum(r.prepared for r in reports),
        "already_done": sum(r.already_done for r in reports),
        "failed": sum(len(r.failed) for r in reports),
    }
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")
    return path


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
