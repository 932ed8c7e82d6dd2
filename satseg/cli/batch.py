"""``satseg batch``: segment a cohort with the model loaded once."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from satseg.cli._console import stage, window_progress
from satseg.cli.segment import (
    ALLOW_UNTRAINED, COMPILE, DEVICE, FREE_TEXT, MODALITY, MODEL, MULTILABEL, ORIENTATION, OUTPUT_TYPE, PRECISION,
    PREVIEW, PROBABILITIES, PROMPT_CHUNK, STATISTICS, STORE_TO, THREADS, WINDOW_BATCH, check_model_name,
)

HELP = ("Segment a cohort: satseg batch INPUTS... | DIR | LIST.txt | - -p PROMPT -o OUT_DIR. One folder per "
        "case in OUT_DIR; finished cases are skipped; exit code 3 when some cases failed.")

log = logging.getLogger("satseg.cli")


def batch(
    inputs: list[str] = typer.Argument(None, help="Scans, folders, list files (one path a line), or - for stdin."),
    prompts: list[str] = typer.Option(None, "--prompt", "-p", help="Structure to segment in every case."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per case)."),
    jobs: Path = typer.Option(None, "--jobs", help="jobs.jsonl: per-case image, prompts, modality, case name."),
    shard: str = typer.Option(None, "--shard", help="K/N: process only shard K of N (K from 1 to N)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases that are already finished."),
    model: str = MODEL,
    modality: str = MODALITY,
    orientation: str = ORIENTATION,
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
    report: bool = typer.Option(False, "--report", help="Write report.json in every case folder."),
    collect: bool = typer.Option(False, "--collect",
                                 help="Merge the shards' cohort.part-*.csv and every finished case folder in -o into "
                                      "cohort.csv; segments nothing."),
    read_workers: int = typer.Option(None, "--read-workers", min=0,
                                     help="Processes reading and preparing the next cases while the model runs "
                                          "(default: 1 for two or more cases; 0: one stage after another)."),
    output_type: list[str] = OUTPUT_TYPE,
    store_to: str = STORE_TO,
) -> None:
    from satseg.errors import EXIT_COHORT_FAILED, InputError
    from satseg.inference.cohort import (
        environment_shards, expand_inputs, local_device, parse_shard, read_jobs, select_shard,
    )
    from satseg.inference.engine import CohortOptions, Hooks, segment_files
    from satseg.inference.prompts import check_cohort_prompts
    from satseg.inference.options import PromptOptions, RuntimeOptions
    from satseg.inference.remote import check_remote
    from satseg.outputs.case import OutputOptions, check_output_dir
    from satseg.outputs.clinical import check_cohort_dicom_inputs, parse_output_types, wants_dicom
    from satseg.outputs.cohort_table import part_name

    if collect:
        _collect(out, inputs, jobs)
        return
    if jobs is not None and inputs:
        raise InputError("give either INPUTS or --jobs, not both")
    check_model_name(model, device=device, precision=precision)
    options = OutputOptions.for_types(parse_output_types(output_type), probabilities=probabilities, multilabel=ml,
                                      statistics=statistics, preview=preview,
                                      report="report.json" if report else None)
    if store_to and not wants_dicom(options):
        raise InputError("--store-to sends DICOM objects: add --output-type dicom-seg and/or rtstruct")
    check_remote(None, store_to)
    cases = read_jobs(jobs) if jobs is not None else expand_inputs(list(inputs or []))
    # This process's share: --shard, and the launcher's (a Slurm job array's task, torchrun's rank), each
    # applied to what the one before left, so shares of shares stay disjoint and cover the cohort.
    given = parse_shard(shard)
    shares = [given] if given else []
    cases = select_shard(cases, given)
    for k, n, where in environment_shards():
        cases = select_shard(cases, (k, n))
        shares.append((k, n))
        log.info("%s: %d case(s) in this process's share %d/%d", where, len(cases), k, n)
    for case in cases:  # DICOMweb series URLs are checked now, fetched when their case is read
        check_remote(case.path if isinstance(case.path, str) else None, None)
    check_output_dir(out)
    prompt_options = PromptOptions(free_text=free_text, allow_untrained_modality=allow_untrained_modality)
    check_cohort_prompts(cases, prompts, modality, prompt_options)
    check_cohort_dicom_inputs(cases, options)
    runtime = RuntimeOptions(device=local_device(device), precision=precision, window_batch=window_batch,
                             prompt_chunk=prompt_chunk, threads=threads, compile=compile_model)
    table = part_name(shares)
    lines = _Lines(len(cases))
    outcomes = segment_files(cases, out, prompts, model=model, runtime=runtime, modality=modality,
                             orientation=orientation, prompt_options=prompt_options, outputs=options,
                             cohort=CohortOptions(overwrite=overwrite, read_workers=read_workers, table=table,
                                                  store_to=store_to),
                             hooks=Hooks(outcome=lines.outcome, stage=stage, progress=window_progress))
    lines.summary()
    rows = sum(len(o.rows) for o in outcomes)
    if rows:
        typer.echo(f"{out / table}: {rows} row(s), one per case and structure")
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_COHORT_FAILED)


def _collect(out: Path, inputs, jobs) -> None:
    from satseg.errors import InputError
    from satseg.outputs.cohort_table import collect

    if inputs or jobs is not None:
        raise InputError("--collect merges what is in -o: give no INPUTS or --jobs with it")
    if not out.is_dir():
        raise InputError(f"--collect: {out} is not a folder")
    table, done, failed = collect(out)
    typer.echo(f"{table}: {done} case(s) done, {failed} failed")


class _Lines:
    """One line per settled case on the console, the rate and time left after each case that ran, a summary
    table at the end."""

    def __init__(self, total: int):
        self.total = total
        self.rows: list[tuple[str, str, str, str, str]] = []
        self._first = time.perf_counter()
        self._worked = 0

    def outcome(self, outcome) -> None:
        detail = outcome.detail + (f"; {len(outcome.warnings)} warning(s)" if outcome.warnings else "")
        seconds = f"{outcome.seconds:.1f} s"
        self.rows.append((outcome.case.name, outcome.status, detail, seconds, "; ".join(outcome.warnings)))
        counter = f"[{len(self.rows)}/{self.total}]"
        typer.echo(f"{counter} {outcome.case.name}: {outcome.status} ({detail}) {seconds}",
                   err=outcome.status == "failed")
        if outcome.status != "skipped":
            self._worked += 1
            self._eta()

    def _eta(self) -> None:
        """The rate so far (wall time since the run began, over the cases that ran) and when the rest should be
        done (one line)."""
        left = self.total - len(self.rows)
        elapsed = time.perf_counter() - self._first
        if left <= 0 or elapsed <= 0:
            return
        per_case = elapsed / self._worked
        typer.echo(f"  {3600 / per_case:.0f} cases/h; {left} left, about {_duration(left * per_case)} "
                   "(assuming each of them runs)")

    def summary(self) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        counts = {s: sum(1 for r in self.rows if r[1] == s) for s in ("done", "skipped", "failed")}
        warned = sum(1 for r in self.rows if r[4])
        title = f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
        table = Table(title=title + (f", {warned} with warnings" if warned else ""))
        for column in ("case", "status", "detail", "time", "warnings"):
            table.add_column(column, overflow="fold")
        for row in self.rows:
            table.add_row(*(escape(cell) for cell in row))  # prompts and names are text, not markup
        Console(stderr=True, width=None if sys.stderr.isatty() else 200).print(table)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"
