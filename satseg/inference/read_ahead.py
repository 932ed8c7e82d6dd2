"""Reading and preprocessing cases ahead of the model, in worker processes.

A read job is plain data (path, prompts, options, the model grid's spacing); its answer is the
:class:`~satseg.inference.prepare.PreparedCase` (with the scan already on the model grid when the model runs on the
CPU, so the model's process only runs the model) or the case's error as text, and the warnings the worker logged.
Errors travel as text: satseg's exceptions carry keyword arguments that do not survive pickling, and a failed read
fails only its case.

Workers are started with ``spawn`` (never ``fork``: the parent holds torch's thread pools), import no torch, use one
thread and run under the ``SCHED_IDLE`` policy (only on cycles the model leaves idle), so on a CPU the model's
threads come first.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path

from satseg.inference.options import PromptOptions, ScanOptions

log = logging.getLogger(__name__)

# What reading a case may raise and still fail only that case.
CASE_ERRORS = (OSError, RuntimeError, ValueError, MemoryError, EOFError)


@dataclass(frozen=True)
class ReadJob:
    """What a worker needs to prepare one case.

    Attributes:
        path: the scan.
        prompts: the prompt texts.
        scan_options, prompt_options: as for :func:`~satseg.inference.prepare.prepare_case`.
        spacing: the model grid's spacing (mm) to resample to in the worker; ``None``: the model's process does it.
        dicom_outputs: the output options when DICOM outputs are asked for: their source series is checked before
            the case reaches the model.
    """

    path: Path
    prompts: tuple[str, ...]
    scan_options: ScanOptions
    prompt_options: PromptOptions
    spacing: tuple[float, float, float] | None = None
    dicom_outputs: object = None
    fetch_to: Path | None = None
    """Where a DICOMweb series (``path`` is its URL) is fetched; the engine removes it once the case is written."""


@dataclass
class ReadAnswer:
    """A worker's answer: the prepared case, or the error that failed it (one line), and what it warned about."""

    case: object = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def error_line(exc: BaseException) -> str:
    """An exception as the one line a case's status shows (satseg's own errors without their type name)."""
    from satseg.errors import SatsegError

    text = " ".join(str(exc).split())
    return text if isinstance(exc, SatsegError) else f"{type(exc).__name__}: {text}"


def read_case(job: ReadJob) -> ReadAnswer:
    """Prepare one case (in a worker process, or in this one): read, validate, resolve the prompts, and, with
    ``job.spacing``, bring the scan to the model grid and normalise it."""
    from satseg.errors import SatsegError
    from satseg.inference.case_log import WarningRecorder
    from satseg.inference.prepare import choose_orientation, on_model_grid, prepare_case

    with WarningRecorder() as recorder:
        try:
            path = job.path
            if job.fetch_to is not None:
                from satseg.io.dicomweb import fetch_series

                path = fetch_series(str(job.path), job.fetch_to)
            case = prepare_case(path, list(job.prompts), job.scan_options, job.prompt_options)
            if job.dicom_outputs is not None:
                from satseg.outputs.clinical import check_dicom_outputs

                check_dicom_outputs(case.volume, job.dicom_outputs)
            if job.spacing is not None:
                orientation = choose_orientation(case.volume, case.scan_options.orientation)
                started = time.perf_counter()
                case.model_grid = on_model_grid(case.volume, case.modality, orientation, job.spacing)
                case.grid_s = time.perf_counter() - started
        except (SatsegError, *CASE_ERRORS) as exc:
            return ReadAnswer(error=error_line(exc), warnings=recorder.messages)
    return ReadAnswer(case=case, warnings=recorder.messages)


def _init_worker() -> None:
    # Reading, resampling (scipy) and normalising need no torch: the worker does not import it (its start is then a
    # fraction of a second), and any thread pool it does start has one thread.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _yield_cpu()
    logging.getLogger("satseg").setLevel(logging.WARNING)


def _yield_cpu(pid: int = 0) -> None:
    """Give process ``pid`` (0: this one) only the cycles the rest of the machine leaves idle: Linux's ``SCHED_IDLE``
    policy (any thread of normal policy that wakes up preempts it at once), else, where that is not allowed or not
    Linux, nice 10.

    On a CPU the model's threads use every core; a worker at merely a lower priority still took time slices from
    them (and a delayed thread holds up the others at each parallel step): at nice 10 the pipelined cohort was
    slower than one stage after another, under ``SCHED_IDLE`` not (benchmarks/RESULTS.md, § Cohort engine).
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
            return
        except OSError:
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(10, os.getpriority(os.PRIO_PROCESS, pid)))
    except (OSError, AttributeError):
        pass


class _IdleProcess(SpawnProcess):
    """A spawned process put under :func:`_yield_cpu` by its parent as soon as it exists, so that its start (the
    interpreter, the imports) already runs on idle cycles only, beside the model loading."""

    def start(self) -> None:
        super().start()
        _yield_cpu(self.pid)


class _IdleSpawnContext(SpawnContext):
    Process = _IdleProcess


_DEFERRED = object()  # a queued job to be read alone (after a dead worker), not yet submitted


class ReadAhead:
    """Read jobs submitted in order and answered in order, at most ``ahead`` of them in flight.

    ``workers=0`` reads each job in this process when its answer is asked for (no read-ahead): the sequential
    engine, and the reference the pipelined one is tested against.
    """

    def __init__(self, workers: int, ahead: int, reader=None):
        self.workers = max(0, int(workers))
        self.ahead = max(1, int(ahead))
        self._reader = reader or read_case  # a module-level function (it is pickled to the workers)
        self._pool = None
        self._queue: deque = deque()  # (key, future / _DEFERRED / job / answer, the job or None)
        self._finishing = None
        self._finish_asked = False

    def __enter__(self):
        if self.workers:
            self._start()
        return self

    def _start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_IdleSpawnContext(),
                                         initializer=_init_worker)

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            for _key, future, _job in self._queue:
                if hasattr(future, "cancel"):
                    future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._finishing is not None:
                self._finishing.join()
            self._pool = self._finishing = None

    def finish(self) -> None:
        """No more jobs will come: once those in flight are answered, the workers exit (beside the model's last
        cases, not after them)."""
        self._finish_asked = True
        if self._pool is not None and self._finishing is None and not self._deferred():
            # shutdown(wait=False) lets the pool's thread answer the jobs in flight, then stop the workers and
            # join them; that thread is joined on leaving (__exit__), so no worker outlives the run.
            self._finishing = getattr(self._pool, "_executor_manager_thread", None)
            self._pool.shutdown(wait=False)

    def full(self) -> bool:
        return len(self._queue) >= self.ahead

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, key, job) -> None:
        """Queue ``job``: a :class:`ReadJob`, or a case prepared already (answered as it is)."""
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(job, ReadJob):
            self._queue.append((key, ReadAnswer(case=job), None))
        elif self._pool is None:
            self._queue.append((key, job, job))
        elif self._deferred():  # after a dead worker: read one at a time until the suspects are cleared
            self._queue.append((key, _DEFERRED, job))
        else:
            try:
                self._queue.append((key, self._pool.submit(self._reader, job), job))
            except BrokenProcessPool:  # a worker died while the model ran: no job is blamed yet
                self._restart()
                self._queue.append((key, _DEFERRED, job))

    def next(self) -> tuple[object, ReadAnswer]:
        """The oldest job's ``(key, answer)``, waiting for it if needed."""
        from concurrent.futures.process import BrokenProcessPool

        key, pending, job = self._queue.popleft()
        if isinstance(pending, ReadAnswer):
            return key, pending
        if self._pool is None:
            return key, self._reader(pending)
        if pending is _DEFERRED:
            return key, self._alone(job)
        try:
            return key, pending.result()
        except BrokenProcessPool:  # a worker died (killed, out of memory) and took its pool with it
            self._restart()
            return key, self._alone(job)
        except Exception as exc:  # noqa: BLE001 - anything else the pool raises fails this case, not the run
            return key, _worker_failed(exc)

    def _deferred(self) -> bool:
        return any(pending is _DEFERRED for _key, pending, _job in self._queue)

    def _alone(self, job: ReadJob) -> ReadAnswer:
        """Read ``job`` with nothing else in flight (a new pool, the other jobs deferred): if its worker dies now,
        this job is the cause, and only this case fails."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            answer = self._pool.submit(self._reader, job).result()
        except BrokenProcessPool as exc:
            self._restart()
            answer = ReadAnswer(error=f"reading failed: the worker process reading it died ({error_line(exc)}); "
                                      "the next cases are read by a new one")
        except Exception as exc:  # noqa: BLE001
            answer = _worker_failed(exc)
        if self._finish_asked:
            self.finish()
        return answer

    def _restart(self) -> None:
        """Replace a pool broken by a dead worker; every queued job it had not answered is deferred.

        A dead worker fails every job of its pool, and which one killed it is not known (with several workers it
        need not be the oldest). So none is blamed: the deferred jobs are read again one at a time, oldest first
        (:meth:`_alone`), with read-ahead back once they are through; a job that kills its worker while alone is
        the cause and fails. Each dead worker costs one case, and the cohort goes on (before, every later case
        failed on the broken pool).
        """
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._finishing is not None:
            self._finishing.join()
        self._finishing = None
        self._start()
        queue: deque = deque()
        for key, pending, job in self._queue:
            answered = hasattr(pending, "done") and pending.done() and not pending.cancelled() \
                and pending.exception() is None
            if job is not None and hasattr(pending, "result") and not answered:
                pending = _DEFERRED
            queue.append((key, pending, job))
        self._queue = queue


def _worker_failed(exc: BaseException) -> ReadAnswer:
    """The answer of a job that the pool itself failed (not the reading, whose errors come back as answers)."""
    return ReadAnswer(error=f"reading failed in a worker process ({error_line(exc)})")


def default_read_workers(cases: int) -> int:
    """One read-ahead process for a cohort of two or more cases (none for one case, none on a one-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cases > 1 and cores > 1 else 0
