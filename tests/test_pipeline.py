"""End to end: real scans in, masks on the scan's own grid out (tiny model with random weights)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline_helpers import run_cli, tiny_model_env
from satseg.inference.options import RuntimeOptions, ScanOptions
from satseg.inference.predictor import Predictor
from satseg.model import build_sat, build_text_encoder
from satseg.model.text import SATTokenizer


@pytest.fixture(scope="module")
def predictor(mpnet_dir):
    torch.manual_seed(0)
    return Predictor(build_sat("tiny"), build_text_encoder("tiny"), SATTokenizer(mpnet_dir), name="tiny-random",
                     runtime=RuntimeOptions(device="cpu", window_batch=4))


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory, mpnet_dir):
    return tiny_model_env(tmp_path_factory.mktemp("satseg-home"), mpnet_dir)


def test_masks_come_back_on_the_input_grid_for_a_ras_ct(predictor, reference_files):
    path = reference_files / "example_ct_sm.nii.gz"
    result = predictor.segment(path, ["liver", "left kidney"])
    image = nib.load(path)
    assert result.names == ["liver", "left_kidney"]
    for mask in result.masks.values():
        assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    written = result.to_nifti()["liver"]
    np.testing.assert_array_equal(written.affine, image.affine)
    assert int(written.header["sform_code"]) == int(image.header["sform_code"])
    assert int(written.header["qform_code"]) == int(image.header["qform_code"])


def test_masks_come_back_on_the_input_grid_for_an_lps_mr(predictor, reference_files):
    path = reference_files / "example_mr_sm.nii.gz"
    result = predictor.segment(path, ["liver"], scan_options=ScanOptions(modality="mri"))
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert result.masks["liver"].shape == image.shape
    assert result.modality == "mri"


def test_composite_prompt_is_the_union_of_its_terms(predictor, reference_files):
    path = reference_files / "example_ct_sm.nii.gz"
    result = predictor.segment(path, ["liver", "spleen", "liver and spleen"], probabilities=True)
    assert result.prompts[2].terms == ("liver", "spleen")
    union = np.maximum(result.probabilities["liver"], result.probabilities["spleen"])
    np.testing.assert_allclose(result.probabilities["liver_and_spleen"], union, atol=1e-6)
    np.testing.assert_array_equal(result.masks["liver_and_spleen"], result.masks["liver"] | result.masks["spleen"])


def test_maps_brought_back_in_parallel_are_those_brought_back_one_at_a_time(predictor, reference_files, monkeypatch):
    """The CPU brings prompts back to the scan's grid on several threads: same masks and maps, name for name,
    Fortran-ordered (NIfTI's order), on an LPS scan (flipped axes)."""
    from satseg.outputs import masks as masks_module

    path, prompts = reference_files / "example_mr_sm.nii.gz", ["liver", "spleen", "left kidney", "liver and spleen"]
    options = ScanOptions(modality="mri")
    monkeypatch.setattr(masks_module, "parallel_workers", lambda items, cap=8: 3)
    threaded = predictor.segment(path, prompts, scan_options=options, probabilities=True)
    monkeypatch.setattr(masks_module, "parallel_workers", lambda items, cap=8: 1)
    serial = predictor.segment(path, prompts, scan_options=options, probabilities=True)
    assert threaded.names == serial.names == list(threaded.masks) == list(threaded.probabilities)
    for name in serial.names:
        assert np.array_equal(threaded.masks[name], serial.masks[name])
        assert np.array_equal(threaded.probabilities[name], serial.probabilities[name])
        assert threaded.masks[name].flags.f_contiguous and threaded.probabilities[name].flags.f_contiguous
    assert len({threaded.probabilities[n].tobytes() for n in serial.names}) == len(serial.names)  # distinct maps


def test_text_embeddings_are_computed_once_per_term(predictor, monkeypatch):
    encoded: list[list[str]] = []
    real_encode = predictor.text_encoder.encode

    def counting_encode(prompts, modality, tokenizer):
        encoded.append(list(prompts))
        return real_encode(prompts, modality, tokenizer)

    monkeypatch.setattr(predictor.text_encoder, "encode", counting_encode)
    first = predictor.embed(["gallbladder"], "ct")
    again = predictor.embed(["gallbladder", "gallbladder"], "ct")
    assert encoded == [["gallbladder"]]  # the repeat and the second call reuse the embedding
    torch.testing.assert_close(again, first.expand(2, -1), rtol=0, atol=0)


def test_dicom_series_and_its_nifti_twin_give_the_same_masks(predictor, reference_files, tmp_path):
    dicom = reference_files / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
    twin = tmp_path / "twin.nii.gz"
    sitk.WriteImage(reader.Execute(), str(twin))  # converted independently of satseg's readers
    from_dicom = predictor.segment(dicom, ["liver", "spleen"])
    from_nifti = predictor.segment(twin, ["liver", "spleen"])
    assert from_dicom.modality == "ct"
    # The two readers may store the voxels in different orders; compare in one (RAS) voxel order.
    for name in ("liver", "spleen"):
        a = nib.as_closest_canonical(from_dicom.to_nifti()[name])
        b = nib.as_closest_canonical(from_nifti.to_nifti()[name])
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert np.asarray(a.dataobj).any()


def test_cli_writes_masks_multilabel_statistics_preview_and_report(tiny_env, reference_files, tmp_path):
    out = tmp_path / "out"
    scan = reference_files / "example_ct_sm.nii.gz"
    done = run_cli(str(scan), "-p", "liver", "-p", "Left Kidney", "-p", "liver + spleen", "-o", str(out), "--model",
                   "tiny-test", "--ml", "--statistics", "--preview", "--probabilities", "--report", "run.json",
                   env=tiny_env)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(["liver.nii.gz", "left_kidney.nii.gz", "liver_spleen.nii.gz", "segmentation.nii.gz",
                            "segmentation.json", "statistics.json", "preview.png", "probabilities", "run.json"])
    image = nib.load(scan)
    mask = nib.load(out / "left_kidney.nii.gz")
    assert mask.shape == image.shape and mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(mask.affine, image.affine)
    prob = nib.load(out / "probabilities" / "liver.nii.gz")
    assert prob.get_data_dtype() == np.float32
    report = json.loads((out / "run.json").read_text())
    assert report["model"]["name"] == "tiny-test"
    assert [p["prompt"] for p in report["prompts"]] == ["liver", "Left Kidney", "liver + spleen"]
    assert set(report["prompts"][2]["terms"]) == {"liver", "spleen"}
    assert {"read", "preprocess", "text", "model", "to_input_grid"} <= set(report["timings_s"])
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats["structures"]) == {"liver", "left_kidney", "liver_spleen"}


def test_python_api_returns_nibabel_images(tiny_env, reference_files, monkeypatch):
    import satseg

    for key in ("SATSEG_HOME", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.setenv(key, tiny_env[key])
    images = satseg.segment(reference_files / "example_ct_sm.nii.gz", ["spleen"], model="tiny-test")
    assert list(images) == ["spleen"]
    assert isinstance(images["spleen"], nib.Nifti1Image)
    assert images["spleen"].shape == nib.load(reference_files / "example_ct_sm.nii.gz").shape


def test_text_embeddings_are_cached_on_disk_per_model_term_and_modality(mpnet_dir, tmp_path):
    torch.manual_seed(0)
    text = build_text_encoder("tiny")
    tokenizer = SATTokenizer(mpnet_dir)
    first = Predictor(build_sat("tiny"), text, tokenizer, embedding_cache=tmp_path, cache_key="model-a")
    computed = first.embed(["liver", "spleen"], "ct")
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # A fresh predictor with the same key reads the cache: it never calls the text encoder.
    second = Predictor(build_sat("tiny"), text, tokenizer, embedding_cache=tmp_path, cache_key="model-a")
    second.text_encoder.encode = None  # any call would fail
    torch.testing.assert_close(second.embed(["liver", "spleen"], "ct"), computed, rtol=0, atol=0)
    del text.encode  # back to the real method
    # Another modality or another model is another entry.
    other = Predictor(build_sat("tiny"), text, tokenizer, embedding_cache=tmp_path, cache_key="model-b")
    other.embed(["liver"], "mri")
    other.embed(["liver"], "ct")
    assert len(list(tmp_path.glob("*.pt"))) == 4
