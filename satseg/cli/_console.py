"""Logging and one-line error output shared by the CLI commands (rich on stderr)."""

from __future__ import annotations

import logging
import sys

_configured = False


def setup_logging(level: int = logging.WARNING) -> None:
    """Send ``satseg.*`` log records to stderr through rich (no colours when not a terminal)."""
    global _configured
    logger = logging.getLogger("satseg")
    logger.setLevel(level)
    if _configured:
        return
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    _configured = True


def error_line(message: str) -> None:
    """Print ``satseg: error: MESSAGE`` as a single line on stderr."""
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"satseg: error: {one_line}\n")
