"""Write everything for one scan into a folder, all or nothing (the switch itself: :mod:`satseg.outputs.switch`).

Files are staged in a folder of this process inside the output folder, then switched into place under a journal,
so that every later run sees the earlier result or the new one, never a mix; the output folder itself is created
only when there is a result to write.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from satseg.errors import InputError, SatsegError
from satseg.outputs.switch import (  # noqa: F401 - the switch's names, importable from here as before
    COMPLETE_MARKER, JOURNAL, MARKER_FORMAT, REPORT_STAGED, STAGING_PREFIX, _file_record, _new_staging,
    clean_stale_staging, finished_record, install, is_complete, prepare_folder, recover, recover_folder,
    release_staging,
)


@dataclass(frozen=True)
class OutputOptions:
    """What to write besides one mask per prompt.

    Attributes:
        probabilities: float32 probability maps ``probabilities/<name>.nii.gz`` on the input grid.
        multilabel: one label image ``segmentation.nii.gz`` + ``segmentation.json`` legend.
        statistics: ``statistics.json`` (volumes, intensities, bounding boxes, centroids).
        preview: ``preview.png`` (axial / coronal / sagittal overlays).
        report: path of a run report (JSON); relative paths are inside the output folder.
        masks: one NIfTI mask file per prompt (``--output-type nifti``, the default).
        dicom_seg: a DICOM Segmentation ``segmentation.seg.dcm`` (``--output-type dicom-seg``).
        rtstruct: an RT Structure Set ``rtstruct.dcm`` (``--output-type rtstruct``).
        reference_series: the DICOM series a non-DICOM scan was made from (``--reference-series``), for the DICOM
            outputs.
    """

    probabilities: bool = False
    multilabel: bool = False
    statistics: bool = False
    preview: bool = False
    report: str | None = None
    masks: bool = True
    dicom_seg: bool = False
    rtstruct: bool = False
    reference_series: str | None = None

    @classmethod
    def for_types(cls, output_types: tuple[str, ...], **options) -> OutputOptions:
        """Options for ``--output-type`` values (:func:`~satseg.outputs.clinical.parse_output_types`)."""
        return cls(masks="nifti" in output_types, dicom_seg="dicom-seg" in output_types,
                   rtstruct="rtstruct" in output_types, **options)


def check_output_dir(out_dir: Path) -> Path:
    """Prove that ``out_dir`` can be written (before any model is loaded), without creating anything.

    An existing folder gets a probe file (created and removed at once); a folder that does not exist yet must
    have a writable nearest existing parent. The folder itself is made only when there is a result to write.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir():
        try:
            probe = out_dir / f".satseg-write-test-{os.getpid()}-{secrets.token_hex(4)}"
            probe.touch(exist_ok=False)
            probe.unlink()
        except OSError as exc:
            raise InputError(f"output folder {out_dir} is not writable ({exc.strerror or exc})") from None
        return out_dir
    parent = out_dir.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot create output folder {out_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot create output folder {out_dir}: {parent} is not writable")
    return out_dir


def _make_output_dir(out_dir: Path) -> Path:
    out_dir = check_output_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out_dir} ({exc.strerror or exc})") from None
    return out_dir


def input_fingerprint(path: str | os.PathLike | None) -> dict | None:
    """What identifies the scan a result was made from: its resolved path and, for a file, size and mtime;
    for a folder (a DICOM series), the number, total size and newest mtime of its files."""
    if path is None:
        return None
    if isinstance(path, str) and path.lower().startswith(("http://", "https://")):
        return {"url": path}  # a DICOMweb series: its UIDs name it
    path = Path(path)
    try:
        resolved = path.resolve()
        if resolved.is_dir():
            sizes, newest, count = 0, 0, 0
            for root, _dirs, files in os.walk(resolved):
                for name in files:
                    stat = os.stat(os.path.join(root, name))
                    sizes, newest, count = sizes + stat.st_size, max(newest, stat.st_mtime_ns), count + 1
            return {"path": str(resolved), "files": count, "size": sizes, "mtime_ns": newest}
        stat = resolved.stat()
    except OSError:
        return {"path": str(path)}
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def case_request(*, prompts: list[str], model: str, options: OutputOptions, input_path=None,
                 modality: str | None = None, orientation: str | None = None) -> dict:
    """Everything a finished folder must have been made with to be skipped as done (JSON-ready)."""
    outputs = asdict(options)
    outputs["report"] = bool(options.report)
    for clinical in ("dicom_seg", "rtstruct", "reference_series"):  # recorded when asked for (older records lack them)
        if not outputs[clinical]:
            del outputs[clinical]
    return {"prompts": list(prompts), "model": model, "outputs": outputs, "input": input_fingerprint(input_path),
            "modality": modality, "orientation": orientation}


def write_segmentation(seg, out_dir: Path, options: OutputOptions, *, report: dict | None = None,
                       request: dict | None = None, statistics: dict | None = None) -> list[Path]:
    """Write a :class:`~satseg.inference.predictor.Segmentation` into ``out_dir``; return the final paths.

    ``request`` is what the folder's completion marker records (default: :func:`case_request` of ``seg``).
    ``statistics`` (:func:`~satseg.outputs.statistics.compute_statistics` of the masks, when the caller has them)
    is written as ``statistics.json`` if asked for and kept, per structure, in the completion record (the rows of
    ``cohort.csv``). A failure (full disk, kill) before the switch leaves the folder as it was; see the module doc.
    """
    from satseg.outputs.clinical import write_clinical
    from satseg.outputs.cohort_table import structure_summary
    from satseg.outputs.masks import write_masks, write_probability
    from satseg.outputs.multilabel import legend_sidecar_path, write_multilabel
    from satseg.outputs.preview import write_preview
    from satseg.outputs.report import write_report
    from satseg.outputs.statistics import compute_statistics, write_statistics

    if request is None:
        request = case_request(prompts=[p.text for p in seg.prompts], model=seg.model, options=options,
                               input_path=seg.volume.source)
    out_dir = _make_output_dir(out_dir)
    staging = prepare_folder(out_dir)
    try:
        try:
            written: list[str] = []
            if options.masks:
                written += [path.name for path in write_masks(seg.masks, seg.volume, staging)]
            if options.probabilities and seg.probabilities:
                (staging / "probabilities").mkdir()
                for name, prob in seg.probabilities.items():
                    write_probability(prob, seg.volume, staging / "probabilities" / f"{name}.nii.gz")
                    written.append(f"probabilities/{name}.nii.gz")
            if options.multilabel:
                ml = staging / "segmentation.nii.gz"
                write_multilabel(seg.masks, seg.volume, ml, probabilities=seg.probabilities,
                                 prompts={p.output_name: p.text for p in seg.prompts},
                                 terms={p.output_name: list(p.terms) for p in seg.prompts})
                written += [ml.name, legend_sidecar_path(ml).name]
            if options.statistics:
                statistics = statistics if statistics is not None else compute_statistics(seg.masks, seg.volume)
                write_statistics(statistics, staging / "statistics.json", seg.volume)
                written.append("statistics.json")
            if options.preview:
                write_preview(seg.volume, seg.masks, staging / "preview.png", modality=seg.modality)
                written.append("preview.png")
            clinical, summaries = write_clinical(seg, staging, options)
            written += clinical
            report_entry = None
            if options.report and report is not None:
                target = Path(options.report)
                target = target if target.is_absolute() else out_dir / target
                content = dict(report, outputs=[str(out_dir / w) for w in written], **summaries)
                if target.parent.resolve() == out_dir.resolve() and not target.name.startswith(".satseg-"):
                    write_report(staging / target.name, content)  # part of the result, verified with it
                    written.append(target.name)
                else:  # the user's own path elsewhere: moved there with the switch
                    write_report(staging / REPORT_STAGED, content)
                    report_entry = {"staged": REPORT_STAGED, "target": str(target.absolute())}
            files = {rel: _file_record(staging / rel) for rel in written}
        except OSError as exc:
            raise _write_error(exc, out_dir) from exc
        names = {p.output_name: p.text for p in seg.prompts}
        structures = None if statistics is None else structure_summary(statistics, names)
        install(out_dir, staging, files, request, report=report_entry, structures=structures)
        final = [out_dir / rel for rel in written]
        if report_entry is not None:
            final.append(Path(report_entry["target"]))
        return final
    finally:
        release_staging(out_dir, staging)


def _write_error(exc: OSError, out_dir: Path) -> SatsegError:
    """A write failure as one line that names where (stream writers raise ENOSPC without a file name)."""
    where = f" ({exc.filename})" if exc.filename else ""
    return SatsegError(f"cannot write the results in {out_dir}: {exc.strerror or exc}{where}")


def run_report(seg, predictor, *, extra: dict | None = None) -> dict:
    """The run report: versions, model, device, per-stage timings, prompt resolution, grid, warnings."""
    import platform

    import torch

    from satseg import __version__

    report = {
        "satseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "model": {"name": predictor.name, "variant": predictor.model.config.name},
        "device": str(predictor.device),
        "precision": str(predictor.autocast).replace("torch.", "") if predictor.autocast else "float32",
        "input": {"path": str(seg.volume.source) if seg.volume.source else None, "shape": list(seg.volume.shape),
                  "spacing_mm": list(seg.volume.spacing_mm), "reader": seg.volume.meta},
        "modality": seg.modality,
        "prompts": [p.to_dict() for p in seg.prompts],
        "grid": seg.grid_dict(),
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "warnings": seg.warnings,
    }
    report.update(extra or {})
    return report
