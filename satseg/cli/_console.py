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
