"""Which case a warning belongs to, when cases are read, segmented and written at the same time.

One handler on the ``satseg`` logger for the whole cohort. Each thread says which case it works on
(:meth:`CaseLog.working_on`); every warning logged in that thread is kept for that case (for its line and the
summary) and reaches the console starting with the case's name. Warnings a read-ahead worker process collected
are handed in with :meth:`CaseLog.replay`.
"""

from __future__ import annotations

import contextlib
import logging
import threading


class CaseLog(logging.Handler):
    """Collects satseg's warnings per case while a cohort runs (use as a context manager around the run)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._messages: dict[str, list[str]] = {}
        self._logger = logging.getLogger("satseg")

    @contextlib.contextmanager
    def working_on(self, case: str):
        """Inside the block, warnings logged by this thread belong to ``case``."""
        before = getattr(self._local, "case", None)
        self._local.case = case
        try:
            yield
        finally:
            self._local.case = before

    def messages(self, case: str) -> list[str]:
        """The warnings of ``case`` so far (without the case-name prefix)."""
        with self._lock:
            return list(self._messages.get(case, []))

    def forget(self, case: str) -> None:
        with self._lock:
            self._messages.pop(case, None)

    def replay(self, case: str, messages: list[str]) -> None:
        """Log warnings that another process collected for ``case`` (console and collection, as if logged here)."""
        with self.working_on(case):
            for message in messages:
                logging.getLogger("satseg.read").warning("%s", message)

    def filter(self, record: logging.LogRecord) -> bool:  # also installed on the console handlers
        case = getattr(self._local, "case", None)
        if case is not None and record.levelno >= logging.WARNING:
            message = record.getMessage()
            if not message.startswith(f"{case}:"):
                record.msg, record.args = f"{case}: {message}", None
        return True

    def emit(self, record: logging.LogRecord) -> None:
        case = getattr(self._local, "case", None)
        if case is None:
            return
        message, prefix = record.getMessage(), f"{case}: "
        with self._lock:
            self._messages.setdefault(case, []).append(message[len(prefix):] if message.startswith(prefix)
                                                       else message)

    def __enter__(self):
        for handler in self._logger.handlers:
            handler.addFilter(self)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self)
        for handler in self._logger.handlers:
            handler.removeFilter(self)


class WarningRecorder(logging.Handler):
    """The warnings satseg logs while a block runs (in a worker process: sent back with the case)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self):
        logger = logging.getLogger("satseg")
        logger.addHandler(self)
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("satseg").removeHandler(self)
