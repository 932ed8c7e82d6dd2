"""``satseg weights ...`` (filled by the weights work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="List, download, verify, hash and import model weights.", no_args_is_help=True)


@app.command("list")
def list_() -> None:
    """List the named models."""
