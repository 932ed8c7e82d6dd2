"""``satseg train evaluate``: Dice and NSD per case, class, dataset and region on a prepared cache's test split.

Where the metric is computed (``grid``):

* ``native`` (default): on the scan's own voxel grid, where the clinician's data lives. The model runs on the
  cached model-grid image; its probabilities come back to the scan's grid with the scan's
  :class:`~satseg.geometry.GridRecord` (as ``satseg segment`` writes masks) and are thresholded at 0.5; the ground
  truth is the original mask file (recorded by ``prepare``) turned into terms with the same code
  (:func:`satseg.training.standardise.iter_term_masks`). NSD uses the scan's voxel spacing.
* ``model``: on the cached 1×1×3 mm grid against the cached masks, like SAT's own evaluator; needs no raw files.

Aggregation follows SAT's evaluator: class = mean over the cases of a dataset; dataset = mean over its classes;
a class (modality + term) across datasets = mean of its dataset means; region = mean over its classes, each class
counted in one region ("abnormal" for lesions, else the first of SAT's region order containing it).
Empty ground truth scores 1.0 when the prediction is empty too, else 0.0 (SAT's convention): the ``gt_voxels`` and
``pred_voxels`` columns tell these cases apart.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from satseg.errors import InputError, SatsegError
from satseg.geometry import GridRecord
from satseg.training.metrics import dice, surface_dice

log = logging.getLogger(__name__)

# SAT-DS terminology_list.json region_based order (a class counts in the first region that lists it)
REGION_ORDER = ("brain", "head and neck", "upper limb", "thorax", "spine", "abdomen", "lower limb", "pelvis",
                "whole body")
GRIDS = ("native", "model")
CASE_COLUMNS = ("dataset", "sample_id", "patient_id", "modality", "term", "region", "dice", "nsd", "gt_voxels",
                "pred_voxels", "grid")

# predict(sample, image (H, W, D) float32) → (N, H, W, D) float32 probabilities in sample.terms order
PredictFn = Callable[[object, np.ndarray], np.ndarray]


@dataclass
class CaseMetric:
    """One class in one case."""

    dataset: str
    sample_id: str
    patient_id: str
    modality: str
    term: str
    region: str
    dice: float
    nsd: float
    gt_voxels: int
    pred_voxels: int
    grid: str


@dataclass
class Evaluation:
    """Per-case rows plus the aggregates and how they were made."""

    cases: list[CaseMetric]
    settings: dict
    failed: list[dict] = field(default_factory=list)

    def classes(self) -> list[dict]:
        """(dataset, modality, term) → mean over cases."""
        groups: dict[tuple, list[CaseMetric]] = {}
        for row in self.cases:
            groups.setdefault((row.dataset, row.modality, row.term), []).append(row)
        return [{"dataset": d, "modality": m, "term": t, "region": rows[0].region, "cases": len(rows),
                 "dice": _mean(r.dice for r in rows), "nsd": _mean(r.nsd for r in rows)}
                for (d, m, t), rows in groups.items()]

    def datasets(self) -> list[dict]:
        """dataset → mean over its classes."""
        groups: dict[str, list[dict]] = {}
        for row in self.classes():
            groups.setdefault(row["dataset"], []).append(row)
        return [{"dataset": d, "classes": len(rows), "cases": len({c.sample_id for c in self.cases if c.dataset == d}),
                 "dice": _mean(r["dice"] for r in rows), "nsd": _mean(r["nsd"] for r in rows)}
                for d, rows in groups.items()]

    def terms(self) -> list[dict]:
        """(modality, term) over datasets → mean of the per-dataset class means."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.classes():
            groups.setdefault((row["modality"], row["term"]), []).append(row)
        return [{"modality": m, "term": t, "region": rows[0]["region"], "datasets": [r["dataset"] for r in rows],
                 "dice": _mean(r["dice"] for r in rows), "nsd": _mean(r["nsd"] for r in rows)}
                for (m, t), rows in groups.items()]

    def regions(self) -> list[dict]:
        """region → mean over its (modality, term) classes."""
        groups: dict[str, list[dict]] = {}
        for row in self.terms():
            groups.setdefault(row["region"], []).append(row)
        return [{"region": g, "classes": len(rows), "dice": _mean(r["dice"] for r in rows),
                 "nsd": _mean(r["nsd"] for r in rows)} for g, rows in groups.items()]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "datasets": self.datasets(), "regions": self.regions(),
                "terms": self.terms(), "classes": self.classes(),
                "cases": [dataclasses.asdict(c) for c in self.cases], "failed": self.failed}


def region_of(term: str, modality: str) -> str:
    """SAT's region for a class: ``abnormal`` for lesions, else the first region (SAT's order) listing it."""
    from satseg.vocabulary.catalog import load

    for entry in load().entries:
        if entry.name == term and entry.modality == modality:
            if entry.abnormal:
                return "abnormal"
            return next((r for r in REGION_ORDER if r in entry.regions), entry.regions[0] if entry.regions else
                        "unknown")
    return "unknown"


def predictor_fn(predictor) -> PredictFn:
    """Adapt a :class:`~satseg.inference.predictor.Predictor` to ``predict(sample, image)``."""

    def predict(sample, image: np.ndarray) -> np.ndarray:
        queries = predictor.embed(list(sample.terms), sample.modality)
        return predictor.probabilities(image, queries).numpy()

    return predict


def evaluate_cache(cache: str | Path, predict: PredictFn, *, split: str = "test", datasets: list[str] | None = None,
                   grid: str = "native", tolerance_mm: float = 1.0, threshold: float = 0.5,
                   manifest: str | Path | None = None, limit: int | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> Evaluation:
    """Run ``predict`` on every sample of ``split`` and score every class.

    Args:
        cache: a folder written by ``satseg train prepare``.
        predict: ``predict(sample, image)`` → (N, H, W, D) probabilities (see :func:`predictor_fn`).
        split: ``"test"``, ``"train"`` or ``"all"``.
        datasets: only these datasets.
        grid: ``"native"`` or ``"model"`` (see the module doc).
        tolerance_mm: NSD tolerance.
        threshold: probability threshold for the predicted masks.
        manifest: dataset entry file/folder overriding the one recorded at prepare time (native grid only).
        limit: at most this many samples (smoke runs).

    Raises:
        InputError: unknown grid/split, or no sample to evaluate.
    """
    from satseg.training.cache import open_cache

    if grid not in GRIDS:
        raise InputError(f"unknown grid {grid!r}; use one of {', '.join(GRIDS)}")
    if split not in ("test", "train", "all"):
        raise InputError(f"unknown split {split!r}; use test, train or all")
    samples = open_cache(cache, split=None if split == "all" else split, datasets=datasets)
    if not samples:
        raise InputError(f"no {split} samples in {cache}" + (f" for {', '.join(datasets)}" if datasets else ""))
    samples = samples[:limit] if limit else samples
    started = time.perf_counter()
    rows: list[CaseMetric] = []
    failed: list[dict] = []
    for number, sample in enumerate(samples, start=1):
        try:
            rows += _evaluate_sample(sample, predict, grid, tolerance_mm, threshold, manifest)
        except SatsegError as exc:
            failed.append({"dataset": sample.dataset, "sample_id": sample.sample_id, "reason": str(exc)})
            log.warning("%s %s: %s", sample.dataset, sample.sample_id, exc)
        if progress is not None:
            progress(number, len(samples), sample.sample_id)
    settings = {"cache": str(Path(cache).resolve()), "split": split, "grid": grid, "tolerance_mm": tolerance_mm,
                "threshold": threshold, "samples": len(samples), "seconds": round(time.perf_counter() - started, 3),
                "empty_gt_convention": "dice = nsd = 1 if the prediction is empty too, else 0 (SAT)"}
    return Evaluation(cases=rows, settings=settings, failed=failed)


def _evaluate_sample(sample, predict: PredictFn, grid: str, tolerance_mm: float, threshold: float,
                     manifest: str | Path | None) -> list[CaseMetric]:
    image, cached_masks = sample.load()
    record_file = sample.path.with_suffix(".json")
    info = json.loads(record_file.read_text()) if record_file.is_file() else None
    probs = np.asarray(predict(sample, image), dtype=np.float32)
    if probs.shape != (len(sample.terms), *image.shape):
        raise SatsegError(f"the model returned {probs.shape}, expected {(len(sample.terms), *image.shape)}")
    if grid == "model":
        spacing = tuple(info["spacing_mm"]) if info else (1.0, 1.0, 3.0)
        pairs = ((t, probs[i] > threshold, cached_masks[i]) for i, t in enumerate(sample.terms))
        return [_row(sample, term, pred, gt, spacing, tolerance_mm, grid) for term, pred, gt in pairs]
    if info is None or "mask" not in info:
        raise SatsegError(f"{record_file.name} does not record the scan's mask; evaluate with --grid model")
    del cached_masks
    record = GridRecord.from_dict(info)
    entry = _entry(sample.dataset, manifest or info.get("manifest"))
    gt_masks = _native_ground_truth(Path(info["mask"]), record, entry)
    spacing = tuple(float(s) for s in np.sqrt((record.input_affine[:3, :3] ** 2).sum(axis=0)))
    rows = []
    for index, term in enumerate(sample.terms):
        pred = record.to_input_grid(probs[index], order="linear") > threshold
        gt = gt_masks.get(term)
        if gt is None:
            raise SatsegError(f"term {term!r} of the cache is not in the dataset entry of {sample.dataset}")
        rows.append(_row(sample, term, pred, gt, spacing, tolerance_mm, grid))
    return rows


def _native_ground_truth(mask_path: Path, record, entry) -> dict[str, np.ndarray]:
    from satseg.training.standardise import PrepareFailed, iter_term_masks, read_mask

    if not mask_path.is_file():
        raise SatsegError(f"ground truth {mask_path} is gone; evaluate with --grid model")
    try:
        mask = read_mask(mask_path, record.input_shape, entry.mask_format)
        return dict(iter_term_masks(mask, entry))
    except PrepareFailed as exc:
        raise SatsegError(str(exc)) from None


def _entry(dataset: str, manifest: str | Path | None):
    from satseg.training.manifest import load_manifest

    return load_manifest(manifest)[dataset]


def _row(sample, term: str, pred: np.ndarray, gt: np.ndarray, spacing, tolerance_mm: float, grid: str) -> CaseMetric:
    return CaseMetric(dataset=sample.dataset, sample_id=sample.sample_id, patient_id=sample.patient_id,
                      modality=sample.modality, term=term, region=region_of(term, sample.modality),
                      dice=dice(pred, gt), nsd=surface_dice(pred, gt, spacing, tolerance_mm),
                      gt_voxels=int(np.count_nonzero(gt)), pred_voxels=int(np.count_nonzero(pred)), grid=grid)


def write_evaluation(result: Evaluation, out: str | Path) -> dict[str, Path]:
    """Write ``cases.csv``, ``classes.csv``, ``datasets.csv``, ``regions.csv`` and ``evaluation.json``."""
    from satseg.io.atomic import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "cases": ([dataclasses.asdict(c) for c in result.cases], CASE_COLUMNS),
        "classes": (result.classes(), ("dataset", "modality", "term", "region", "cases", "dice", "nsd")),
        "datasets": (result.datasets(), ("dataset", "classes", "cases", "dice", "nsd")),
        "regions": (result.regions(), ("region", "classes", "dice", "nsd")),
    }
    paths = {}
    for name, (rows, columns) in tables.items():
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        paths[name] = out / f"{name}.csv"
        write_text_atomic(paths[name], buffer.getvalue())
    paths["json"] = out / "evaluation.json"
    write_text_atomic(paths["json"], json.dumps(result.to_dict(), indent=2) + "\n")
    return paths


def load_training_checkpoint(path: str | Path, tokenizer_dir: str | Path | None = None, runtime=None):
    """A :class:`~satseg.inference.predictor.Predictor` from a ``satseg train fit`` checkpoint, loaded by
    :func:`satseg.load_model` (strict; the deep-supervision heads are dropped, inference needs none).

    ``tokenizer_dir``: the MPNet tokenizer folder; default: the one the run recorded, when it still exists.
    """
    from satseg.inference.predictor import Predictor
    from satseg.model.factory import load_model

    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise InputError(f"--tokenizer {tokenizer_dir} is not a folder")
    loaded = load_model(Path(path), tokenizer=tokenizer_dir)
    if loaded.tokenizer is None:
        raise InputError("--checkpoint needs --tokenizer DIR (the MPNet tokenizer folder, e.g. all-mpnet-base-v2): "
                         f"{path} records none that exists")
    name = f"{Path(path).stem} (SAT-{loaded.config.name})"
    return Predictor(loaded.model, loaded.text_encoder, loaded.tokenizer, name=name, runtime=runtime,
                     cache_key=loaded.cache_key)


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
