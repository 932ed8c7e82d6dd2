"""Variants of TotalSegmentator's real DICOM CT (20 slices of 512×512, 2 mm apart), rewritten with pydicom.

Each variant moves the same voxels (the same pixel values) to a known place: a rigid transform ``T`` of the patient
coordinates (DICOM LPS, mm) applied to every slice position and orientation, possibly with the pixel rows or columns
stored in the other order. So the masks of the original series (``example_seg_dicom.nii.gz``) can be carried onto a
variant's grid exactly, through world coordinates (:func:`masks_on`), whatever voxel order satseg's reader gives it.

- ``classic``: the series as it is, uncompressed, with the UIDs the anonymised files lack (SEG/RTSTRUCT need them).
- ``lps_columns``: the columns stored right to left (row cosine -x; LPS-flipped columns).
- ``reversed``: rows stored bottom to top (column cosine -y), so the slice normal points down and the files (and
  instance numbers) run in the opposite order.
- ``oblique``: the whole series rotated 20° about x then 12° about z around its centre (oblique slices).
- ``tilted``: a gantry tilt of 15°: the slices are rotated about x but the table still moves along z, so the slice
  positions are sheared along the slice normal's in-plane direction.
- ``enhanced``: one legacy-converted enhanced CT multi-frame file (highdicom) of ``classic``.
- ``enhanced_oblique``: the same made from ``oblique``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0])  # LPS ↔ RAS (its own inverse)
VARIANTS = ("classic", "lps_columns", "reversed", "oblique", "tilted", "enhanced", "enhanced_oblique")


def load_classic(ct_dir: Path) -> list[pydicom.Dataset]:
    """The real slices, decompressed, sorted by position, with study/series/instance/frame-of-reference UIDs."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for file in sorted(Path(ct_dir).iterdir()):
        ds = pydicom.dcmread(file)
        ds.decompress()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.SeriesNumber, ds.StudyID, ds.PatientName, ds.PatientID = 1, "1", "Test^Variant", "SATSEG-TEST"
        datasets.append(ds)
    datasets.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    for number, ds in enumerate(datasets, start=1):
        ds.InstanceNumber = number
    return datasets


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return (np.asarray(ds.ImagePositionPatient, float), iop[:3], iop[3:],
            np.asarray(ds.PixelSpacing, float))


def _set(ds, position, row, col) -> None:
    ds.ImagePositionPatient = [float(f"{v:.10g}") for v in position]
    ds.ImageOrientationPatient = [float(f"{v:.12g}") for v in (*row, *col)]


def _centre(datasets) -> np.ndarray:
    positions = np.array([_geometry(d)[0] for d in datasets])
    pos, row, col, spacing = _geometry(datasets[0])
    in_plane = row * spacing[1] * (datasets[0].Columns - 1) / 2 + col * spacing[0] * (datasets[0].Rows - 1) / 2
    return positions.mean(axis=0) + in_plane


def make_variant(name: str, classic: list[pydicom.Dataset], folder: Path) -> tuple[Path, np.ndarray]:
    """Write variant ``name`` of ``classic`` into ``folder`` (created).

    Returns:
        (folder, T): T is the 4×4 map of patient coordinates (LPS mm) of the original series to the variant's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True)
    datasets = copy.deepcopy(classic)
    series = generate_uid()
    transform = np.eye(4)
    for ds in datasets:
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if name in ("classic", "enhanced"):
        pass
    elif name == "lps_columns":
        for ds in datasets:
            pos, row, col, spacing = _geometry(ds)
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
            _set(ds, pos + row * spacing[1] * (ds.Columns - 1), -row, col)
    elif name == "reversed":
        for ds in datasets:
            pos, row, col, spacing = _geometry(ds)
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, :]).tobytes()
            _set(ds, pos + col * spacing[0] * (ds.Rows - 1), row, -col)
        datasets.reverse()  # the first file is now the first along the new normal (the top slice)
        for number, ds in enumerate(datasets, start=1):
            ds.InstanceNumber = number
    elif name in ("oblique", "enhanced_oblique"):
        rotation = _rotation("z", 12) @ _rotation("x", 20)
        centre = _centre(datasets)
        transform[:3, :3], transform[:3, 3] = rotation, centre - rotation @ centre
        for ds in datasets:
            pos, row, col, _ = _geometry(ds)
            _set(ds, rotation @ (pos - centre) + centre, rotation @ row, rotation @ col)
    elif name == "tilted":
        rotation = _rotation("x", 15)
        for ds in datasets:
            pos, row, col, _ = _geometry(ds)
            _set(ds, pos, rotation @ row, rotation @ col)
            ds.GantryDetectorTilt = 15
        transform = None  # not rigid: each slice is rotated about its own position
    else:
        raise ValueError(name)
    if name.startswith("enhanced"):
        from highdicom.legacy import LegacyConvertedEnhancedCTImage

        image = LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=series, series_number=7,
                                               sop_instance_uid=generate_uid(), instance_number=1)
        image.save_as(folder / "enhanced.dcm")
    else:
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(folder / f"IM{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
    return folder, transform


def masks_on(volume, original_affine: np.ndarray, original_labels: np.ndarray, transform: np.ndarray,
             labels: dict[str, int]) -> dict[str, np.ndarray]:
    """The original series' labels carried onto ``volume``'s grid (a variant read by satseg) through world space.

    Args:
        volume: the variant as read by ``satseg.io.read_volume`` (array (I, J, K), RAS affine).
        original_affine: the RAS affine of the original series' grid (the labels' grid).
        original_labels: label image on that grid, shape (I0, J0, K0).
        transform: 4×4 LPS map original → variant (from :func:`make_variant`).
        labels: output name → label value.

    Returns:
        name → uint8 mask of ``volume.shape``; every voxel centre of the variant must fall on a voxel centre of the
        original (within 1e-3 voxel), else AssertionError.
    """
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    to_original = np.linalg.inv(original_affine) @ flip @ np.linalg.inv(transform) @ flip @ volume.affine
    grid = np.indices(volume.shape).reshape(3, -1)
    index = to_original[:3, :3] @ grid + to_original[:3, 3:]
    rounded = np.rint(index).astype(np.int64)
    assert np.abs(index - rounded).max() < 1e-3, np.abs(index - rounded).max()
    for axis in range(3):
        assert rounded[axis].min() >= 0 and rounded[axis].max() < original_labels.shape[axis]
    values = original_labels[rounded[0], rounded[1], rounded[2]].reshape(volume.shape)
    return {name: (values == value).astype(np.uint8) for name, value in labels.items()}
