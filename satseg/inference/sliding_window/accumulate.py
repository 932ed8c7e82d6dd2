"""Gaussian-weighted averaging of per-window probabilities over the volume.

SAT's rule (spec section 5): every window's sigmoid probabilities are multiplied by the importance map
(:func:`~satseg.inference.sliding_window.importance.gaussian_importance`) and summed into the volume; the
map itself is summed into a weight map; the final probability is sum / weight, and a mask is
probability > 0.5, per prompt independently.

The weight map depends only on the windows, not on the prompt, so it is one (H, W, D) tensor shared by
all prompts (upstream keeps one per prompt), summed once from the planned boxes. Prompts can be
accumulated in chunks (``add(box, probs, prompts=slice(a, b))``); ``probabilities()`` refuses to divide
unless every prompt has received every planned window as often as it was planned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from satseg.inference.sliding_window.importance import gaussian_importance
from satseg.inference.sliding_window.positions import SAT_WINDOW, Box, box_extent

#: Share of free GPU memory the float32 sums may take before accumulation falls back to the CPU.
GPU_SUMS_SHARE = 0.25


class ProbabilityAccumulator:
    """Sums Gaussian-weighted window probabilities for N prompts over a volume of shape (H, W, D).

    Args:
        shape: (H, W, D) of the volume.
        n_prompts: N.
        boxes: every window that will be added, in order (a box listed twice is expected twice and weighs
            twice, like upstream's duplicate windows). Their importance maps are summed into the weight map
            here, in this order.
        window: (h, w, d) window size; boxes are at most this large.
        device: where the sums live (default the CPU, upstream's place).
        dtype: of the (N, H, W, D) sums. float32 (default) is upstream's arithmetic: sums of
            ``probs * gaussian`` and of ``gaussian``, divided at the end. ``torch.float16`` or
            ``torch.bfloat16`` halve their memory: because the Gaussian's tails (down to 6e-8) underflow
            in float16, each window then adds ``probs * gaussian / total_weight``, terms of at most 1, and
            the sums are the probabilities themselves (error about 1e-3 for float16, 1e-2 for bfloat16).
            The shared (H, W, D) weight map is always float32.

    Products are formed in float32 on the device of the probabilities (e.g. the GPU), then moved to
    ``device``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        n_prompts: int,
        boxes: Sequence[Box],
        *,
        window: Sequence[int] = SAT_WINDOW,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (H, W, D) with positive sizes, got {tuple(shape)}")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1, got {n_prompts}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.shape = tuple(int(s) for s in shape)
        self.n_prompts = int(n_prompts)
        self.window = tuple(int(s) for s in window)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = dtype
        self._importance = gaussian_importance(self.window)
        self._importance_by_device: dict[torch.device, torch.Tensor] = {}
        self._sums = torch.zeros((self.n_prompts, *self.shape), dtype=dtype, device=self.device)
        self._weight = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        # Per planned box: how many times it is planned, and how many times each prompt has received it.
        self._planned = Counter(_key(box) for box in boxes)
        self._counts: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        for box in boxes:
            self._check_box(box)
            extent = box_extent(box)
            self._weight[box] += self._importance_on(self.device)[: extent[0], : extent[1], : extent[2]]
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
        counts = self._counts.setdefault(_key(box), np.zeros(self.n_prompts, dtype=np.int64))
        counts[start:stop] += 1

    def probabilities(self, prompts: slice | None = None) -> torch.Tensor:
        """Gaussian-weighted average probabilities (n, H, W, D) for ``prompts`` (default all), as float32."""
        self._check_ready()
        sums = self._sums[prompts or slice(None)]
        return sums.to(torch.float32) if self._normalised else sums / self._weight

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
        if _key(box) not in self._planned:
            raise ValueError(f"box {box} is not one of the planned boxes")
        return box_extent(box)

    def _check_ready(self) -> None:
        if self._sums is None:
            raise RuntimeError("the accumulator was finalized; create a new one")
        for key, wanted in self._planned.items():
            counts = self._counts.get(key, np.zeros(self.n_prompts, dtype=np.int64))
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


def accumulation_place(device: torch.device, n_prompts: int, shape: Sequence[int]) -> tuple[torch.device, torch.dtype]:
    """Where the (N, H, W, D) sums live: float32 on the GPU when they fit in ``GPU_SUMS_SHARE`` of its free
    memory (no transfer per window), else float32 on the CPU (upstream's place).

    float16 sums (``ProbabilityAccumulator(dtype=float16)``) are never chosen here: their ~1e-3 error flips
    voxels whose probability is that close to 0.5 (benchmarks/RESULTS.md, "Same result";
    tests/test_equivalence.py), so they do not meet "masks unchanged"; pass ``accumulate=`` to
    :func:`~satseg.inference.sliding_window.loop.sliding_window` to use them deliberately.
    """
    if device.type != "cuda":
        return torch.device("cpu"), torch.float32
    need = 4 * n_prompts * shape[0] * shape[1] * shape[2]
    free, _ = torch.cuda.mem_get_info(device)
    if need <= GPU_SUMS_SHARE * free:
        return device, torch.float32
    return torch.device("cpu"), torch.float32


def _key(box: Box) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in box)
