"""Options of a segmentation run, grouped in small dataclasses (not dozens of keyword arguments)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from satseg.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(device: str | None) -> str:
    """``device`` in lower case if it is one satseg knows (auto, cpu, mps, cuda, cuda:N), else a usage error;
    whether the device is there is checked when the model is placed on it."""
    name = (device or "auto").lower()
    if not _DEVICE.match(name):
        raise InputError(f"unknown device {device!r}; use auto, cuda, cuda:N, mps or cpu")
    return name


def check_precision_name(precision: str | None) -> str:
    """``precision`` in lower case if it is one of :data:`PRECISIONS`, else a usage error."""
    name = (precision or "auto").lower()
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    return name


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how the model runs.

    Attributes:
        device: ``"auto"`` (CUDA, else MPS, else CPU), ``"cuda"``, ``"cuda:1"``, ``"cpu"`` or ``"mps"``.
        precision: ``"auto"`` (bf16/fp16 autocast on CUDA, fp32 elsewhere), ``"fp32"``, ``"bf16"``, ``"fp16"``.
        window_batch: windows per forward pass; ``None`` picks 1 (a second window per pass doubles the GPU
            memory and gains no speed: benchmarks/RESULTS.md §5).
        prompt_chunk: prompts decoded together (the decoder treats prompts independently).
        threads: CPU threads for torch (``None``: torch's default).
        compile: ``torch.compile`` the image side on CUDA (a one-off compilation per process, then faster
            windows: worth it for a cohort, not for one scan; benchmarks/RESULTS.md §5).
    """

    device: str = "auto"
    precision: str = "auto"
    window_batch: int | None = None
    prompt_chunk: int = 32
    threads: int | None = None
    compile: bool = False


@dataclass(frozen=True)
class ScanOptions:
    """How a scan is read and preprocessed.

    Attributes:
        modality: ``"ct"``, ``"mri"`` or ``"pet"``; ``None``: from DICOM, else CT (with a warning when the
            intensities do not look like Hounsfield units).
        orientation: ``"auto"`` (RAS, or ASR for sagittal acquisitions), or an axis code such as ``"RAS"``.
        series: DICOM SeriesInstanceUID when a folder holds several series.
        volume: index of the volume to take from a 4D file.
    """

    modality: str | None = None
    orientation: str = "auto"
    series: str | None = None
    volume: int | None = None


@dataclass(frozen=True)
class PromptOptions:
    """How prompts are understood.

    Attributes:
        free_text: send prompts that do not resolve to trained terms to the text encoder as they are.
        threshold: probability above which a voxel belongs to the structure (SAT: 0.5).
        allow_untrained_modality: run terms that were not trained on the scan's modality (with a warning kept in
            the resolution) instead of refusing them.
    """

    free_text: bool = False
    threshold: float = 0.5
    allow_untrained_modality: bool = False
