"""Everything checked before a model is loaded: the scan, its modality, the prompts, the orientation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from satseg.errors import InputError
from satseg.inference.options import PromptOptions, ScanOptions
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

# Files a case folder may hold besides the masks: no prompt may be named like them.
RESERVED_NAMES = frozenset({"segmentation", "statistics", "preview", "report", "probabilities"})


@dataclass
class PreparedCase:
    """A scan and its prompts, validated and resolved: everything a model needs, checked before it loads.

    Attributes:
        volume, modality: the scan as read and the modality the model will be told.
        prompts, names, resolutions: the user's prompts, their output names and their resolution (dicts).
        warnings: what reading the scan and resolving the prompts warned about.
        read_s: seconds spent reading and validating the scan.
    """

    volume: Volume
    modality: str
    prompts: list[str]
    names: list[str]
    resolutions: list[dict]
    scan_options: ScanOptions
    prompt_options: PromptOptions
    warnings: list[str] = field(default_factory=list)
    read_s: float = 0.0


def prepare_case(scan: Volume | str | Path, prompts: list[str], scan_options: ScanOptions | None = None,
                 prompt_options: PromptOptions | None = None) -> PreparedCase:
    """Read and validate ``scan``, settle its modality and resolve ``prompts`` (no model involved)."""
    scan_options = scan_options or ScanOptions()
    prompt_options = prompt_options or PromptOptions()
    started = time.perf_counter()
    volume, modality, warnings = prepare_scan(scan, scan_options)
    read_s = time.perf_counter() - started
    resolutions, names = prepare_prompts(list(prompts or []), modality, prompt_options)
    warnings += [w for r in resolutions for w in r["warnings"]]
    return PreparedCase(volume=volume, modality=modality, prompts=list(prompts), names=names,
                        resolutions=resolutions, scan_options=scan_options, prompt_options=prompt_options,
                        warnings=warnings, read_s=read_s)


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


def prepare_prompts(prompts: list[str], modality: str, options: PromptOptions) -> tuple[list[dict], list[str]]:
    """Resolve every prompt to trained terms (or refuse) → ``(resolutions as dicts, output names)``."""
    from satseg.outputs import output_names
    from satseg.vocabulary import resolve

    prompts = [p for p in (prompts or []) if p is not None]
    if not prompts or not any(p.strip() for p in prompts):
        raise InputError("no prompt given: add at least one -p/--prompt (see `satseg terms` for what the models know)")
    blank = [p for p in prompts if not p.strip()]
    if blank:
        raise InputError("an empty prompt was given; every -p/--prompt needs a structure name")
    resolutions = [resolve(p, modality, free_text=options.free_text,
                           allow_untrained_modality=options.allow_untrained_modality).to_dict() for p in prompts]
    return resolutions, output_names(prompts, reserved=RESERVED_NAMES)


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
