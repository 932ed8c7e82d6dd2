"""``satseg batch``: segment a cohort (filled by the segmentation pipeline work)."""

from __future__ import annotations

import typer

from satseg.errors import SatsegError

HELP = "Segment a cohort: satseg batch INPUTS... | DIR | LIST.txt | - -p PROMPT -o OUT_DIR"


def batch(inputs: list[str] = typer.Argument(None)) -> None:
    raise SatsegError("batch is not implemented yet in this build")
