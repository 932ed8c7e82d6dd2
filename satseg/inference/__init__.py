"""Inference: sliding windows and Gaussian aggregation (``windows``, ``aggregate``).

Names are re-exported lazily so that ``import satseg.inference`` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "window_starts": "satseg.inference.windows",
    "window_slices": "satseg.inference.windows",
    "gaussian_importance": "satseg.inference.windows",
    "extract_windows": "satseg.inference.windows",
    "SAT_WINDOW": "satseg.inference.windows",
    "SAT_STRIDE": "satseg.inference.windows",
    "ProbabilityAccumulator": "satseg.inference.aggregate",
    "sliding_window_probabilities": "satseg.inference.aggregate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'satseg.inference' has no attribute {name!r}")
