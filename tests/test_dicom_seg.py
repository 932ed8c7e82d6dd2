"""DICOM-SEG of satseg's masks (issue 17): read back with highdicom, placed by the frames' own positions, the masks
are voxel-identical to the NIfTI masks, for the real TotalSegmentator CT and its variants (LPS-flipped columns,
reversed slice order, oblique, enhanced multi-frame); dciodvfy finds no error; bad sources are refused in one line.

Masks are the REAL labels of ``example_seg_dicom.nii.gz`` carried onto each variant's grid (as satseg reads it)
through world coordinates (tests/dicom_variants.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from satseg.io.volume import Volume

import dicom_variants as dv
from satseg.errors import InputError
from satseg.io import read_volume
from satseg.io.dicom_source import check_reference_series
from satseg.outputs.dicom_seg import SegmentSpec, write_dicom_seg

# TotalSegmentator 'total' labels present in the 20 slices
LABELS = {"liver": 5, "spleen": 1, "stomach": 6, "right_adrenal": 8}
SEGMENTS = [
    SegmentSpec("liver", "liver", ["liver"]),
    SegmentSpec("absent", "liver tumor", ["liver tumor"]),  # empty here: left out, reported
    SegmentSpec("spleen_stomach", "spleen and stomach", ["spleen", "stomach"]),
    SegmentSpec("right_adrenal", "right adrenal gland", ["right adrenal gland"]),
]
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS ↔ LPS


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (CI=true: the check is required)")
        pytest.skip(f"{name} is not installed")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy (dicom3tools) reports on a DICOM object."""
    dciodvfy = require_tool("dciodvfy")
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def original(reference_files):
    ct_dir = reference_files / "example_ct_dicom"
    labels = np.asarray(nib.load(reference_files / "example_seg_dicom.nii.gz").dataobj)
    return dv.load_classic(ct_dir), read_volume(ct_dir), labels


@pytest.fixture(scope="module")
def variants(original, tmp_path_factory):
    """name → (folder, volume, masks); built once per module."""
    classic, volume0, labels = original
    root = tmp_path_factory.mktemp("variants")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder, transform = dv.make_variant(name, classic, root / name)
            volume = read_volume(folder)
            if transform is not None:
                masks = dv.masks_on(volume, volume0.affine, labels, transform, LABELS)
            else:  # tilted: each slice keeps its pixels (rotated with them), so the voxels keep their labels
                np.testing.assert_array_equal(volume.array, volume0.array)
                masks = {name: (labels == value).astype(np.uint8) for name, value in LABELS.items()}
            if masks is not None:
                masks["spleen_stomach"] = masks.pop("spleen") | masks.pop("stomach")
                masks["absent"] = np.zeros(volume.shape, np.uint8)
            cache[name] = (folder, volume, masks)
        return cache[name]

    return get


def read_back(seg_file: Path, volume) -> dict[int, np.ndarray]:
    """Segment number → mask on ``volume``'s grid, from the SEG's frames as highdicom places them (its volume's
    LPS affine), each voxel mapped onto the scan's grid (must land on a voxel centre)."""
    seg = hd.seg.segread(seg_file)
    placed = seg.get_volume(combine_segments=False)
    to_scan = np.linalg.inv(volume.affine) @ FLIP @ placed.affine
    grid = np.indices(placed.array.shape[:3]).reshape(3, -1)
    index = to_scan[:3, :3] @ grid + to_scan[:3, 3:]
    rounded = np.rint(index).astype(int)
    assert np.abs(index - rounded).max() < 1e-3
    result = {}
    for j, number in enumerate(seg.segment_numbers):
        mask = np.zeros(volume.shape, np.uint8)
        values = placed.array[..., j].reshape(-1)
        inside = values > 0
        mask[rounded[0][inside], rounded[1][inside], rounded[2][inside]] = 1
        result[number] = mask
    return result


def read_back_by_frames(seg_file: Path, volume) -> dict[int, np.ndarray]:
    """Segment number → mask on ``volume``'s grid, each SEG frame placed by its own PlanePositionSequence,
    PlaneOrientationSequence and PixelMeasuresSequence (not highdicom's volume, which needs evenly stacked frames:
    a gantry-tilted series' frames are not), every pixel mapped onto the scan's grid (must land on a voxel
    centre)."""
    ds = pydicom.dcmread(seg_file)
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float)
    to_index = np.linalg.inv(volume.affine) @ FLIP
    rows, cols = np.indices((ds.Rows, ds.Columns)).reshape(2, -1)
    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    result: dict[int, np.ndarray] = {}
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        lps = (position[:, None] + orientation[:3, None] * cols * spacing[1] + orientation[3:, None] * rows * spacing[0])
        index = to_index[:3, :3] @ lps + to_index[:3, 3:]
        rounded = np.rint(index).astype(int)
        assert np.abs(index - rounded).max() < 1e-3
        mask = result.setdefault(number, np.zeros(volume.shape, np.uint8))
        inside = frame.reshape(-1) > 0
        mask[rounded[0][inside], rounded[1][inside], rounded[2][inside]] = 1
    return result


@pytest.mark.parametrize("name", ["classic", "tilted", "enhanced_oblique"])
def test_seg_frames_placed_by_their_own_positions_are_the_nifti_masks(variants, tmp_path, name):
    # A gantry-tilted series included: each frame lies on its source slice, sheared stack and all.
    folder, volume, masks = variants(name)
    summary = write_dicom_seg(tmp_path / "segmentation.seg.dcm", masks, volume, SEGMENTS, model_name="nano",
                              software_version="0.1.0")
    back = read_back_by_frames(tmp_path / "segmentation.seg.dcm", volume)
    for segment in summary["segments"]:
        assert masks[segment["name"]].sum() > 100
        np.testing.assert_array_equal(back[segment["number"]], masks[segment["name"]], err_msg=segment["name"])
    seg = pydicom.dcmread(tmp_path / "segmentation.seg.dcm")
    sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in folder.iterdir()}
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source in sources
    if name == "tilted":
        assert dciodvfy_errors(tmp_path / "segmentation.seg.dcm") == []


@pytest.mark.parametrize("name", ["classic", "lps_columns", "reversed", "oblique", "enhanced", "enhanced_oblique"])
def test_seg_read_back_with_highdicom_is_voxel_identical_to_the_nifti_masks(variants, tmp_path, name):
    folder, volume, masks = variants(name)
    summary = write_dicom_seg(tmp_path / "segmentation.seg.dcm", masks, volume, SEGMENTS, model_name="nano",
                              software_version="0.1.0")
    assert summary["empty"] == ["absent"]
    assert [s["name"] for s in summary["segments"]] == ["liver", "spleen_stomach", "right_adrenal"]
    back = read_back(tmp_path / "segmentation.seg.dcm", volume)
    for segment in summary["segments"]:
        assert masks[segment["name"]].sum() > 100
        np.testing.assert_array_equal(back[segment["number"]], masks[segment["name"]], err_msg=segment["name"])


def test_seg_carries_prompts_terms_codes_colours_and_references_every_source_instance(variants, tmp_path):
    folder, volume, masks = variants("classic")
    write_dicom_seg(tmp_path / "a.dcm", masks, volume, SEGMENTS, model_name="nano", software_version="0.1.0")
    seg = pydicom.dcmread(tmp_path / "a.dcm")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    liver, union, adrenal = seg.SegmentSequence
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen and stomach", "right adrenal gland"]
    assert union.SegmentDescription == "spleen, stomach"
    assert (liver.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            liver.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("10200004", "SCT")
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    adrenal_type = adrenal.SegmentedPropertyTypeCodeSequence[0]
    assert adrenal_type.CodeValue == "23451007"
    assert adrenal_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"  # Right
    assert union.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99SATSEG"
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SATSEG"
    assert liver.SegmentAlgorithmType == "AUTOMATIC"
    assert "satseg" in liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    assert "nano" in liver.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion
    colours = [tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence]
    assert len(set(colours)) == 3
    # every frame is derived from the source instance at its position
    by_uid = {s.SOPInstanceUID: s for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   by_uid[uid].ImagePositionPatient, atol=1e-4)


def _without_uids_and_times(ds: pydicom.Dataset) -> list:
    """The data elements of ``ds`` (recursively), leaving out UIDs, dates and times: what must repeat."""
    kept = []
    for element in ds:
        if element.VR in ("UI", "DA", "TM", "DT"):
            continue
        if element.VR == "SQ":
            kept.append((element.tag, [_without_uids_and_times(item) for item in element.value]))
        else:
            kept.append((element.tag, element.value))
    return kept


def test_seg_is_reproducible_apart_from_uids_and_dates(variants, tmp_path):
    _, volume, masks = variants("classic")
    for name in ("a.dcm", "b.dcm"):
        write_dicom_seg(tmp_path / name, masks, volume, SEGMENTS, model_name="nano", software_version="0.1.0")
    a, b = (pydicom.dcmread(tmp_path / n) for n in ("a.dcm", "b.dcm"))
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert _without_uids_and_times(a) == _without_uids_and_times(b)


@pytest.mark.parametrize("name", ["classic", "enhanced_oblique"])
def test_dciodvfy_reports_no_error_on_the_seg(variants, tmp_path, name):
    _, volume, masks = variants(name)
    write_dicom_seg(tmp_path / "s.dcm", masks, volume, SEGMENTS, model_name="nano", software_version="0.1.0")
    assert dciodvfy_errors(tmp_path / "s.dcm") == []


def test_seg_from_a_zip_of_the_series(variants, tmp_path):
    folder, _, masks = variants("reversed")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in folder.iterdir():
            zf.write(file, f"ct/{file.name}")
    volume = read_volume(archive)
    write_dicom_seg(tmp_path / "s.dcm", masks, volume, SEGMENTS, model_name="nano", software_version="0.1.0")
    back = read_back(tmp_path / "s.dcm", volume)
    np.testing.assert_array_equal(back[1], masks["liver"])


def test_nifti_made_from_the_series_writes_a_seg_with_reference_series(variants, tmp_path):
    folder, volume, masks = variants("oblique")
    nib.save(nib.Nifti1Image(volume.array[::-1, :, ::-1].copy(), volume.affine @ _flip_matrix(volume.shape)),
             tmp_path / "scan.nii.gz")  # the same grid in another voxel order
    scan = read_volume(tmp_path / "scan.nii.gz")
    nifti_masks = {k: v[::-1, :, ::-1].copy() for k, v in masks.items()}
    series = check_reference_series(scan, folder)
    write_dicom_seg(tmp_path / "s.dcm", nifti_masks, scan, SEGMENTS, model_name="nano", software_version="0.1.0",
                    source=series)
    back = read_back(tmp_path / "s.dcm", scan)
    np.testing.assert_array_equal(back[1], nifti_masks["liver"])


def _flip_matrix(shape) -> np.ndarray:
    """Voxel index map of flipping axes 0 and 2: (i, j, k) → (I-1-i, j, K-1-k)."""
    m = np.diag([-1.0, 1.0, -1.0, 1.0])
    m[0, 3], m[2, 3] = shape[0] - 1, shape[2] - 1
    return m


@pytest.mark.parametrize(("change", "fragment"), [
    ("shift", "off the scan's grid"),
    ("crop", "frames of 512×512 pixels; the scan is 512×512×19"),
    ("spacing", "not a voxel step of the scan"),
])
def test_reference_series_whose_geometry_differs_is_refused_naming_what(variants, tmp_path, change, fragment):
    folder, volume, _ = variants("classic")
    affine, array = volume.affine.copy(), volume.array
    if change == "shift":
        affine[:3, 3] += affine[:3, 0] * 0.5  # half a voxel
    elif change == "crop":
        array = array[:, :, :19]
    else:
        affine[:3, :2] *= 1.1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), tmp_path / "scan.nii.gz")
    with pytest.raises(InputError) as info:
        check_reference_series(read_volume(tmp_path / "scan.nii.gz"), folder)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_straight_stack_of_a_tilted_series_is_refused_not_written_misplaced(original, tmp_path):
    # The reader gives a tilted series its sheared grid (tests/test_dicom_tilt.py); the writer's own check is the
    # second line of defence: a straight stack of the tilted series' pixels (what a reader that ignores the tilt
    # would give) is off the series' grid, so nothing is written.
    classic, volume0, _ = original
    folder, _transform = dv.make_variant("tilted", classic, tmp_path / "tilted")
    assert np.abs(read_volume(folder).affine - volume0.affine).max() > 0.2
    uid = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    straight = Volume(array=volume0.array, affine=volume0.affine, source=folder, meta=dict(volume0.meta, series_uid=uid))
    masks = {s.name: np.ones(straight.shape, np.uint8) for s in SEGMENTS}
    with pytest.raises(InputError) as info:
        write_dicom_seg(tmp_path / "s.dcm", masks, straight, SEGMENTS, model_name="nano", software_version="0.1.0")
    assert "grid" in str(info.value) and "\n" not in str(info.value), info.value
    assert not (tmp_path / "s.dcm").exists()


def test_scan_not_read_from_dicom_is_refused(variants, tmp_path):
    _, volume, masks = variants("classic")
    nib.save(nib.Nifti1Image(volume.array, volume.affine), tmp_path / "scan.nii.gz")
    scan = read_volume(tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="DICOM outputs need a scan read from DICOM"):
        write_dicom_seg(tmp_path / "s.dcm", masks, scan, SEGMENTS, model_name="nano", software_version="0.1.0")
    assert not (tmp_path / "s.dcm").exists()


def test_anonymised_series_without_uids_is_refused(reference_files, original, tmp_path):
    _, volume, labels = original  # the real files: empty Study/Series Instance UIDs
    masks = {"liver": (labels == 5).astype(np.uint8)}
    with pytest.raises(InputError, match="no StudyInstanceUID, SeriesInstanceUID"):
        write_dicom_seg(tmp_path / "s.dcm", masks, volume, [SEGMENTS[0]], model_name="nano",
                        software_version="0.1.0")


def test_all_masks_empty_writes_nothing_and_says_so(variants, tmp_path):
    _, volume, _ = variants("classic")
    masks = {s.name: np.zeros(volume.shape, np.uint8) for s in SEGMENTS}
    summary = write_dicom_seg(tmp_path / "s.dcm", masks, volume, SEGMENTS, model_name="nano",
                              software_version="0.1.0")
    assert summary["path"] is None and summary["empty"] == [s.name for s in SEGMENTS]
    assert not (tmp_path / "s.dcm").exists()
