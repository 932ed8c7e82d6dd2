"""``satseg train prepare``: SAT-DS standardisation of one dataset (or all 72) into a training cache."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

HELP = ("Standardise a dataset as SAT-DS does (orientation, 1x1x3 mm, foreground crop, label merging, "
        "normalisation) into a training cache: satseg train prepare --dataset NAME --root DIR --out CACHE. "
        "Resumable; failed scans are listed in CACHE/prepare_report.json.")

log = logging.getLogger("satseg.cli")


def command(
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Dataset name (repeatable); see train/datasets/."),
    root: Path = typer.Option(..., "--root", help="Folder the scan paths are relative to (SAT-DS's root, or its "
                                                   "data/nii folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to write (created; resumed when it exists)."),
    manifest: Path = typer.Option(None, "--manifest", help="Dataset entry JSON (or a folder of them) instead of "
                                                          "the bundled train/datasets/ (your own dataset)."),
    scans: Path = typer.Option(None, "--scans", help="Scans jsonl (SAT-DS format), or a folder of <NAME>.jsonl "
                                                    "(default: the bundled train/scans/<NAME>.jsonl.gz)."),
    all_datasets: bool = typer.Option(False, "--all", help="Every dataset of the manifest."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Worker processes (each holds one scan)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Prepare at most N new scans per dataset."),
    spacing: tuple[float, float, float] = typer.Option((1.0, 1.0, 3.0), "--spacing", metavar="X Y Z",
                                                       help="Voxel size in mm of the model grid (SAT: 1 1 3). "
                                                            "A model trained on it resamples scans to it."),
) -> None:
    from satseg.errors import EXIT_COHORT_FAILED, InputError
    from satseg.training.manifest import load_manifest
    from satseg.training.prepare import find_scans, prepare_dataset, read_scans, write_report

    if not root.is_dir():
        raise InputError(f"--root {root} is not a folder")
    loaded = load_manifest(manifest)
    if all_datasets and dataset:
        raise InputError("give --dataset NAME or --all, not both")
    if all_datasets:
        names = list(loaded.names)
    elif dataset:
        names = [loaded[name].name for name in dataset]
    elif len(loaded) == 1:
        names = list(loaded.names)
    else:
        raise InputError("which dataset? give --dataset NAME (or --all)")
    if manifest is not None and scans is None:
        raise InputError("--manifest needs --scans: the scans jsonl of your dataset (image, mask, patient_id)")
    if scans is not None and scans.is_file() and len(names) > 1:
        raise InputError("one --scans file for several datasets: pass a folder of <NAME>.jsonl instead")
    plan = []
    for name in names:  # every scan list is checked before any work starts
        items = read_scans(find_scans(name, scans), name)
        if not items:
            raise InputError(f"the scans list of {name} has no lines for that dataset")
        plan.append((loaded[name], items))

    manifest_path = Path(manifest) if manifest is not None else None
    reports = []
    for entry, items in plan:
        typer.echo(f"{entry.name}: {len(items)} scans → {out}")
        entry_file = manifest_path if manifest_path is None or manifest_path.is_file() else \
            manifest_path / f"{entry.name}.json"
        report = prepare_dataset(entry, items, root, out, manifest_path=entry_file, workers=workers, limit=limit,
                                 spacing_mm=spacing,
                                 progress=_progress(entry.name))
        reports.append(report)
        typer.echo(f"{entry.name}: {report.prepared} prepared, {report.already_done} already in the cache, "
                   f"{len(report.failed)} failed ({report.seconds:.1f} s)")
    path = write_report(out, reports)
    failed = [(r.dataset, f) for r in reports for f in r.failed]
    for name, failure in failed[:20]:
        typer.echo(f"  failed {name} {failure.sample_id} [{failure.kind}]: {failure.reason}", err=True)
    if len(failed) > 20:
        typer.echo(f"  ... {len(failed) - 20} more in {path}", err=True)
    typer.echo(f"report: {path}")
    if failed:
        raise typer.Exit(EXIT_COHORT_FAILED)


def _progress(name: str):
    def report(done: int, total: int, sample_id: str, status: str) -> None:
        log.info("%s [%d/%d] %s: %s", name, done, total, sample_id, status)

    return report
