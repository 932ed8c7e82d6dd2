"""Bad input → one line on stderr, the documented exit code, and no output files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline_helpers import error_lines, run_cli


def _nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def make_corrupt_gz(tmp: Path, ref: Path) -> Path:
    data = bytearray(ref.read_bytes())
    data[200:400] = b"\x00" * 200
    (tmp / "corrupt.nii.gz").write_bytes(bytes(data))
    return tmp / "corrupt.nii.gz"


def make_truncated(tmp: Path, ref: Path) -> Path:
    raw = gzip.decompress(ref.read_bytes())
    (tmp / "truncated.nii").write_bytes(raw[: len(raw) // 2])
    return tmp / "truncated.nii"


def make_2d(tmp: Path, ref: Path) -> Path:
    return _nifti(tmp / "flat.nii.gz", np.zeros((64, 64), dtype=np.int16))


def make_4d(tmp: Path, ref: Path) -> Path:
    return _nifti(tmp / "fmri.nii.gz", np.zeros((16, 16, 8, 3), dtype=np.int16))


def make_all_nan(tmp: Path, ref: Path) -> Path:
    return _nifti(tmp / "nan.nii.gz", np.full((16, 16, 8), np.nan, dtype=np.float32))


def make_zero_spacing(tmp: Path, ref: Path) -> Path:
    image = nib.Nifti1Image(np.zeros((16, 16, 8), dtype=np.int16), None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    image.header["pixdim"][1:4] = [1.0, 0.0, 1.0]
    nib.save(image, tmp / "zero.nii.gz")
    return tmp / "zero.nii.gz"


def make_negative_spacing(tmp: Path, ref: Path) -> Path:
    """A header whose stored pixdim is negative (nibabel would fix it on save, so patch the bytes)."""
    image = nib.Nifti1Image(np.zeros((16, 16, 8), dtype=np.int16), None)
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nib.save(image, tmp / "plain.nii")
    data = bytearray((tmp / "plain.nii").read_bytes())
    data[84:88] = np.float32(-2.0).tobytes()  # pixdim[2]
    (tmp / "negative.nii").write_bytes(bytes(data))
    return tmp / "negative.nii"


def make_sheared(tmp: Path, ref: Path) -> Path:
    affine = np.array([[1.0, 0.6, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    return _nifti(tmp / "sheared.nii.gz", np.zeros((16, 16, 8), dtype=np.int16), affine)


def make_empty_dicom_folder(tmp: Path, ref: Path) -> Path:
    (tmp / "empty_dicom").mkdir()
    return tmp / "empty_dicom"


def make_mixed_series(tmp: Path, ref: Path) -> Path:
    folder = tmp / "mixed"
    shutil.copytree(ref.parent / "example_ct_dicom", folder)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files[: len(files) // 2]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".99"
        ds.save_as(path)
    return folder


CASES = {
    "corrupt gz": (make_corrupt_gz, 2),
    "truncated nifti": (make_truncated, 2),
    "2d image": (make_2d, 2),
    "4d image": (make_4d, 2),
    "all nan": (make_all_nan, 2),
    "zero spacing": (make_zero_spacing, 2),
    "negative spacing": (make_negative_spacing, 2),
    "non-orthonormal direction": (make_sheared, 2),
    "empty dicom folder": (make_empty_dicom_folder, 2),
    "mixed series": (make_mixed_series, 2),
}


def _assert_one_line_error(done, code: int) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("satseg: error: ")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_scan_fails_with_one_line_and_writes_nothing(case, env, reference_files, tmp_path):
    make, code = CASES[case]
    scan = make(tmp_path, reference_files / "example_ct_sm.nii.gz")
    out = tmp_path / "out"
    done = run_cli(str(scan), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    _assert_one_line_error(done, code)
    assert not out.exists() or not any(out.iterdir())


def test_4d_error_names_the_volume_option(env, tmp_path, reference_files):
    done = run_cli(str(make_4d(tmp_path, reference_files)), "-p", "liver", "-o", str(tmp_path / "o"),
                   "--model", "tiny-test", env=env)
    assert "--volume" in done.stderr


def test_mixed_series_error_lists_the_series(env, tmp_path, reference_files):
    done = run_cli(str(make_mixed_series(tmp_path, reference_files / "x")), "-p", "liver", "-o",
                   str(tmp_path / "o"), "--model", "tiny-test", env=env)
    assert done.stderr.count("1.") >= 2 or "--series" in done.stderr


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["-p", "liver", "--modality", "xray"], 2, "modality"),
        ([], 2, "prompt"),
        (["-p", "   "], 2, "prompt"),
        (["-p", "flux capacitor"], 2, "did you mean"),
        (["-p", "liver", "--model", "no-such-model"], 2, "no-such-model"),
    ],
)
def test_bad_options_fail_before_any_output(args, code, fragment, env, reference_files, tmp_path):
    out = tmp_path / "out"
    argv = [str(reference_files / "example_ct_sm.nii.gz"), "-o", str(out), *args]
    if "--model" not in args:
        argv += ["--model", "tiny-test"]
    done = run_cli(*argv, env=env)
    _assert_one_line_error(done, code)
    assert fragment.lower() in done.stderr.lower()
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_folder_is_refused(env, reference_files, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = run_cli(str(reference_files / "example_ct_sm.nii.gz"), "-p", "liver", "-o", str(blocker / "out"),
                   "--model", "tiny-test", env=env)
    _assert_one_line_error(done, 2)
    assert "writable" in done.stderr or "not a folder" in done.stderr


def test_missing_gpu_is_a_one_line_error(env, reference_files, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    done = run_cli(str(reference_files / "example_ct_sm.nii.gz"), "-p", "liver", "-o", str(tmp_path / "o"),
                   "--model", "tiny-test", "--device", "cuda", env=env)
    _assert_one_line_error(done, 1)
    assert "CUDA" in done.stderr


def test_missing_scan_is_a_usage_error(env, tmp_path):
    done = run_cli(str(tmp_path / "nope.nii.gz"), "-p", "liver", "-o", str(tmp_path / "o"), env=env)
    _assert_one_line_error(done, 2)


def test_failure_midway_keeps_earlier_results(env, reference_files, tmp_path):
    """A second run that fails (unknown prompt) leaves the first run's files byte-identical."""
    out = tmp_path / "out"
    scan = str(reference_files / "example_ct_sm.nii.gz")
    first = run_cli(scan, "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert first.returncode == 0, first.stderr
    before = (out / "liver.nii.gz").read_bytes()
    again = run_cli(scan, "-p", "liver", "-p", "flux capacitor", "-o", str(out), "--model", "tiny-test", env=env)
    assert again.returncode == 2
    assert (out / "liver.nii.gz").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["liver.nii.gz"]
