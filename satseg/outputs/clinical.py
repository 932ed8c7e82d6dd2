"""The clinical outputs beside the NIfTI masks: a DICOM Segmentation and an RT Structure Set.

``--output-type nifti,dicom-seg,rtstruct`` (any combination) chooses them. Both need the DICOM series the scan was
read from — or, for a NIfTI made from a series, ``--reference-series DIR``, checked to be that series' grid — and
both are checked before any model runs (:func:`check_dicom_outputs`), written into the case's staging folder and
switched into place with the rest (:func:`write_clinical`).
"""

from __future__ import annotations

from pathlib import Path

from satseg.errors import InputError

OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")
SEG_FILE = "segmentation.seg.dcm"
RTSTRUCT_FILE = "rtstruct.dcm"


def parse_output_types(values: list[str] | str | None) -> tuple[str, ...]:
    """``--output-type`` values (repeated and/or comma-separated) → the distinct types, in :data:`OUTPUT_TYPES`
    order; none given → ``("nifti",)``.

    Raises:
        InputError: an unknown type (the message lists the known ones).
    """
    if isinstance(values, str):
        values = [values]
    given = [v.strip().lower() for value in (values or []) for v in value.split(",") if v.strip()]
    unknown = [v for v in given if v not in OUTPUT_TYPES]
    if unknown:
        raise InputError(f"unknown --output-type {unknown[0]!r}; use any of {', '.join(OUTPUT_TYPES)} "
                         "(comma-separated or repeated)")
    return tuple(t for t in OUTPUT_TYPES if t in given) or ("nifti",)


def wants_dicom(options) -> bool:
    return bool(options.dicom_seg or options.rtstruct)


def check_dicom_outputs(volume, options):
    """The source series of ``volume`` for its DICOM outputs, checked now (before a model loads): the scan came from
    a DICOM series with the UIDs a SEG/RTSTRUCT must reference, or ``options.reference_series`` names a series whose
    grid is the scan's. ``None`` when no DICOM output is asked for.

    Raises:
        InputError: a non-DICOM scan without ``--reference-series``, a reference series that does not match the
            scan's grid, or a series without Study/Series/Frame of Reference UIDs (one line each).
    """
    if not wants_dicom(options):
        return None
    from satseg.io.dicom_source import check_reference_series, source_series
    from satseg.outputs.dicom_seg import require_uids

    if options.reference_series:
        series = check_reference_series(volume, Path(options.reference_series))
    elif volume.meta.get("format") != "dicom":
        raise InputError(f"{volume.name}: --output-type dicom-seg/rtstruct needs a DICOM scan (a folder, .zip, file of "
                         "a series or a DICOMweb series URL); for a NIfTI made from a series give --reference-series "
                         "DIR")
    else:
        series = source_series(volume)
    require_uids(series)
    return series


def write_clinical(seg, staging: Path, options) -> tuple[list[str], dict]:
    """Write the asked-for DICOM objects of ``seg`` (a :class:`~satseg.inference.results.Segmentation`) into
    ``staging`` → (file names written, ``{"dicom_seg": summary, "rtstruct": summary}`` for the report; a summary
    lists the segments written and the empty prompts left out)."""
    if not wants_dicom(options):
        return [], {}
    from satseg import __version__
    from satseg.outputs.dicom_seg import SegmentSpec, write_dicom_seg
    from satseg.outputs.rtstruct import write_rtstruct

    series = check_dicom_outputs(seg.volume, options)
    specs = [SegmentSpec(name=p.output_name, prompt=p.text, terms=list(p.terms)) for p in seg.prompts]
    common = dict(model_name=seg.model or "custom", software_version=f"satseg {__version__}", source=series)
    written, summaries = [], {}
    if options.dicom_seg:
        summaries["dicom_seg"] = write_dicom_seg(staging / SEG_FILE, seg.masks, seg.volume, specs, **common)
        if summaries["dicom_seg"]["path"]:
            written.append(SEG_FILE)
    if options.rtstruct:
        summaries["rtstruct"] = write_rtstruct(staging / RTSTRUCT_FILE, seg.masks, seg.volume, specs, **common)
        if summaries["rtstruct"]["path"]:
            written.append(RTSTRUCT_FILE)
    for summary in summaries.values():  # the staging path is not where the file ends up
        summary["path"] = Path(summary["path"]).name if summary["path"] else None
    return written, summaries


def non_dicom_input(path) -> bool:
    """Whether a cohort input is a file that cannot be a DICOM series (NIfTI, NRRD, MetaImage)."""
    name = str(path).lower()
    return name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"))


def check_cohort_dicom_inputs(cases, options) -> None:
    """Refuse, before any case runs, a cohort asking for DICOM outputs of inputs that cannot be DICOM series."""
    if not wants_dicom(options):
        return
    for case in cases:
        if non_dicom_input(case.path):
            raise InputError(f"{case.origin or case.path}: --output-type dicom-seg/rtstruct needs DICOM series as "
                             "inputs (folders, .zip or files of a series); this is not one")
