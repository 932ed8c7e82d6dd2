"""The cohort engine: ``satseg.segment_files(...)``, what ``satseg batch``, ``satseg SCAN`` and the API run.

Three stages overlap, with bounded queues so memory stays flat whatever the cohort's size:

* **read ahead** (:mod:`satseg.inference.read_ahead`): worker processes read, validate and — when the model runs
  on the CPU — resample and normalise the next cases while the model works on this one;
* **model** (this process): the predictor, loaded once, on the first case that needs it;
* **write behind**: threads compute statistics and switch each case folder into place
  (:func:`~satseg.outputs.case.write_segmentation`) while the model starts the next case.

Per case: finished folders whose completion record matches the request are skipped, a folder a killed run left
half switched is finished first, a failed case is recorded and the cohort goes on; an error of the model itself
(missing or damaged weights) stops the cohort at once. Every mode writes the same bytes: ``read_workers=0`` and
``write_threads=0`` is the plain one-stage-after-another loop the others are tested against.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from satseg.errors import CheckpointError, SatsegError, WeightsError
from satseg.inference.case_log import CaseLog
from satseg.inference.cohort import Case, expand_inputs
from satseg.inference.options import PromptOptions, RuntimeOptions
from satseg.inference.read_ahead import CASE_ERRORS, ReadAhead, ReadJob, default_read_workers, error_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CohortOptions:
    """How a cohort runs (not what it computes: every choice here gives the same files).

    Attributes:
        read_workers: processes reading and preprocessing ahead of the model (``None``: one for a cohort of two
            or more cases on a machine with two or more cores; 0: read in this process, just in time).
        read_ahead: cases read ahead of the model (the bound of that queue).
        write_threads: threads writing results behind the model (0: written before the next case starts).
        overwrite: redo cases whose folder is already finished with the same request.
        case_folders: one sub-folder per case (``batch``); ``False``: the single case is written into ``out_dir``
            itself (``satseg SCAN -o OUT``).
        table: file name of the cohort table written into ``out_dir`` at the end (``None``: none).
        store_to: a DICOMweb URL each case's DICOM objects are sent to once written (a refusal fails the case; its
            files stay). A finished case that is skipped sends the objects it never sent there (a store that failed
            in an earlier run, or a first run without ``store_to``; :func:`satseg.inference.remote.unstored`).
    """

    read_workers: int | None = None
    read_ahead: int = 2
    write_threads: int = 1
    overwrite: bool = False
    case_folders: bool = True
    table: str | None = "cohort.csv"
    store_to: str | None = None


@dataclass
class CaseOutcome:
    """What became of one case: ``status`` is ``done``, ``skipped`` or ``failed``."""

    case: Case
    status: str
    detail: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    found: int = 0
    structures: int = 0
    exception: BaseException | None = None
    """The error that failed the case, when it was raised in this process (``None`` for a worker's)."""


@dataclass
class Hooks:
    """What the caller wants to hear while the cohort runs (all optional).

    Attributes:
        outcome: called with each :class:`CaseOutcome` as soon as the case is settled.
        stage: called with a short line when a stage starts ("loading model sat-nano", "case: segmenting 3
            prompt(s)").
        progress: ``progress(case name)`` → a ``(done, total)`` window callback, or ``None``.
    """

    outcome: Callable[[CaseOutcome], None] | None = None
    stage: Callable[[str], None] | None = None
    progress: Callable[[str], Callable | None] | None = None


def segment_files(inputs: Iterable[Case | str | Path], out_dir: str | Path, prompts: list[str] | None = None, *,
                  model: str = "sat-nano", runtime: RuntimeOptions | None = None, modality: str | None = None,
                  orientation: str = "auto", prompt_options: PromptOptions | None = None, outputs=None,
                  cohort: CohortOptions | None = None, hooks: Hooks | None = None) -> list[CaseOutcome]:
    """Segment a cohort: every case's masks (and asked-for extras) in its own folder of ``out_dir``.

    Args:
        inputs: :class:`~satseg.inference.cohort.Case` records, or scan paths / folders / list files (as ``satseg
            batch`` takes them).
        prompts: the prompts of every case without its own (``Case.prompts``).
        model: a model name (``satseg weights list``) or an imported name.
        modality, orientation: defaults for cases that do not set their own.
        outputs: :class:`~satseg.outputs.case.OutputOptions` (default: one mask per prompt); its ``report`` path is
            relative to each case's folder (``report.json`` in every folder of ``batch --report``).

    Returns:
        one :class:`CaseOutcome` per case, in the order the cases were settled.

    Raises:
        SatsegError: the model could not be loaded (the cohort stops at once).
    """
    from satseg.outputs.case import OutputOptions

    inputs = list(inputs)
    cases = [i for i in inputs if isinstance(i, Case)]
    paths = [str(i) for i in inputs if not isinstance(i, Case)]
    if paths:
        cases += expand_inputs(paths)
    engine = _Engine(Path(out_dir), prompts, model, runtime or RuntimeOptions(), modality, orientation,
                     prompt_options or PromptOptions(), outputs or OutputOptions(), cohort or CohortOptions(),
                     hooks or Hooks())
    return engine.run(cases)


class _Engine:
    def __init__(self, out_dir, prompts, model, runtime, modality, orientation, prompt_options, outputs, cohort, hooks):
        self.out_dir, self.prompts, self.model, self.runtime = out_dir, list(prompts or []), model, runtime
        self.modality, self.orientation, self.prompt_options = modality, orientation, prompt_options
        self.outputs, self.cohort, self.hooks = outputs, cohort, hooks
        self.predictor = None
        self._settling = threading.Lock()
        self.scratch: Path | None = None
        self.load_s = 0.0
        self._load_reported = False
        self.outcomes: list[CaseOutcome] = []
        self.log = CaseLog()
        self._writes: deque = deque()
        self._writer = None

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self, cases: list[Case]) -> list[CaseOutcome]:
        workers = self.cohort.read_workers
        workers = default_read_workers(len(cases)) if workers is None else workers
        spacing = self._cpu_spacing()
        ahead = self.cohort.read_ahead + workers if workers else 1
        try:
            self._loop(cases, workers, ahead, spacing)
        finally:
            if self.scratch is not None:  # what was fetched from a PACS never outlives the run
                import shutil

                shutil.rmtree(self.scratch, ignore_errors=True)
        if self.cohort.table and self.cohort.case_folders:
            rows = [row for outcome in self.outcomes for row in outcome.rows]
            if rows:
                from satseg.outputs.cohort_table import write_table

                write_table(self.out_dir / self.cohort.table, rows)
        return self.outcomes

    def _loop(self, cases: list[Case], workers: int, ahead: int, spacing) -> None:
        with self.log, ReadAhead(workers, ahead) as reads, self._write_pool():
            pending = iter(cases)
            started: dict[str, float] = {}
            submitted_all = False
            while True:
                while not reads.full():  # keep the read-ahead queue full (skipping finished cases on the way)
                    case = next(pending, None)
                    if case is None:
                        if not submitted_all:
                            submitted_all = True
                            reads.finish()  # the workers exit once their last jobs are answered
                        break
                    started[case.name] = time.perf_counter()
                    request = self._request(case)
                    if self._already_done(case, request, started[case.name]):
                        continue
                    reads.submit((case, request), case.prepared or self._job(case, spacing))
                if not len(reads):
                    break
                if reads.workers and self.predictor is None:
                    self._predictor()  # loads while the worker reads the first case (a model error stops the run)
                (case, request), answer = reads.next()
                # A case's time: its own reading, then from leaving the read-ahead queue to being written.
                began = time.perf_counter() - (answer.case.read_s if answer.case is not None else 0.0)
                self._model_stage(case, request, answer, began)
            self._drain_writes(0)

    def _case_dir(self, case: Case) -> Path:
        return self.out_dir / case.name if self.cohort.case_folders else self.out_dir

    def _prompts(self, case: Case) -> list[str]:
        return list(case.prompts or self.prompts)

    def _request(self, case: Case) -> dict:
        from satseg.outputs.case import case_request

        return case_request(prompts=self._prompts(case), model=self.model, options=self.outputs, input_path=case.path,
                            modality=case.modality or self.modality, orientation=case.orientation or self.orientation)

    def _job(self, case: Case, spacing) -> ReadJob:
        from satseg.inference.options import ScanOptions
        from satseg.outputs.clinical import wants_dicom

        scan_options = ScanOptions(modality=case.modality or self.modality,
                                   orientation=case.orientation or self.orientation)
        fetch_to = None
        if isinstance(case.path, str):  # a DICOMweb series: fetched by the reader into the cohort's scratch folder
            fetch_to = self._scratch() / case.name
        return ReadJob(path=case.path, prompts=tuple(self._prompts(case)), scan_options=scan_options,
                       prompt_options=self.prompt_options, spacing=spacing,
                       dicom_outputs=self.outputs if wants_dicom(self.outputs) else None, fetch_to=fetch_to)

    def _scratch(self) -> Path:
        if self.scratch is None:
            import tempfile

            self.scratch = Path(tempfile.mkdtemp(prefix="satseg-dicomweb-"))
        return self.scratch

    def _done_with(self, case: Case) -> None:
        """Remove what was fetched for ``case`` (a DICOMweb series) once it is written or failed."""
        if self.scratch is not None:
            import shutil

            shutil.rmtree(self.scratch / case.name, ignore_errors=True)

    def _cpu_spacing(self):
        """The model grid's spacing when the model will run on the CPU (workers then resample), else ``None``."""
        from satseg.inference.runtime import pick_device
        from satseg.model.config import get_config
        from satseg.weights import get_model

        try:
            entry = get_model(self.model)
            if pick_device(self.runtime.device).type != "cpu" or entry.format == "satseg-safetensors":
                return None  # a trained model may have its own grid: the model's process resamples
            return tuple(get_config(entry.variant).spacing)
        except (SatsegError, KeyError, AttributeError, ValueError):
            return None  # unknown here (e.g. a trained model's own config): the model's process resamples

    def _already_done(self, case: Case, request: dict, started: float) -> bool:
        """Skip a case whose folder holds a finished result of this very request (after finishing any switch a
        killed run left half done)."""
        from satseg.outputs.case import finished_record, recover_folder
        from satseg.outputs.cohort_table import done_rows

        case_dir = self._case_dir(case)
        if self.cohort.overwrite or not case_dir.is_dir():
            return False
        with self.log.working_on(case.name):
            try:
                recover_folder(case_dir)
                marker = finished_record(case_dir)
            except (SatsegError, OSError) as exc:
                self._settle(case, "failed", error_line(exc), started)
                return True
        if marker is None or marker.get("request") != request:
            return False
        detail = "already done"
        if self.cohort.store_to:  # a store that failed (or never ran) is made now: the case's files are its result
            from satseg.inference.remote import store_results, unstored

            with self.log.working_on(case.name):
                try:
                    pending = unstored(self.cohort.store_to, case_dir, marker.get("outputs", {}))
                    if pending:
                        store_results(self.cohort.store_to, pending, self._stage)
                        detail = "already done; stored now"
                except (SatsegError, *CASE_ERRORS) as exc:
                    self._fail(case, error_line(exc), started, exc)
                    return True
        self._settle(case, "skipped", detail, started, rows=done_rows(case.name, marker))
        return True

    def _model_stage(self, case: Case, request: dict, answer, started: float) -> None:
        with self.log.working_on(case.name):
            self.log.replay(case.name, answer.warnings)
            if answer.error is not None:
                self._fail(case, answer.error, started)
                return
            prepared = answer.case
            for warning in prepared.warnings:
                log.warning("%s", warning)
            predictor = self._predictor()  # no model, no cohort: any error loading it stops the run at once
            try:
                who = f"{case.name}: " if self.cohort.case_folders else ""
                self._stage(f"{who}segmenting {len(prepared.prompts)} prompt(s) on {predictor.device}")
                progress = self.hooks.progress(case.name) if self.hooks.progress else None
                result = predictor.segment_prepared(prepared, probabilities=self.outputs.probabilities,
                                                    progress=progress)
                if not self._load_reported:  # the first case segmented carries the model's loading time
                    self._load_reported = True
                    result.timings = {"read": result.timings.get("read", 0.0), "load_model": self.load_s,
                                      **result.timings}
            except (CheckpointError, WeightsError):
                raise  # the model's own files are damaged: stop at once
            except (SatsegError, *CASE_ERRORS) as exc:
                self._fail(case, error_line(exc), started, exc)
                return
            del prepared, answer
        self._drain_writes(self.cohort.write_threads)
        work = (case, request, result, started)
        if self._writer is None:
            self._write(*work)
        else:
            self._writes.append(self._writer.submit(self._write, *work))

    def _predictor(self):
        if self.predictor is None:
            from satseg.inference.predictor import Predictor

            self._stage(f"loading model {self.model}")
            start = time.perf_counter()
            self.predictor = Predictor.from_pretrained(self.model, self.runtime)
            self.load_s = time.perf_counter() - start
        return self.predictor

    # -- writing behind -----------------------------------------------------------------------------------

    def _write_pool(self):
        import contextlib

        if not self.cohort.write_threads:
            return contextlib.nullcontext()
        from concurrent.futures import ThreadPoolExecutor

        self._writer = ThreadPoolExecutor(max_workers=self.cohort.write_threads, thread_name_prefix="satseg-write")
        return self._writer

    def _drain_writes(self, keep: int) -> None:
        """Wait until at most ``keep`` writes are in flight (the write queue's bound), oldest first."""
        while len(self._writes) > keep:
            self._writes.popleft().result()

    def _write(self, case: Case, request: dict, result, started: float) -> None:
        from satseg.outputs.case import run_report, write_segmentation
        from satseg.outputs.cohort_table import done_rows, structure_summary
        from satseg.outputs.statistics import compute_statistics

        with self.log.working_on(case.name):
            try:
                report = None
                if self.outputs.report:
                    extra = {"case": case.name} if self.cohort.case_folders else None
                    report = run_report(result, self.predictor, extra=extra)
                statistics = compute_statistics(result.masks, result.volume)
                if not self.cohort.case_folders:
                    self._stage(f"writing to {self._case_dir(case)}")
                written = write_segmentation(result, self._case_dir(case), self.outputs, report=report,
                                             request=request, statistics=statistics)
                if self.cohort.store_to:
                    from satseg.inference.remote import store_results

                    store_results(self.cohort.store_to, written, self._stage)
            except (SatsegError, *CASE_ERRORS) as exc:
                self._fail(case, error_line(exc), started, exc)
                return
        names = {p.output_name: p.text for p in result.prompts}
        found = sum(int(m.any()) for m in result.masks.values())
        self._settle(case, "done", f"{found}/{len(result.masks)} found", started,
                     rows=done_rows(case.name, {"structures": structure_summary(statistics, names)}),
                     written=written, found=found, structures=len(result.masks))

    # -- outcomes ---------------------------------------------------------------------------------------------

    def _fail(self, case: Case, error: str, started: float, exc: BaseException | None = None) -> None:
        from satseg.outputs import output_names
        from satseg.outputs.cohort_table import failed_rows
        from satseg.inference.prompts import RESERVED_NAMES

        prompts = self._prompts(case)
        rows = failed_rows(case.name, output_names(prompts, reserved=RESERVED_NAMES), prompts, error) if prompts else []
        self._settle(case, "failed", error, started, rows=rows, exception=exc)

    def _settle(self, case: Case, status: str, detail: str, started: float, **extra) -> None:
        self._done_with(case)
        outcome = CaseOutcome(case=case, status=status, detail=detail, seconds=time.perf_counter() - started,
                              warnings=self.log.messages(case.name), **extra)
        self.log.forget(case.name)
        with self._settling:  # the model's thread and the writer's settle cases: one at a time, in full
            self.outcomes.append(outcome)
            if self.hooks.outcome is not None:
                self.hooks.outcome(outcome)

    def _stage(self, text: str) -> None:
        if self.hooks.stage is not None:
            self.hooks.stage(text)

