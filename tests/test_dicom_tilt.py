"""Gantry-tilted (sheared) DICOM series are read on their own sheared grid: every slice where its headers say.

A CT acquired with a tilted gantry has slices rotated about the left-right axis while the table moves along z, so
ImagePositionPatient does not step along the slice normal (row × column cosines). Stacked on a straight grid, slice k
would be shifted in its plane by k × spacing × tan(tilt) (10 mm by slice 20 of a 2 mm series at 15°); satseg read a
15° series that way once, without a word, and later refused every tilted series. Now the reader keeps the voxels as
stored and gives the grid its shear (the affine's slice column is the real step between slice positions), the model
grid path resamples through it exactly (tests/test_geometry_sheared.py), and the DICOM outputs land on the source
slices (tests/test_dicom_seg.py, test_rtstruct.py, test_clinical_cli.py).

The series are made from TotalSegmentator's real CT (``example_ct_dicom``, 20 slices 2 mm apart) with
``tests/dicom_variants.py``: its ``tilted`` variant (15°, GantryDetectorTilt 15) and the same construction at other
angles (keeping the real series' nominal GantryDetectorTilt of 0: the positions alone decide). dcm2niix, where
installed, is the second opinion: which series are tilted, by how much, and the voxel values of its tilt-corrected
copy, which must be our sheared volume sampled at its voxel centres.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicom_variants as dv
from pipeline_helpers import run_cli
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


# --- read on the sheared grid: every way a series reaches the reader -------------------------------------------------


def assert_tilted_read(vol, degrees: float) -> None:
    """The reader's notes on a tilted series, and the NIfTI header it would write masks with: the sform holds the
    sheared affine, the qform (which cannot) is off."""
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(abs(degrees), abs=1e-3)
    assert vol.meta["shear_deg"] == pytest.approx(abs(degrees), abs=1e-3)
    assert (int(vol.header["qform_code"]), int(vol.header["sform_code"])) == (0, 1)
    np.testing.assert_allclose(vol.header.get_sform(), vol.affine, atol=1e-4)


@pytest.mark.parametrize("given", ["folder", "zip", "one file"])
def test_15_degree_tilted_series_reads_on_its_sheared_grid(classic, original, tilted15, tmp_path, given, caplog):
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
    vol = read_volume(path)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(tilted15.iterdir())]
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=1e-3)
    assert_tilted_read(vol, 15)
    # The shear is real: a straight stack (the original's affine) would put the last slice ~10 mm off.
    assert np.abs(vol.affine - original.affine).max() > 0.2
    [warning] = [r.getMessage() for r in caplog.records if "sheared" in r.getMessage()]
    assert "15°" in warning and "qform" in warning and "\n" not in warning


@pytest.mark.parametrize("degrees", [2.0, -2.0, 15.0, -30.0])
def test_tilt_measured_from_the_positions_not_the_nominal_tag(classic, original, tmp_path, degrees):
    # GantryDetectorTilt says 0 (the real series' value, kept): the slice positions alone show the shear (either
    # direction).
    datasets = tilt(classic, degrees)
    folder = save(datasets, tmp_path / "tilted")
    assert float(pydicom.dcmread(folder / "IM0001.dcm").GantryDetectorTilt) == 0
    vol = read_volume(folder)
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=1e-3)
    assert_tilted_read(vol, degrees)


@pytest.mark.parametrize("degrees", [15.0, 2.0])
def test_tilted_enhanced_multiframe_image_reads_on_its_sheared_grid(classic, original, tmp_path, degrees):
    datasets = tilt(classic, degrees)
    vol = read_volume(save_enhanced(datasets, tmp_path / "enhanced"))
    assert vol.meta["n_frames"] == 20
    assert_placed_as_dicom_says(vol, datasets, original, classic, mm=1e-3)
    assert_tilted_read(vol, degrees)


def test_reversed_and_lps_tilted_series_read_as_their_headers_say(classic, tmp_path):
    # The tilt applied to variants stored in another order (rows bottom to top, slices top down; columns right to
    # left): the converter reorders the axes, the shear follows.
    for name in ("reversed", "lps_columns"):
        folder, _ = dv.make_variant(name, classic, tmp_path / name)
        base = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
        vol0 = read_volume(folder)
        datasets = tilt(base, -12.0)
        vol = read_volume(save(datasets, tmp_path / f"{name}_tilted"))
        assert_placed_as_dicom_says(vol, datasets, vol0, base, mm=1e-3)
        assert_tilted_read(vol, 12.0)


# --- refused: shears no gantry makes --------------------------------------------------------------------------------


def test_a_slice_off_the_tilt_line_is_refused_naming_it(classic, tmp_path):
    datasets = tilt(classic, 10.0)
    position, row, col, _ = dv._geometry(datasets[11])
    dv._set(datasets[11], position + 1.0 * col, row, col)  # 1 mm aside in its plane: not the same tilt
    folder = save(datasets, tmp_path / "uneven")
    with pytest.raises(InputError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "sheared unevenly" in message and "IM0012.dcm" in message, message


def test_a_lean_beyond_any_gantry_tilt_is_refused(classic, tmp_path):
    folder = save(tilt(classic, 50.0), tmp_path / "steep")
    with pytest.raises(InputError) as info:
        read_volume(folder)
    assert "50°" in str(info.value) and "more than a gantry tilt" in str(info.value)


def test_cli_segments_a_tilted_series_only_with_the_model_it_names(classic, tilted15, tmp_path):
    # sat-nano is a known model whose weights are not there (empty SATSEG_HOME, offline): the tilted scan is read
    # (warning shown), and the run stops at loading the model (exit 1), not at the scan (exit 2).
    env = dict(os.environ, SATSEG_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = tmp_path / "out"
    done = run_cli(str(tilted15), "-p", "liver", "-o", str(out), "--model", "sat-nano", env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "sheared by 15°" in done.stderr
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


def dcm2niix(folder: Path, out: Path) -> tuple[float, Path | None]:
    """dcm2niix's tilt estimate for ``folder`` (0 when it reports none) and its tilt-corrected copy, if written."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dcm2niix is not installed (CI=true: the check is required)")
        pytest.skip("dcm2niix is not installed")
    out.mkdir()
    done = subprocess.run([exe, "-b", "n", "-o", str(out), "-f", "x", str(folder)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    reported = re.search(r"estimated from slice vector (-?[0-9.e+-]+)", done.stdout)
    corrected = out / "x_Tilt_1.nii"
    return (abs(float(reported.group(1))) if reported else 0.0), (corrected if corrected.exists() else None)


@pytest.mark.parametrize("degrees", [0.02, 0.05, 2.0, 15.0])
def test_tilted_exactly_where_dcm2niix_reports_a_tilt_of_the_same_angle(classic, tmp_path, degrees):
    folder = save(tilt(classic, degrees), tmp_path / "series")
    dcm2niix_tilt, corrected = dcm2niix(folder, tmp_path / "nii")
    vol = read_volume(folder)
    satseg_tilt = vol.meta.get("gantry_tilt_deg", 0.0)
    assert (dcm2niix_tilt > 0) == (satseg_tilt > 0) == (degrees > 0.03), (dcm2niix_tilt, satseg_tilt)
    assert satseg_tilt == pytest.approx(dcm2niix_tilt, abs=0.005)
    if degrees > 0.03:  # even a tilt too small to bend the axes past the reader's tolerance is said and kept
        assert_tilted_read(vol, degrees)
    assert (corrected is not None) == (degrees > 0.03)


@pytest.mark.parametrize("degrees", [-2.0, -7.0, -15.0])
def test_dcm2niix_tilt_corrected_copy_is_our_sheared_volume_sampled_at_its_voxels(classic, tmp_path, degrees):
    # dcm2niix's x_Tilt_1.nii keeps each slice in its plane and shifts its pixels in the plane (linear
    # interpolation) onto an orthogonal grid. Each of its voxel centres lies on one of our slices (its world point
    # mapped through our sheared affine has a whole slice index), and its value is our slice interpolated there.
    # (dcm2niix v1.0.20220720 puts its corrected slices 8 mm off the DICOM slice planes for the opposite tilt sign
    # of this construction; those are left out: the check below would only measure that.)
    from scipy import ndimage

    folder = save(tilt(classic, degrees), tmp_path / "series")
    _, corrected = dcm2niix(folder, tmp_path / "nii")
    assert corrected is not None
    ours = read_volume(folder)
    theirs = nib.load(corrected)
    values = np.asarray(theirs.dataobj, dtype=np.float64)
    grid = np.indices(values.shape).reshape(3, -1)
    to_ours = np.linalg.inv(ours.affine) @ theirs.affine
    index = to_ours[:3, :3] @ grid + to_ours[:3, 3:]
    assert np.abs(index[2] - np.rint(index[2])).max() < 1e-3  # on our slices
    sampled = ndimage.map_coordinates(ours.array.astype(np.float64), index, order=1, mode="constant", cval=np.nan)
    inside = np.isfinite(sampled) & np.all((index >= 0) & (index <= np.array(ours.shape)[:, None] - 1), axis=0)
    assert inside.mean() > 0.9
    difference = np.abs(sampled[inside] - values.reshape(-1)[inside])
    assert difference.max() <= 1.0, difference.max()  # dcm2niix stores whole numbers: rounding only
    # ... and a straight stack of the same voxels (the old reader's grid) does not match
    straight = np.linalg.inv(read_volume(save(tilt(classic, 0.0), tmp_path / "straight")).affine) @ theirs.affine
    index = straight[:3, :3] @ grid + straight[:3, 3:]
    off = ndimage.map_coordinates(ours.array.astype(np.float64), index, order=1, mode="nearest")
    assert np.percentile(np.abs(off - values.reshape(-1)), 99) > 50
