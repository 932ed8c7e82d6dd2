"""The clinical round trip through the command line: DICOM-SEG and RTSTRUCT beside the NIfTI masks, refusals
before any model runs, and a real Orthanc PACS in and out over DICOMweb."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from orthanc import orthanc_factory, with_uids  # noqa: F401 - the fixture
from pipeline_helpers import error_lines, run_cli
from test_dicom_seg import read_back

PROMPTS = ["-p", "liver", "-p", "spleen", "-p", "left kidney"]


@pytest.fixture(scope="module")
def series(reference_files, tmp_path_factory) -> Path:
    """The real TotalSegmentator CT series, its central 200 × 200 pixels (a few windows for the tiny model; the
    positions moved with the crop), with the UIDs a SEG must reference (the shipped files have none)."""
    root = tmp_path_factory.mktemp("ct")
    crop_series(reference_files / "example_ct_dicom", root / "crop", rows=slice(150, 350), cols=slice(150, 350))
    with_uids(root / "crop", root / "series")
    return root / "series"


def crop_series(src: Path, dest: Path, *, rows: slice, cols: slice) -> None:
    """Each slice of ``src`` cut to ``rows`` × ``cols`` (uncompressed), its ImagePositionPatient moved to the new
    first pixel along the row and column directions."""
    from pydicom.uid import ExplicitVRLittleEndian

    dest.mkdir(parents=True)
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[rows, cols].copy()
        orientation = np.array(ds.ImageOrientationPatient, float)
        step_row, step_col = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        position = (np.array(ds.ImagePositionPatient, float) + cols.start * step_col * orientation[:3]
                    + rows.start * step_row * orientation[3:])
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.Rows, ds.Columns = pixels.shape
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.save_as(dest / path.name, enforce_file_format=True)


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_dicom_series_gives_seg_and_rtstruct_matching_the_nifti_masks(env, series, tmp_path):
    from satseg.io import read_volume

    out = tmp_path / "out"
    done = run_cli(str(series), *PROMPTS, "-o", str(out), "--model", "tiny-test",
                   "--output-type", "nifti,dicom-seg", "--output-type", "rtstruct", "--report", "report.json",
                   env=env)
    assert done.returncode == 0, done.stderr
    masks = {p.name[: -len(".nii.gz")]: np.asarray(nib.load(p).dataobj) for p in out.glob("*.nii.gz")}
    assert sorted(masks) == ["left_kidney", "liver", "spleen"]
    present = [name for name in masks if masks[name].any()]
    assert present, "the tiny model found nothing: the comparison below would be empty"
    assert visible(out) == sorted([*(f"{n}.nii.gz" for n in masks), "report.json", "rtstruct.dcm",
                                   "segmentation.seg.dcm"])
    volume = read_volume(series)
    back = read_back(out / "segmentation.seg.dcm", volume)
    seg = pydicom.dcmread(out / "segmentation.seg.dcm")
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert sorted(labels.values()) == sorted(p.replace("_", " ") for p in present)
    for number, label in labels.items():
        np.testing.assert_array_equal(back[number], masks[label.replace(" ", "_")])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    rt = pydicom.dcmread(out / "rtstruct.dcm")
    assert len(rt.StructureSetROISequence) == len(present)
    report = json.loads((out / "report.json").read_text())
    assert report["dicom_seg"]["path"] == "segmentation.seg.dcm"
    assert sorted(report["dicom_seg"]["empty"]) == sorted(set(masks) - set(present))
    # The segmentation itself is unchanged by the DICOM outputs: a NIfTI-only run writes the same bytes.
    plain = tmp_path / "plain"
    assert run_cli(str(series), *PROMPTS, "-o", str(plain), "--model", "tiny-test", env=env).returncode == 0
    assert {p.name: p.read_bytes() for p in plain.glob("*.nii.gz")} == {p.name: p.read_bytes()
                                                                       for p in out.glob("*.nii.gz")}


def test_gantry_tilted_series_is_segmented_with_every_output_on_its_slices(env, series, tmp_path):
    # The cropped real series tilted 15° (each slice rotated about x at its own position, the table still moving
    # along z): read on its sheared grid, segmented through it, and written back on it: the NIfTI masks carry the
    # sheared affine (sform only), the SEG frames and the RTSTRUCT contours lie on the source slices.
    from satseg.io import read_volume
    from test_dicom_seg import dciodvfy_errors, read_back_by_frames
    from test_dicom_tilt import save, tilt
    from test_rtstruct import rasterise

    datasets = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    tilted = save(tilt(datasets, 15.0), tmp_path / "tilted")
    out = tmp_path / "out"
    done = run_cli(str(tilted), *PROMPTS, "-o", str(out), "--model", "tiny-test",
                   "--output-type", "nifti,dicom-seg,rtstruct", env=env)
    assert done.returncode == 0, done.stderr
    assert "sheared by 15°" in done.stderr
    volume = read_volume(tilted)
    masks = {p.name[: -len(".nii.gz")]: nib.load(p) for p in out.glob("*.nii.gz")}
    assert sorted(masks) == ["left_kidney", "liver", "spleen"]
    for image in masks.values():
        np.testing.assert_allclose(image.affine, volume.affine, atol=1e-4)
        assert (int(image.header["qform_code"]), int(image.header["sform_code"])) == (0, 1)
    arrays = {name: np.asarray(image.dataobj) for name, image in masks.items()}
    present = [name for name in arrays if arrays[name].any()]
    assert present, "the tiny model found nothing: the comparison below would be empty"
    seg = pydicom.dcmread(out / "segmentation.seg.dcm")
    labels = {int(s.SegmentNumber): s.SegmentLabel.replace(" ", "_") for s in seg.SegmentSequence}
    assert sorted(labels.values()) == sorted(present)
    back = read_back_by_frames(out / "segmentation.seg.dcm", volume)
    for number, name in labels.items():
        np.testing.assert_array_equal(back[number], arrays[name])
    contours = rasterise(out / "rtstruct.dcm", volume)
    assert len(contours) == len(present)
    matched = [[name for name in present if np.array_equal(mask, arrays[name])] for mask in contours.values()]
    assert sorted(n for names in matched for n in names) == sorted(present), matched  # each ROI is one mask exactly
    assert dciodvfy_errors(out / "segmentation.seg.dcm") == [] and dciodvfy_errors(out / "rtstruct.dcm") == []


def test_dicom_only_output_writes_no_nifti(env, series, tmp_path):
    out = tmp_path / "out"
    done = run_cli(str(series), *PROMPTS, "-o", str(out), "--model", "tiny-test", "--output-type", "dicom-seg",
                   env=env)
    assert done.returncode == 0, done.stderr
    assert visible(out) == ["segmentation.seg.dcm"]


def test_nifti_input_with_a_dicom_output_is_a_usage_error_unless_reference_series(env, series, tmp_path):
    from satseg.io import read_volume

    volume = read_volume(series)
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(volume.array, volume.affine), nifti)
    out = tmp_path / "out"
    refused = run_cli(str(nifti), "-p", "liver", "-o", str(out), "--model", "tiny-test", "--output-type", "rtstruct",
                      env=env)
    assert refused.returncode == 2 and not out.exists()
    [line] = error_lines(refused.stderr)
    assert "--reference-series" in line
    done = run_cli(str(nifti), *PROMPTS, "-o", str(out), "--model", "tiny-test", "--output-type", "nifti,dicom-seg",
                   "--reference-series", str(series), env=env)
    assert done.returncode == 0, done.stderr
    assert "segmentation.seg.dcm" in visible(out)
    # A reference series whose grid is not the scan's is refused before any model runs.
    cropped = tmp_path / "cropped.nii.gz"
    nib.save(nib.Nifti1Image(volume.array[:, :, 2:], volume.affine), cropped)
    other = tmp_path / "other"
    refused = run_cli(str(cropped), "-p", "liver", "-o", str(other), "--model", "no-such-model-needed",
                      "--output-type", "dicom-seg", "--reference-series", str(series), env=env)
    assert refused.returncode == 2 and not other.exists()


def test_batch_refuses_dicom_outputs_for_nifti_inputs_before_any_case(env, small_scan, tmp_path):
    out = tmp_path / "out"
    refused = run_cli("batch", str(small_scan), "-p", "liver", "-o", str(out), "--model", "tiny-test",
                      "--output-type", "dicom-seg", env=env)
    assert refused.returncode == 2 and not out.exists()
    assert "DICOM" in error_lines(refused.stderr)[0]


def test_batch_writes_dicom_outputs_per_case(env, series, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(series, cohort / "patient_a")
    with_uids(series, cohort / "patient_b")
    out = tmp_path / "out"
    done = run_cli("batch", str(cohort), *PROMPTS, "-o", str(out), "--model", "tiny-test", "--output-type",
                   "nifti,dicom-seg", env=env)
    assert done.returncode == 0, done.stderr
    for case in ("patient_a", "patient_b"):
        assert "segmentation.seg.dcm" in visible(out / case)
    again = run_cli("batch", str(cohort), *PROMPTS, "-o", str(out), "--model", "tiny-test", "--output-type",
                    "nifti,dicom-seg", env=env)
    assert again.stdout.count("skipped") == 2


def test_unknown_output_type_and_store_without_dicom_are_usage_errors(env, series, tmp_path):
    for extra in (["--output-type", "png"], ["--store-to", "http://127.0.0.1:9/dicom-web"]):
        done = run_cli(str(series), "-p", "liver", "-o", str(tmp_path / "o"), "--model", "tiny-test", *extra,
                       env=env)
        assert done.returncode == 2, done.stderr
        assert not (tmp_path / "o").exists()


def test_series_from_orthanc_segmented_and_seg_stored_back(env, series, tmp_path, orthanc_factory):  # noqa: F811
    server = orthanc_factory()
    study, series_uid = server.upload_series(series)
    out = tmp_path / "out"
    done = run_cli(server.series_url(study, series_uid), *PROMPTS, "-o", str(out), "--model", "tiny-test",
                   "--output-type", "dicom-seg", "--store-to", server.dicomweb, env=env)
    assert done.returncode == 0, done.stderr
    assert visible(out) == ["segmentation.seg.dcm"]
    stored = pydicom.dcmread(out / "segmentation.seg.dcm")
    found = server.get(f"/instances/{server.request('POST', '/tools/lookup', stored.SOPInstanceUID.encode())[0]['ID']}"
                       "/simplified-tags")
    assert found["Modality"] == "SEG" and found["StudyInstanceUID"] == study
    referenced = stored.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert referenced == series_uid


def test_refused_store_keeps_local_files_exits_non_zero_and_never_shows_the_password(env, series, tmp_path,
                                                                                       orthanc_factory):  # noqa: F811
    server = orthanc_factory(users={"radiology": "s3cret-pw"})
    study, series_uid = server.upload_series(series)
    out = tmp_path / "out"
    fetch_env = dict(env, SATSEG_DICOMWEB_USER="radiology", SATSEG_DICOMWEB_PASSWORD="s3cret-pw")
    first = run_cli(server.series_url(study, series_uid), *PROMPTS, "-o", str(out), "--model", "tiny-test",
                    "--output-type", "dicom-seg", env=fetch_env)
    assert first.returncode == 0, first.stderr
    wrong = dict(env, SATSEG_DICOMWEB_USER="radiology", SATSEG_DICOMWEB_PASSWORD="wrong-pw-123")
    local = tmp_path / "local"
    shutil.copytree(series, local)
    done = run_cli(str(local), *PROMPTS, "-o", str(tmp_path / "out2"), "--model", "tiny-test",
                   "--output-type", "dicom-seg", "--store-to", server.dicomweb, env=wrong)
    assert done.returncode != 0
    assert visible(tmp_path / "out2") == ["segmentation.seg.dcm"]  # written locally before the store
    assert "401" in done.stderr and "wrong-pw-123" not in done.stderr + done.stdout
    assert "s3cret-pw" not in first.stderr + first.stdout
    assert os.environ.get("SATSEG_DICOMWEB_PASSWORD") is None


def test_batch_rerun_stores_what_a_refused_store_left_local_and_only_that(env, series, tmp_path,
                                                                          orthanc_factory):  # noqa: F811
    # A store refused (wrong password) fails the case, but its files are written and finished: a rerun skips it.
    # That rerun must still send the SEG (it was never stored), and a third run must not send it again.
    server = orthanc_factory(users={"radiology": "s3cret-pw"})
    right = dict(env, SATSEG_DICOMWEB_USER="radiology", SATSEG_DICOMWEB_PASSWORD="s3cret-pw")
    wrong = dict(env, SATSEG_DICOMWEB_USER="radiology", SATSEG_DICOMWEB_PASSWORD="wrong-pw-123")
    out = tmp_path / "out"
    args = ["batch", str(series), "-p", "liver", "-o", str(out), "--model", "tiny-test", "--output-type",
            "dicom-seg", "--store-to", server.dicomweb]

    def segs_on_server() -> list[str]:
        return [i["ID"] for i in server.get("/instances?expand")
                if server.get(f"/instances/{i['ID']}/simplified-tags").get("Modality") == "SEG"]

    refused = run_cli(*args, env=wrong)
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr
    [case] = [p for p in out.iterdir() if p.is_dir()]
    assert "segmentation.seg.dcm" in visible(case) and segs_on_server() == []
    rerun = run_cli(*args, env=right)
    assert rerun.returncode == 0, rerun.stderr
    assert "stored now" in rerun.stdout + rerun.stderr
    [stored] = segs_on_server()
    uid = pydicom.dcmread(case / "segmentation.seg.dcm").SOPInstanceUID
    assert server.get(f"/instances/{stored}/simplified-tags")["SOPInstanceUID"] == uid
    third = run_cli(*args, env=right)
    assert third.returncode == 0, third.stderr
    assert "stored now" not in third.stdout + third.stderr and segs_on_server() == [stored]


def test_batch_rerun_stores_only_the_results_of_its_own_request(env, series, tmp_path, orthanc_factory):  # noqa: F811
    # An RTSTRUCT of an earlier request (other prompts, no --store-to) is kept in the case folder beside the new
    # SEG; the rerun that skips the case must not send it (nobody asked to store it), and the URL spelled with a
    # trailing "/" is the same destination.
    server = orthanc_factory()
    out = tmp_path / "out"
    first = run_cli("batch", str(series), "-p", "spleen", "-o", str(out), "--model", "tiny-test",
                    "--output-type", "dicom-seg,rtstruct", env=env)
    assert first.returncode == 0, first.stderr
    args = ["batch", str(series), "-p", "liver", "-o", str(out), "--model", "tiny-test", "--output-type", "dicom-seg"]
    second = run_cli(*args, "--store-to", server.dicomweb, env=env)
    assert second.returncode == 0, second.stderr
    [case] = [p for p in out.iterdir() if p.is_dir()]
    assert {"rtstruct.dcm", "segmentation.seg.dcm"} <= set(visible(case))

    def modalities() -> list[str]:
        return sorted(server.get(f"/instances/{i['ID']}/simplified-tags").get("Modality")
                      for i in server.get("/instances?expand"))

    assert modalities() == ["SEG"]
    third = run_cli(*args, "--store-to", server.dicomweb + "/", env=env)
    assert third.returncode == 0, third.stderr
    assert "stored now" not in third.stdout + third.stderr and modalities() == ["SEG"]


def test_batch_of_series_urls_from_orthanc_stores_one_seg_per_case(env, series, tmp_path,
                                                                    orthanc_factory):  # noqa: F811
    server = orthanc_factory()
    urls = []
    for name in ("a", "b"):
        study, series_uid = server.upload_series(series if name == "a" else _renamed(series, tmp_path / name))
        urls.append(server.series_url(study, series_uid))
    out = tmp_path / "out"
    done = run_cli("batch", *urls, *PROMPTS, "-o", str(out), "--model", "tiny-test", "--output-type",
                   "nifti,dicom-seg", "--store-to", server.dicomweb, env=env)
    assert done.returncode == 0, done.stderr
    cases = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert cases == sorted(url.rsplit("/", 1)[-1] for url in urls)
    for case in cases:
        assert "segmentation.seg.dcm" in visible(out / case) and "liver.nii.gz" in visible(out / case)
    segs = [i for i in server.get("/instances?expand") if i["MainDicomTags"].get("SOPInstanceUID")
            and server.get(f"/instances/{i['ID']}/simplified-tags").get("Modality") == "SEG"]
    assert len(segs) == 2
    assert not list(Path(tempfile_dir()).glob("satseg-dicomweb-*"))  # the fetched series are removed


def _renamed(series: Path, dest: Path) -> Path:
    with_uids(series, dest)
    return dest


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def test_unreachable_pacs_is_one_line_exit_2_and_no_output(env, tmp_path):
    from orthanc import free_port

    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3/series/1.2.3.4"
    done = run_cli(url, "-p", "liver", "-o", str(out), "--model", "tiny-test", "--output-type", "dicom-seg",
                   env=dict(env, SATSEG_DICOMWEB_TOKEN="tok-abc-123"), timeout=120)
    assert done.returncode == 2, done.stderr
    [line] = error_lines(done.stderr)
    assert "cannot reach the DICOMweb server" in line and "tok-abc-123" not in done.stderr + done.stdout
    assert not out.exists()
    assert not list(Path(tempfile_dir()).glob("satseg-dicomweb-*"))
