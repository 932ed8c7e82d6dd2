"""Sliding-window geometry for SAT inference: window positions, the Gaussian importance map, patch extraction.

Everything here reproduces SAT's inference (``split_3d`` in ``data/inference_dataset.py`` and
``compute_gaussian`` in ``evaluate/inference_engine.py``; spec section 5):

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
- The importance map is nnU-Net's: a delta at voxel ``size // 2`` blurred with ``sigma = size / 8`` per
  axis (scipy's Gaussian kernel, truncated at 4 sigma, constant-zero boundary), divided by its maximum,
  times 10, rounded to float16, and the float16 zeros (the far corners underflow) replaced by the smallest
  non-zero value. We keep the float16 rounding so the weights are exactly upstream's; the map is returned
  in the dtype you ask for (float16 values are exact in float32).

Window positions need no torch; the map and the patches are torch tensors (torch is imported lazily).
"""

from __future__ import annotations

import functools
import math
from itertools import product
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: SAT's window (H, W, D) in voxels of the 1 x 1 x 3 mm processed grid.
SAT_WINDOW: tuple[int, int, int] = (288, 288, 96)
#: SAT's stride: half a window per axis.
SAT_STRIDE: tuple[int, int, int] = (144, 144, 48)
#: nnU-Net's importance map peaks at this value (SAT keeps nnU-Net's ``value_scaling_factor=10``).
GAUSSIAN_PEAK = 10.0
#: scipy.ndimage's default Gaussian truncation, in standard deviations.
_GAUSSIAN_TRUNCATE = 4.0

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
    shape, window = _triple(shape, "shape"), _triple(window, "window")
    stride = half_window(window) if stride is None else _triple(stride, "stride")
    per_axis = [
        [slice(start, min(start + size, length)) for start in window_starts(length, size, step)]
        for length, size, step in zip(shape, window, stride)
    ]
    return [tuple(box) for box in product(*per_axis)]  # type: ignore[misc]


def gaussian_importance(
    window: Sequence[int] = SAT_WINDOW,
    sigma_scale: float = 1.0 / 8,
    *,
    dtype: "torch.dtype | None" = None,
    device: "torch.device | str | None" = None,
) -> "torch.Tensor":
    """SAT's (nnU-Net's) Gaussian importance map for one window: a tensor of shape ``window``.

    Peak ``GAUSSIAN_PEAK`` (10) at voxel ``size // 2`` per axis, ``sigma = size * sigma_scale``, values
    rounded to float16 as upstream, no zeros (float16 underflow in the corners is replaced by the smallest
    non-zero value). Returned as ``dtype`` (default float32) on ``device``.
    """
    import torch

    scaled = _gaussian_float16(_triple(window, "window"), float(sigma_scale))
    return torch.from_numpy(scaled).to(device=device, dtype=dtype or torch.float32, copy=True)


@functools.lru_cache(maxsize=4)
def _gaussian_float16(window: tuple[int, int, int], sigma_scale: float):
    """The map of :func:`gaussian_importance` as a float16 array, computed once per window (0.3–0.5 s in
    float64 for 288×288×96 on the 2-core machine, paid again for every scan before). Never handed out:
    callers get copies."""
    import numpy as np

    # A delta blurred by a separable Gaussian is the outer product of the three 1-D kernels centred on
    # the delta. Multiplying in axis order (0, then 1, then 2) gives bit-for-bit what scipy's
    # gaussian_filter returns for the delta in float64.
    profiles = [_kernel_profile(size, size * sigma_scale) for size in window]
    blurred = (profiles[0][:, None, None] * profiles[1][None, :, None]) * profiles[2][None, None, :]
    scaled = (blurred / blurred.max() * GAUSSIAN_PEAK).astype(np.float16)
    scaled[scaled == 0] = scaled[scaled != 0].min()
    return scaled


def extract_windows(image: "torch.Tensor", boxes: Sequence[Box], window: Sequence[int] = SAT_WINDOW) -> "torch.Tensor":
    """Cut ``boxes`` out of ``image`` (H, W, D) into a batch (B, 1, *window), zero-padded at each axis end.

    The batch has the image's dtype and device.
    """
    import torch

    window = _triple(window, "window")
    if image.ndim != 3:
        raise ValueError(f"image must be (H, W, D), got shape {tuple(image.shape)}")
    batch = torch.zeros((len(boxes), 1, *window), dtype=image.dtype, device=image.device)
    for index, box in enumerate(boxes):
        extent = box_extent(box)
        if any(e > w for e, w in zip(extent, window)):
            raise ValueError(f"box {extent} is larger than the window {window}")
        batch[index, 0, : extent[0], : extent[1], : extent[2]] = image[box]
    return batch


def box_extent(box: Box) -> tuple[int, int, int]:
    """Size (h, w, d) of a box of slices."""
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def _kernel_profile(size: int, sigma: float):
    """Values along one axis of a delta at ``size // 2`` blurred like scipy.ndimage (float64, 4 sigma)."""
    import numpy as np

    radius = int(_GAUSSIAN_TRUNCATE * float(sigma) + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * taps**2)
    kernel = kernel / kernel.sum()
    offset = np.arange(size) - size // 2
    inside = np.abs(offset) <= radius
    profile = np.zeros(size, dtype=np.float64)
    profile[inside] = kernel[offset[inside] + radius]
    return profile


def _triple(values: Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"{name} must have 3 entries (H, W, D), got {values}")
    return values  # type: ignore[return-value]
