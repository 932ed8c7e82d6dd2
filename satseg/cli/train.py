"""``satseg train ...``: prepare data, fit, evaluate, export (filled by the training work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Rebuild or fine-tune SAT: prepare, fit, evaluate, export, text.", no_args_is_help=True)


@app.command("fit")
def fit() -> None:
    """Train a model from a config (not implemented yet in this build)."""
    from satseg.errors import SatsegError

    raise SatsegError("train fit is not implemented yet in this build")
