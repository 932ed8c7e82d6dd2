"""What a prediction gives back: the result for one scan, and the state one scan leaves for further prompts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from satseg.inference.prompts import Prompt
from satseg.inference.sliding_window import FeatureCache
from satseg.io.volume import Volume


@dataclass
class Segmentation:
    """The result for one scan.

    Attributes:
        volume: the scan as read.
        prompts: one :class:`~satseg.inference.prompts.Prompt` per user prompt, in order.
        masks: output name → uint8 (I, J, K) mask on the scan's grid.
        probabilities: output name → float32 (I, J, K) probability map on the scan's grid, when asked for.
        modality: the modality the model was told.
        grid: the preprocessing record (:class:`~satseg.geometry.GridRecord`): how to go back to the scan's grid.
        orientation: the model-grid orientation actually used (``RAS``, ``ASR``, ...), not the option asked for.
        timings: stage → seconds.
        warnings: everything the run warned about.
        model: the model's name.
    """

    volume: Volume
    prompts: list[Prompt]
    masks: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray] | None
    modality: str
    grid: object
    orientation: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model: str = ""

    @property
    def names(self) -> list[str]:
        """Output file stems, one per prompt (derived from :attr:`prompts`)."""
        return [p.output_name for p in self.prompts]

    def grid_dict(self) -> dict:
        """The preprocessing record as reports hold it (JSON-ready, with the orientation chosen)."""
        return dict(self.grid.to_dict(), orientation_choice=self.orientation)

    def to_nifti(self) -> dict:
        """name → ``nibabel.Nifti1Image`` (uint8 mask with the scan's affine and header)."""
        from satseg.outputs.masks import INTENT_LABEL, nifti_like

        return {name: nifti_like(mask, self.volume, intent=INTENT_LABEL, description=f"satseg {name}")
                for name, mask in self.masks.items()}


@dataclass
class ScanState:
    """What :meth:`Predictor.set_scan` computed for one scan, reused by every :meth:`Predictor.predict`.

    Attributes:
        volume, modality: the scan as read and the modality the model is told.
        orientation: the model-grid orientation chosen.
        image: (H, W, D) float32 normalised volume on the model grid.
        record: the preprocessing record (the way back to the scan's grid).
        features: backbone features of the windows, kept up to the budget.
        warnings: what reading the scan warned about.
        timings: stage → seconds of the scan's own work (read, preprocess, backbone).
    """

    volume: Volume
    modality: str
    orientation: str
    image: np.ndarray
    record: object
    features: FeatureCache
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
