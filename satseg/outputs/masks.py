"""Masks and probability maps written on the input grid, with the input's affine and header.

What of the input's header is kept, and how the files are written (atomically, ``.nii.gz`` streamed through
the fastest gzip available), is :mod:`satseg.io.nifti_write`'s; here the data are checked and converted
(masks exactly 0/1 as uint8, probabilities in [0, 1] as float32) and the display range is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from satseg.io.nifti_write import (INTENT_LABEL, INTENT_NONE, SCANNER, gzip_backend, nifti_like, save_nifti_atomic,
                                   write_nifti)
from satseg.io.volume import Volume

# the NIfTI writing names, importable from here as before
__all__ = ["INTENT_LABEL", "INTENT_NONE", "SCANNER", "binary_uint8", "gzip_backend", "nifti_like", "parallel_workers",
           "save_nifti_atomic", "write_mask", "write_masks", "write_nifti", "write_probability"]


def write_masks(masks: dict[str, np.ndarray], like: Volume, folder: str | os.PathLike, *,
                workers: int | None = None) -> list[Path]:
    """Write ``folder/<name>.nii.gz`` for every mask, several files at a time; returns the paths in order.

    Args:
        masks: name → mask of shape ``like.shape`` (bool or 0/1).
        like: the input scan.
        folder: target folder.
        workers: parallel writers (default: the CPUs this process may use, at most 8). Compression and
            file I/O release the GIL, so files are written concurrently.
    """
    from concurrent.futures import ThreadPoolExecutor

    folder = Path(folder)
    if workers is None:
        workers = parallel_workers(len(masks))
    targets = [(mask, folder / f"{name}.nii.gz") for name, mask in masks.items()]
    if workers <= 1 or len(targets) <= 1:
        return [write_mask(mask, like, target) for mask, target in targets]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: write_mask(item[0], like, item[1]), targets))


def parallel_workers(items: int, cap: int = 8) -> int:
    """Threads for ``items`` independent numpy/gzip jobs: the CPUs this process may use, at most ``cap``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(items, cpus, cap))


def binary_uint8(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a uint8 array of 0 and 1 (a view of ``mask``, not a copy, where it already has those bytes:
    bool or uint8); bool, or numbers that are all 0 or 1.

    Anything else (e.g. a probability map passed by mistake) raises ``ValueError`` instead of being
    silently thresholded.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.view(np.uint8)  # numpy stores True as 1: the same bytes, no copy
    if mask.dtype.kind in "ui":  # integers: the range says it (two passes, no temporaries)
        ok = mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) <= 1)
    else:
        ok = bool(np.all((mask == 0) | (mask == 1)))
    if not ok:
        raise ValueError("a mask must hold only 0 and 1 (threshold probabilities before writing)")
    return mask if mask.dtype == np.uint8 else mask.astype(np.uint8)


def write_mask(mask: np.ndarray, like: Volume, path: str | os.PathLike) -> Path:
    """Write one binary mask as uint8 NIfTI (values exactly 0 and 1) on the input grid.

    Args:
        mask: shape ``like.shape``, bool or 0/1 numbers.
        like: the input scan whose shape, affine and header the file gets.
        path: target ``.nii.gz`` (or ``.nii``); replaced atomically.
    """
    data = binary_uint8(mask)
    image = nifti_like(data, like, intent=INTENT_LABEL, description="satseg mask")
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    return save_nifti_atomic(image, path)


def write_probability(prob: np.ndarray, like: Volume, path: str | os.PathLike) -> Path:
    """Write a probability map as float32 NIfTI on the input grid.

    Args:
        prob: shape ``like.shape``, values in [0, 1] (checked; NaN is refused).
        like: the input scan whose shape, affine and header the file gets.
        path: target ``.nii.gz`` (or ``.nii``); replaced atomically.
    """
    data = np.asarray(prob, dtype=np.float32)
    if data.size and not (np.all(data >= 0) and np.all(data <= 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    image = nifti_like(data, like, intent=INTENT_NONE, description="satseg probability")
    image.header["cal_min"], image.header["cal_max"] = 0, 1
    return save_nifti_atomic(image, path)
