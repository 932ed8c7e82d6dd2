"""Logging and one-line error output shared by the CLI commands (rich on stderr)."""

from __future__ import annotations

import logging
import sys

_configured = False


# Libraries that log or warn on their own; their chatter is hidden unless -vv (debug).
_QUIET_LOGGERS = ("huggingface_hub", "nibabel", "nibabel.global", "pydicom", "dicom2nifti", "transformers",
                  "urllib3", "httpx", "filelock", "matplotlib", "PIL", "py.warnings")


def setup_logging(level: int = logging.WARNING) -> None:
    """Send ``satseg.*`` log records to stderr through rich (no colours when not a terminal).

    Third-party loggers and Python warnings are silenced (errors reach the user as satseg's own one-line
    messages) unless ``level`` is DEBUG.
    """
    global _configured
    logger = logging.getLogger("satseg")
    logger.setLevel(level)
    logging.captureWarnings(True)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.CRITICAL)
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1") if level > logging.INFO else None
    if _configured:
        return
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    _configured = True


def error_line(message: str) -> None:
    """Print ``satseg: error: MESSAGE`` as a single line on stderr."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"satseg: error: {one_line}\n")


def _stage_lines_wanted() -> bool:
    return logging.getLogger("satseg").getEffectiveLevel() <= logging.WARNING  # not --quiet


def stage(message: str) -> None:
    """One line on stderr as a stage of the run starts (reading, loading the model, segmenting, writing), so a
    log file or a job scheduler shows where a long run is; nothing with ``--quiet``."""
    if _stage_lines_wanted():
        sys.stderr.write(f"satseg: {message}\n")
        sys.stderr.flush()


def window_progress(label: str):
    """A ``progress(done, total)`` callback for the sliding window: a counter updated in place on a terminal;
    one line when the windows start (and none per window) when stderr is a file or a pipe."""
    if not _stage_lines_wanted():
        return None
    tty = sys.stderr.isatty()
    started = [False]

    def progress(done: int, total: int) -> None:
        if tty:
            end = "\n" if done >= total else ""
            sys.stderr.write(f"\rsatseg: {label}: window {done}/{total}{end}")
            sys.stderr.flush()
        elif not started[0]:
            sys.stderr.write(f"satseg: {label}: {total} window(s) on the model grid\n")
            sys.stderr.flush()
        started[0] = True

    return progress
