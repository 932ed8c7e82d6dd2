"""satseg: text-prompted segmentation of 3D medical scans with the SAT models.

The package imports nothing heavy at start-up (no torch): ``satseg --help``, ``satseg terms`` and shell
completion stay fast. The segmentation API is loaded on first use.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Large CPU tensors on transparent huge pages (PyTorch's own switch, read once, before torch allocates): every
# fresh activation otherwise pays a page fault per 4 KiB; same values, same peak RSS (benchmarks/RESULTS.md §4g).
# Takes effect when satseg is imported before torch (the CLI always is); THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

_API = ("segment", "segment_files", "Predictor", "Segmentation", "RuntimeOptions", "ScanOptions", "PromptOptions")
__all__ = ["__version__", "load_model", *_API]


def __getattr__(name: str):
    # Lazy re-exports so that `import satseg` stays torch-free.
    if name == "load_model":  # the model factory (satseg.model.factory), also loaded on first use
        from satseg.model.factory import load_model

        return load_model
    if name in _API:
        from satseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'satseg' has no attribute {name!r}")
