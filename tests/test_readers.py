"""Readers: NIfTI, NRRD/MetaImage, DICOM folder / zip / file → one Volume with a RAS affine."""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from satseg.errors import InputError
from satseg.geometry import to_model_grid
from satseg.io import Volume, read_volume

JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


def itk_image(direction, spacing=(0.8, 1.2, 2.5), origin=(-12.0, 30.5, 7.25), size=(9, 7, 5)) -> sitk.Image:
    array = np.arange(np.prod(size), dtype=np.int16).reshape(size[::-1])  # ITK arrays are (z, y, x)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    return image


def lps_point(image: sitk.Image, index) -> np.ndarray:
    return np.asarray(image.TransformIndexToPhysicalPoint([int(i) for i in index]))


OBLIQUE = np.array([[0.0, 0.0, 1.0], [np.cos(0.3), np.sin(0.3), 0.0], [-np.sin(0.3), np.cos(0.3), 0.0]])


def test_nifti_keeps_array_affine_and_header_codes(reference_files):
    path = reference_files / "example_ct_sm.nii.gz"
    img = nib.load(path)
    vol = read_volume(path)
    assert isinstance(vol, Volume)
    assert vol.shape == img.shape and vol.array.dtype == img.get_data_dtype()
    np.testing.assert_array_equal(vol.array, np.asanyarray(img.dataobj))
    np.testing.assert_array_equal(vol.affine, img.affine)
    assert int(vol.header["qform_code"]) == int(img.header["qform_code"])
    assert int(vol.header["sform_code"]) == int(img.header["sform_code"])
    assert vol.modality is None and vol.source == path and vol.name == "example_ct_sm"
    assert vol.meta["format"] == "nifti"


def test_lps_mr_affine_is_kept(reference_files):
    path = reference_files / "example_mr_sm.nii.gz"
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.affine, nib.load(path).affine)
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE], ids=["identity", "oblique-permuted"])
def test_itk_formats_map_voxels_to_the_same_world_points_as_itk(tmp_path, suffix, direction):
    image = itk_image(direction)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    vol = read_volume(path)
    assert vol.shape == image.GetSize()
    for index in [(0, 0, 0), (8, 0, 0), (3, 6, 4), (8, 6, 4)]:
        ras = vol.affine @ np.append(index, 1.0)
        lps = lps_point(image, index)
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)
        assert vol.array[index] == image.GetPixel(*index)
    assert vol.header is None and vol.meta["format"] == suffix.lstrip(".")


def test_itk_and_nibabel_readers_agree_on_the_same_scan(tmp_path):
    image = itk_image(OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    from_nifti, from_nrrd = read_volume(tmp_path / "scan.nii.gz"), read_volume(tmp_path / "scan.nrrd")
    np.testing.assert_array_equal(from_nifti.array, from_nrrd.array)
    np.testing.assert_allclose(from_nifti.affine, from_nrrd.affine, atol=1e-5)


def test_4d_nifti_volume_is_selected_by_index(tmp_path):
    data = np.stack([np.full((6, 5, 4), t, np.float32) for t in range(3)], axis=-1)
    path = tmp_path / "dynamic.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    vol = read_volume(path, volume=2)
    assert vol.shape == (6, 5, 4) and np.all(vol.array == 2)
    assert vol.meta["volume"] == 2 and vol.meta["n_volumes"] == 3
    assert vol.header.get_data_shape() == (6, 5, 4)
    with pytest.raises(InputError, match="--volume N"):
        read_volume(path)
    with pytest.raises(InputError, match="out of range"):
        read_volume(path, volume=3)


def test_4d_nrrd_volume_is_selected_by_index(tmp_path):
    data = np.stack([np.full((4, 5, 6), t, np.int16) for t in range(2)])  # (t, z, y, x)
    image = sitk.GetImageFromArray(data, isVector=False)
    path = tmp_path / "dynamic.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(InputError, match="--volume N"):
        read_volume(path)
    vol = read_volume(path, volume=1)
    assert vol.shape == (6, 5, 4) and np.all(vol.array == 1)


def test_partial_nans_become_the_minimum_with_a_warning(tmp_path, caplog):
    data = np.linspace(-50, 50, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data[0, 0, 1:4] = np.nan  # data[0, 0, 0] keeps the minimum, -50
    data[1, 1, 1] = np.inf
    path = tmp_path / "holes.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with caplog.at_level(logging.WARNING):
        vol = read_volume(path)
    assert np.isfinite(vol.array).all()
    assert np.all(vol.array[0, 0, 1:4] == -50) and vol.array[1, 1, 1] == -50
    assert vol.meta["non_finite_replaced"] == 4
    assert "NaN" in caplog.text


# --- DICOM -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom_volume(reference_files):
    return read_volume(reference_files / "example_ct_dicom")


def test_dicom_series_is_jpeg2000(reference_files):
    first = next(p for p in sorted((reference_files / "example_ct_dicom").iterdir()))
    assert str(pydicom.dcmread(first, stop_before_pixels=True).file_meta.TransferSyntaxUID) in JPEG2000_SYNTAXES


def test_dicom_folder_matches_its_nifti_twin(reference_files, dicom_volume):
    twin = nib.load(reference_files / "example_seg_dicom.nii.gz")
    assert dicom_volume.shape == twin.shape
    np.testing.assert_allclose(dicom_volume.affine, twin.affine, atol=1e-4)
    assert dicom_volume.modality == "ct"
    assert dicom_volume.meta["converter"] == "dicom2nifti" and dicom_volume.meta["n_files"] == 20
    assert dicom_volume.array.min() == -1024  # Hounsfield units (rescale applied)
    assert dicom_volume.header is not None


def test_dicom_zip_reads_the_same_as_the_folder(reference_files, dicom_volume, tmp_path):
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted((reference_files / "example_ct_dicom").iterdir()):
            zf.write(file, f"patient/study/{file.name}")
    vol = read_volume(archive)
    np.testing.assert_array_equal(vol.array, dicom_volume.array)
    np.testing.assert_array_equal(vol.affine, dicom_volume.affine)
    assert vol.name == "series" and vol.source == archive


def test_one_dicom_file_reads_its_whole_series(reference_files, dicom_volume):
    file = sorted((reference_files / "example_ct_dicom").iterdir())[3]
    vol = read_volume(file)
    assert vol.shape == dicom_volume.shape


def copy_series(src: Path, dst: Path, uid: str, count: int | None = None) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.iterdir())[:count]:
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = uid
        ds.save_as(dst / f"{uid[-4:]}_{file.name}")


def test_largest_series_is_read_and_series_uid_selects_another(reference_files, tmp_path):
    folder = tmp_path / "two"
    copy_series(reference_files / "example_ct_dicom", folder, "1.2.3.4.1111")
    copy_series(reference_files / "example_ct_dicom", folder, "1.2.3.4.2222", count=5)
    vol = read_volume(folder)
    assert vol.meta["series_uid"] == "1.2.3.4.1111" and vol.shape[2] == 20
    small = read_volume(folder, series="1.2.3.4.2222")
    assert small.meta["series_uid"] == "1.2.3.4.2222" and small.shape[2] == 5
    with pytest.raises(InputError, match="1.2.3.4.1111"):
        read_volume(folder, series="9.9.9")


def test_simpleitk_reads_a_series_dicom2nifti_refuses(reference_files, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for file in sorted((reference_files / "example_ct_dicom").iterdir())[:3]:  # dicom2nifti needs 4 slices or more
        shutil.copy(file, folder / file.name)
    vol = read_volume(folder)
    assert vol.meta["converter"] == "SimpleITK" and vol.shape == (512, 512, 3)
    assert nib.aff2axcodes(vol.affine)[2] == "S"


def test_dicom_and_its_nifti_twin_give_the_same_model_grid(reference_files, dicom_volume):
    twin = nib.load(reference_files / "example_seg_dicom.nii.gz")
    as_nifti = Volume(array=dicom_volume.array, affine=twin.affine)
    _, from_dicom = to_model_grid(dicom_volume)
    _, from_twin = to_model_grid(as_nifti)
    assert from_dicom.shape == from_twin.shape
    np.testing.assert_allclose(from_dicom.affine, from_twin.affine, atol=1e-4)
