"""Scan grid → model grid: orientation, resampling to the model's voxel size, foreground crop (see
:mod:`satseg.geometry`)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from satseg.errors import InputError
from satseg.geometry.record import GridRecord
from satseg.geometry.resample import _resample, _resample_torch, _torch_resamplable, orient_view
from satseg.io.volume import Volume

log = logging.getLogger("satseg.geometry")

MODEL_SPACING_MM = (1.0, 1.0, 3.0)
MODEL_ORIENTATION = "RAS"
# MONAI's tolerance for "same spacing" and "identity transform" (monai.data.utils.AFFINE_TOL).
AFFINE_TOL = 1e-3
_AXIS_PAIRS = (("L", "R"), ("P", "A"), ("I", "S"))


def to_model_grid(
    volume: Volume, orientation: str = MODEL_ORIENTATION, spacing_mm=MODEL_SPACING_MM, *, device=None
) -> tuple[np.ndarray, GridRecord]:
    """Reorient, resample to ``spacing_mm`` and crop to the foreground, as SAT's inference does.

    Args:
        volume: the scan; ``volume.array`` has shape (I, J, K).
        orientation: target axis codes (``"RAS"``; ``"ASR"`` for sagittal scans).
        spacing_mm: target voxel size along the oriented axes.
        device: a torch device (e.g. the GPU) to resample on: the same trilinear interpolation in float64,
            computed axis by axis (:func:`_resample_torch`); values equal scipy's to float64 rounding, so the
            float32 result matches to within one unit in the last place. ``None``: scipy on the CPU.

    Returns:
        ``(raw, record)``: ``raw`` is the float32 (H, W, D) array of un-normalised intensities on the model grid,
        ``record`` the :class:`GridRecord` that undoes it.
    """
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D scan, got an array of shape {array.shape}")
    affine = np.asarray(volume.affine, dtype=np.float64)
    shape = tuple(int(s) for s in array.shape)
    code = _check_orientation(orientation)

    ornt = nib.orientations.ornt_transform(nib.io_orientation(affine), nib.orientations.axcodes2ornt(code))
    oriented_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape)
    oriented = orient_view(array, ornt)
    oriented_shape = tuple(int(s) for s in oriented.shape)

    spacing, resampled_affine, resampled_shape = _spacing_grid(oriented_affine, oriented_shape, spacing_mm)
    xform = np.linalg.solve(oriented_affine, resampled_affine)
    interpolated = not (
        resampled_shape == oriented_shape
        and (np.allclose(oriented_affine, resampled_affine, rtol=1e-5, atol=AFFINE_TOL)
             or np.allclose(xform, np.eye(4), rtol=1e-5, atol=AFFINE_TOL))
    )
    if not interpolated:  # MONAI leaves the data and its affine as they are
        resampled_affine, xform = oriented_affine.copy(), np.eye(4)

    record_args = dict(
        input_shape=shape, input_affine=affine, input_axcodes="".join(nib.aff2axcodes(affine)),
        orientation=code, ornt=ornt, oriented_shape=oriented_shape, oriented_affine=oriented_affine,
        spacing_mm=tuple(float(s) for s in spacing), resampled_shape=resampled_shape,
        resampled_affine=resampled_affine, index_matrix=xform[:3, :3].copy(), index_offset=xform[:3, 3].copy(),
        interpolated=interpolated,
    )
    provisional = GridRecord(**record_args, crop_start=(0, 0, 0), crop_stop=resampled_shape)
    if interpolated and device is not None and _torch_resamplable(array, provisional):
        resampled = _resample_torch(array, ornt, provisional, resampled_shape, device)
    elif interpolated:
        resampled = _resample(oriented, provisional, 1, np.float32, (0, 0, 0), resampled_shape)
    else:
        resampled = oriented.astype(np.float32)
    start, stop = foreground_box(resampled)
    record = GridRecord(**record_args, crop_start=start, crop_stop=stop)
    raw = np.ascontiguousarray(resampled[tuple(slice(a, b) for a, b in zip(start, stop))])
    log.debug("model grid %s → %s (resampled %s, crop %s:%s)", shape, raw.shape, resampled_shape, start, stop)
    return raw, record


def foreground_box(image: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Bounding box ``(start, stop)`` of voxels > 0 in an (H, W, D) array; the whole array when there are none."""
    positive = image > 0
    start, stop = [], []
    for axis in range(3):
        hit = np.flatnonzero(positive.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            log.warning("no voxel > 0 after resampling: the scan is not cropped")
            return (0, 0, 0), tuple(int(s) for s in image.shape)  # type: ignore[return-value]
        start.append(int(hit[0]))
        stop.append(int(hit[-1]) + 1)
    return tuple(start), tuple(stop)  # type: ignore[return-value]



def _spacing_grid(affine: np.ndarray, shape: tuple[int, int, int], spacing_mm) -> tuple:
    """MONAI ``Spacing``'s output grid: (spacing, affine, shape) for an oriented input grid."""
    target = np.asarray(spacing_mm, dtype=np.float64)
    if target.shape != (3,) or not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise InputError(f"spacing must be three positive numbers in mm, got {spacing_mm!r}")
    current = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    spacing = np.where(np.abs(current - target) <= AFFINE_TOL, current, target)

    # keep the direction cosines (rotation part of a Cholesky split, shear dropped), set the new voxel size
    linear = affine[:3, :3]
    upper = np.linalg.cholesky(linear.T @ linear).T
    rotation = linear @ np.linalg.inv(upper)
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation @ np.diag(np.sign(np.diag(upper)) * spacing)

    # grid corners in the new grid's index space → shape; the corner that is smallest becomes the origin
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij"), dtype=float).reshape(3, -1)
    corners = np.vstack([corners, np.ones((1, corners.shape[1]))])
    in_new = np.linalg.solve(new_affine, affine) @ corners
    distances = in_new[:-1].copy()
    in_new = in_new[:-1] / in_new[-1]
    new_shape = tuple(int(n) for n in np.round(np.ptp(in_new, axis=1) + 1.0))
    world = affine @ corners
    origin = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(distances - distances[:, i: i + 1], axis=1), 0.0, rtol=AFFINE_TOL):
            origin = world[:-1, i]
            break
    if origin is None:  # centre-aligned fallback (a sheared input: no corner of its grid is first along every axis)
        origin = (affine[:3, :3] @ (np.asarray(shape) / 2.0) + affine[:3, 3]
                  - new_affine[:3, :3] @ (np.asarray(new_shape) / 2.0))
    new_affine[:3, 3] = origin
    return spacing, new_affine, new_shape



def _check_orientation(code: str) -> str:
    code = str(code).upper()
    pairs = sorted(next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in code)
    if len(code) != 3 or pairs != [0, 1, 2]:
        raise InputError(f"orientation must be three axis codes, one of L/R, P/A, I/S each (e.g. RAS), got {code!r}")
    return code
