"""satseg: text-prompted segmentation of 3D medical scans with the SAT models.

The package imports nothing heavy at start-up (no torch): ``satseg --help``, ``satseg terms`` and shell
completion stay fast. The segmentation API is loaded on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("segment", "Predictor", "Segmentation", "RuntimeOptions", "ScanOptions", "PromptOptions")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # Lazy re-exports so that `import satseg` stays torch-free.
    if name in _API:
        from satseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'satseg' has no attribute {name!r}")
