"""The prepared-data cache that ``satseg train prepare`` writes and ``fit`` / ``evaluate`` read.

Layout of a cache folder::

    index.jsonl                     one JSON object per prepared scan (see :class:`CachedSample`)
    grid.json                       the model grid every scan was resampled to: ``{"spacing_mm": [x, y, z]}``
                                    (absent in caches of satseg 0.1: SAT's 1×1×3 mm)
    <dataset>/<sample_id>.npz       compressed arrays: ``image`` float32 (H, W, D) normalised on the model
                                    grid; ``masks`` uint8 bit-packed (N, H, W, D) in ``terms`` order;
                                    ``shape`` int64 (3,)
    <dataset>/<sample_id>.json      the GridRecord of the scan (to bring predictions back to the native grid)
    prepare_report.json             what was prepared, skipped, missing or unreadable

Writes are atomic and the index is appended one line per finished scan, so an interrupted ``prepare``
resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.geometry import MODEL_SPACING_MM
from satseg.io.atomic import atomic_path

INDEX = "index.jsonl"
GRID = "grid.json"


def cache_spacing(root: str | Path) -> tuple[float, float, float]:
    """The voxel size (mm) the cache at ``root`` was prepared on (SAT's 1×1×3 mm when it does not say)."""
    path = Path(root) / GRID
    if not path.is_file():
        return MODEL_SPACING_MM
    try:
        values = json.loads(path.read_text())["spacing_mm"]
        spacing = tuple(float(v) for v in values)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); remove the cache and prepare it again") from None
    if len(spacing) != 3:
        raise InputError(f"{path}: spacing_mm must hold three numbers, got {values!r}")
    return spacing  # type: ignore[return-value]


def same_grid(a, b) -> bool:
    return bool(np.allclose(a, b, rtol=0, atol=1e-6))


def require_grid(root: str | Path, model_spacing) -> None:
    """A model sees scans only on the grid it works on: refuse a cache prepared on another one."""
    on_cache = cache_spacing(root)
    if not same_grid(on_cache, model_spacing):
        raise InputError(f"{root} was prepared on a {mm_text(on_cache)} grid but the model works on "
                         f"{mm_text(model_spacing)}: prepare the scans with `satseg train prepare --spacing "
                         f"{' '.join(f'{v:g}' for v in model_spacing)}` into another cache")


def claim_spacing(root: str | Path, spacing_mm) -> tuple[float, float, float]:
    """Record ``spacing_mm`` as the cache's grid, or refuse when the cache already holds scans on another grid."""
    root = Path(root)
    spacing = tuple(float(v) for v in spacing_mm)
    if len(spacing) != 3 or any(not v > 0 for v in spacing):
        raise InputError(f"--spacing {spacing_mm!r}: three positive voxel sizes in mm")
    has_scans = (root / INDEX).is_file() and (root / INDEX).stat().st_size > 0
    if (root / GRID).is_file() or has_scans:
        existing = cache_spacing(root)
        if not same_grid(existing, spacing):
            raise InputError(f"{root} holds scans on a {mm_text(existing)} grid; prepare {mm_text(spacing)} into "
                             "another --out folder")
        if (root / GRID).is_file():
            return existing
    with atomic_path(root / GRID) as tmp:
        Path(tmp).write_text(json.dumps({"spacing_mm": list(spacing)}) + "\n")
    return spacing  # type: ignore[return-value]


def mm_text(spacing) -> str:
    return "×".join(f"{v:g}" for v in spacing) + " mm"


@dataclass
class CachedSample:
    """One prepared scan.

    Attributes:
        dataset, sample_id, patient_id: identity (sample_id is unique within the dataset).
        split: ``"train"`` or ``"test"`` (the paper's patient-level split).
        modality: ``"ct"``, ``"mri"`` or ``"pet"``.
        terms: trained terms, one per mask channel (after the dataset's merges).
        shape: (H, W, D) of the model-grid arrays.
        boxes: term → [start(3), stop(3)] bounding box of the mask (absent when the mask is empty).
        file: path of the ``.npz``, relative to the cache root.
        source: the raw image path it came from.
    """

    dataset: str
    sample_id: str
    patient_id: str
    split: str
    modality: str
    terms: list[str]
    shape: list[int]
    boxes: dict[str, list[list[int]]] = field(default_factory=dict)
    file: str = ""
    source: str = ""
    root: Path | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("root")
        return json.dumps(data, separators=(",", ":"))

    @property
    def path(self) -> Path:
        return Path(self.root or ".") / self.file

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """→ (image float32 (H, W, D), masks bool (N, H, W, D))."""
        with np.load(self.path) as data:
            image = data["image"].astype(np.float32, copy=False)
            shape = tuple(int(s) for s in data["shape"])
            n = len(self.terms)
            bits = np.unpackbits(data["masks"], count=n * int(np.prod(shape)))
        return image, bits.reshape(n, *shape).astype(bool)


def write_sample(root: Path, sample: CachedSample, image: np.ndarray, masks: np.ndarray,
                 grid: dict | None = None) -> CachedSample:
    """Write one prepared scan (atomically) and return its record; the caller appends it to the index.

    Args:
        image: (H, W, D) float32 normalised image.
        masks: (N, H, W, D) bool masks, N = len(sample.terms).
    """
    root = Path(root)
    if masks.shape[0] != len(sample.terms) or masks.shape[1:] != image.shape:
        raise ValueError(f"masks {masks.shape} do not match image {image.shape} and {len(sample.terms)} terms")
    sample.shape = [int(s) for s in image.shape]
    sample.boxes = {}
    for term, mask in zip(sample.terms, masks):
        if mask.any():
            coords = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
            sample.boxes[term] = [[int(c[0]) for c in coords], [int(c[-1]) + 1 for c in coords]]
    sample.file = f"{sample.dataset}/{sample.sample_id}.npz"
    target = root / sample.file
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image=image.astype(np.float32), masks=np.packbits(masks.astype(bool).ravel()),
                        shape=np.asarray(image.shape, dtype=np.int64))
    with atomic_path(target, suffix=".npz") as tmp:
        tmp.write_bytes(buffer.getvalue())
    if grid is not None:
        with atomic_path(target.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(grid))
    sample.root = root
    return sample


def append_index(root: Path, sample: CachedSample) -> None:
    """Append one finished sample to ``index.jsonl`` (a single write of one line)."""
    line = (sample.to_json() + "\n").encode()
    fd = os.open(Path(root) / INDEX, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def open_cache(root: str | Path, *, split: str | None = None, datasets: list[str] | None = None) -> list[CachedSample]:
    """The samples of a cache (optionally one split / some datasets); later duplicates win."""
    root = Path(root)
    index = root / INDEX
    if not index.is_file():
        raise InputError(f"{root} is not a prepared cache (no {INDEX}); run `satseg train prepare` first")
    samples: dict[tuple[str, str], CachedSample] = {}
    for number, line in enumerate(index.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: that sample is simply redone
        sample = CachedSample(**data, root=root)
        samples[(sample.dataset, sample.sample_id)] = sample
    chosen = [s for s in samples.values() if (split is None or s.split == split)
              and (datasets is None or s.dataset in datasets)]
    return chosen
