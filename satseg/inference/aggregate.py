"""Gaussian-weighted aggregation of per-window probabilities, and the sliding-window loop (model-agnostic).

SAT's rule (spec section 5): every window's sigmoid probabilities are multiplied by the importance map
(``windows.gaussian_importance``) and summed into the volume; the map itself is summed into a weight map;
the final probability is sum / weight, and a mask is probability > 0.5, per prompt independently.

The weight map depends only on the windows, not on the prompt, so it is one (H, W, D) tensor shared by
all prompts. Prompts can be accumulated in chunks (``add(box, probs, prompts=slice(a, b))``): the weight
of a window is counted once however many chunks it is added in, and ``probabilities()`` refuses to
divide if some prompts have not seen the same windows as the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from satseg.inference.windows import (
    SAT_WINDOW,
    Box,
    box_extent,
    extract_windows,
    gaussian_importance,
    half_window,
    window_slices,
)

logger = logging.getLogger(__name__)

#: ``progress(windows_done, windows_total)``, called after every batch of windows.
ProgressCallback = Callable[[int, int], None]


class ProbabilityAccumulator:
    """Sums Gaussian-weighted window probabilities for N prompts over a volume of shape (H, W, D).

    float32 (default) is upstream's arithmetic: sums of ``probs * gaussian`` and of ``gaussian``, divided at
    the end. ``dtype=torch.float16`` or ``torch.bfloat16`` halves the memory of the (N, H, W, D) sums; it
    needs the full list of ``boxes`` up front, because the Gaussian's tails (down to 6e-8) underflow in
    float16: each window then adds ``probs * gaussian / total_weight``, terms of at most 1, and the sums are
    the probabilities themselves (error about 1e-3 for float16, 1e-2 for bfloat16). The shared (H, W, D)
    weight map is always float32. Products are formed in float32 on the device of the probabilities (e.g.
    the GPU), then moved to ``device``, where the sums live (upstream accumulates on the CPU).

    ``boxes`` (optional for float32) also lets ``probabilities()`` check that every planned window was added.
    """

    def __init__(
        self,
        shape: Sequence[int],
        n_prompts: int,
        *,
        window: Sequence[int] = SAT_WINDOW,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        boxes: Sequence[Box] | None = None,
        importance: torch.Tensor | None = None,
    ) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (H, W, D) with positive sizes, got {tuple(shape)}")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1, got {n_prompts}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        if dtype != torch.float32 and boxes is None:
            raise ValueError(f"accumulating in {dtype} needs the list of boxes up front")
        self.shape = tuple(int(s) for s in shape)
        self.n_prompts = int(n_prompts)
        self.window = tuple(int(s) for s in window)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = dtype
        if importance is None:
            importance = gaussian_importance(self.window)
        if tuple(importance.shape) != self.window:
            raise ValueError(f"importance map has shape {tuple(importance.shape)}, window is {self.window}")
        self._importance = importance.to(torch.float32)
        self._importance_by_device: dict[torch.device, torch.Tensor] = {}
        self._sums = torch.zeros((self.n_prompts, *self.shape), dtype=dtype, device=self.device)
        self._weight = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        # Per box: how many times each prompt has received it.
        self._counts: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        self._planned: Counter | None = None
        if boxes is not None:
            self._planned = Counter(_key(box) for box in boxes)
            for box in boxes:
                self._add_weight(box)
        self._normalised = dtype != torch.float32  # sums hold probabilities, not weighted sums

    def add(self, box: Box, probs: torch.Tensor, prompts: slice | None = None, *, scratch: bool = False) -> None:
        """Add one window's probabilities: ``probs`` (n, *window) or (n, *box extent), n = prompts in ``prompts``.

        ``prompts`` selects the prompt chunk (default: all N). Padding beyond the box is ignored.
        ``scratch=True``: ``probs`` (float32) may be overwritten: weighted in place, without a temporary
        (the same products).
        """
        start, stop = self._prompt_range(prompts)
        extent = self._check_box(box)
        if probs.ndim != 4 or probs.shape[0] != stop - start:
            raise ValueError(f"probs must be ({stop - start}, *window), got shape {tuple(probs.shape)}")
        if any(p < e for p, e in zip(probs.shape[1:], extent)):
            raise ValueError(f"probs spatial shape {tuple(probs.shape[1:])} is smaller than the box {extent}")
        crop = (slice(0, extent[0]), slice(0, extent[1]), slice(0, extent[2]))
        factor = self._importance_on(probs.device)[crop]
        if self._normalised:
            factor = factor / self._weight[box].to(probs.device)
        region = probs[(slice(None), *crop)]
        if scratch and region.dtype == torch.float32:
            weighted = region.mul_(factor)
        else:
            weighted = region.to(torch.float32) * factor
        self._sums[(slice(start, stop), *box)] += weighted.to(device=self.device, dtype=self.dtype)
        self._count(box, start, stop)

    def add_zero(self, box: Box, prompts: slice | None = None) -> None:
        """Count a window as predicting probability 0 for ``prompts`` (all by default): weight only."""
        start, stop = self._prompt_range(prompts)
        self._check_box(box)
        self._count(box, start, stop)

    def probabilities(self, prompts: slice | None = None) -> torch.Tensor:
        """Gaussian-weighted average probabilities (n, H, W, D) for ``prompts`` (default all), as float32."""
        self._check_ready()
        sums = self._sums[prompts or slice(None)]
        return sums.to(torch.float32) if self._normalised else sums / self._weight

    def masks(self, threshold: float = 0.5, prompts: slice | None = None) -> torch.Tensor:
        """Binary masks (n, H, W, D), bool: probability > ``threshold``, one prompt at a time to save memory."""
        self._check_ready()
        start, stop, _ = (prompts or slice(None)).indices(self.n_prompts)
        out = torch.empty((max(stop - start, 0), *self.shape), dtype=torch.bool, device=self.device)
        for row, prompt in enumerate(range(start, stop)):
            probability = self._sums[prompt].to(torch.float32)
            if not self._normalised:
                probability = probability / self._weight
            out[row] = probability > threshold
        return out

    def finalize(self) -> torch.Tensor:
        """All probabilities (N, H, W, D), float32, computed in place in the sums (no second copy when the
        accumulator is float32). The accumulator cannot be used afterwards."""
        self._check_ready()
        probabilities = self._sums.to(torch.float32)
        if not self._normalised:
            probabilities.div_(self._weight)
        self._sums = None  # type: ignore[assignment]
        return probabilities

    @property
    def weight(self) -> torch.Tensor:
        """The summed importance map (H, W, D), float32, shared by all prompts."""
        return self._weight

    def _prompt_range(self, prompts: slice | None) -> tuple[int, int]:
        if self._sums is None:
            raise RuntimeError("the accumulator was finalized; create a new one")
        start, stop, step = (prompts or slice(None)).indices(self.n_prompts)
        if step != 1 or stop <= start:
            raise ValueError(f"prompts must be a non-empty contiguous slice, got {prompts}")
        return start, stop

    def _check_box(self, box: Box) -> tuple[int, int, int]:
        if len(box) != 3:
            raise ValueError(f"box must have 3 slices, got {box}")
        for s, length, size in zip(box, self.shape, self.window):
            if s.step not in (None, 1) or not 0 <= s.start < s.stop <= length or s.stop - s.start > size:
                raise ValueError(f"box {box} does not fit a window {self.window} inside the volume {self.shape}")
        if self._planned is not None and _key(box) not in self._planned:
            raise ValueError(f"box {box} is not one of the planned boxes")
        return box_extent(box)

    def _count(self, box: Box, start: int, stop: int) -> None:
        counts = self._counts.setdefault(_key(box), np.zeros(self.n_prompts, dtype=np.int64))
        before = int(counts.max())
        counts[start:stop] += 1
        if self._planned is None:
            # The weight holds each box as often as the prompt that received it most often.
            for _ in range(int(counts.max()) - before):
                self._add_weight(box)

    def _add_weight(self, box: Box) -> None:
        extent = box_extent(box)
        self._weight[box] += self._importance_on(self.device)[: extent[0], : extent[1], : extent[2]]

    def _check_ready(self) -> None:
        if self._sums is None:
            raise RuntimeError("the accumulator was finalized; create a new one")
        expected = self._planned if self._planned is not None else {}
        for key in set(self._counts) | set(expected):
            counts = self._counts.get(key, np.zeros(self.n_prompts, dtype=np.int64))
            wanted = expected.get(key, counts.max())
            if (counts != wanted).any():
                missing = np.flatnonzero(counts != wanted)
                raise RuntimeError(
                    f"prompts {missing.tolist()[:10]} received window {key} {counts[missing[0]]} time(s), "
                    f"expected {wanted}"
                )
        if not bool((self._weight > 0).all()):
            raise RuntimeError("some voxels are covered by no window; add windows covering the whole volume")

    def _importance_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._importance_by_device:
            self._importance_by_device[device] = self._importance.to(device)
        return self._importance_by_device[device]


def _key(box: Box) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in box)


def sliding_window_probabilities(
    image: torch.Tensor,
    predict: Callable[[torch.Tensor], torch.Tensor],
    n_prompts: int,
    *,
    window: Sequence[int] = SAT_WINDOW,
    stride: Sequence[int] | None = None,
    batch_size: int = 1,
    accumulate_device: torch.device | str | None = None,
    accumulate_dtype: torch.dtype = torch.float32,
    skip_box: Callable[[Box], bool] | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """SAT's sliding-window inference over a preprocessed volume; returns probabilities (N, H, W, D), float32.

    ``image`` (H, W, D) is the normalised volume; windows are cut from it on its device, zero-padded to
    ``window``, repeated to 3 channels and passed in batches of up to ``batch_size`` to ``predict``, which
    returns logits (B, N, *window) for the N prompts. Sigmoid (in float32) gives probabilities, which are
    Gaussian-averaged on ``accumulate_device`` (default CPU, as upstream). ``stride`` defaults to half the
    window. ``skip_box(box) -> True`` skips the model for a window and counts it as probability 0 for every
    prompt (its weight still counts, as if the model had predicted 0 there).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, D), got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    window = tuple(int(s) for s in window)
    stride = half_window(window) if stride is None else stride
    boxes = window_slices(tuple(image.shape), window, stride)
    accumulator = ProbabilityAccumulator(
        tuple(image.shape), n_prompts, window=window, device=accumulate_device, dtype=accumulate_dtype, boxes=boxes
    )
    todo = []
    for box in boxes:
        if skip_box is not None and skip_box(box):
            accumulator.add_zero(box)
        else:
            todo.append(box)
    logger.debug("%d windows over %s, %d skipped", len(boxes), tuple(image.shape), len(boxes) - len(todo))
    done = len(boxes) - len(todo)
    if progress is not None:
        progress(done, len(boxes))
    with torch.no_grad():
        for first in range(0, len(todo), batch_size):
            batch_boxes = todo[first : first + batch_size]
            patches = extract_windows(image, batch_boxes, window).expand(-1, 3, -1, -1, -1).contiguous()
            logits = predict(patches)
            expected = (len(batch_boxes), n_prompts, *window)
            if tuple(logits.shape) != expected:
                raise ValueError(f"predict returned shape {tuple(logits.shape)}, expected {expected}")
            for box, window_logits in zip(batch_boxes, logits):
                accumulator.add(box, torch.sigmoid(window_logits.float()))
            done += len(batch_boxes)
            if progress is not None:
                progress(done, len(boxes))
    return accumulator.finalize()
