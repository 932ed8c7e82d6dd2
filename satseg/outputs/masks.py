"""Masks and probability maps written on the input grid, with the input's affine and header.

The header of the input scan is copied (qform and sform with their codes, units, pixdim, description of
the space), then only what must change is changed: data type, scaling (``scl_slope = 1``,
``scl_inter = 0`` so stored values are the values), display range, intent, description. Header
extensions of the input (e.g. an embedded DICOM header) are not carried over: they describe the scan,
not the mask. Every file is written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from satseg.io.atomic import atomic_path
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: the code a fresh header gets for qform and sform
INTENT_LABEL = 1002  # NIFTI_INTENT_LABEL: values are labels, not measurements
INTENT_NONE = 0


def nifti_like(data: np.ndarray, like: Volume, *, intent: int, description: str) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` on ``like``'s grid: same shape, affine, qform/sform codes and header.

    Args:
        data: array of shape ``like.shape``, already in the dtype to store.
        like: the input scan; ``like.header`` may be ``None`` (then qform and sform are both set from
            ``like.affine`` with code 1, scanner).
        intent: NIfTI intent code for the data.
        description: text for the header's ``descrip`` field (at most 80 bytes are kept).
    """
    if tuple(data.shape) != tuple(like.shape):
        raise ValueError(f"array shape {data.shape} differs from the input grid {like.shape}")
    affine = np.asarray(like.affine, dtype=np.float64)
    header = like.header
    if isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        hdr = header.copy()
        del hdr.extensions[:]
        qform_code, sform_code = int(hdr["qform_code"]), int(hdr["sform_code"])
        fresh = False
    else:
        if header is not None:
            log.debug("input header %s is not NIfTI; building a fresh header", type(header).__name__)
        image_class, hdr = nib.Nifti1Image, nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        qform_code = sform_code = 0
        fresh = True
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    if fresh or not np.allclose(hdr.get_best_affine(), affine, rtol=0, atol=1e-5):
        # The header does not yet describe this affine (no header, or the reader corrected it): store it
        # in both transforms, keeping the input's codes where it had them.
        if qform_code == 0 and sform_code == 0:
            qform_code = sform_code = SCANNER
        hdr.set_qform(affine, code=qform_code)
        hdr.set_sform(affine, code=sform_code)
        if not np.allclose(hdr.get_best_affine(), affine, rtol=0, atol=1e-5):
            # A qform cannot hold shear; the sform must carry the affine then.
            hdr.set_sform(affine, code=max(sform_code, SCANNER))
    hdr.set_intent(intent, allow_unknown=True)
    hdr["descrip"] = description.encode("ascii", "replace")[:79]
    hdr["aux_file"] = b""
    image = image_class(data, affine, hdr)
    # Explicit identity scaling (the constructor resets it to NaN, "choose on save"): stored = value.
    image.header.set_slope_inter(1.0, 0.0)
    return image


def gzip_backend() -> str:
    """The gzip compressor ``.nii.gz`` files are written with: ``"isal"`` (igzip, the ``isal`` package, ~10x
    faster than zlib at a smaller size), ``"zlib-ng"`` (the ``zlib-ng`` package), or ``"zlib"`` (the
    standard library, as nibabel writes)."""
    return _compressor()[0]


def _compressor():
    global _COMPRESSOR
    if _COMPRESSOR is None:
        for name in ("isal", "zlib-ng", "zlib"):
            try:
                _COMPRESSOR = _make_compressor(name)
                break
            except ImportError:
                continue
    return _COMPRESSOR


def _make_compressor(name: str):
    """``(name, open(raw) -> gzip file object)`` for ``isal``, ``zlib-ng`` or ``zlib``: a writable gzip stream
    over the binary file ``raw``; ImportError if the backend is missing.

    The stream gets an empty name and mtime 0: no temporary file name or time goes into the gzip header."""
    if name == "isal":
        from isal import igzip

        return name, lambda raw: igzip.IGzipFile(filename="", mode="wb", compresslevel=ISAL_LEVEL, fileobj=raw,
                                                 mtime=0)
    if name == "zlib-ng":
        from zlib_ng import gzip_ng

        return name, lambda raw: gzip_ng.GzipNGFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw,
                                                    mtime=0)
    if name == "zlib":
        import gzip

        return name, lambda raw: gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=raw,
                                               mtime=0)
    raise ValueError(f"unknown gzip backend {name!r}")


GZIP_LEVEL = 1  # nibabel's own default for .nii.gz
ISAL_LEVEL = 1  # igzip's fastest level; already smaller than zlib level 1 on masks
_COMPRESSOR = None


def save_nifti_atomic(image: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Save ``image`` to ``path`` (``.nii`` or ``.nii.gz``) through a temporary file and a rename.

    ``.nii.gz`` is serialised by nibabel straight into a gzip stream of the fastest available compressor
    (:func:`gzip_backend`): no uncompressed copy of the file is built in memory (measured on a 512×512×300
    uint8 mask: 8.9 ms instead of 42 ms to serialise + 7 ms to compress; float32 maps 30 instead of 175 ms).
    The file is a standard single-member gzip stream that any reader opens.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        write_nifti(image, tmp, gz=path.name.endswith(".gz"))
    return path


def write_nifti(image: nib.Nifti1Image, target: str | os.PathLike, *, gz: bool) -> None:
    """Serialise ``image`` (single-file NIfTI) into the file ``target``, gzip-compressed by the fastest available
    compressor when ``gz``, whatever ``target``'s own suffix (e.g. a temporary name). Not atomic by itself."""
    with open(target, "wb") as raw:
        if gz:
            with _compressor()[1](raw) as stream:
                image.to_stream(stream)
        else:
            image.to_stream(raw)


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
