"""Dice and normalised surface Dice (NSD) of binary 3D masks, with the voxel spacing in mm.

Conventions (SAT's ``evaluate/metric.py``): when the ground truth is empty, Dice and NSD are 1.0 if the
prediction is empty too and 0.0 otherwise. Callers keep the voxel counts next to the scores, so that
"absent and correctly left empty" can be told apart from a real overlap.

NSD at tolerance τ (Nikolov et al. 2021) is the fraction of both surfaces that lies within τ mm of the other
surface. Here a surface is the set of boundary voxels (a mask voxel with at least one of its 6 face neighbours
outside the mask or outside the array), each weighted by the area of its exposed faces in mm² (a face normal to
axis a has area ∏ spacing[b≠a]). The distance from a boundary voxel to the other surface is the Euclidean
distance, in mm, between voxel centres (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``).
This follows the surface-element definition of DeepMind's ``surface-distance`` package that SAT uses, with
surface elements at voxel centres rather than at voxel corners: distances can differ by up to half a voxel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2 |P ∩ G| / (|P| + |G|); 1.0 when both are empty.

    Args:
        pred, gt: (I, J, K) masks (anything > 0 or True counts), same shape.
    """
    pred, gt = _check(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing_mm, tolerance_mm: float = 1.0) -> float:
    """Normalised surface Dice at ``tolerance_mm``; 1.0 when both masks are empty, 0.0 when one is.

    Args:
        pred, gt: (I, J, K) masks, same shape.
        spacing_mm: voxel size along the three array axes.
        tolerance_mm: surface points closer than this (inclusive) count as agreeing.
    """
    pred, gt = _check(pred, gt)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be three positive numbers, got {spacing_mm!r}")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 1.0
    if not has_pred or not has_gt:
        return 0.0
    # Work inside the union's bounding box plus one voxel of background: every boundary voxel is inside it,
    # so distances to the nearest boundary voxel are exact there.
    box = _union_box(pred | gt)
    pred = np.pad(pred[box], 1)
    gt = np.pad(gt[box], 1)
    area_pred = boundary_area(pred, spacing)
    area_gt = boundary_area(gt, spacing)
    on_pred, on_gt = area_pred > 0, area_gt > 0
    to_gt = ndimage.distance_transform_edt(~on_gt, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~on_pred, sampling=spacing)
    agree = area_pred[on_pred & (to_gt <= tolerance_mm)].sum() + area_gt[on_gt & (to_pred <= tolerance_mm)].sum()
    return float(agree / (area_pred.sum() + area_gt.sum()))


def boundary_area(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Exposed face area (mm²) of every voxel of ``mask``: float64 (I, J, K), 0 off the boundary.

    Faces on the array's border count as exposed (outside the array is background).
    """
    mask = np.asarray(mask, dtype=bool)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    padded = np.pad(mask, 1)
    inner = tuple(slice(1, -1) for _ in range(3))
    area = np.zeros(mask.shape, dtype=np.float64)
    for axis in range(3):
        face = float(np.prod(np.delete(spacing, axis)))
        for shift in (-1, 1):
            neighbour = np.roll(padded, shift, axis=axis)[inner]
            area += face * (mask & ~neighbour)
    return area


def _union_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"masks must be 3D and of one shape, got {pred.shape} and {gt.shape}")
    return pred, gt
