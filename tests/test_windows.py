"""Sliding-window inference mechanics: window positions, Gaussian importance map, Gaussian-weighted averaging.

Expected window positions below are worked out by hand from SAT's rule (spec section 5):
n = max(ceil(L / stride) - 1, 1) windows starting at i * stride; one ending past L starts at max(L - window, 0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from reference_sliding_window import sliding_window_probabilities
from satseg.inference.sliding_window import (
    ProbabilityAccumulator,
    extract_windows,
    gaussian_importance,
    window_slices,
    window_starts,
)

SMALL_WINDOW = (8, 8, 4)
SMALL_STRIDE = (4, 4, 2)


# ----------------------------------------------------------------------------------------- positions


@pytest.mark.parametrize(
    ("length", "window", "stride", "expected"),
    [
        (100, 288, 144, [0]),  # smaller than a stride: one partial window
        (145, 288, 144, [0]),  # between stride and window: still one partial window
        (288, 288, 144, [0]),  # exactly one window
        (289, 288, 144, [0, 1]),  # one voxel more: second window shifted back to L - 288 = 1
        (432, 288, 144, [0, 144]),  # three strides: tiles exactly, nothing shifted
        (512, 288, 144, [0, 144, 224]),  # 288 + 288 > 512 -> 512 - 288
        (600, 288, 144, [0, 144, 288, 312]),  # 432 + 288 > 600 -> 600 - 288
        (40, 96, 48, [0]),
        (96, 96, 48, [0]),
        (97, 96, 48, [0, 1]),
        (300, 96, 48, [0, 48, 96, 144, 192, 204]),  # 240 + 96 > 300 -> 204
    ],
)
def test_window_starts_follow_sat_rule(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


def test_window_slices_for_large_volume_are_the_product_of_axis_positions_first_axis_outermost():
    boxes = window_slices((600, 512, 300))  # SAT defaults: window (288, 288, 96), stride (144, 144, 48)
    assert len(boxes) == 4 * 3 * 6
    assert boxes[0] == (slice(0, 288), slice(0, 288), slice(0, 96))
    assert boxes[1] == (slice(0, 288), slice(0, 288), slice(48, 144))
    assert boxes[6] == (slice(0, 288), slice(144, 432), slice(0, 96))
    assert boxes[-1] == (slice(312, 600), slice(224, 512), slice(204, 300))


def test_volume_smaller_than_the_window_gives_one_box_of_the_volume_size():
    assert window_slices((100, 288, 40)) == [(slice(0, 100), slice(0, 288), slice(0, 40))]


def test_default_stride_is_half_the_window():
    assert window_slices((600, 600, 300)) == window_slices((600, 600, 300), (288, 288, 96), (144, 144, 48))
    assert window_slices((13, 13, 7), SMALL_WINDOW) == window_slices((13, 13, 7), SMALL_WINDOW, SMALL_STRIDE)


@pytest.mark.parametrize(("window", "stride"), [(288, 144), (96, 48)])
def test_sat_windows_cover_every_voxel_stay_inside_and_never_repeat_for_any_length(window, stride):
    for length in range(1, 2001):
        starts = window_starts(length, window, stride)
        assert len(starts) == max(math.ceil(length / stride) - 1, 1)
        assert len(set(starts)) == len(starts), length  # upstream does not deduplicate; SAT's numbers never need it
        assert starts == sorted(starts)
        covered = np.zeros(length, dtype=int)
        for start in starts:
            assert 0 <= start and min(start + window, length) - start == min(window, length)
            covered[start : start + window] += 1
        assert covered.min() >= 1, length


def test_shifted_windows_that_coincide_are_kept_like_upstream():
    # window 9, stride 4, L 13: n = ceil(13/4) - 1 = 3 -> 0, 4, 8; 8 + 9 > 13 -> 13 - 9 = 4 (a duplicate)
    assert window_starts(13, 9, 4) == [0, 4, 4]
    # window 10, stride 3, L 20: n = 6 -> 0, 3, 6, 9, 12 -> 10, 15 -> 10
    assert window_starts(20, 10, 3) == [0, 3, 6, 9, 10, 10]


@pytest.mark.parametrize("shape", [(3, 5, 1), (8, 8, 4), (9, 8, 5), (13, 20, 11), (31, 17, 9)])
def test_small_windows_cover_every_voxel(shape):
    covered = np.zeros(shape, dtype=int)
    for box in window_slices(shape, SMALL_WINDOW, SMALL_STRIDE):
        covered[box] += 1
    assert covered.min() >= 1


def test_stride_larger_than_window_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        window_starts(100, 8, 9)


# ----------------------------------------------------------------------------------------- Gaussian


def _gaussian_like_nnunet(window, sigma_scale=1 / 8):
    """Independent reference: scipy blur of a centred delta, max 10, float16, zeros -> smallest non-zero."""
    delta = np.zeros(window)
    delta[tuple(size // 2 for size in window)] = 1
    blurred = gaussian_filter(delta, [size * sigma_scale for size in window], 0, mode="constant", cval=0)
    scaled = (blurred / blurred.max() * 10).astype(np.float16)
    scaled[scaled == 0] = scaled[scaled != 0].min()
    return scaled


@pytest.mark.parametrize(("window", "sigma_scale"), [((8, 8, 4), 1 / 8), ((9, 7, 5), 1 / 8), ((16, 16, 8), 1 / 4)])
def test_gaussian_importance_equals_scipy_blurred_delta_for_small_windows(window, sigma_scale):
    expected = _gaussian_like_nnunet(window, sigma_scale)
    got = gaussian_importance(window, sigma_scale)
    assert got.dtype == torch.float32 and tuple(got.shape) == window
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))


def test_gaussian_importance_for_sat_window_equals_scipy_bit_for_bit():
    expected = _gaussian_like_nnunet((288, 288, 96))
    got = gaussian_importance()
    np.testing.assert_array_equal(got.numpy(), expected.astype(np.float32))
    assert float(got[144, 144, 48]) == 10.0 and float(got.max()) == 10.0
    # the corners underflow in float16 and are replaced by the smallest float16 subnormal, never 0
    assert float(got.min()) == float(np.float16(2**-24)) and float(got[0, 0, 0]) == float(got.min())


def test_gaussian_importance_can_be_float16():
    half = gaussian_importance(SMALL_WINDOW, dtype=torch.float16)
    assert half.dtype == torch.float16
    assert torch.equal(half.float(), gaussian_importance(SMALL_WINDOW))


# ----------------------------------------------------------------------------------------- patches


def test_extract_windows_copies_the_box_and_zero_pads_at_the_end_of_each_axis():
    image = torch.arange(1, 1 + 6 * 5 * 3, dtype=torch.float32).reshape(6, 5, 3)
    boxes = [(slice(0, 6), slice(0, 5), slice(0, 3)), (slice(2, 6), slice(1, 5), slice(1, 3))]
    batch = extract_windows(image, boxes, SMALL_WINDOW)
    assert tuple(batch.shape) == (2, 1, *SMALL_WINDOW)
    assert torch.equal(batch[0, 0, :6, :5, :3], image)
    assert torch.equal(batch[1, 0, :4, :4, :2], image[2:6, 1:5, 1:3])
    assert batch[0, 0, 6:].abs().sum() == 0 and batch[0, 0, :, 5:].abs().sum() == 0
    assert batch[0, 0, :, :, 3:].abs().sum() == 0
    assert batch[1, 0, 4:].abs().sum() == 0 and batch[1, 0, :, :, 2:].abs().sum() == 0


# ----------------------------------------------------------------------------------------- aggregation


def _logit(p: torch.Tensor | float) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def _constant_predictor(probability: float, n_prompts: int, calls: list | None = None):
    def predict(patches: torch.Tensor) -> torch.Tensor:
        assert patches.shape[1] == 3 and torch.equal(patches[:, 0], patches[:, 2])
        if calls is not None:
            calls.append(patches.shape[0])
        return _logit(probability).expand(patches.shape[0], n_prompts, *patches.shape[2:]).clone()

    return predict


@pytest.mark.parametrize("shape", [(13, 13, 7), (5, 6, 3), (8, 8, 4), (21, 9, 10)])
def test_constant_prediction_averages_back_to_the_constant_everywhere(shape):
    probs = sliding_window_probabilities(
        torch.randn(shape), _constant_predictor(0.3, 2), 2, window=SMALL_WINDOW, stride=SMALL_STRIDE
    )
    assert tuple(probs.shape) == (2, *shape) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.full_like(probs, 0.3), atol=1e-6, rtol=0)


def test_constant_prediction_with_sat_window_and_default_stride():
    shape = (300, 290, 100)  # 2 x 2 x 2 windows of 288 x 288 x 96, the second shifted on each axis
    calls: list[int] = []
    probs = sliding_window_probabilities(torch.zeros(shape), _constant_predictor(0.7, 1, calls), 1, batch_size=4)
    assert calls == [4, 4]
    torch.testing.assert_close(probs, torch.full_like(probs, 0.7), atol=1e-6, rtol=0)


def _coordinate_image(shape):
    """Image whose value is each voxel's linear index (exact in float32 for small volumes)."""
    return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)


def _position_predictor(shape, boxes):
    """Prompt 0 depends on the absolute voxel position only; prompt 1 is a different constant per window.

    Both are read from the coordinates in the patch, so the predictor sees nothing but the image.
    """
    box_id = {tuple(s.start for s in box): index for index, box in enumerate(boxes)}
    _, w, d = shape

    def predict(patches: torch.Tensor) -> torch.Tensor:
        out = []
        for patch in patches[:, 0]:
            index = int(patch[0, 0, 0])  # the box's first voxel is always inside the volume
            start = (index // (w * d), index // d % w, index % d)
            by_position = (patch.long() % 11 + 1).double() / 13
            per_window = torch.full_like(by_position, (box_id[start] + 1) / (len(boxes) + 2))
            out.append(torch.stack([_logit(by_position), _logit(per_window)]))
        return torch.stack(out)

    return predict


def test_position_dependent_prediction_is_reconstructed_and_overlaps_are_gaussian_weighted():
    shape = (13, 6, 7)  # axis 1 shorter than the window: the padding must be cropped away
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    probs = sliding_window_probabilities(
        _coordinate_image(shape), _position_predictor(shape, boxes), 2, window=SMALL_WINDOW, stride=SMALL_STRIDE
    )
    index = np.arange(math.prod(shape)).reshape(shape)
    np.testing.assert_allclose(probs[0].numpy(), (index % 11 + 1) / 13, atol=1e-6, rtol=0)

    gauss = _gaussian_like_nnunet(SMALL_WINDOW).astype(np.float64)
    numerator, weight, coverage = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=int)
    for number, box in enumerate(boxes):
        local = gauss[tuple(slice(0, s.stop - s.start) for s in box)]
        numerator[box] += local * (number + 1) / (len(boxes) + 2)
        weight[box] += local
        coverage[box] += 1
    expected = numerator / weight
    np.testing.assert_allclose(probs[1].numpy(), expected, atol=1e-6, rtol=0)
    # where a single window covers a voxel, its value comes back unchanged: the corner is only in window 0
    assert coverage[0, 0, 0] == 1
    assert abs(float(probs[1, 0, 0, 0]) - 1 / (len(boxes) + 2)) < 1e-6
    assert (coverage > 1).any() and not np.allclose(expected[coverage > 1], expected[coverage > 1].flat[0])


def test_batch_size_does_not_change_the_result():
    shape = (13, 11, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    results = [
        sliding_window_probabilities(
            _coordinate_image(shape), _position_predictor(shape, boxes), 2,
            window=SMALL_WINDOW, stride=SMALL_STRIDE, batch_size=batch_size,
        )
        for batch_size in (1, 3, len(boxes) + 5)
    ]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def _random_window_probs(boxes, n_prompts, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand((n_prompts, *SMALL_WINDOW), generator=generator) for _ in boxes]


def test_prompt_chunks_give_the_same_result_as_all_prompts_at_once():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    window_probs = _random_window_probs(boxes, 5)
    whole = ProbabilityAccumulator(shape, 5, boxes, window=SMALL_WINDOW)
    chunked = ProbabilityAccumulator(shape, 5, boxes, window=SMALL_WINDOW)
    for box, probs in zip(boxes, window_probs):
        whole.add(box, probs)
    for chunk in (slice(0, 2), slice(2, 5)):
        for box, probs in zip(boxes, window_probs):
            chunked.add(box, probs[chunk], prompts=chunk)
    assert torch.equal(whole.weight, chunked.weight)
    assert torch.equal(whole.probabilities(), chunked.probabilities())
    assert torch.equal(whole.probabilities(slice(2, 5)), chunked.probabilities()[2:5])


def test_a_prompt_chunk_missing_a_window_is_refused():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    accumulator = ProbabilityAccumulator(shape, 4, boxes, window=SMALL_WINDOW)
    for box, probs in zip(boxes, _random_window_probs(boxes, 4)):
        accumulator.add(box, probs[:2], prompts=slice(0, 2))
        if box is not boxes[-1]:
            accumulator.add(box, probs[2:], prompts=slice(2, 4))
    with pytest.raises(RuntimeError, match=r"prompts \[2, 3\]"):
        accumulator.probabilities()


def test_uncovered_voxels_are_refused_instead_of_dividing_by_zero():
    box = (slice(0, 8), slice(0, 8), slice(0, 4))
    accumulator = ProbabilityAccumulator((13, 10, 7), 1, [box], window=SMALL_WINDOW)
    accumulator.add(box, torch.rand(1, *SMALL_WINDOW))
    with pytest.raises(RuntimeError, match="covered by no window"):
        accumulator.probabilities()


def test_a_window_added_twice_counts_twice_like_upstream():
    shape = (8, 8, 4)
    box = (slice(0, 8), slice(0, 8), slice(0, 4))
    gauss = gaussian_importance(SMALL_WINDOW)
    accumulator = ProbabilityAccumulator(shape, 1, [box, box], window=SMALL_WINDOW)
    accumulator.add(box, torch.full((1, *SMALL_WINDOW), 0.2))
    accumulator.add(box, torch.full((1, *SMALL_WINDOW), 0.8))
    assert torch.equal(accumulator.weight, 2 * gauss)
    torch.testing.assert_close(accumulator.probabilities(), torch.full((1, *shape), 0.5), atol=1e-6, rtol=0)


def test_a_constant_half_averages_back_to_exactly_half_never_above_the_threshold():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    accumulator = ProbabilityAccumulator(shape, 2, boxes, window=SMALL_WINDOW)
    for box in boxes:
        accumulator.add(box, torch.stack([torch.full(SMALL_WINDOW, 0.5), torch.full(SMALL_WINDOW, 0.75)]))
    probabilities = accumulator.probabilities()
    assert torch.equal(probabilities[0], torch.full(shape, 0.5))  # exact: 0.5 * g is exact
    assert not (probabilities[0] > 0.5).any() and (probabilities[1] > 0.5).all()


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_accumulation_stays_close_to_float32_even_in_the_gaussian_tails(dtype, tolerance):
    shape = (13, 10, 7)  # the volume corners see only the tails of the Gaussian (float16 underflows there)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    window_probs = _random_window_probs(boxes, 3, seed=1)
    full = ProbabilityAccumulator(shape, 3, boxes, window=SMALL_WINDOW)
    half = ProbabilityAccumulator(shape, 3, boxes, window=SMALL_WINDOW, dtype=dtype)
    for box, probs in zip(boxes, window_probs):
        full.add(box, probs)
        half.add(box, probs)
    assert half.probabilities().dtype == torch.float32
    torch.testing.assert_close(half.probabilities(), full.probabilities(), atol=tolerance, rtol=0)
    far_from_threshold = (full.probabilities() - 0.5).abs() > tolerance
    assert torch.equal((half.probabilities() > 0.5)[far_from_threshold], (full.probabilities() > 0.5)[far_from_threshold])


def test_planned_boxes_that_were_never_added_are_refused():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    accumulator = ProbabilityAccumulator(shape, 1, boxes, window=SMALL_WINDOW)
    for box in boxes[:-1]:
        accumulator.add(box, torch.rand(1, *SMALL_WINDOW))
    with pytest.raises(RuntimeError, match="0 time"):
        accumulator.probabilities()


def test_finalize_returns_the_probabilities_and_closes_the_accumulator():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    accumulator = ProbabilityAccumulator(shape, 2, boxes, window=SMALL_WINDOW)
    for box, probs in zip(boxes, _random_window_probs(boxes, 2)):
        accumulator.add(box, probs)
    expected = accumulator.probabilities()
    assert torch.equal(accumulator.finalize(), expected)
    with pytest.raises(RuntimeError, match="finalized"):
        accumulator.add(boxes[0], torch.rand(2, *SMALL_WINDOW))


def test_progress_reports_windows_done_out_of_total():
    shape = (13, 10, 7)
    total = len(window_slices(shape, SMALL_WINDOW, SMALL_STRIDE))
    seen: list[tuple[int, int]] = []
    sliding_window_probabilities(
        torch.zeros(shape), _constant_predictor(0.5, 1), 1, window=SMALL_WINDOW, stride=SMALL_STRIDE,
        batch_size=4, progress=lambda done, of: seen.append((done, of)),
    )
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_predictor_returning_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="predict returned shape"):
        sliding_window_probabilities(
            torch.zeros(9, 9, 5), _constant_predictor(0.5, 2), 3, window=SMALL_WINDOW, stride=SMALL_STRIDE
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windows_predicted_on_cuda_accumulate_on_cpu_by_default():
    shape = (13, 10, 7)
    boxes = window_slices(shape, SMALL_WINDOW, SMALL_STRIDE)
    image = _coordinate_image(shape)
    predict = _position_predictor(shape, boxes)
    on_cpu = sliding_window_probabilities(image, predict, 2, window=SMALL_WINDOW, stride=SMALL_STRIDE)
    on_cuda = sliding_window_probabilities(
        image.cuda(), lambda patches: predict(patches).cuda(), 2, window=SMALL_WINDOW, stride=SMALL_STRIDE
    )
    assert on_cuda.device.type == "cpu"
    torch.testing.assert_close(on_cuda, on_cpu, atol=1e-6, rtol=0)
    on_gpu = sliding_window_probabilities(
        image.cuda(), lambda patches: predict(patches).cuda(), 2,
        window=SMALL_WINDOW, stride=SMALL_STRIDE, accumulate_device="cuda",
    )
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=0)


def test_importance_map_is_computed_once_and_handed_out_as_copies():
    first = gaussian_importance(SMALL_WINDOW, dtype=torch.float16)
    expected = first.clone()
    first.fill_(-1)  # a caller scribbling on its map must not reach the next caller
    again = gaussian_importance(SMALL_WINDOW, dtype=torch.float16)
    assert torch.equal(again, expected)
    assert torch.equal(gaussian_importance(SMALL_WINDOW), expected.float())


def test_scratch_windows_are_weighted_in_place_with_the_same_sums():
    shape, window = (20, 18, 9), (8, 8, 4)
    boxes = window_slices(shape, window, (4, 4, 2))
    rng = torch.Generator().manual_seed(0)
    windows = [torch.rand((3, *window), generator=rng) for _ in boxes]
    plain = ProbabilityAccumulator(shape, 3, boxes, window=window)
    scratch = ProbabilityAccumulator(shape, 3, boxes, window=window)
    for box, probs in zip(boxes, windows):
        plain.add(box, probs)
        copy = probs.clone()
        scratch.add(box, copy, scratch=True)
        assert not torch.equal(copy, probs)  # overwritten: that is the point
    assert torch.equal(scratch.probabilities(), plain.probabilities())
    kept = windows[0].clone()
    ProbabilityAccumulator(shape, 3, boxes, window=window).add(boxes[0], kept)
    assert torch.equal(kept, windows[0])  # without scratch the caller's tensor is left alone
