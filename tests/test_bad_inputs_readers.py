"""Bad-input matrix for the readers: each case ends in an InputError with a one-line message naming the problem."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from satseg.errors import EXIT_USAGE, InputError
from satseg.io import Volume, read_volume, validate_volume

NIFTI1_PIXDIM_OFFSET = 76  # float32[8] in the 348-byte NIfTI-1 header


def body(shape=(12, 10, 8)) -> np.ndarray:
    return np.linspace(-1000, 1000, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def save(path: Path, data, affine=None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


def patch_pixdim(path: Path, pixdim) -> None:
    """Write pixdim[1:4] into an uncompressed .nii as stored bytes (nibabel would 'fix' them on save)."""
    raw = bytearray(path.read_bytes())
    raw[NIFTI1_PIXDIM_OFFSET + 4: NIFTI1_PIXDIM_OFFSET + 16] = struct.pack("<3f", *pixdim)
    path.write_bytes(bytes(raw))


def qform_only(path: Path, pixdim) -> Path:
    img = nib.Nifti1Image(body(), np.eye(4))
    img.header.set_sform(None, code=0)
    img.header.set_qform(np.eye(4), code=1)
    nib.save(img, path)
    patch_pixdim(path, pixdim)
    return path


def corrupt_gz(tmp: Path) -> Path:
    good = save(tmp / "good.nii.gz", body((30, 30, 30)))
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 64] = bytes(64)  # damage the deflate stream
    bad = tmp / "corrupt.nii.gz"
    bad.write_bytes(bytes(raw))
    return bad


def not_gzip_at_all(tmp: Path) -> Path:
    bad = tmp / "text.nii.gz"
    bad.write_text("this is not a scan\n")
    return bad


def truncated_nii(tmp: Path) -> Path:
    good = save(tmp / "good.nii", body((30, 30, 30)))
    bad = tmp / "truncated.nii"
    bad.write_bytes(good.read_bytes()[: 352 + 1000])
    return bad


def truncated_gz(tmp: Path) -> Path:
    good = save(tmp / "good.nii.gz", body((30, 30, 30)))
    bad = tmp / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[:-200])
    return bad


def truncated_header(tmp: Path) -> Path:
    bad = tmp / "header.nii"
    bad.write_bytes(save(tmp / "good.nii", body()).read_bytes()[:100])
    return bad


def sheared(tmp: Path) -> Path:
    affine = np.eye(4)
    affine[0, 1] = 0.3
    return save(tmp / "sheared.nii.gz", body(), affine)


def zero_spacing_sform(tmp: Path) -> Path:
    img = nib.Nifti1Image(body(), np.eye(4))
    hdr = img.header
    hdr.set_sform(np.eye(4), code=1)
    hdr["srow_y"] = [0.0, 0.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(body(), None, hdr), tmp / "zero.nii.gz")
    return tmp / "zero.nii.gz"


def mixed_series(tmp: Path, dicom_dir: Path) -> Path:
    folder = tmp / "mixed"
    shutil.copytree(dicom_dir, folder)
    for file in sorted(dicom_dir.iterdir()):
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.42"
        ds.save_as(folder / f"second_{file.name}")
    return folder


def empty_dicom_folder(tmp: Path) -> Path:
    folder = tmp / "empty"
    folder.mkdir()
    return folder


def folder_without_dicom(tmp: Path) -> Path:
    folder = tmp / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    return folder


def mha_with_spacing(tmp: Path, spacing: str) -> Path:
    path = tmp / "scan.mha"
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        f"ElementSpacing = {spacing}\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + bytes(2 * 64))
    return path


CASES = {
    "corrupt .gz": (corrupt_gz, "corrupt"),
    "not gzip": (not_gzip_at_all, "cannot read|not a NIfTI"),
    "truncated NIfTI": (truncated_nii, "truncated"),
    "truncated .nii.gz": (truncated_gz, "truncated"),
    "truncated header": (truncated_header, "corrupt|truncated|not a NIfTI"),
    "2D": (lambda t: save(t / "slice.nii.gz", body((12, 10))), "2D"),
    "single slice": (lambda t: save(t / "slice.nii.gz", body((12, 10, 1))), "2D"),
    "4D": (lambda t: save(t / "dyn.nii.gz", np.zeros((6, 5, 4, 3), np.float32)), "--volume N"),
    "5D": (lambda t: save(t / "vec.nii.gz", np.zeros((6, 5, 4, 2, 3), np.float32)), "only 3D and 4D"),
    "all NaN": (lambda t: save(t / "nan.nii.gz", np.full((6, 5, 4), np.nan, np.float32)), "NaN"),
    "zero spacing (qform)": (lambda t: qform_only(t / "zero.nii", (1.0, 0.0, 1.0)), "spacing"),
    "negative spacing (qform)": (lambda t: qform_only(t / "neg.nii", (1.0, -2.0, 1.0)), "spacing"),
    "NaN spacing (qform)": (lambda t: qform_only(t / "nan.nii", (1.0, float("nan"), 1.0)), "spacing"),
    "zero spacing (sform)": (zero_spacing_sform, "spacing"),
    "zero spacing (MetaImage)": (lambda t: mha_with_spacing(t, "1 0 1"), "spacing|cannot read"),
    "negative spacing (MetaImage)": (lambda t: mha_with_spacing(t, "1 -1 1"), "spacing"),
    "non-orthonormal direction": (sheared, "orthonormal"),
    "empty DICOM folder": (empty_dicom_folder, "no DICOM"),
    "folder without DICOM": (folder_without_dicom, "no DICOM"),
    "nonexistent path": (lambda t: t / "missing.nii.gz", "no such file"),
    "unsupported extension": (lambda t: (t / "scan.png").write_bytes(b"\x89PNG") and t / "scan.png", "unsupported"),
    "not a zip": (lambda t: (t / "scan.zip").write_text("nope") and t / "scan.zip", "zip"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_one_line_input_error(tmp_path, case):
    make, pattern = CASES[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match=pattern) as info:
        read_volume(path)
    message = str(info.value)
    assert "\n" not in message and 0 < len(message) < 400
    assert info.value.exit_code == EXIT_USAGE


def test_mixed_series_error_lists_both_uids(tmp_path, reference_files):
    folder = mixed_series(tmp_path, reference_files / "example_ct_dicom")
    with pytest.raises(InputError, match="--series") as info:
        read_volume(folder)
    message = str(info.value)
    assert "\n" not in message
    assert "1.2.826.0.1.3680043.8.498.42" in message and "<empty UID>" in message  # the original UID is empty


def test_series_mixing_image_sizes_is_refused(tmp_path, reference_files):
    folder = tmp_path / "sizes"
    shutil.copytree(reference_files / "example_ct_dicom", folder)
    victim = sorted(folder.iterdir())[4]
    ds = pydicom.dcmread(victim)
    ds.Rows = 256
    ds.save_as(victim)
    with pytest.raises(InputError, match="mixes images"):
        read_volume(folder)


def test_series_option_on_a_nifti_is_refused(reference_files):
    with pytest.raises(InputError, match="--series"):
        read_volume(reference_files / "example_ct_sm.nii.gz", series="1.2.3")


def test_validate_volume_refuses_an_in_memory_2d_array():
    with pytest.raises(InputError, match="3D"):
        validate_volume(Volume(array=np.zeros((5, 5), np.float32), affine=np.eye(4)))


def test_gzip_module_agrees_the_corrupt_file_is_corrupt(tmp_path):
    # guards the matrix: the "corrupt .gz" case must really be a broken stream, not a valid file
    with pytest.raises((OSError, EOFError, Exception)):
        gzip.decompress(corrupt_gz(tmp_path).read_bytes())
