"""SAT's sliding window, in one place (nnU-Net's scheme, as upstream SAT runs it; spec section 5).

- :mod:`.positions`: where the 288 x 288 x 96 windows go (stride half a window, the last one shifted back
  to the end of the axis) and the zero-padded patches cut there.
- :mod:`.importance`: how much each voxel of a window counts (the Gaussian importance map, float16 values
  as upstream).
- :mod:`.accumulate`: the Gaussian-weighted average of the windows' probabilities, one weight map shared by
  all prompts, and where its sums live.
- :mod:`.loop`: the loop the predictor runs (identical windows once, only the box decoded).

Upstream's plain loop, the reference the loop is tested against, lives in ``tests/reference_sliding_window.py``.
"""

from satseg.inference.sliding_window.accumulate import GPU_SUMS_SHARE, ProbabilityAccumulator, accumulation_place
from satseg.inference.sliding_window.importance import GAUSSIAN_PEAK, gaussian_importance
from satseg.inference.sliding_window.loop import (
    FeatureCache,
    WindowStats,
    crop_per_pixel,
    group_identical_windows,
    sliding_window,
)
from satseg.inference.sliding_window.positions import (
    SAT_STRIDE,
    SAT_WINDOW,
    Box,
    box_extent,
    extract_windows,
    half_window,
    window_slices,
    window_starts,
)

__all__ = [
    "GAUSSIAN_PEAK",
    "GPU_SUMS_SHARE",
    "FeatureCache",
    "SAT_STRIDE",
    "SAT_WINDOW",
    "Box",
    "ProbabilityAccumulator",
    "WindowStats",
    "accumulation_place",
    "box_extent",
    "crop_per_pixel",
    "extract_windows",
    "gaussian_importance",
    "group_identical_windows",
    "half_window",
    "sliding_window",
    "window_slices",
    "window_starts",
]
