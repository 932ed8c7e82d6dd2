"""How much each voxel of a window counts: SAT's (nnU-Net's) Gaussian importance map.

This reproduces ``compute_gaussian`` of SAT's ``evaluate/inference_engine.py`` (spec section 5): a delta
at voxel ``size // 2`` blurred with ``sigma = size / 8`` per axis (scipy's Gaussian kernel, truncated at
4 sigma, constant-zero boundary), divided by its maximum, times 10, rounded to float16, and the float16
zeros (the far corners underflow) replaced by the smallest non-zero value. We keep the float16 rounding so
the weights are exactly upstream's; the map is returned in the dtype you ask for (float16 values are exact
in float32).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Sequence

from satseg.inference.sliding_window.positions import SAT_WINDOW, triple

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: nnU-Net's importance map peaks at this value (SAT keeps nnU-Net's ``value_scaling_factor=10``).
GAUSSIAN_PEAK = 10.0
#: scipy.ndimage's default Gaussian truncation, in standard deviations.
_GAUSSIAN_TRUNCATE = 4.0


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

    scaled = _gaussian_float16(triple(window, "window"), float(sigma_scale))
    return torch.from_numpy(scaled).to(device=device, dtype=dtype or torch.float32, copy=True)


@functools.lru_cache(maxsize=4)
def _gaussian_float16(window: tuple[int, int, int], sigma_scale: float):
    """The map of :func:`gaussian_importance` as a float16 array, computed once per window size and process
    (computing it in float64 is a noticeable cost per scan: benchmarks/RESULTS.md §5). Never handed out:
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
