"""The Python API, mirroring the command line.

    >>> import satseg
    >>> masks = satseg.segment("scan.nii.gz", ["liver", "left kidney"])      # name → nibabel image
    >>> predictor = satseg.Predictor.from_pretrained("sat-nano")             # load once ...
    >>> for path in cohort:
    ...     result = predictor.segment(path, ["liver"])                      # ... segment many
    >>> predictor.set_scan("scan.nii.gz")                                      # one scan, the backbone once ...
    >>> predictor.predict(["liver"]); predictor.predict(["aorta", "spleen"])  # ... then any prompts, cheaply
    >>> satseg.segment_files(cohort, "out/", ["liver"])                       # a cohort, pipelined, into folders
"""

from __future__ import annotations

from pathlib import Path

from satseg.inference.engine import segment_files
from satseg.inference.options import PromptOptions, RuntimeOptions, ScanOptions
from satseg.inference.predictor import Predictor, Segmentation
from satseg.io.volume import Volume

__all__ = ["segment", "segment_files", "Predictor", "Segmentation", "RuntimeOptions", "ScanOptions", "PromptOptions"]


def segment(scan, prompts: list[str] | str, *, model: str | Predictor = "sat-nano",
            scan_options: ScanOptions | None = None, prompt_options: PromptOptions | None = None,
            runtime: RuntimeOptions | None = None, probabilities: bool = False) -> dict:
    """Segment ``prompts`` in ``scan`` and return ``{output name: nibabel image}`` on the scan's grid.

    Args:
        scan: a path (NIfTI, NRRD, MHA, DICOM folder or .zip), a :class:`~satseg.io.volume.Volume` or a
            nibabel image.
        prompts: one prompt or a list ("liver", "left kidney", "kidneys", ...).
        model: a model name (``sat-nano``, ``sat-pro``, an imported name) or a loaded :class:`Predictor`.
        probabilities: also return the float32 probability maps: the result is then a pair
            ``(masks, probability_maps)`` of two ``{name: image}`` dicts.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(model, Predictor):
        result = model.segment(scan, prompts, scan_options=scan_options, prompt_options=prompt_options,
                               probabilities=probabilities)
    else:
        # Validate the scan and the prompts before any weights are loaded or downloaded.
        from satseg.inference.prepare import prepare_case

        case = prepare_case(scan, prompts, scan_options, prompt_options)
        result = Predictor.from_pretrained(model, runtime).segment_prepared(case, probabilities=probabilities)
    images = result.to_nifti()
    if not probabilities:
        return images
    from satseg.outputs.masks import INTENT_NONE, nifti_like

    maps = {name: nifti_like(prob, result.volume, intent=INTENT_NONE, description="satseg probability")
            for name, prob in (result.probabilities or {}).items()}
    return images, maps


def load_volume(path: str | Path, *, series: str | None = None, volume: int | None = None) -> Volume:
    """Read a scan the way the pipeline does (validation included)."""
    from satseg.io import read_volume

    return read_volume(Path(path), series=series, volume=volume)
