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

import json
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from satseg.errors import SatsegError
from satseg.geometry import MODEL_SPACING_MM
from satseg.training.manifest import DEFAULT_DIR, DatasetEntry, load_manifest
from satseg.training.scan_list import ScanItem, bundled_scans, find_scans, read_scans, resolve_path
from satseg.training.standardise import PrepareFailed, _one_line, iter_term_masks, read_mask, standardise

log = logging.getLogger(__name__)

REPORT = "prepare_report.json"

# what callers import from here (the scan list and one scan's standardisation live in their own modules)
__all__ = ["REPORT", "Failure", "PrepareFailed", "PrepareReport", "ScanItem", "bundled_scans", "find_scans",
           "iter_term_masks", "prepare_dataset", "prepare_one", "read_mask", "read_scans", "resolve_path",
           "standardise", "write_report"]


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



# -- one scan ---------------------------------------------------------------------------------------------


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

