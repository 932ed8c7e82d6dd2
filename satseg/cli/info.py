"""``satseg info``: versions, devices, cache folder and the models present."""

from __future__ import annotations

import typer

HELP = "Show versions, devices, the cache folder and which models are present (--json for scripts)."


def info(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    typer.echo("satseg")
