"""Per-structure measurements on the input grid, with ``null`` and a reason where a number would lie.

Conventions (also written into ``statistics.json``):

* World coordinates are millimetres in the NIfTI/nibabel RAS+ frame: +x points to the patient's Right,
  +y to Anterior, +z to Superior (DICOM/ITK's LPS frame has x and y negated).
* A voxel's coordinate is its centre: index (i, j, k) maps to ``affine @ (i, j, k, 1)``. Bounding
  boxes span voxel centres, so a single voxel has min == max; add half a voxel for the physical extent.
* ``volume_mm3`` = voxels × |det(affine[:3, :3])|.

Nulls carry a ``reason``:

* ``"absent"``: the mask is empty; every measurement is ``null``, ``voxels`` is 0.
* ``"touches the scan border"``: the structure reaches the outermost slice of some axis, so part of it
  may lie outside the scan. ``volume_mm3`` is ``null``; ``volume_mm3_in_scan`` keeps the visible part
  (a lower bound), and bbox, centroid and intensities describe the visible part. ``border`` lists the
  faces touched (``"i-"`` is index 0 of the first axis, ``"k+"`` the last index of the third).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np

from satseg.io.volume import Volume
from satseg.outputs.report import write_json

ABSENT = "absent"
TOUCHES_BORDER = "touches the scan border"
NO_FINITE_INTENSITY = "no finite intensity inside the mask"
STATISTICS_FORMAT = "satseg-statistics/1"

CONVENTIONS = {
    "world_frame": "RAS+ millimetres (NIfTI/nibabel): +x patient right, +y anterior, +z superior",
    "voxel_coordinates": "voxel centres; index (i, j, k) -> affine @ (i, j, k, 1)",
    "bbox": "inclusive, between voxel centres",
    "volume_mm3": "voxels x |det(affine[:3, :3])|; null when absent or touching the scan border",
    "intensity": "values of the input image as read (e.g. HU for CT)",
}


def _border_faces(mask: np.ndarray) -> list[str]:
    """Faces of the array that ``mask`` (bool, (I, J, K)) touches: ``"i-"``, ``"i+"``, ``"j-"``, ..."""
    faces = []
    for axis, letter in enumerate("ijk"):
        lo = np.take(mask, 0, axis=axis)
        hi = np.take(mask, mask.shape[axis] - 1, axis=axis)
        if lo.any():
            faces.append(f"{letter}-")
        if hi.any():
            faces.append(f"{letter}+")
    return faces


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel coordinates (..., 3) → world mm (..., 3)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def structure_statistics(mask: np.ndarray, volume: Volume) -> dict:
    """Measurements of one structure; see the module docstring for units, frames and nulls.

    Args:
        mask: shape ``volume.shape``, nonzero inside the structure.
        volume: the input scan (its array gives the intensities, its affine the geometry).
    """
    mask = np.asarray(mask) != 0
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the scan {volume.shape}")
    affine = np.asarray(volume.affine, dtype=np.float64)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    stats: dict = {
        "reason": None,
        "voxels": 0,
        "volume_mm3": None,
        "volume_mm3_in_scan": None,
        "border": [],
        "intensity": None,
        "bbox_voxel": None,
        "bbox_mm": None,
        "centroid_voxel": None,
        "centroid_mm": None,
    }
    ijk = np.argwhere(mask)  # (n, 3)
    if len(ijk) == 0:
        stats["reason"] = ABSENT
        return stats

    stats["voxels"] = int(len(ijk))
    stats["volume_mm3_in_scan"] = len(ijk) * voxel_mm3
    stats["border"] = _border_faces(mask)
    if stats["border"]:
        stats["reason"] = TOUCHES_BORDER
    else:
        stats["volume_mm3"] = stats["volume_mm3_in_scan"]

    lo, hi = ijk.min(axis=0), ijk.max(axis=0)
    corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)  # (8, 3)
    corners_mm = _world(affine, corners)
    stats["bbox_voxel"] = {"min": lo.tolist(), "max": hi.tolist()}
    stats["bbox_mm"] = {"min": corners_mm.min(axis=0).tolist(), "max": corners_mm.max(axis=0).tolist()}
    centroid = ijk.mean(axis=0)
    stats["centroid_voxel"] = centroid.tolist()
    stats["centroid_mm"] = _world(affine, centroid).tolist()

    values = np.asarray(volume.array)[mask].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size:
        stats["intensity"] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    else:
        reason = stats["reason"]
        stats["reason"] = NO_FINITE_INTENSITY if reason is None else f"{reason}; {NO_FINITE_INTENSITY}"
    return stats


def compute_statistics(masks: dict[str, np.ndarray], volume: Volume) -> dict:
    """Statistics per structure, in the order of ``masks``.

    Args:
        masks: output name → mask of shape ``volume.shape``.
        volume: the input scan.

    Returns:
        name → ``{"reason", "voxels", "volume_mm3", "volume_mm3_in_scan", "border", "intensity":
        {"mean", "std", "min", "max"}, "bbox_voxel": {"min", "max"}, "bbox_mm": {"min", "max"},
        "centroid_voxel", "centroid_mm"}``; ``None`` where a value does not exist, ``reason`` says why.
    """
    return {name: structure_statistics(mask, volume) for name, mask in masks.items()}


def write_statistics(stats: dict, path: str | os.PathLike, volume: Volume | None = None) -> Path:
    """Write ``statistics.json`` atomically: ``{"format", "conventions", "structures": stats}``.

    Args:
        stats: the result of :func:`compute_statistics`.
        path: target file.
        volume: the scan, to record its shape, spacing and voxel volume alongside (optional).
    """
    document: dict = {"format": STATISTICS_FORMAT, "conventions": CONVENTIONS}
    if volume is not None:
        affine = np.asarray(volume.affine, dtype=np.float64)
        document["scan"] = {
            "shape": list(volume.shape),
            "spacing_mm": list(volume.spacing_mm),
            "voxel_volume_mm3": float(abs(np.linalg.det(affine[:3, :3]))),
        }
    document["structures"] = stats
    return write_json(path, document)
