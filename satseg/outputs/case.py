"""Write everything for one scan into a folder, all or nothing.

Files are first written into a hidden staging folder inside the output folder, then moved into place
one rename each; a completion marker (``.satseg-complete.json``) is written last. A crash, a full disk
or a kill leaves earlier results untouched and at most a hidden ``.satseg-staging-*`` folder, which the
next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import InputError

COMPLETE_MARKER = ".satseg-complete.json"
STAGING_PREFIX = ".satseg-staging-"


@dataclass(frozen=True)
class OutputOptions:
    """What to write besides one mask per prompt.

    Attributes:
        probabilities: float32 probability maps ``probabilities/<name>.nii.gz`` on the input grid.
        multilabel: one label image ``segmentation.nii.gz`` + ``segmentation.json`` legend.
        statistics: ``statistics.json`` (volumes, intensities, bounding boxes, centroids).
        preview: ``preview.png`` (axial / coronal / sagittal overlays).
        report: path of a run report (JSON); relative paths are inside the output folder.
        masks: one mask file per prompt (on by default; ``--ml`` alone can turn it off).
    """

    probabilities: bool = False
    multilabel: bool = False
    statistics: bool = False
    preview: bool = False
    report: str | None = None
    masks: bool = True


def check_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and prove it is writable (before any model is loaded)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".satseg-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"output folder {out_dir} is not writable ({exc.strerror or exc})") from None
    return out_dir


def clean_stale_staging(out_dir: Path) -> None:
    """Remove staging folders left behind by killed runs."""
    if not out_dir.is_dir():
        return
    for entry in out_dir.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
            pid = entry.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # another process is writing right now
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_complete(out_dir: Path, prompts: list[str] | None = None, model: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished result (for the same prompts and model, when given)."""
    marker = Path(out_dir) / COMPLETE_MARKER
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if prompts is not None and done.get("prompts") != list(prompts):
        return False
    return model is None or done.get("model") == model


def write_segmentation(seg, out_dir: Path, options: OutputOptions, *, report: dict | None = None) -> list[Path]:
    """Write a :class:`~satseg.inference.predictor.Segmentation` into ``out_dir``; return the final paths."""
    from satseg.outputs.masks import write_masks, write_probability
    from satseg.outputs.multilabel import legend_sidecar_path, write_multilabel
    from satseg.outputs.preview import write_preview
    from satseg.outputs.report import write_report
    from satseg.outputs.statistics import compute_statistics, write_statistics

    out_dir = check_output_dir(out_dir)
    clean_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{seg.volume.name}-", dir=out_dir))
    staging = staging.rename(staging.with_name(f"{staging.name}-{os.getpid()}"))
    try:
        written: list[str] = []
        if options.masks:
            written += [path.name for path in write_masks(seg.masks, seg.volume, staging)]
        if options.probabilities and seg.probabilities:
            (staging / "probabilities").mkdir()
            (out_dir / "probabilities").mkdir(exist_ok=True)
            for name, prob in seg.probabilities.items():
                write_probability(prob, seg.volume, staging / "probabilities" / f"{name}.nii.gz")
                written.append(f"probabilities/{name}.nii.gz")
        if options.multilabel:
            ml = staging / "segmentation.nii.gz"
            write_multilabel(seg.masks, seg.volume, ml, probabilities=seg.probabilities,
                             prompts=dict(zip(seg.names, seg.prompts)),
                             terms={n: r["terms"] for n, r in zip(seg.names, seg.resolutions)})
            written += [ml.name, legend_sidecar_path(ml).name]
        if options.statistics:
            write_statistics(compute_statistics(seg.masks, seg.volume), staging / "statistics.json", seg.volume)
            written.append("statistics.json")
        if options.preview:
            write_preview(seg.volume, seg.masks, staging / "preview.png", modality=seg.modality)
            written.append("preview.png")
        report_target = None
        if options.report:
            report_target = Path(options.report)
            if not report_target.is_absolute():
                report_target = out_dir / report_target
            if report is not None:
                report = dict(report, outputs=[str(out_dir / w) for w in written])
                write_report(staging / "report.json", report)
        # Commit: move each staged file into place (each rename is atomic), marker last.
        final = []
        for name in written:
            os.replace(staging / name, out_dir / name)
            final.append(out_dir / name)
        if report_target is not None and report is not None:
            report_target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staging / "report.json"), str(report_target))
            final.append(report_target)
        marker = {"prompts": list(seg.prompts), "model": seg.model, "outputs": written}
        (staging / COMPLETE_MARKER).write_text(json.dumps(marker))
        os.replace(staging / COMPLETE_MARKER, out_dir / COMPLETE_MARKER)
        return final
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)


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
        "prompts": [dict(r, output=n) for n, r in zip(seg.names, seg.resolutions)],
        "grid": seg.grid,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "warnings": seg.warnings,
    }
    report.update(extra or {})
    return report
