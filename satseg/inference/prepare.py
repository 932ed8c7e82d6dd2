"""Everything checked before a model is loaded: the scan, its modality, the prompts, the orientation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from satseg.inference.options import PromptOptions, ScanOptions
from satseg.inference.prompts import Prompt, resolve_prompts
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

@dataclass
class PreparedCase:
    """A scan and its prompts, validated and resolved: everything a model needs, checked before it loads.

    Attributes:
        volume, modality: the scan as read and the modality the model will be told.
        prompts: one :class:`~satseg.inference.prompts.Prompt` per user prompt (text, output name, resolution).
        warnings: what reading the scan and resolving the prompts warned about.
        read_s: seconds spent reading and validating the scan.
        grid_s: seconds spent bringing it to the model grid, when that was done with the reading.
        model_grid: ``(image, GridRecord)`` when the scan was already brought to the model grid and normalised
            (by a cohort's read-ahead worker), else ``None``.
    """

    volume: Volume
    modality: str
    prompts: list[Prompt]
    scan_options: ScanOptions
    prompt_options: PromptOptions
    warnings: list[str] = field(default_factory=list)
    read_s: float = 0.0
    grid_s: float = 0.0
    model_grid: tuple | None = None


def prepare_case(scan: Volume | str | Path, prompts: list[str], scan_options: ScanOptions | None = None,
                 prompt_options: PromptOptions | None = None) -> PreparedCase:
    """Read and validate ``scan``, settle its modality and resolve ``prompts`` (no model involved)."""
    scan_options = scan_options or ScanOptions()
    prompt_options = prompt_options or PromptOptions()
    started = time.perf_counter()
    volume, modality, warnings = prepare_scan(scan, scan_options)
    read_s = time.perf_counter() - started
    resolved = resolve_prompts(list(prompts or []), modality, prompt_options)
    warnings += [w for p in resolved for w in p.warnings]
    return PreparedCase(volume=volume, modality=modality, prompts=resolved, scan_options=scan_options,
                        prompt_options=prompt_options, warnings=warnings, read_s=read_s)


def prepare_scan(scan: Volume | str | Path, options: ScanOptions) -> tuple[Volume, str, list[str]]:
    """Read and validate a scan and settle its modality → ``(volume, modality, warnings)``."""
    from satseg.intensity import guess_modality
    from satseg.io import read_volume, validate_volume
    from satseg.vocabulary import normalize_modality

    if isinstance(scan, Volume):
        volume = scan
        validate_volume(volume)
    elif isinstance(scan, nib.spatialimages.SpatialImage):
        volume = Volume(array=np.asanyarray(scan.dataobj), affine=scan.affine, header=scan.header)
        validate_volume(volume)
    else:
        volume = read_volume(Path(scan), series=options.series, volume=options.volume)
    warnings: list[str] = []
    if options.modality:
        modality = normalize_modality(options.modality)
        if volume.modality and volume.modality != modality:
            warnings.append(f"--modality {modality} overrides the file's own modality ({volume.modality})")
    else:
        modality, warning = guess_modality(volume)
        if warning:
            warnings.append(warning)
    return volume, modality, warnings


def choose_orientation(volume: Volume, requested: str) -> str:
    """``auto``: RAS, or ASR when the scan is a sagittal acquisition (slices along left–right)."""
    requested = (requested or "auto").upper()
    if requested != "AUTO":
        return requested
    spacing = np.asarray(volume.spacing_mm)
    slice_axis = int(np.argmax(spacing))
    anisotropic = spacing[slice_axis] > 1.5 * np.median(spacing)
    world_axis = int(np.argmax(np.abs(volume.affine[:3, slice_axis])))
    if anisotropic and world_axis == 0:
        log.info("sagittal acquisition (slices along left-right): using ASR orientation")
        return "ASR"
    return "RAS"


def on_model_grid(volume: Volume, modality: str, orientation: str, spacing) -> tuple[np.ndarray, object]:
    """``(image, record)``: the scan resampled to the model grid on the CPU (:func:`~satseg.geometry.to_model_grid`,
    scipy) and normalised for ``modality``: what the predictor does on the CPU, in any process."""
    from satseg.geometry import to_model_grid
    from satseg.intensity import normalize

    raw, record = to_model_grid(volume, orientation=orientation, spacing_mm=tuple(spacing))
    return normalize(raw, modality), record
