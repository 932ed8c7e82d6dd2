"""Inference: the sliding window (``sliding_window``: positions, Gaussian map, accumulation, the loop), where the
model runs (``runtime``), the predictor, and the way back to the scan's grid (``input_grid``).

Names are re-exported lazily so that ``import satseg.inference`` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "window_starts": "satseg.inference.sliding_window",
    "window_slices": "satseg.inference.sliding_window",
    "gaussian_importance": "satseg.inference.sliding_window",
    "extract_windows": "satseg.inference.sliding_window",
    "SAT_WINDOW": "satseg.inference.sliding_window",
    "SAT_STRIDE": "satseg.inference.sliding_window",
    "ProbabilityAccumulator": "satseg.inference.sliding_window",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'satseg.inference' has no attribute {name!r}")
