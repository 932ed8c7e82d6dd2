"""``satseg train ...``: prepare data, fit, evaluate, export, text pretraining.

Each sub-command lives in its own module (``train_<name>.py``) exposing ``HELP`` and ``command``.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(help="Rebuild or fine-tune SAT: prepare, fit, evaluate, export, text.", no_args_is_help=True)

for _name in ("prepare", "fit", "evaluate", "export", "text"):
    _module = importlib.import_module(f"satseg.cli.train_{_name}")
    app.command(_name, help=_module.HELP)(_module.command)
