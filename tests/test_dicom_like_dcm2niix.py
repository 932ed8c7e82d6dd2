"""DICOM series read like dcm2niix does, or refused with a one-line reason (issue 14, item 7).

The reference series is TotalSegmentator's real ``example_ct_dicom`` (20 JPEG 2000 CT slices, 2 mm apart). Enhanced
multi-frame files are made from it with highdicom's legacy converter (the same voxels in one file, with the rescale
in the functional groups); damaged files are made by editing the bytes of one of its slices.
"""

from __future__ import annotations

import copy
import shutil
import struct
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from satseg.errors import InputError
from satseg.io import read_volume

NO_GEOMETRY = "no slice position/orientation: cannot place the voxels in space"


# --- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_dir(reference_files) -> Path:
    return reference_files / "example_ct_dicom"


@pytest.fixture(scope="module")
def classic(ct_dir):
    """The real series as read by satseg (dicom2nifti path)."""
    return read_volume(ct_dir)


@pytest.fixture(scope="module")
def ct_datasets(ct_dir) -> list[pydicom.Dataset]:
    """The real slices, decompressed, with the UIDs that the anonymised files lack (highdicom needs them)."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for file in sorted(ct_dir.iterdir()):
        ds = pydicom.dcmread(file)
        ds.decompress()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        datasets.append(ds)
    return datasets


def enhanced(datasets: list[pydicom.Dataset], folder: Path, modality: str = "CT") -> Path:
    """Write one legacy-converted enhanced multi-frame file made of ``datasets`` (highdicom's converter for CT or MR)
    to ``folder``; return the folder."""
    legacy = pytest.importorskip("highdicom.legacy")
    converter = {"CT": legacy.LegacyConvertedEnhancedCTImage, "MR": legacy.LegacyConvertedEnhancedMRImage}[modality]
    folder.mkdir(parents=True)
    image = converter(copy.deepcopy(datasets), series_instance_uid=generate_uid(), series_number=99,
                      sop_instance_uid=generate_uid(), instance_number=1)
    image.save_as(folder / "enhanced.dcm")
    return folder


def save_series(datasets: list[pydicom.Dataset], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, ds in enumerate(datasets):
        ds.save_as(folder / f"slice{i:03d}.dcm", enforce_file_format=True)
    return folder


def along_normal(ds: pydicom.Dataset) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return float(np.dot(np.cross(iop[:3], iop[3:]), np.asarray(ds.ImagePositionPatient, float)))


def files_by_position(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda f: along_normal(pydicom.dcmread(f, stop_before_pixels=True)))


def one_line_refusal(path: Path, *fragments: str) -> str:
    with pytest.raises(InputError) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def header_geometry(header) -> dict:
    return {
        "dim": header["dim"].tolist(), "pixdim": header["pixdim"].tolist(), "qform": header.get_qform().tolist(),
        "sform": header.get_sform().tolist(), "codes": (int(header["qform_code"]), int(header["sform_code"])),
        "units": header.get_xyzt_units(),
    }


def assert_same_volume(a, b) -> None:
    assert a.array.dtype == b.array.dtype
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert header_geometry(a.header) == header_geometry(b.header)


# --- (a) enhanced multi-frame: rescale from the functional groups ------------------------------------------------


def test_enhanced_ct_reads_in_hounsfield_units_like_its_classic_series(ct_datasets, classic, tmp_path):
    folder = enhanced(ct_datasets, tmp_path / "enhanced")
    stored = pydicom.dcmread(folder / "enhanced.dcm")
    shared = stored.SharedFunctionalGroupsSequence[0]
    assert "RescaleIntercept" not in stored and shared.PixelValueTransformationSequence[0].RescaleIntercept == -1024

    vol = read_volume(folder)

    assert classic.array.min() == -1024 and vol.meta["n_frames"] == 20
    assert_same_volume(vol, classic)


def test_enhanced_ct_with_a_different_rescale_per_frame_reads_the_same_values(ct_datasets, classic, tmp_path):
    # Store every slice with its own slope and intercept (stored = (HU - intercept) / slope): the values are the same.
    varied = copy.deepcopy(ct_datasets)
    for k, ds in enumerate(varied):
        hu = ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        slope, intercept = (0.5 if k % 2 else 1.0), -1024 - k
        ds.PixelData = np.round((hu - intercept) / slope).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit, ds.RescaleSlope, ds.RescaleIntercept = 16, 15, slope, intercept
    folder = enhanced(varied, tmp_path / "enhanced")
    stored = pydicom.dcmread(folder / "enhanced.dcm")
    per_frame = [f.PixelValueTransformationSequence[0] for f in stored.PerFrameFunctionalGroupsSequence]
    assert len({(float(t.RescaleSlope), float(t.RescaleIntercept)) for t in per_frame}) == 20
    assert "PixelValueTransformationSequence" not in stored.SharedFunctionalGroupsSequence[0]

    assert_same_volume(read_volume(save_series(varied, tmp_path / "classic")), classic)
    assert_same_volume(read_volume(folder), classic)


def test_enhanced_ct_whose_rescale_cannot_be_read_is_refused(ct_datasets, tmp_path):
    folder = enhanced(ct_datasets, tmp_path / "enhanced")
    file = folder / "enhanced.dcm"
    ds = pydicom.dcmread(file)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleSlope
    ds.save_as(file)
    one_line_refusal(folder, "enhanced.dcm", "RescaleSlope")


def test_enhanced_ct_with_frames_at_repeated_positions_is_refused(ct_datasets, tmp_path):
    folder = enhanced(ct_datasets, tmp_path / "enhanced")
    file = folder / "enhanced.dcm"
    ds = pydicom.dcmread(file)
    frames = ds.PerFrameFunctionalGroupsSequence
    frames[7].PlanePositionSequence[0].ImagePositionPatient = frames[6].PlanePositionSequence[0].ImagePositionPatient
    ds.save_as(file)
    one_line_refusal(folder, "enhanced.dcm frame 7", "enhanced.dcm frame 8", "same position")


# --- (b) uneven or repeated slice positions ---------------------------------------------------------------------


def test_untouched_series_reads_at_its_2_mm_spacing(classic):
    assert classic.shape == (512, 512, 20)
    np.testing.assert_allclose(classic.spacing_mm, (0.9765625, 0.9765625, 2.0))


def test_series_with_a_missing_slice_is_refused_naming_the_gap(ct_dir, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(ct_dir, folder)
    ordered = files_by_position(folder)
    ordered[10].unlink()
    message = one_line_refusal(folder, "slice positions are uneven", "gap of 4.0 mm", "spacing is 2.0 mm",
                               "a missing slice?", ordered[9].name, ordered[11].name)
    assert message.startswith("gap: ")


def test_series_with_a_repeated_slice_position_is_refused(ct_dir, tmp_path):
    folder = tmp_path / "dup"
    shutil.copytree(ct_dir, folder)
    original = files_by_position(folder)[5]
    shutil.copy(original, folder / "copy_of_slice")
    one_line_refusal(folder, "same position", original.name, "copy_of_slice")


@pytest.mark.parametrize(("shift_mm", "reads"), [(0.05, True), (0.5, False)])
def test_slice_positions_count_as_even_within_dcm2niix_tolerance_of_0_2_mm(ct_dir, tmp_path, shift_mm, reads):
    folder = tmp_path / "jitter"
    shutil.copytree(ct_dir, folder)
    victim = files_by_position(folder)[8]
    ds = pydicom.dcmread(victim)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + shift_mm  # the slice normal is +z
    ds.save_as(victim)
    if reads:
        assert read_volume(folder).shape == (512, 512, 20)
    else:
        one_line_refusal(folder, "slice positions are uneven", victim.name)


# --- (c) malformed tags name the file and the problem -----------------------------------------------------------


def element_offset(raw: bytes, group: int, element: int) -> int:
    """Offset of an explicit-VR little-endian element of the data set (after the 132-byte preamble)."""
    return raw.index(struct.pack("<HH", group, element), 132)


def text_in_ds(raw: bytearray) -> None:
    at = element_offset(raw, 0x0020, 0x0032)  # ImagePositionPatient, DS
    length = struct.unpack("<H", raw[at + 6:at + 8])[0]
    raw[at + 8:at + 8 + length] = b"left\\right\\up".ljust(length, b" ")


def wrong_vr(raw: bytearray) -> None:
    at = element_offset(raw, 0x0028, 0x0030)  # PixelSpacing: DS written as US
    raw[at + 4:at + 6] = b"US"


def wrong_vr_of_a_number(raw: bytearray) -> None:
    at = element_offset(raw, 0x0028, 0x0100)  # BitsAllocated: US written as SS
    raw[at + 4:at + 6] = b"SS"


def wrong_length_of_a_number(raw: bytearray) -> None:
    at = element_offset(raw, 0x0028, 0x0010)  # Rows (US, 2 bytes) claims 12 bytes
    raw[at + 6:at + 8] = struct.pack("<H", 12)


def wrong_length_of_a_text(raw: bytearray) -> None:
    at = element_offset(raw, 0x0020, 0x0032)  # ImagePositionPatient's length overruns into the next element
    length = struct.unpack("<H", raw[at + 6:at + 8])[0]
    raw[at + 6:at + 8] = struct.pack("<H", length + 8)


def truncated(raw: bytearray) -> None:
    del raw[len(raw) * 2 // 3:]


CORRUPTIONS = {
    "text in a DS": (text_in_ds, "ImagePositionPatient"),
    "wrong VR of a DS": (wrong_vr, "PixelSpacing"),
    "wrong VR of a US": (wrong_vr_of_a_number, "BitsAllocated"),
    "wrong length of a US": (wrong_length_of_a_number, "Rows"),
    "wrong length of a DS": (wrong_length_of_a_text, "ImagePositionPatient"),
    "truncated JPEG 2000 pixel data": (truncated, "pixel data"),
}


def damaged_series(ct_dir: Path, folder: Path, damage, uncompressed: bool = False) -> Path:
    shutil.copytree(ct_dir, folder)
    victim = files_by_position(folder)[7]
    if uncompressed:
        ds = pydicom.dcmread(victim)
        ds.decompress()
        ds.save_as(victim)
    raw = bytearray(victim.read_bytes())
    damage(raw)
    victim.write_bytes(bytes(raw))
    return victim


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_malformed_file_is_refused_naming_the_file_and_the_problem(ct_dir, tmp_path, case):
    damage, problem = CORRUPTIONS[case]
    victim = damaged_series(ct_dir, tmp_path / "series", damage)
    one_line_refusal(tmp_path / "series", victim.name, problem)


def test_truncated_uncompressed_pixel_data_is_refused(ct_dir, tmp_path):
    victim = damaged_series(ct_dir, tmp_path / "series", truncated, uncompressed=True)
    one_line_refusal(tmp_path / "series", victim.name, "pixel data")


def test_malformed_file_is_a_one_line_cli_error(ct_dir, tmp_path, isolated_home, capsys):
    from satseg.cli.main import main

    victim = damaged_series(ct_dir, tmp_path / "series", wrong_length_of_a_number)
    code = main([str(tmp_path / "series"), "-p", "liver", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("satseg: error: ")]
    assert len(errors) == 1 and victim.name in errors[0] and "Rows" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- (d) no geometry: refused for that reason ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["every slice", "one slice"])
def test_classic_slices_without_position_or_orientation_are_refused(ct_dir, tmp_path, which):
    folder = tmp_path / "flat"
    shutil.copytree(ct_dir, folder)
    files = files_by_position(folder)
    for file in files if which == "every slice" else files[3:4]:
        ds = pydicom.dcmread(file)
        del ds.ImagePositionPatient
        if which == "every slice":
            del ds.ImageOrientationPatient
        ds.save_as(file)
    message = one_line_refusal(folder, NO_GEOMETRY)
    if which == "one slice":
        assert files[3].name in message


def mr_series(n: int = 6) -> list[pydicom.Dataset]:
    """A classic MR series made of pydicom's real ``MR_small.dcm`` slice, stacked 2 mm apart along its normal."""
    template = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    study, series = generate_uid(), generate_uid()
    datasets = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, series
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in template.ImagePositionPatient[:2]] + [
            float(template.ImagePositionPatient[2]) + 2.0 * k]
        ds.PixelData = np.roll(template.pixel_array, k, axis=0).astype(np.int16).tobytes()  # not all slices equal
        datasets.append(ds)
    return datasets


def test_enhanced_mr_reads_like_its_classic_series(tmp_path):
    slices = mr_series()
    classic_mr = read_volume(save_series(slices, tmp_path / "classic"))
    multi = read_volume(enhanced(slices, tmp_path / "enhanced", "MR"))
    assert multi.modality == classic_mr.modality == "mri" and classic_mr.shape == (64, 64, 6)
    np.testing.assert_array_equal(multi.array, classic_mr.array)
    np.testing.assert_array_equal(multi.affine, classic_mr.affine)


@pytest.mark.parametrize("group", ["PlanePositionSequence", "PlaneOrientationSequence"])
@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_enhanced_image_without_plane_position_or_orientation_is_refused(ct_datasets, tmp_path, group, modality):
    if modality == "MR":
        folder = enhanced(mr_series(), tmp_path / "enhanced", "MR")
    else:
        folder = enhanced(ct_datasets, tmp_path / "enhanced")
    file = folder / "enhanced.dcm"
    ds = pydicom.dcmread(file)
    for groups in (*ds.PerFrameFunctionalGroupsSequence, *ds.SharedFunctionalGroupsSequence):
        if group in groups:
            del groups[group]
    ds.save_as(file)
    one_line_refusal(folder, "enhanced.dcm", NO_GEOMETRY)


# --- (e) header codes as dcm2niix writes them ---------------------------------------------------------------------


def dcm2niix_reference(series: Path, out: Path) -> nib.Nifti1Image | None:
    """dcm2niix's conversion of ``series`` (None when dcm2niix is not installed)."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        return None
    out.mkdir()
    subprocess.run([exe, "-z", "n", "-b", "n", "-f", "reference", "-o", str(out), str(series)], check=True,
                   capture_output=True, timeout=120)
    (nifti,) = out.glob("*.nii")
    return nib.load(nifti)


@pytest.mark.parametrize("layout", ["classic", "enhanced"])
def test_dicom_header_and_written_masks_carry_the_codes_dcm2niix_writes(ct_dir, ct_datasets, tmp_path, layout):
    from satseg.outputs.masks import write_masks

    series = ct_dir if layout == "classic" else enhanced(ct_datasets, tmp_path / "enhanced")
    vol = read_volume(series)
    reference = dcm2niix_reference(series, tmp_path / "dcm2niix")
    if reference is None:
        expected_codes = (1, 1)  # NIFTI_XFORM_SCANNER_ANAT for both, what dcm2niix writes for DICOM
    else:
        expected_codes = (int(reference.header["qform_code"]), int(reference.header["sform_code"]))
        np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-4)
        ours = nib.as_closest_canonical(nib.Nifti1Image(vol.array, vol.affine))
        theirs = nib.as_closest_canonical(reference)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
    assert expected_codes == (1, 1)

    assert (int(vol.header["qform_code"]), int(vol.header["sform_code"])) == expected_codes
    np.testing.assert_allclose(vol.header.get_qform(), vol.affine, atol=1e-5)
    np.testing.assert_allclose(vol.header.get_sform(), vol.affine, atol=1e-5)

    mask = vol.array > 0
    (path,) = write_masks({"body": mask}, vol, tmp_path / "masks")
    written = nib.load(path)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == expected_codes
    np.testing.assert_allclose(written.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask)


def test_series_dicom2nifti_refuses_is_read_by_simpleitk_with_the_same_codes(ct_dir, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for file in files_by_position(ct_dir)[:3]:  # dicom2nifti needs at least 4 slices; GDCM reads 3
        shutil.copy(file, folder / file.name)
    vol = read_volume(folder)
    assert vol.meta["converter"] == "SimpleITK" and vol.shape == (512, 512, 3) and vol.array.min() == -1024
    assert (int(vol.header["qform_code"]), int(vol.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(vol.header.get_best_affine(), vol.affine, atol=1e-5)
    reference = dcm2niix_reference(folder, tmp_path / "dcm2niix")
    if reference is not None:
        ours = nib.as_closest_canonical(nib.Nifti1Image(vol.array, vol.affine))
        theirs = nib.as_closest_canonical(reference)
        np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def test_enhanced_ct_and_its_classic_series_give_identical_masks_with_the_same_weights(
    ct_datasets, ct_dir, tmp_path_factory, env
):
    from pipeline_helpers import run_cli

    root = tmp_path_factory.mktemp("enhanced-masks")
    multi = enhanced(ct_datasets, root / "enhanced")
    written = {}
    for label, scan in (("classic", ct_dir), ("enhanced", multi)):
        out = root / f"out-{label}"
        done = run_cli(str(scan), "-p", "liver", "-p", "spleen", "-p", "aorta", "-o", str(out), "--model", "tiny-test",
                       env=env)
        assert done.returncode == 0, done.stderr
        written[label] = {p.name: nib.load(p) for p in sorted(out.glob("*.nii.gz"))}
    assert sorted(written["classic"]) == ["aorta.nii.gz", "liver.nii.gz", "spleen.nii.gz"]
    for name, classic_mask in written["classic"].items():
        enhanced_mask = written["enhanced"][name]
        np.testing.assert_array_equal(np.asanyarray(enhanced_mask.dataobj), np.asanyarray(classic_mask.dataobj))
        np.testing.assert_array_equal(enhanced_mask.affine, classic_mask.affine)
    assert any(np.asanyarray(m.dataobj).any() for m in written["classic"].values())  # not trivially empty
