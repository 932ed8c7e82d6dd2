"""Every optimisation of the sliding-window loop gives the plain fp32 reference result (tiny model, real CT).

The reference is ``tests/reference_sliding_window.py`` (upstream's loop: every window through the model,
full-window decode, fp32 sums). The scan is a block of the real example_ct_sm on the model grid, set into
air (the value -500 HU normalises to) so that several windows hold only air, as outside a body.
Criteria (issue 6): fp32 optimisations within 1e-5 and masks Dice >= 0.999; reduced precision within 1e-2 (its
masks: see ``_within_reduced_precision``).
"""

from __future__ import annotations

import pytest
import torch

from reference_sliding_window import sliding_window_probabilities
from satseg.geometry import to_model_grid
from satseg.inference.options import RuntimeOptions
from satseg.inference.predictor import Predictor
from satseg.inference.sliding_window import sliding_window
from satseg.intensity import normalize
from satseg.io import read_volume
from satseg.model import build_sat, build_text_encoder
from satseg.model.text import SATTokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def case(reference_files):
    """(model, image (224, 64, 30), queries (3, 64), reference probabilities (3, 224, 64, 30))."""
    torch.manual_seed(0)
    model = build_sat("tiny").eval()
    raw, _ = to_model_grid(read_volume(reference_files / "example_ct_sm.nii.gz"), orientation="RAS")
    scan = torch.from_numpy(normalize(raw, "ct"))
    air = scan.min()
    image = torch.full((224, 64, scan.shape[2]), float(air))
    image[:96] = scan[120:216, 110:174]  # abdomen; rows 96.. stay air: windows at 96, 128, 160 are identical
    queries = torch.randn(3, model.config.query_dim)
    with torch.inference_mode():
        reference = sliding_window_probabilities(image, lambda p: model(p, queries), 3, window=model.config.window,
                                                 stride=model.config.stride)
    return model, image, queries, reference


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * int((a & b).sum()) / total


def test_predictor_runs_identical_air_windows_once_and_matches_the_reference_loop(case, mpnet_dir):
    model, image, queries, reference = case
    predictor = Predictor(model, build_text_encoder("tiny"), SATTokenizer(mpnet_dir),
                          runtime=RuntimeOptions(device="cpu", precision="fp32"))
    probs = predictor.probabilities(image.numpy(), queries)
    assert (predictor.window_stats.planned, predictor.window_stats.computed) == (6, 4)
    assert float((probs - reference).abs().max()) <= 1e-5
    assert dice(probs, reference) >= 0.999


def test_batched_windows_match_one_window_at_a_time(case):
    model, image, queries, reference = case
    probs = sliding_window(model, image, queries, device=CPU, autocast=None, batch=3, prompt_chunk=2)
    assert float((probs - reference).abs().max()) <= 1e-5


def _within_reduced_precision(probs: torch.Tensor, reference: torch.Tensor) -> None:
    assert float((probs - reference).abs().max()) <= 1e-2
    # With random weights most voxels sit near 0.5 (here 0.52-0.56), so a 1e-3 error flips some masks:
    # every voxel decided by more than 1e-2 agrees, and the Dice stays >= 0.99 (measured 0.998).
    decided = (reference - 0.5).abs() > 1e-2
    assert torch.equal((probs > 0.5)[decided], (reference > 0.5)[decided])
    assert dice(probs, reference) >= 0.99


def test_float16_sums_stay_within_1e_2_of_the_reference(case):
    model, image, queries, reference = case
    probs = sliding_window(model, image, queries, device=CPU, autocast=None, batch=2, prompt_chunk=32,
                           accumulate=(CPU, torch.float16))
    _within_reduced_precision(probs, reference)


def test_bfloat16_autocast_stays_within_1e_2_of_the_reference(case):
    model, image, queries, reference = case
    probs = sliding_window(model, image, queries, device=CPU, autocast=torch.bfloat16, batch=2, prompt_chunk=32)
    _within_reduced_precision(probs, reference)
