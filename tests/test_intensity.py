"""Intensity normalisation (SAT: CT window then z-score; MR/PET percentile clip then z-score) and modality guess."""

from __future__ import annotations

import numpy as np
import pytest

from satseg.errors import InputError
from satseg.geometry import to_model_grid
from satseg.intensity import guess_modality, normalize
from satseg.io import Volume, read_volume


def test_ct_is_clipped_to_the_soft_tissue_window_then_z_scored():
    raw = np.array([-1000.0, 0.0, 500.0, 2000.0]).reshape(1, 2, 2)
    # by hand: clip → (-500, 0, 500, 1000), mean 250, std sqrt((750² + 250² + 250² + 750²) / 4) = 559.017
    expected = np.array([-750.0, -250.0, 250.0, 750.0]) / 559.0169943749474
    out = normalize(raw, "ct")
    assert out.dtype == np.float32 and out.shape == raw.shape
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)


@pytest.mark.parametrize("modality", ["mri", "pet"])
def test_mr_and_pet_are_clipped_to_their_own_percentiles(modality):
    raw = np.arange(1000, dtype=np.float64).reshape(10, 10, 10)
    raw[0, 0, 0] = -1e6
    raw[9, 9, 9] = 1e6
    lower, upper = np.percentile(raw, [0.5, 99.5])
    clipped = np.clip(raw, lower, upper)
    expected = (clipped - clipped.mean()) / clipped.std()
    out = normalize(raw, modality)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.max() < 2.0  # the outlier no longer dominates


def test_normalize_does_not_touch_its_input():
    raw = np.array([-2000.0, 0.0, 3000.0, 40.0], dtype=np.float32).reshape(1, 2, 2)
    before = raw.copy()
    normalize(raw, "ct")
    np.testing.assert_array_equal(raw, before)


def test_constant_image_normalises_to_zeros_not_nan():
    out = normalize(np.full((4, 4, 4), 7.0), "mri")
    assert np.all(out == 0)


def test_unknown_modality_is_an_input_error():
    with pytest.raises(InputError, match="modality"):
        normalize(np.zeros((2, 2, 2)), "ultrasound")


def test_real_ct_on_the_model_grid_is_standardised(reference_files):
    raw, _ = to_model_grid(read_volume(reference_files / "example_ct_sm.nii.gz"))
    out = normalize(raw, "ct")
    assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-4
    window = np.clip(raw.astype(np.float64), -500, 1000)
    assert out.min() == pytest.approx((-500 - window.mean()) / window.std(), rel=1e-5)


def test_modality_from_dicom_wins(reference_files):
    vol = read_volume(reference_files / "example_ct_dicom")
    assert guess_modality(vol) == ("ct", None)
    vol.modality = "mri"
    assert guess_modality(vol) == ("mri", None)


def test_real_ct_without_modality_is_ct_without_warning(reference_files):
    assert guess_modality(read_volume(reference_files / "example_ct.nii.gz")) == ("ct", None)


def test_mr_without_modality_defaults_to_ct_with_a_warning(reference_files):
    modality, warning = guess_modality(read_volume(reference_files / "example_mr_sm.nii.gz"))
    assert modality == "ct"
    assert warning is not None and "--modality" in warning and "\n" not in warning


def test_ct_with_padding_value_still_looks_like_hu():
    array = np.full((40, 40, 10), -3024, dtype=np.int16)  # outside the reconstruction circle
    array[5:35, 5:35] = -1000
    array[10:30, 10:30] = 40
    vol = Volume(array=array, affine=np.eye(4))
    assert guess_modality(vol) == ("ct", None)


def test_unscaled_ct_stored_from_zero_gets_a_warning():
    array = np.full((40, 40, 10), 24, dtype=np.int16)  # HU + 1024 without the rescale intercept
    array[10:30, 10:30] = 1064
    _, warning = guess_modality(Volume(array=array, affine=np.eye(4)))
    assert warning is not None
