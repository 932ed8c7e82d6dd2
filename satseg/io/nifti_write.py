"""NIfTI files on an input scan's grid: the image with the input's header kept, and its atomic, streamed write.

The header of the input scan is copied (qform and sform with their codes, units, pixdim, description of
the space), then only what must change is changed: data type, scaling (``scl_slope = 1``,
``scl_inter = 0`` so stored values are the values), intent, description. Header extensions of the input
(e.g. an embedded DICOM header) are not carried over: they describe the scan, not the data written on its
grid. ``.nii.gz`` files are compressed by the fastest gzip available (:func:`gzip_backend`) while nibabel
serialises the image; every file is written atomically.
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
    if is_sheared(like):
        drop_qform(image.header)
    # Explicit identity scaling (the constructor resets it to NaN, "choose on save"): stored = value.
    image.header.set_slope_inter(1.0, 0.0)
    return image


def is_sheared(volume: Volume) -> bool:
    """Whether the reader found ``volume``'s grid sheared (a gantry tilt: ``meta["shear_deg"]`` from
    :func:`satseg.io.readers.validate_volume`, or ``meta["gantry_tilt_deg"]`` from the DICOM reader)."""
    return "shear_deg" in volume.meta or "gantry_tilt_deg" in volume.meta


def drop_qform(header) -> None:
    """Set the qform code of a sheared grid's header to 0, so that the sform alone describes the grid.

    A qform is a rotation, voxel sizes and a flip: it cannot hold the shear of a gantry-tilted grid, and nibabel
    stores the nearest grid without shear instead. A reader that trusts the qform (ITK does, before the sform) would
    then place slice k shifted by k × gap × tan(tilt) without a word; with code 0 only the sform describes the grid
    (nibabel, FSL and dcm2niix-aware tools read it; ITK refuses the file, naming the non-orthonormal directions).
    Only sheared grids get this: every other header keeps its qform as the input had it.
    """
    header.set_qform(None, code=0)


def gzip_backend() -> str:
    """The gzip compressor ``.nii.gz`` files are written with: ``"isal"`` (igzip, the ``isal`` package,
    faster than zlib at a smaller size: benchmarks/RESULTS.md §1), ``"zlib-ng"`` (the ``zlib-ng`` package), or
    ``"zlib"`` (the standard library, as nibabel writes)."""
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
    (:func:`gzip_backend`): no uncompressed copy of the file is built in memory, which was most of the
    writing time (benchmarks/RESULTS.md §4e).
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
