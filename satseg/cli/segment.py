"""``satseg SCAN -p PROMPT ... -o OUT``: segment one scan (filled by the segmentation pipeline work)."""

from __future__ import annotations

from pathlib import Path

import typer

from satseg.errors import SatsegError

HELP = "Segment one scan: satseg SCAN -p PROMPT [-p PROMPT ...] -o OUT_DIR"


def segment(
    scan: Path = typer.Argument(..., help="NIfTI / NRRD / MHA file, DICOM folder or .zip"),
    prompts: list[str] = typer.Option(None, "--prompt", "-p", help="Structure to segment (repeatable)."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Output folder."),
) -> None:
    raise SatsegError("segmentation is not implemented yet in this build")
