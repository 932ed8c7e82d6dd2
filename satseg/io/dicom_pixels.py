"""The pixel data of a DICOM series: read and checked per file, multi-frame images split into classic slices, and
the conversion to a :class:`Volume` (dicom2nifti, else SimpleITK's GDCM reader) with a scanner-coded NIfTI header."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io._common import _one_line
from satseg.io.dicom_geometry import SLICE_GAP_TOL_MM, Tilt, _count, _pixel_format, _size, _Slice
from satseg.io.itk import itk_to_volume
from satseg.io.nifti_write import SCANNER, drop_qform, is_sheared  # SCANNER: the code dcm2niix writes for DICOM
from satseg.io.volume import Volume

_LPS = np.diag([-1.0, -1.0, 1.0])  # DICOM patient coordinates (LPS) ↔ RAS, its own inverse


def _load_datasets(slices: list[_Slice], where: str) -> list:
    """One single-frame pydicom data set per slice, in ``slices`` order, ready for the converter: the file's own
    data set for a classic image, a classic data set made from the frame for a multi-frame image."""
    loaded: dict[Path, object] = {}
    frames: dict[Path, np.ndarray] = {}
    datasets = []
    for number, s in enumerate(slices, start=1):
        if s.file not in loaded:
            loaded[s.file] = _read_pixels(s.file, s.file_name, where)
        ds = loaded[s.file]
        if s.frame is None:
            datasets.append(ds)
            continue
        if s.file not in frames:
            frames[s.file] = _decoded_frames(ds, s, where)
        datasets.append(_frame_dataset(ds, frames[s.file][s.frame], s, number))
    return datasets


def _read_pixels(file: Path, name: str, where: str):
    """The whole data set of ``file``; refused when its pixel data is missing or shorter than its header says."""
    import pydicom

    label = f"{where}: {name}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(file)
        except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on damaged files
            raise InputError(f"{label}: not a readable DICOM file ({_one_line(exc)})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        said = f" ({_one_line(caught[0].message)})" if caught else ""
        raise InputError(f"{label}: no pixel data: the file is truncated or damaged{said}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
        frames = _count(ds, "NumberOfFrames", label) if "NumberOfFrames" in ds else 1
        samples, bits = _pixel_format(ds, label)
        rows, columns = _size(ds, label)
        expected = (rows * columns * samples * frames * bits + 7) // 8
        stored = len(ds.PixelData)
        if stored < expected:
            raise InputError(f"{label}: pixel data has {stored} bytes where {expected} are expected: the file is "
                             "truncated")
    return ds


def _decoded_frames(ds, s: _Slice, where: str) -> np.ndarray:
    """All frames of a multi-frame data set, shape (frames, rows, columns)."""
    label = f"{where}: {s.file_name}"
    try:
        frames = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise InputError(f"{label}: cannot decode the pixel data ({_one_line(exc)})") from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = frames.reshape((n_frames, *frames.shape[-2:])) if frames.ndim == 2 else frames
    if frames.shape != (n_frames, *s.size) or frames.dtype.kind not in "iu":
        raise InputError(f"{label}: decoded pixel data of shape {frames.shape} ({frames.dtype}) does not match "
                         f"{n_frames} frames of {s.size[0]}×{s.size[1]} whole numbers")
    return frames


def _frame_dataset(source, pixels: np.ndarray, s: _Slice, number: int):
    """A classic single-frame data set holding one frame (decoded, little endian) and its geometry and rescale."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("Modality", "SeriesInstanceUID", "SeriesDescription", "PhotometricInterpretation"):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = s.size
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8  # decoded values: every bit is stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.InstanceNumber = number  # the converter groups slices by instance number: keep the position order
    ds.ImagePositionPatient = [float(v) for v in s.position]
    ds.ImageOrientationPatient = [float(v) for v in s.orientation]
    ds.PixelSpacing = [float(v) for v in s.spacing]
    if s.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = s.rescale
    ds.PixelData = pixels.tobytes()
    return ds


def _convert_dicom2nifti(datasets: list) -> Volume:
    from dicom2nifti import convert_dicom

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

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), uid, False, True)
    reader.SetFileNames(list(names) or files)
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"series is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
    return itk_to_volume(sitk.GetArrayFromImage(image).transpose(2, 1, 0), image)


def straighten(datasets: list, tilt: Tilt) -> None:
    """Move each data set (in stack order) to where a straight stack would put it, for a converter that stacks
    straight; :func:`shear_affine` puts the slices back where they are."""
    for ds, position in zip(datasets, tilt.straight, strict=True):
        ds.ImagePositionPatient = [float(v) for v in position]


def shear_affine(affine: np.ndarray, slices: list[_Slice], tilt: Tilt, where: str) -> np.ndarray:
    """The sheared affine of a tilted stack, from the affine the converter gave its straightened copy.

    The converter may reorder and flip the voxel axes; the straight positions show which voxel axis runs along the
    stack and each slice's index on it. The slice axis's column and the origin are then fitted (least squares) to
    the slices' real positions; the in-plane columns are the converter's. Every slice's first pixel must land
    within :data:`~satseg.io.dicom_geometry.SLICE_GAP_TOL_MM` of its ImagePositionPatient.
    """
    to_index = np.linalg.inv(affine)
    straight = np.c_[tilt.straight @ _LPS, np.ones(len(slices))]  # RAS, homogeneous
    first = (to_index @ straight.T)[:3].T  # (slices, 3): each slice's first pixel as a voxel index
    axis = int(np.argmax(np.ptp(first, axis=0)))
    k = first[:, axis]
    real = np.array([s.position for s in slices]) @ _LPS  # (slices, 3) RAS
    design = np.c_[np.ones_like(k), k]
    (origin, step), *_ = np.linalg.lstsq(design, real, rcond=None)
    sheared = np.asarray(affine, dtype=np.float64).copy()
    sheared[:3, axis] = step
    in_plane = [a for a in range(3) if a != axis]
    sheared[:3, 3] = origin - affine[:3, in_plane] @ first[0, in_plane]
    placed = (sheared @ np.c_[first, np.ones(len(slices))].T)[:3].T
    worst = float(np.linalg.norm(placed - real, axis=1).max())
    if worst > SLICE_GAP_TOL_MM:
        raise InputError(f"{where}: cannot place the gantry-tilted slices on one sheared grid (a slice lands "
                         f"{worst:.2f} mm from its position)")
    return sheared


def _scanner_header(vol: Volume):
    """The converted volume's NIfTI header (a fresh one for SimpleITK's) with the affine as qform and sform, both
    with code 1 (scanner), as dcm2niix writes them."""
    import nibabel as nib

    header = vol.header if isinstance(vol.header, nib.Nifti1Header) else nib.Nifti1Header()
    if vol.header is None:
        header.set_xyzt_units("mm")
    header.set_data_shape(vol.array.shape)
    header.set_data_dtype(vol.array.dtype)
    header.set_qform(vol.affine, code=SCANNER)
    header.set_sform(vol.affine, code=SCANNER)
    if is_sheared(vol):
        drop_qform(header)  # a gantry tilt's shear: the sform alone holds it
    return header


def _compact(data: np.ndarray) -> np.ndarray:
    """dicom2nifti returns float64; integral values that fit int16 are stored as int16 (a quarter of the memory)."""
    if data.dtype.kind == "f" and data.size:
        lo, hi = np.nanmin(data), np.nanmax(data)
        if -32768 <= lo and hi <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
        return data.astype(np.float32)
    return data
