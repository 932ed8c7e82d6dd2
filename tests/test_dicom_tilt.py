"""Gantry-tilted (sheared) DICOM series are refused with one line, never stacked straight and misplaced.

A CT acquired with a tilted gantry has slices rotated about the left-right axis while the table moves along z, so
ImagePositionPatient does not step along the slice normal (row × column cosines). Stacked on a NIfTI grid, slice k
would be shifted in its plane by k × spacing × tan(tilt). Before this check satseg read a 15° series through
SimpleITK (dicom2nifti refuses it) onto a straight grid without a word, and refused a 2° series (which dicom2nifti
converts with a sheared affine) with an orthonormality message naming neither the tilt nor the files.

The series are made from TotalSegmentator's real CT (``example_ct_dicom``, 20 slices 2 mm apart) with
``tests/dicom_variants.py``: its ``tilted`` variant (15°, GantryDetectorTilt 15) and the same construction at other
angles (keeping the real series' nominal GantryDetectorTilt of 0: the positions alone decide). dcm2niix, where installed, is the
second opinion on which series are tilted and by how much.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicom_variants as dv
from pipeline_helpers import error_lines, run_cli
from satseg.errors import InputError
from satseg.io import read_volume

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS ↔ RAS on homogeneous coordinates


@pytest.fixture(scope="module")
def ct_dir(reference_files) -> Path:
    return reference_files / "example_ct_dicom"


@pytest.fixture(scope="module")
def classic(ct_dir):
    """The real slices, decompressed, sorted by position (dicom_variants.load_classic)."""
    return dv.load_classic(ct_dir)


@pytest.fixture(scope="module")
def original(ct_dir):
    """The real series as satseg reads it."""
    return read_volume(ct_dir)


@pytest.fixture(scope="module")
def tilted15(classic, tmp_path_factory) -> Path:
    folder, _ = dv.make_variant("tilted", classic, tmp_path_factory.mktemp("variants") / "tilted")
    return folder


def tilt(classic, degrees: float, *, jitter_mm: float = 0.0, seed: int = 0) -> list[pydicom.Dataset]:
    """``classic`` with its slices rotated ``degrees`` about x at their own positions (dicom_variants' ``tilted``
    construction at any angle), as a new series; ``jitter_mm``: each position moved up to that much along the row
    and column directions (rounding noise)."""
    datasets = copy.deepcopy(classic)
    rotation = dv._rotation("x", degrees)
    rng = np.random.default_rng(seed)
    series = generate_uid()
    for ds in datasets:
        position, row, col, _ = dv._geometry(ds)
        row, col = rotation @ row, rotation @ col
        position = position + jitter_mm * (rng.uniform(-1, 1) * row + rng.uniform(-1, 1) * col)
        dv._set(ds, position, row, col)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return datasets


def save(datasets, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"IM{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
    return folder


def save_enhanced(datasets, folder: Path) -> Path:
    legacy = pytest.importorskip("highdicom.legacy")
    folder.mkdir(parents=True)
    image = legacy.LegacyConvertedEnhancedCTImage(copy.deepcopy(datasets), series_instance_uid=generate_uid(),
                                                  series_number=7, sop_instance_uid=generate_uid(), instance_number=1)
    image.save_as(folder / "enhanced.dcm")
    return folder


def series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def assert_tilt_refusal(message: str, degrees: float, uid: str, first: str, last: str) -> None:
    """The one-line refusal: the angle, the series, the two slices it was measured between, and the way out."""
    assert "\n" not in message, message
    angle = re.search(r"gantry-tilted: its slice positions step ([0-9.]+)° off the slice normal", message)
    assert angle is not None, message
    assert float(angle.group(1)) == pytest.approx(degrees, abs=0.05), message
    assert f"series {uid}" in message, message
    ends = re.search(r"\((.+?) to (.+?): [0-9.]+ mm sideways over [0-9.]+ mm\)", message)
    assert ends is not None and {ends.group(1), ends.group(2)} == {first, last}, message  # the ends of the stack
    assert "dcm2niix" in message and "_Tilt_1.nii" in message, message


def assert_placed_as_dicom_says(vol, datasets, original, classic, *, mm: float) -> None:
    """``vol`` (read from ``datasets``, made from ``classic`` slice by slice) has the voxels of ``original`` (read
    from ``classic``) in the same order, and puts the corner pixels of every slice within ``mm`` of where that
    slice's ImagePositionPatient / ImageOrientationPatient / PixelSpacing say they are."""
    np.testing.assert_array_equal(vol.array, original.array)
    worst = 0.0
    for ds, ds0 in zip(datasets, classic, strict=True):
        for r, c in ((0, 0), (0, 511), (511, 0), (511, 511)):
            position, row, col, spacing = dv._geometry(ds0)
            index = np.rint(np.linalg.inv(original.affine) @ FLIP @ [*(position + c * spacing[1] * row
                                                                        + r * spacing[0] * col), 1])
            position, row, col, spacing = dv._geometry(ds)
            said = FLIP @ [*(position + c * spacing[1] * row + r * spacing[0] * col), 1]
            worst = max(worst, float(np.linalg.norm(vol.affine @ index - said)))
    assert worst < mm, worst


# --- refused: every way a series reaches the reader -----------------------------------------------------------------


@pytest.mark.parametrize("given", ["folder", "zip", "one file"])
def test_15_degree_tilted_series_is_refused_in_one_line(tilted15, tmp_path, given):
    # The old reader returned this series (SimpleITK fallback) on a straight grid: slice 20 about 10 mm off.
    if given == "folder":
        path = tilted15
    elif given == "zip":
        path = tmp_path / "tilted.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for file in sorted(tilted15.iterdir()):
                archive.write(file, file.name)
    else:
        path = tilted15 / "IM0007.dcm"
    assert pydicom.dcmread(tilted15 / "IM0001.dcm").GantryDetectorTilt == 15
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert str(info.value).startswith(f"{path.name}: ")
    assert_tilt_refusal(str(info.value), 15, series_uid(tilted15), "IM0001.dcm", "IM0020.dcm")


@pytest.mark.parametrize("degrees", [2.0, -2.0, 15.0])
def test_tilt_measured_from_the_positions_not_the_nominal_tag(classic, tmp_path, degrees):
    # GantryDetectorTilt says 0 (the real series' value, kept): the slice positions alone show the shear (either
    # direction).
    folder = save(tilt(classic, degrees), tmp_path / "tilted")
    assert float(pydicom.dcmread(folder / "IM0001.dcm").GantryDetectorTilt) == 0
    with pytest.raises(InputError) as info:
        read_volume(folder)
    assert_tilt_refusal(str(info.value), abs(degrees), series_uid(folder), "IM0001.dcm", "IM0020.dcm")


@pytest.mark.parametrize("degrees", [15.0, 2.0])
def test_tilted_enhanced_multiframe_image_is_refused_naming_its_frames(classic, tmp_path, degrees):
    folder = save_enhanced(tilt(classic, degrees), tmp_path / "enhanced")
    with pytest.raises(InputError) as info:
        read_volume(folder)
    assert_tilt_refusal(str(info.value), degrees, series_uid(folder), "enhanced.dcm frame 1", "enhanced.dcm frame 20")


@pytest.mark.parametrize("degrees", [15.0, 2.0])
def test_cli_refuses_a_tilted_series_before_any_model_is_needed(classic, tilted15, tmp_path, degrees):
    # sat-nano is a known model whose weights are not there (empty SATSEG_HOME, offline): had the scan been read,
    # the run would have gone on to load the model ("loading model" stage, exit 1). It stops at the scan: exit 2.
    folder = tilted15 if degrees == 15 else save(tilt(classic, degrees), tmp_path / "tilted")
    env = dict(os.environ, SATSEG_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    done = run_cli(str(folder), "-p", "liver", "-o", str(out), "--model", "sat-nano", env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    [line] = error_lines(done.stderr)
    assert line.startswith(f"satseg: error: {folder.name}: "), line
    assert_tilt_refusal(line, degrees, series_uid(folder), "IM0001.dcm", "IM0020.dcm")
    assert "loading model" not in done.stderr
    assert not out.exists()


# --- still read: untilted, rounding jitter, a tilt below the tolerance, oblique --------------------------------------


def test_untilted_series_reads_as_the_original(classic, original, tmp_path):
    vol = read_volume(save(tilt(classic, 0.0), tmp_path / "untilted"))
    assert vol.meta["converter"] == "dicom2nifti"
    np.testing.assert_array_equal(vol.array, original.array)
    np.testing.assert_allclose(vol.affine, original.affine, atol=1e-6)


def test_untilted_series_with_a_stale_gantry_tilt_tag_reads(classic, original, tmp_path):
    # A tool that resampled a tilted series may leave GantryDetectorTilt set; the positions are straight.
    datasets = tilt(classic, 0.0)
    for ds in datasets:
        ds.GantryDetectorTilt = 15
    vol = read_volume(save(datasets, tmp_path / "resampled"))
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=1e-4)


@pytest.mark.parametrize("jitter_mm", [0.001, 0.004])
def test_rounding_jitter_in_slice_positions_still_reads(classic, original, tmp_path, jitter_mm):
    # Positions off by a few µm in the slice plane (decimal rounding): 0.004 mm on the 2 mm step to the second slice
    # is 0.16° there, above the angle tolerance, but below the 0.01 mm allowed for rounding.
    datasets = tilt(classic, 0.0, jitter_mm=jitter_mm)
    vol = read_volume(save(datasets, tmp_path / "jitter"))
    assert vol.meta["converter"] == "dicom2nifti"
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=3 * jitter_mm)


@pytest.mark.parametrize("degrees", [0.02, -0.03])
def test_tilt_below_the_tolerance_still_reads(classic, original, tmp_path, degrees):
    # 0.03° over the 38 mm stack is 0.02 mm sideways: dcm2niix reports no tilt either (it does from 0.033°), and
    # dicom2nifti's affine, which steps from the first to the last slice, places the slices right.
    datasets = tilt(classic, degrees)
    vol = read_volume(save(datasets, tmp_path / "series"))
    assert vol.meta["converter"] == "dicom2nifti"
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=0.02)


@pytest.mark.parametrize("variant", ["oblique", "enhanced_oblique"])
def test_oblique_series_rotated_but_not_sheared_still_reads(classic, original, tmp_path, variant):
    # Rotated 20° about x and 12° about z as a whole: the positions step along the (oblique) normal.
    folder, transform = dv.make_variant(variant, classic, tmp_path / variant)
    vol = read_volume(folder)
    # Every voxel centre of the oblique volume maps onto a voxel centre of the original with the same value.
    to_original = np.linalg.inv(original.affine) @ FLIP @ np.linalg.inv(transform) @ FLIP @ vol.affine
    index = to_original[:3, :3] @ np.indices(vol.shape).reshape(3, -1) + to_original[:3, 3:]
    rounded = np.rint(index).astype(int)
    assert np.abs(index - rounded).max() < 1e-3
    np.testing.assert_array_equal(original.array[tuple(rounded)].reshape(vol.shape), vol.array)


# --- the same verdict as dcm2niix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [0.02, 0.05, 2.0, 15.0])
def test_refused_exactly_where_dcm2niix_reports_a_tilt_of_the_same_angle(classic, tmp_path, degrees):
    exe = shutil.which("dcm2niix")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dcm2niix is not installed (CI=true: the check is required)")
        pytest.skip("dcm2niix is not installed")
    folder = save(tilt(classic, degrees), tmp_path / "series")
    (tmp_path / "nii").mkdir()
    done = subprocess.run([exe, "-b", "n", "-o", str(tmp_path / "nii"), "-f", "x", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    reported = re.search(r"estimated from slice vector (-?[0-9.e+-]+)", done.stdout)
    dcm2niix_tilt = abs(float(reported.group(1))) if reported else 0.0
    try:
        read_volume(folder)
        satseg_tilt = 0.0
    except InputError as exc:
        satseg_tilt = float(re.search(r"step ([0-9.]+)° off", str(exc)).group(1))
    assert (dcm2niix_tilt > 0) == (satseg_tilt > 0) == (degrees > 0.03), (dcm2niix_tilt, satseg_tilt)
    assert satseg_tilt == pytest.approx(dcm2niix_tilt, abs=0.005)
    assert (tmp_path / "nii" / "x_Tilt_1.nii").exists() == (degrees > 0.03)  # the copy the refusal points to
