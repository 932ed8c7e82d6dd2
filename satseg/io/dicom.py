"""DICOM series (a folder, a ``.zip`` of one, or one DICOM file of the series) → :class:`Volume`.

Series choice: ``series=UID`` reads that series; otherwise the series with the most image files, and when several
series tie for the most the choice is ambiguous and an :class:`InputError` lists their UIDs. Conversion: dicom2nifti
(voxel order and affine as its LAS-reoriented NIfTI, the same as ``dicom2nifti.convert_directory``), then SimpleITK's
GDCM series reader if dicom2nifti cannot convert the series. JPEG 2000 and other compressed transfer syntaxes decode
through pydicom's pylibjpeg plugins.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from satseg.errors import InputError
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
    groups = _scan_series(folder)
    if not groups:
        raise InputError(f"{source.name}: no DICOM images found")
    uid = _choose_series(groups, series, source.name)
    headers = groups[uid]
    _check_consistent(headers, uid, source.name)
    files = [str(f) for f, _ in headers]
    first = headers[0][1]
    errors = []
    vol = None
    try:
        vol = _convert_dicom2nifti(files)
        converter = "dicom2nifti"
    except Exception as exc:  # noqa: BLE001 - dicom2nifti raises many types; SimpleITK gets a try next
        errors.append(f"dicom2nifti: {_one_line(exc)}")
        log.info("dicom2nifti could not convert series %s (%s); trying SimpleITK", uid, exc)
    if vol is None:
        try:
            vol = _convert_sitk(folder, uid, files)
            converter = "SimpleITK"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"SimpleITK: {_one_line(exc)}")
            raise InputError(f"{source.name}: cannot convert DICOM series {uid} ({'; '.join(errors)})") from exc
    vol.source = source
    vol.modality = MODALITIES.get(str(first.get("Modality", "")).upper())
    vol.meta.update(
        format="dicom", converter=converter, series_uid=uid, n_files=len(files),
        dicom_modality=str(first.get("Modality", "")), series_description=str(first.get("SeriesDescription", "")),
    )
    return vol


def _scan_series(folder: Path) -> dict[str, list]:
    """{SeriesInstanceUID: [(file, header), ...]} for every DICOM image file under ``folder``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list] = defaultdict(list)
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            file = Path(root) / name
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError):
                continue
            if "SeriesInstanceUID" in ds and "Rows" in ds:
                groups[str(ds.SeriesInstanceUID)].append((file, ds))
    return dict(groups)


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


def _check_consistent(headers: list, uid: str, where: str) -> None:
    """One series must share image size and orientation; otherwise it is a mix that cannot be stacked."""
    def key(ds):
        iop = ds.get("ImageOrientationPatient")
        return (int(ds.Rows), int(ds.Columns), None if iop is None else tuple(np.round(np.asarray(iop, float), 3)))

    keys = {key(ds) for _, ds in headers}
    if len(keys) > 1:
        raise InputError(f"{where}: series {uid} mixes images of different size or orientation ({len(keys)} kinds)")


def _convert_dicom2nifti(files: list[str]) -> Volume:
    import pydicom
    from dicom2nifti import convert_dicom

    datasets = [pydicom.dcmread(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="satseg-d2n-") as tmp:
        result = convert_dicom.dicom_array_to_nifti(datasets, os.path.join(tmp, "series.nii"), reorient_nifti=True)
        img = result["NII"]
        data = _compact(np.array(img.dataobj))
        header = img.header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"converted series has shape {data.shape}")
    return Volume(array=data, affine=np.asarray(img.affine, dtype=np.float64), header=header, meta={})


def _convert_sitk(folder: Path, uid: str, files: list[str]) -> Volume:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(logging.getLogger("satseg").isEnabledFor(logging.DEBUG))

    from satseg.io.readers import itk_to_volume

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), uid, False, True)
    reader.SetFileNames(list(names) or files)
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"series is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
    return itk_to_volume(sitk.GetArrayFromImage(image).transpose(2, 1, 0), image)


def _compact(data: np.ndarray) -> np.ndarray:
    """dicom2nifti returns float64; integral values that fit int16 are stored as int16 (a quarter of the memory)."""
    if data.dtype.kind == "f" and data.size:
        lo, hi = np.nanmin(data), np.nanmax(data)
        if -32768 <= lo and hi <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
        return data.astype(np.float32)
    return data


def _series_uid_of(file: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(file, stop_before_pixels=True).SeriesInstanceUID)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file.name}: not a readable DICOM image ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
