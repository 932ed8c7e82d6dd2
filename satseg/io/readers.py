"""Read a scan from disk into a :class:`~satseg.io.volume.Volume` and check it can be segmented.

Formats: NIfTI (``.nii``, ``.nii.gz``; nibabel, header kept; :mod:`satseg.io.nifti`), NRRD / MetaImage (``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``; SimpleITK, LPS geometry converted to a RAS affine; :mod:`satseg.io.itk`), DICOM series
(a folder, a ``.zip``, or one DICOM file of the series, ``.dcm`` or without extension; see :mod:`satseg.io.dicom`).

Limits: only regular files and folders are opened (a FIFO or a device would block or never end). Reading a NIfTI
costs what its header describes, not what the file holds: the header is read first and its claimed size checked
against the file and the available memory before the voxels are allocated (once); data after the image in a
``.gz`` stream is refused. For NRRD / MetaImage the header's size is checked against the memory before reading.

Every problem a user can cause ends in a one-line :class:`~satseg.errors.InputError`. Policy for non-finite voxels:
a scan with no finite voxel is rejected; NaN/±inf voxels in an otherwise valid scan are replaced by the scan's
smallest finite value, with a warning (they are usually outside-the-field-of-view fill).
"""


from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io._common import MAX_TILT_DEG, _fmt, axis_tilt
from satseg.io.itk import _read_itk, itk_to_volume
from satseg.io.nifti import GZIP_TRAILING_MARGIN, _read_nifti
from satseg.io.volume import Volume

__all__ = ["GZIP_TRAILING_MARGIN", "itk_to_volume", "read_volume", "validate_volume"]

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".zip", ".dcm")
# Direction cosines may deviate this much from orthonormal (float32 headers); a gantry tilt of 0.1° is more.
ORTHONORMAL_TOL = 1e-3


def read_volume(path: str | Path, *, series: str | None = None, volume: int | None = None) -> Volume:
    """Read a 3D scan and validate it.

    Args:
        path: a NIfTI / NRRD / MetaImage file, a DICOM folder, a ``.zip`` of one, or one ``.dcm`` file.
        series: DICOM SeriesInstanceUID to read when the folder holds several series.
        volume: index of the volume to read from a 4D scan.

    Returns:
        The :class:`Volume` (array (I, J, K) in the file's voxel order, RAS affine, header, modality, meta).

    Raises:
        InputError: the path is missing, unsupported, unreadable, or not a usable 3D scan.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    _refuse_special_file(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(DICOM_SUFFIXES) or _has_dicom_preamble(path):
        from satseg.io.dicom import read_dicom

        vol = read_dicom(path, series=series, volume=volume)
    elif name.endswith(NIFTI_SUFFIXES):
        vol = _read_nifti(path, volume)
    elif name.endswith(ITK_SUFFIXES):
        vol = _read_itk(path, volume)
    else:
        raise InputError(
            f"{path.name}: unsupported file type; expected .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, "
            "a DICOM folder, a .zip of one or a DICOM file"
        )
    if series is not None and vol.meta.get("format") != "dicom":
        raise InputError(f"{path.name}: --series applies to DICOM input only")
    return validate_volume(vol)


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_special_file(path: Path) -> None:
    """Only regular files and folders are read: opening a FIFO or a socket to sniff it blocks until a writer comes,
    and a device never ends. Checked with ``stat`` (a symlink to a regular file is fine) before anything opens it."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "a special file")
    raise InputError(f"{path}: not a regular file or folder ({kind}); give the scan file or DICOM folder itself")


def _has_dicom_preamble(path: Path) -> bool:
    """DICOM files often have no extension; they carry 'DICM' after a 128-byte preamble."""
    try:
        with open(path, "rb") as fobj:
            return fobj.read(132)[128:] == b"DICM"
    except OSError:
        return False


def validate_volume(vol: Volume) -> Volume:
    """Check that ``vol`` is a segmentable 3D scan; returns it, with non-finite voxels replaced (see module doc).

    Raises:
        InputError: 2D or not 3D, non-numeric, all NaN, bad spacing, or axes sheared otherwise than by a gantry
            tilt of at most 45° (:func:`_check_tilt`).
    """
    where = vol.name if vol.source is None else Path(vol.source).name
    array = vol.array
    if array.ndim != 3:
        raise InputError(f"{where}: expected a 3D scan, got {array.ndim} dimensions {tuple(array.shape)}")
    if min(array.shape) < 2:
        raise InputError(f"{where}: the scan is 2D (shape {tuple(array.shape)}); a 3D volume is needed")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InputError(f"{where}: unsupported voxel type {array.dtype}")

    affine = np.asarray(vol.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"{where}: the affine is not a finite 4×4 matrix")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 1e-6):
        raise InputError(f"{where}: voxel spacing {_fmt(spacing)} mm has a zero axis")
    cosines = affine[:3, :3] / spacing
    deviation = float(np.abs(cosines.T @ cosines - np.eye(3)).max())
    if deviation > ORTHONORMAL_TOL or "gantry_tilt_deg" in vol.meta:
        _check_tilt(vol, affine, where, deviation)

    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            n_bad = int(finite.size - np.count_nonzero(finite))
            if n_bad == finite.size:
                raise InputError(f"{where}: the scan has no finite voxel (all NaN/inf)")
            fill = array[finite].min()
            log.warning("%s: %d NaN/inf voxels replaced by the minimum %g", where, n_bad, fill)
            vol.array = np.where(finite, array, fill).astype(array.dtype, copy=False)
            vol.meta["non_finite_replaced"] = n_bad
    vol.affine = affine
    return vol


def _check_tilt(vol: Volume, affine: np.ndarray, where: str, deviation: float) -> None:
    """Accept the sheared grid of a gantry-tilted stack, noting its angle in ``vol.meta["shear_deg"]`` with a
    warning; refuse any other shear.

    A tilted stack's rows and columns are perpendicular and its slice axis leans off their normal, by at most
    :data:`MAX_TILT_DEG`. The slice axis is the third (NIfTI's convention, and every DICOM converter's for an axial
    series), or any axis of a series whose tilt the DICOM reader measured from its slice positions
    (``vol.meta["gantry_tilt_deg"]``). Such a grid is segmented exactly: the model grid is orthonormal and the
    resampling to it and back follows the sheared affine (:mod:`satseg.geometry`). NIfTI outputs keep the sheared
    affine in the sform only (a qform cannot hold shear; its code is set to 0,
    :func:`satseg.io.nifti_write.drop_qform`), so ITK-based tools refuse to open them rather than place
    their slices straight.
    """
    axes = (0, 1, 2) if "gantry_tilt_deg" in vol.meta else (2,)
    angle = axis_tilt(affine, ORTHONORMAL_TOL, axes)
    if angle is None or angle > MAX_TILT_DEG:
        lean = "" if angle is None else f" by {angle:.3g}°"
        raise InputError(f"{where}: the axes are not orthonormal (sheared affine{lean}, deviation {deviation:.2g}), "
                         f"and not a gantry tilt's shear (the slice axis leaning at most {MAX_TILT_DEG:g}° off the "
                         "normal of perpendicular rows and columns)")
    vol.meta["shear_deg"] = round(angle, 4)
    log.warning("%s: the voxel grid is sheared by %.3g° (a gantry-tilted acquisition): it is resampled exactly; "
                "NIfTI outputs keep it in the sform only (qform code 0), which ITK-based viewers (3D Slicer, "
                "ITK-SNAP) refuse to open rather than misplace; DICOM-SEG and RTSTRUCT place every slice exactly",
                where, angle)
