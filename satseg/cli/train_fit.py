"""``satseg train fit``: thin wrapper around :func:`satseg.training.fit.fit`.

One process: ``satseg train fit --config train/configs/tiny.yaml --cache CACHE --out RUN``.
Several GPUs / nodes: ``torchrun --nproc_per_node=8 -m satseg.cli.main train fit ...`` (same arguments).
"""

from __future__ import annotations

from pathlib import Path

import typer

HELP = ("Train SAT on a prepared cache (Dice + BCE, deep supervision, AdamW warmup + cosine); checkpoints and "
        "exact resume; several GPUs or nodes under torchrun.")


def command(
    config: Path = typer.Option(..., "--config", help="Training config (train/configs/{tiny,nano,pro}.yaml)."),
    cache: Path = typer.Option(..., "--cache", help="Prepared cache folder (satseg train prepare --out)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/, metrics.jsonl, config.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/latest.pt if present."),
    init: str | None = typer.Option(None, "--init", help="Start from released weights (a model name such as "
                                       "sat-nano) or a checkpoint file."),
    text_init: str | None = typer.Option(None, "--text-init", help="Text tower start: an MPNet folder "
                                            "(all-mpnet-base-v2, BioLORD-2023-C), a SAT text checkpoint, or 'random'."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the MPNet "
                                             "folder, or the --init model's)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Stop after this step (the learning-rate "
                                        "schedule still spans schedule.steps; change that with --set)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (under torchrun: one GPU per process)."),
    tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard",
                                               help="Also log to RUN/tensorboard (needs the tensorboard package)."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a config value: SECTION.KEY=VALUE "
                                                  "(YAML value), e.g. --set schedule.steps=50. Repeatable."),
) -> None:
    """Train or fine-tune SAT."""
    import json
    import os
    import sys

    from satseg.training.fit import FitOptions, fit, load_config

    settings = load_config(config, overrides or [])
    options = FitOptions(cache=cache, out=out, resume=resume, init=init, text_init=text_init, tokenizer=tokenizer,
                         stop_at=steps, device=device, tensorboard=tensorboard, progress=sys.stderr.isatty())
    result = fit(settings, options)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps({"run": str(result.run_dir), "step": result.step, "loss": result.loss,
                               "checkpoint": str(result.checkpoint) if result.checkpoint else None}))
