"""DICOM series (a folder, a ``.zip`` of one, or one DICOM file of the series) → :class:`Volume`.

Series choice: ``series=UID`` reads that series; otherwise the series with the most image files, and when several
series tie for the most the choice is ambiguous and an :class:`InputError` lists their UIDs.

What is read, like dcm2niix reads it (or refused, with a one-line reason naming the file, where dcm2niix would only
warn):

- Geometry: every slice must say where it is (ImagePositionPatient, ImageOrientationPatient, PixelSpacing); a slice
  without position or orientation is refused ("cannot place the voxels in space"), never stacked at a guessed place.
- Malformed tags (a value of the wrong length or VR, text where a number belongs, a truncated file) are refused
  naming the file, the tag and the problem.
- Slice positions, projected on the slice normal, must be evenly spaced: a gap that differs from the series' spacing
  (the median gap) by more than 0.2 mm (dcm2niix's tolerance; half the spacing for slices thinner than 0.4 mm) is
  refused with the gap it found, e.g. a missing slice. dcm2niix writes such a series with a warning (and an
  equidistant ``_Eq`` copy); a NIfTI grid has one slice spacing, so reading it would put every slice past the gap
  at the wrong place, and resampling would invent a slice. Two slices at the same position (a 4D series or a
  duplicate file) are refused too.
- Gantry tilt: a CT acquired with a tilted gantry has its slices rotated while the table moves along the body axis,
  so its slice positions do not step along the slice normal (row × column cosines) and its grid is sheared; stacked
  straight, slice k would be shifted in its plane by k × spacing × tan(tilt), about 10 mm by slice 20 of a 2 mm
  series at 15°. Such a series (from 0.0325°, where dcm2niix v1.0.20220720 reports a tilt; sideways offsets up to
  0.01 mm are taken for rounding) is read on its own sheared grid: the voxels as stored, the affine's slice column the
  real step between slice positions (fitted to every slice, each within 0.2 mm), noted as ``gantry_tilt_deg``. No
  voxel is interpolated at reading; the model grid resamples through the shear (:mod:`satseg.geometry`), the masks
  come back onto the series' own slices, and the NIfTI header keeps the shear in the sform (qform code 0). Refused:
  slices that do not all lean by one angle, and leans over 45°. Classic slices and the frames of multi-frame images
  alike; dicom2nifti converts a straightened copy (no SimpleITK fallback for a tilted series: it stacks straight).
- Enhanced and legacy-converted multi-frame images: each frame is read with the position, orientation, pixel spacing
  and rescale (PixelValueTransformationSequence) of its Per-frame Functional Groups, or of the Shared ones, and the
  frames are converted exactly like the slices of a classic series (the same voxels and affine as the classic
  series they were made from).
- Stored values are converted with RescaleSlope / RescaleIntercept per slice or frame (Hounsfield units for CT).
- The NIfTI header carries the affine as qform and sform with code 1 (scanner), as dcm2niix writes it; masks
  written on this grid copy it.

Conversion: dicom2nifti (voxel order and affine as its LAS-reoriented NIfTI, the same as
``dicom2nifti.convert_directory``), then SimpleITK's GDCM series reader if dicom2nifti cannot convert a classic
series. JPEG 2000 and other compressed transfer syntaxes decode through pydicom's pylibjpeg plugins.

This module finds the series and chooses one; :mod:`satseg.io.dicom_geometry` reads where each slice is and checks
the stack, :mod:`satseg.io.dicom_pixels` reads the pixel data and converts the series.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

from satseg.errors import InputError
from satseg.io._common import _one_line
from satseg.io.dicom_geometry import _check_consistent, _relative, _slices_of, _sorted_evenly_spaced, measure_tilt
from satseg.io.dicom_pixels import (_convert_dicom2nifti, _convert_sitk, _load_datasets, _scanner_header, shear_affine,
                                    straighten)
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

MODALITIES = {"CT": "ct", "MR": "mri", "PT": "pet"}


def read_dicom(path: Path, *, series: str | None = None, volume: int | None = None) -> Volume:
    """Read one series from a DICOM folder, a ``.zip`` or one DICOM file of the series (see module doc)."""
    path = Path(path)
    if volume not in (None, 0):
        raise InputError(f"{path.name}: --volume applies to 4D NIfTI/NRRD/MetaImage scans, not DICOM series")
    if path.is_dir():
        return _read_folder(path, series, source=path)
    if path.name.lower().endswith(".zip") and not zipfile.is_zipfile(path):
        raise InputError(f"{path.name}: not a readable .zip archive")
    if not zipfile.is_zipfile(path):  # one file of the series: read the series it belongs to
        return _read_folder(path.parent, series or _series_uid_of(path), source=path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path.name}: not a readable .zip archive ({exc})") from exc
    with archive, tempfile.TemporaryDirectory(prefix="satseg-dicom-") as tmp:
        try:
            archive.extractall(tmp)  # member names are sanitised by zipfile (no absolute paths, no '..')
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{path.name}: cannot extract the archive ({exc})") from exc
        return _read_folder(Path(tmp), series, source=path)


def _read_folder(folder: Path, series: str | None, source: Path) -> Volume:
    where = source.name
    groups = _scan_series(folder, where)
    if not groups:
        raise InputError(f"{where}: no DICOM images found")
    uid = _choose_series(groups, series, where)
    headers = groups[uid]
    # Geometry first, from the headers: a series that cannot be stacked is refused before any pixel is decoded.
    slices = [s for file, header in headers for s in _slices_of(file, header, folder, where)]
    _check_consistent(slices, uid, where)
    slices = _sorted_evenly_spaced(slices, where)
    tilt = measure_tilt(slices, uid, where)
    datasets = _load_datasets(slices, where)
    if tilt is not None:
        straighten(datasets, tilt)
    multiframe = any(s.frame is not None for s in slices)
    first = headers[0][1]
    errors = []
    vol = None
    try:
        vol = _convert_dicom2nifti(datasets)
        converter = "dicom2nifti"
    except Exception as exc:  # noqa: BLE001 - dicom2nifti raises many types; SimpleITK gets a try next
        errors.append(f"dicom2nifti: {_one_line(exc)}")
        log.info("dicom2nifti could not convert series %s (%s); trying SimpleITK", uid, exc)
    del datasets  # SimpleITK reads the files itself: the series is not held in memory twice
    if vol is None:
        if multiframe or tilt is not None:
            # GDCM's reader would not apply the functional groups' rescale, and stacks a tilted series straight
            what = "gantry-tilted " if tilt is not None else ""
            raise InputError(f"{where}: cannot convert {what}DICOM series {uid} ({errors[0]})")
        try:
            vol = _convert_sitk(folder, uid, [str(s.file) for s in slices])
            converter = "SimpleITK"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"SimpleITK: {_one_line(exc)}")
            raise InputError(f"{where}: cannot convert DICOM series {uid} ({'; '.join(errors)})") from exc
    if tilt is not None:
        vol.affine = shear_affine(vol.affine, slices, tilt, where)
        vol.meta["gantry_tilt_deg"] = round(tilt.degrees, 4)
        log.info("%s: series %s is gantry-tilted by %.3g°: read on its sheared grid", where, uid, tilt.degrees)
    vol.header = _scanner_header(vol)
    vol.source = source
    vol.modality = MODALITIES.get(str(first.get("Modality", "")).upper())
    vol.meta.update(
        format="dicom", converter=converter, series_uid=uid, n_files=len(headers),
        dicom_modality=str(first.get("Modality", "")), series_description=str(first.get("SeriesDescription", "")),
    )
    if multiframe:
        vol.meta["n_frames"] = len(slices)
    return vol


def _scan_series(folder: Path, where: str) -> dict[str, list]:
    """{SeriesInstanceUID: [(file, header), ...]} for every DICOM image file under ``folder``.

    Files that are not DICOM (no 'DICM' marker) are skipped; a DICOM file whose header cannot be parsed is left out
    with a warning naming it (a slice missing inside the series is then refused by the even-spacing check)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list] = defaultdict(list)
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            file = Path(root) / name
            if not file.is_file():  # a FIFO or device would block or never end; a dangling link is nothing
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # invalid values are reported by the checks below
                    ds = pydicom.dcmread(file, stop_before_pixels=True)
            except InvalidDicomError:
                continue
            except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on damaged files
                # Left out with a warning: if it was a slice inside the series, the even-spacing check refuses the
                # series (naming the gap); a file of another series, or of none, does not stop the read.
                log.warning("%s: %s is a DICOM file whose header cannot be read; left out (%s)", where,
                            _relative(file, folder), _one_line(exc))
                continue
            if "SeriesInstanceUID" in ds and ("Rows" in ds or _is_image_storage(ds)):
                groups[str(ds.SeriesInstanceUID)].append((file, ds))
    return dict(groups)


def _is_image_storage(ds) -> bool:
    """Whether the file says it is an image (its SOP class is an '... Image Storage'), even if its header is damaged
    so far that Rows went missing."""
    from pydicom.uid import UID

    sop = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    sop = sop or ds.get("SOPClassUID")
    return bool(sop) and "Image Storage" in UID(str(sop)).name


def _choose_series(groups: dict[str, list], series: str | None, where: str) -> str:
    def describe(uid: str) -> str:
        ds = groups[uid][0][1]
        return f"{uid or '<empty UID>'} ({ds.get('Modality', '?')}, {len(groups[uid])} files)"

    if series is not None:
        if series not in groups:
            raise InputError(f"{where}: no series {series}; available: {', '.join(describe(u) for u in groups)}")
        return series
    sizes = {uid: len(items) for uid, items in groups.items()}
    largest = max(sizes.values())
    best = [uid for uid, n in sizes.items() if n == largest]
    if len(best) > 1:
        raise InputError(
            f"{where}: {len(groups)} series, {len(best)} of them equally large; pick one with --series UID: "
            + ", ".join(describe(u) for u in best)
        )
    if len(groups) > 1:
        log.warning("%s: %d series found; reading the largest, %s (choose with --series)", where, len(groups),
                    describe(best[0]))
    return best[0]


def _series_uid_of(file: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(file, stop_before_pixels=True).SeriesInstanceUID)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file.name}: not a readable DICOM image ({_one_line(exc)})") from exc
