"""Intensity normalisation as in SAT's inference, and a guess of the modality when the file does not say.

* CT: clip to [-500, 1000] HU, then z-score with the volume's own mean and standard deviation.
* MRI / PET: clip to the volume's 0.5th–99.5th percentiles, then z-score.

Mean and standard deviation are accumulated in float64 (upstream uses float32; differences are ~1e-6). A constant
volume (standard deviation 0) normalises to zeros instead of NaN.
"""

from __future__ import annotations

import logging

import numpy as np

from satseg.io.volume import Volume

log = logging.getLogger(__name__)

CT_WINDOW_HU = (-500.0, 1000.0)
PERCENTILES = (0.5, 99.5)


def normalize(raw: np.ndarray, modality: str) -> np.ndarray:
    """Clip and z-score a model-grid volume.

    Args:
        raw: (H, W, D) raw intensities (HU for CT), any real dtype.
        modality: ``"ct"``, ``"mri"`` or ``"pet"``.

    Returns:
        float32 array of the same shape.
    """
    modality = check_modality(modality)
    image = np.asarray(raw, dtype=np.float32)
    if modality == "ct":
        lower, upper = CT_WINDOW_HU
    else:
        lower, upper = np.percentile(image, PERCENTILES)
    image = np.clip(image, lower, upper)  # a new array: the caller's stays untouched
    mean = image.mean(dtype=np.float64)
    std = image.std(dtype=np.float64)
    if not std > 0:
        log.warning("constant image after clipping; normalised to zeros")
        return np.zeros_like(image)
    image -= np.float32(mean)
    image /= np.float32(std)
    return image


def check_modality(modality: str) -> str:
    """The modality the model knows (``"ct"``, ``"mri"``, ``"pet"``) for any spelling the vocabulary accepts."""
    from satseg.vocabulary import normalize_modality

    return normalize_modality(modality)


def guess_modality(volume: Volume) -> tuple[str, str | None]:
    """The scan's modality and a warning when it had to be guessed unconvincingly.

    ``volume.modality`` when the file says (DICOM Modality); otherwise ``"ct"``, with a warning when the
    intensities do not look like Hounsfield units (air near -1000 and values within [-1100, 4000]).
    """
    if volume.modality:
        return check_modality(volume.modality), None
    if looks_like_hu(volume.array):
        return "ct", None
    lo, hi = _robust_range(volume.array)
    return "ct", (
        f"{volume.name}: modality unknown and intensities ({lo:g} .. {hi:g}) do not look like CT Hounsfield units; "
        "segmenting as CT — pass --modality mri or pet if this is not a CT"
    )


def looks_like_hu(array: np.ndarray) -> bool:
    """True when the values look like CT Hounsfield units: air (≤ -900, padding down to -3100) and ≤ 4000."""
    lo, hi = _robust_range(array)
    return -3100.0 <= lo <= -900.0 and hi <= 4000.0


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    """0.1st and 99.9th percentiles of a strided subsample (cheap on 512×512×300 volumes)."""
    step = max(1, int(round((np.asarray(array.shape).prod() / 2e6) ** (1 / 3))))
    sample = np.asarray(array[::step, ::step, ::step], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(sample, (0.1, 99.9))
    return float(lo), float(hi)
