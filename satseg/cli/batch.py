"""``satseg batch``: segment a cohort with the model loaded once."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from satseg.cli._console import stage, window_progress
from satseg.cli.segment import (
    ALLOW_UNTRAINED, COMPILE, DEVICE, FREE_TEXT, MODALITY, MODEL, MULTILABEL, ORIENTATION, PRECISION, PREVIEW,
    PROBABILITIES, PROMPT_CHUNK, STATISTICS, THREADS, WINDOW_BATCH, check_model_name,
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
) -> None:
    from satseg.errors import EXIT_COHORT_FAILED, InputError
    from satseg.inference.cohort import environment_shards, expand_inputs, parse_shard, read_jobs, select_shard
    from satseg.inference.options import PromptOptions, RuntimeOptions
    from satseg.outputs.case import OutputOptions, check_output_dir

    if collect:
        _collect(out, inputs, jobs)
        return
    if jobs is not None and inputs:
        raise InputError("give either INPUTS or --jobs, not both")
    check_model_name(model, device=device, precision=precision)
    cases = read_jobs(jobs) if jobs is not None else expand_inputs(list(inputs or []))
    if not prompts:
        for case in cases:
            if not case.prompts:
                where = case.origin or case.name
                raise InputError(f"{where}: no prompts for this case: add -p/--prompt "
                                 "(or a non-empty \"prompts\" list to every job in --jobs)")
    # This process's share: --shard, and the launcher's (a Slurm job array's task, torchrun's rank), each
    # applied to what the one before left, so shares of shares stay disjoint and cover the cohort.
    given = parse_shard(shard)
    shares = [given] if given else []
    cases = select_shard(cases, given)
    for k, n, where in environment_shards():
        cases = select_shard(cases, (k, n))
        shares.append((k, n))
        log.info("%s: %d case(s) in this process's share %d/%d", where, len(cases), k, n)
    device = _local_device(device)
    check_output_dir(out)
    prompt_options = PromptOptions(free_text=free_text, allow_untrained_modality=allow_untrained_modality)
    _check_prompts(cases, prompts, modality, prompt_options)
    runtime = RuntimeOptions(device=device, precision=precision, window_batch=window_batch,
                             prompt_chunk=prompt_chunk, threads=threads, compile=compile_model)
    options = OutputOptions(probabilities=probabilities, multilabel=ml, statistics=statistics, preview=preview,
                            report="report.json" if report else None)
    runner = _CohortRunner(model, runtime, options, prompt_options, modality, orientation, overwrite)
    for number, case in enumerate(cases, start=1):
        runner.run(case, list(case.prompts or prompts), out / case.name, f"[{number}/{len(cases)}]")
        runner.eta(number, len(cases))
    runner.summary()
    if runner.table_rows:
        from satseg.outputs.cohort_table import part_name, write_table

        table = write_table(out / part_name(shares), runner.table_rows)
        typer.echo(f"{table}: {len(runner.table_rows)} row(s), one per case and structure")
    if runner.failed:
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


def _local_device(device: str) -> str:
    """Under torchrun on a machine with GPUs, ``--device auto`` is this process's own GPU (``LOCAL_RANK``)."""
    import os

    local_rank = os.environ.get("LOCAL_RANK")
    if (device or "auto").lower() != "auto" or local_rank is None or not local_rank.isdigit():
        return device
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > int(local_rank):
        return f"cuda:{local_rank}"
    return device


def _check_prompts(cases, prompts, modality, prompt_options) -> None:
    """Refuse unknown prompts, and terms not trained for a modality that is known already, before any case runs or
    a model loads (a mistake in line 5,000 of a jobs file is found now, not hours into the cohort)."""
    from satseg.errors import InputError, PromptError
    from satseg.inference.prepare import prepare_prompts

    checked = set()
    if prompts:
        prepare_prompts(list(prompts), _vocabulary_modality(modality), prompt_options)
        checked.add((tuple(prompts), modality))
    for case in cases:
        if not case.prompts:
            continue
        key = (tuple(case.prompts), case.modality or modality)
        if key in checked:
            continue
        try:
            prepare_prompts(list(case.prompts), _vocabulary_modality(key[1]), prompt_options)
        except PromptError as exc:
            raise InputError(f"{case.origin or case.name}: {exc}") from None
        checked.add(key)


def _vocabulary_modality(modality: str | None) -> str | None:
    if modality is None:
        return None
    from satseg.vocabulary import normalize_modality

    return normalize_modality(modality)


class _CohortRunner:
    """Runs cases one by one; the predictor is created on the first case that needs it."""

    def __init__(self, model, runtime, options, prompt_options, modality, orientation, overwrite):
        self.model, self.runtime, self.options = model, runtime, options
        self.prompt_options, self.modality, self.orientation = prompt_options, modality, orientation
        self.overwrite = overwrite
        self.predictor = None
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.table_rows: list[dict] = []  # cohort.csv
        self.failed = 0
        self._busy_s, self._worked = 0.0, 0  # time and number of the cases that ran (not skipped)

    def run(self, case, prompts: list[str], case_dir: Path, counter: str) -> None:
        from satseg.errors import SatsegError
        from satseg.inference.options import ScanOptions
        from satseg.inference.prepare import RESERVED_NAMES, prepare_case
        from satseg.outputs import output_names
        from satseg.outputs.case import case_request, finished_record, recover_folder, run_report, write_segmentation
        from satseg.outputs.cohort_table import done_rows, failed_rows, structure_summary
        from satseg.outputs.statistics import compute_statistics

        started = time.perf_counter()
        modality = case.modality or self.modality
        orientation = case.orientation or self.orientation
        request = case_request(prompts=prompts, model=self.model, options=self.options, input_path=case.path,
                               modality=modality, orientation=orientation)
        warnings = _WarningCollector(case.name)
        try:
            if not self.overwrite and case_dir.is_dir():
                recover_folder(case_dir)  # finish a switch that a killed run left half done
                marker = finished_record(case_dir)  # every listed file there with its sha256
                if marker is not None and marker.get("request") == request:
                    self.table_rows += done_rows(case.name, marker)
                    self._line(counter, case.name, "skipped", "already done", started)
                    return
            with warnings:
                scan_options = ScanOptions(modality=modality, orientation=orientation)
                prepared = prepare_case(case.path, prompts, scan_options, self.prompt_options)
                for warning in prepared.warnings:
                    log.warning("%s", warning)  # the collector names the case
                if self.predictor is None:
                    from satseg.inference.predictor import Predictor

                    stage(f"loading model {self.model}")
                    self.predictor = Predictor.from_pretrained(self.model, self.runtime)
                stage(f"{case.name}: segmenting {len(prompts)} prompt(s)")
                result = self.predictor.segment_prepared(prepared, probabilities=self.options.probabilities,
                                                         progress=window_progress(case.name))
                report = run_report(result, self.predictor, extra={"case": case.name}) if self.options.report else None
                statistics = compute_statistics(result.masks, result.volume)
                write_segmentation(result, case_dir, self.options, report=report, request=request,
                                   statistics=statistics)
        except SatsegError as exc:
            if self.predictor is None and _is_model_error(exc):
                raise  # no model, no cohort: stop at once with the model's error
            error = " ".join(str(exc).split())
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        else:
            error = None
        self._busy_s, self._worked = self._busy_s + time.perf_counter() - started, self._worked + 1
        if error is not None:
            self.failed += 1
            self.table_rows += failed_rows(case.name, output_names(prompts, reserved=RESERVED_NAMES), prompts, error)
            self._line(counter, case.name, "failed", error, started, warnings.messages)
            return
        self.table_rows += done_rows(case.name, {"structures": structure_summary(
            statistics, dict(zip(result.names, result.prompts)))})
        found = sum(int(m.any()) for m in result.masks.values())
        self._line(counter, case.name, "done", f"{found}/{len(result.masks)} found", started, warnings.messages)

    def eta(self, number: int, total: int) -> None:
        """After case ``number`` of ``total``: the rate so far and when the rest should be done (one line)."""
        left = total - number
        if left <= 0 or not self._worked or self._busy_s <= 0:
            return
        per_case = self._busy_s / self._worked
        typer.echo(f"  {3600 / per_case:.0f} cases/h; {left} left, about {_duration(left * per_case)} "
                   "(assuming each of them runs)")

    def _line(self, counter: str, name: str, status: str, detail: str, started: float,
              warnings: list[str] = ()) -> None:
        seconds = f"{time.perf_counter() - started:.1f} s"
        if warnings:
            detail += f"; {len(warnings)} warning(s)"
        self.rows.append((name, status, detail, seconds, "; ".join(warnings)))
        typer.echo(f"{counter} {name}: {status} ({detail}) {seconds}", err=status == "failed")

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


class _WarningCollector(logging.Handler):
    """While one case runs: collects the warnings satseg logs (for the case's line and the summary) and makes
    every message printed on the console start with the case's name."""

    def __init__(self, case: str):
        super().__init__(logging.WARNING)
        self.case = case
        self.messages: list[str] = []
        self._logger = logging.getLogger("satseg")

    def filter(self, record: logging.LogRecord) -> bool:  # also installed on the console handlers
        message = record.getMessage()
        if not message.startswith(f"{self.case}:"):
            record.msg, record.args = f"{self.case}: {message}", None
        return True

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        prefix = f"{self.case}: "
        self.messages.append(message[len(prefix):] if message.startswith(prefix) else message)

    def __enter__(self):
        for handler in self._logger.handlers:
            handler.addFilter(self)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        for handler in self._logger.handlers:
            handler.removeFilter(self)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def _is_model_error(exc) -> bool:
    from satseg.errors import CheckpointError, WeightsError

    return isinstance(exc, (CheckpointError, WeightsError))
