"""``satseg SCAN -p PROMPT ... -o OUT``: segment one scan."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from satseg.cli._console import stage, window_progress

HELP = ("Segment one scan: satseg SCAN -p PROMPT [-p PROMPT ...] -o OUT_DIR. SCAN is a NIfTI, NRRD or MHA "
        "file, a DICOM folder or a .zip of one.")

log = logging.getLogger("satseg.cli")

# Options shared with `satseg batch` (Typer needs them spelled out per command).
MODEL = typer.Option("sat-nano", "--model", "-m", help="Model name (satseg weights list) or imported name.")
MODALITY = typer.Option(None, "--modality", help="ct | mri | pet (default: from DICOM, else ct).")
ORIENTATION = typer.Option("auto", "--orientation",
                           help="Model-grid orientation: auto (RAS; ASR for sagittal scans), RAS, ASR, ...")
DEVICE = typer.Option("auto", "--device", help="auto | cuda | cuda:N | mps | cpu")
PRECISION = typer.Option("auto", "--precision",
                         help="auto (fp16 autocast on CUDA, as upstream SAT; fp32 on CPU) | fp32 | bf16 | fp16")
WINDOW_BATCH = typer.Option(None, "--window-batch", min=1, help="Windows per forward pass (default 1).")
COMPILE = typer.Option(False, "--compile",
                       help="torch.compile the image side on CUDA: a one-off compile per process, then faster windows.")
PROMPT_CHUNK = typer.Option(32, "--prompt-chunk", min=1, help="Prompts decoded together.")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads for torch.")
FREE_TEXT = typer.Option(False, "--free-text", help="Send unresolvable prompts to the text encoder as they are.")
ALLOW_UNTRAINED = typer.Option(False, "--allow-untrained-modality",
                               help="Run a term that was not trained for the scan's modality (the warning is kept in "
                                    "the report and the batch summary) instead of refusing it.")
PROBABILITIES = typer.Option(False, "--probabilities",
                             help="Also write float32 probability maps: probabilities/<name>.nii.gz.")
MULTILABEL = typer.Option(False, "--ml", help="Also write one multilabel file segmentation.nii.gz + legend.")
STATISTICS = typer.Option(False, "--statistics", help="Write statistics.json (volumes, intensities, boxes).")
PREVIEW = typer.Option(False, "--preview", help="Write preview.png (axial, coronal, sagittal overlays).")
OUTPUT_TYPE = typer.Option(None, "--output-type",
                           help="nifti | dicom-seg | rtstruct, comma-separated or repeated (default nifti). The DICOM "
                                "ones need a DICOM scan (or --reference-series): segmentation.seg.dcm, rtstruct.dcm.")
STORE_TO = typer.Option(None, "--store-to",
                        help="DICOMweb URL (base or study) to send the DICOM-SEG/RTSTRUCT to with STOW-RS once written "
                             "(credentials: SATSEG_DICOMWEB_TOKEN, or SATSEG_DICOMWEB_USER + _PASSWORD).")


def segment(
    scan: str = typer.Argument(..., help="Scan: NIfTI / NRRD / MHA file, DICOM folder or .zip, or a DICOMweb series "
                                         "URL (…/dicom-web/studies/<uid>/series/<uid>)."),
    prompts: list[str] = typer.Option(None, "--prompt", "-p", help="Structure to segment (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    model: str = MODEL,
    modality: str = MODALITY,
    orientation: str = ORIENTATION,
    series: str = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder holds several."),
    volume: int = typer.Option(None, "--volume", min=0, help="Volume index of a 4D file."),
    device: str = DEVICE,
    precision: str = PRECISION,
    window_batch: int = WINDOW_BATCH,
    prompt_chunk: int = PROMPT_CHUNK,
    threads: int = THREADS,
    compile_model: bool = COMPILE,
    free_text: bool = FREE_TEXT,
    allow_untrained_modality: bool = ALLOW_UNTRAINED,
    probabilities: bool = PROBABILITIES,
    ml: bool = MULTILABEL,
    statistics: bool = STATISTICS,
    preview: bool = PREVIEW,
    report: Path = typer.Option(None, "--report", help="Write a run report (JSON) to this path."),
    output_type: list[str] = OUTPUT_TYPE,
    reference_series: Path = typer.Option(None, "--reference-series",
                                          help="The DICOM series a NIfTI scan was made from, for DICOM outputs "
                                               "(its geometry must be the scan's)."),
    store_to: str = STORE_TO,
) -> None:
    from satseg.errors import InputError, SatsegError
    from satseg.inference.cohort import Case
    from satseg.inference.engine import CohortOptions, Hooks, segment_files
    from satseg.inference.options import PromptOptions, RuntimeOptions, ScanOptions
    from satseg.inference.prepare import prepare_case
    from satseg.inference.remote import check_remote, local_scan, store_results
    from satseg.outputs.case import OutputOptions, check_output_dir
    from satseg.outputs.clinical import check_dicom_outputs, parse_output_types, wants_dicom

    started = time.perf_counter()
    # Everything the user can get wrong is checked before the scan is read, a model is loaded or the network is
    # touched: options first, then the output folder, then the scan and the prompts.
    check_model_name(model, device=device, precision=precision)
    options = OutputOptions.for_types(parse_output_types(output_type), probabilities=probabilities, multilabel=ml,
                                      statistics=statistics, preview=preview, report=str(report) if report else None,
                                      reference_series=str(reference_series) if reference_series else None)
    if store_to and not wants_dicom(options):
        raise InputError("--store-to sends DICOM objects: add --output-type dicom-seg and/or rtstruct")
    if reference_series is not None and not wants_dicom(options):
        raise InputError("--reference-series is for DICOM outputs: add --output-type dicom-seg and/or rtstruct")
    check_remote(scan, store_to)
    check_output_dir(out)
    if report is not None and (report if report.is_absolute() else out / report).is_dir():
        raise InputError(f"--report {report} is a folder; give the path of the JSON file to write")
    scan_options = ScanOptions(modality=modality, orientation=orientation, series=series, volume=volume)
    prompt_options = PromptOptions(free_text=free_text, allow_untrained_modality=allow_untrained_modality)
    runtime = RuntimeOptions(device=device, precision=precision, window_batch=window_batch,
                             prompt_chunk=prompt_chunk, threads=threads, compile=compile_model)
    with local_scan(scan, stage) as path:
        stage(f"reading {scan}")
        prepared = prepare_case(path, prompts or [], scan_options, prompt_options)  # refused here: exit 2, no output
        check_dicom_outputs(prepared.volume, options)
        case = Case(path=Path(path), name=prepared.volume.name, prompts=list(prompts or []), modality=modality,
                    orientation=orientation, prepared=prepared)
        [outcome] = segment_files([case], out, model=model, runtime=runtime, prompt_options=prompt_options,
                                  outputs=options, hooks=Hooks(stage=stage, progress=window_progress),
                                  cohort=CohortOptions(read_workers=0, write_threads=0, overwrite=True,
                                                       case_folders=False, table=None))
    if outcome.status == "failed":  # the case's own error, as `satseg SCAN` has always raised it
        raise outcome.exception or SatsegError(outcome.detail)
    typer.echo(f"{case.name}: {outcome.structures} structure(s), {outcome.found} found, {len(outcome.written)} "
               f"file(s) in {out} ({time.perf_counter() - started:.1f} s)")
    if store_to:
        stored = store_results(store_to, outcome.written, stage)
        if stored is not None:
            typer.echo(f"stored {len(stored['stored'])} object(s) at {stored.get('retrieve_url') or store_to}")


def check_model_name(model: str, *, device: str = "auto", precision: str = "auto") -> None:
    """Refuse an unknown model name, device or precision before any scan is read (usage errors, exit 2)."""
    from satseg.inference.options import check_device_name, check_precision_name
    from satseg.weights import get_model

    check_device_name(device)
    check_precision_name(precision)
    get_model(model)  # UnknownModelError (a usage error) lists the known names
