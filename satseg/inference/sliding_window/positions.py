"""Where the windows go: SAT's window positions, and the zero-padded patches cut at them.

This reproduces ``split_3d`` of SAT's ``data/inference_dataset.py`` (spec section 5):

- Windows are 288 x 288 x 96 voxels at a stride of half a window (144, 144, 48). Along an axis of length
  ``L`` there are ``n = max(ceil(L / stride) - 1, 1)`` windows starting at ``i * stride``; a window that
  would run past the end is shifted back to ``[L - window, L]``, and its start is clamped at 0 when the
  axis is shorter than a window (the box is then the whole axis, shorter than the window). Boxes are the
  product of the per-axis positions, first axis outermost.
- Windows are *not* deduplicated. With SAT's numbers (window = 2 x stride, even window) no two positions
  on an axis coincide, for any length (``tests/test_windows.py`` checks every length up to 2000). With
  other numbers (odd window, or stride < window / 2) a shifted window can land on an earlier one; upstream
  keeps both, so that window counts twice, in the probability sum *and* in the weight sum. That is still a
  weighted average, but one where that window weighs double; we keep the duplicate to match upstream.
- Patches are zero-padded at the *end* of each axis up to the window (zero = the mean after z-scoring).

Window positions need no torch; the patches are torch tensors (torch is imported lazily).
"""

from __future__ import annotations

import math
from itertools import product
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: SAT's window (H, W, D) in voxels of the 1 x 1 x 3 mm processed grid.
SAT_WINDOW: tuple[int, int, int] = (288, 288, 96)
#: SAT's stride: half a window per axis.
SAT_STRIDE: tuple[int, int, int] = (144, 144, 48)

Box = tuple[slice, slice, slice]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start indices of the windows along one axis of ``length`` voxels (SAT's rule, duplicates kept).

    ``n = max(ceil(length / stride) - 1, 1)`` windows start at ``i * stride``; one that would end past
    ``length`` starts at ``max(length - window, 0)`` instead. The window ``[start, min(start + window,
    length))`` is shorter than ``window`` only when ``length < window``.
    """
    if length < 1:
        raise ValueError(f"axis length must be at least 1, got {length}")
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got window={window}, stride={stride}")
    count = max(math.ceil(length / stride) - 1, 1)
    starts = []
    for i in range(count):
        start = i * stride
        if start + window > length:
            start = max(length - window, 0)
        starts.append(start)
    return starts


def half_window(window: Sequence[int]) -> tuple[int, int, int]:
    """SAT's stride for a window: half of it per axis, rounded down (``(288, 288, 96)`` -> ``(144, 144, 48)``)."""
    return tuple(int(size) // 2 for size in window)  # type: ignore[return-value]


def window_slices(
    shape: Sequence[int],
    window: Sequence[int] = SAT_WINDOW,
    stride: Sequence[int] | None = None,
) -> list[Box]:
    """The windows covering a volume of ``shape`` (H, W, D), as boxes of slices, first axis outermost.

    ``stride`` defaults to half the window (SAT's choice; ``(144, 144, 48)`` for the default window).
    A box is shorter than ``window`` along an axis where the volume is shorter than the window; every
    voxel lies in at least one box.
    """
    shape, window = triple(shape, "shape"), triple(window, "window")
    stride = half_window(window) if stride is None else triple(stride, "stride")
    per_axis = [
        [slice(start, min(start + size, length)) for start in window_starts(length, size, step)]
        for length, size, step in zip(shape, window, stride)
    ]
    return [tuple(box) for box in product(*per_axis)]  # type: ignore[misc]


def box_extent(box: Box) -> tuple[int, int, int]:
    """Size (h, w, d) of a box of slices."""
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def extract_windows(image: "torch.Tensor", boxes: Sequence[Box], window: Sequence[int] = SAT_WINDOW) -> "torch.Tensor":
    """Cut ``boxes`` out of ``image`` (H, W, D) into a batch (B, 1, *window), zero-padded at each axis end.

    The batch has the image's dtype and device.
    """
    import torch

    window = triple(window, "window")
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, D), got shape {tuple(image.shape)}")
    batch = torch.zeros((len(boxes), 1, *window), dtype=image.dtype, device=image.device)
    for index, box in enumerate(boxes):
        extent = box_extent(box)
        if any(e > w for e, w in zip(extent, window)):
            raise ValueError(f"box {extent} is larger than the window {window}")
        batch[index, 0, : extent[0], : extent[1], : extent[2]] = image[box]
    return batch


def triple(values: Sequence[int], name: str) -> tuple[int, int, int]:
    """``values`` as three ints (H, W, D); a ValueError naming ``name`` otherwise."""
    values = tuple(int(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (H, W, D), got {values}")
    return values  # type: ignore[return-value]
