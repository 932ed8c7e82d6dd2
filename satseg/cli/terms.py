"""``satseg terms``: list, search and explain the prompt vocabulary (filled by the vocabulary work)."""

from __future__ import annotations

import typer

from satseg.errors import SatsegError

HELP = "List and search the terms the models were trained on; --explain shows how a prompt resolves."


def terms(query: str = typer.Argument(None)) -> None:
    raise SatsegError("terms is not implemented yet in this build")
