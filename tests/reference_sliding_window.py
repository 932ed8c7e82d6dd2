"""Upstream SAT's plain sliding-window loop: the reference the production loop
(:func:`satseg.inference.sliding_window.sliding_window`) is tested and benchmarked against.

Every window goes through ``predict`` in full (no memoisation, the whole zero-padded window decoded), in
float32, Gaussian-averaged with the production :class:`~satseg.inference.sliding_window.ProbabilityAccumulator`
(the averaging itself is pinned against a hand-written numpy sum in ``tests/test_windows.py``). Test-only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from satseg.inference.sliding_window import (
    SAT_WINDOW,
    ProbabilityAccumulator,
    extract_windows,
    half_window,
    window_slices,
)


def sliding_window_probabilities(
    image: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    n_prompts: int,
    *,
    window: Sequence[int] = SAT_WINDOW,
    stride: Sequence[int] | None = None,
    batch_size: int = 1,
    accumulate_device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """SAT's sliding-window inference over a preprocessed volume; returns probabilities (N, H, W, D), float32.

    ``image`` (H, W, D) is the normalised volume; windows are cut from it on its device, zero-padded to
    ``window``, repeated to 3 channels and passed in batches of up to ``batch_size`` to ``predict``, which
    returns logits (B, N, *window) for the N prompts. Sigmoid (in float32) gives probabilities, which are
    Gaussian-averaged on ``accumulate_device`` (default CPU, as upstream). ``stride`` defaults to half the
    window. ``progress(windows_done, windows_total)`` is called before the first batch and after each.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, D), got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    window = tuple(int(s) for s in window)
    stride = half_window(window) if stride is None else stride
    boxes = window_slices(tuple(image.shape), window, stride)
    accumulator = ProbabilityAccumulator(tuple(image.shape), n_prompts, boxes, window=window,
                                         device=accumulate_device)
    if progress is not None:
        progress(0, len(boxes))
    with torch.no_grad():
        for first in range(0, len(boxes), batch_size):
            batch_boxes = boxes[first : first + batch_size]
            patches = extract_windows(image, batch_boxes, window).expand(-1, 3, -1, -1, -1).contiguous()
            logits = predict(patches)
            expected = (len(batch_boxes), n_prompts, *window)
            if tuple(logits.shape) != expected:
                raise ValueError(f"predict returned shape {tuple(logits.shape)}, expected {expected}")
            for box, window_logits in zip(batch_boxes, logits):
                accumulator.add(box, torch.sigmoid(window_logits.float()))
            if progress is not None:
                progress(first + len(batch_boxes), len(boxes))
    return accumulator.finalize()
