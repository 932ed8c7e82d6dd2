"""``satseg train evaluate``: Dice and NSD of a model on a prepared cache's test split."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

HELP = ("Dice and NSD (1 mm) per case, class, dataset and region on the test split of a prepared cache, on "
        "each scan's own grid: satseg train evaluate --model NAME | --checkpoint FILE --tokenizer DIR "
        "--cache CACHE --out DIR. Writes cases/classes/datasets/regions CSV and evaluation.json.")

log = logging.getLogger("satseg.cli")


def command(
    cache: Path = typer.Option(..., "--cache", help="Cache folder written by `satseg train prepare`."),
    model: str = typer.Option(None, "--model", "-m", help="Model name (satseg weights list or imported)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A `satseg train fit` checkpoint (.pt)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="MPNet tokenizer folder (with --checkpoint)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: CACHE/evaluation)."),
    split: str = typer.Option("test", "--split", help="test | train | all"),
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Only this dataset (repeatable)."),
    grid: str = typer.Option("native", "--grid", help="native: on each scan's own grid against the original "
                                                      "mask; model: on the cached 1x1x3 mm grid."),
    tolerance: float = typer.Option(1.0, "--tolerance", min=0.0, help="NSD tolerance in mm."),
    manifest: Path = typer.Option(None, "--manifest", help="Dataset entry JSON/folder (default: the one used by "
                                                          "prepare)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Evaluate at most N samples."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cuda:N | mps | cpu"),
    precision: str = typer.Option("auto", "--precision", help="auto | fp32 | bf16 | fp16"),
    window_batch: int = typer.Option(None, "--window-batch", min=1, help="Windows per forward pass."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
) -> None:
    from satseg.errors import EXIT_COHORT_FAILED, InputError
    from satseg.training.cache import open_cache, require_grid
    from satseg.training.evaluate import evaluate_cache, write_evaluation

    if (model is None) == (checkpoint is None):
        raise InputError("give --model NAME or --checkpoint FILE (one of them)")
    open_cache(cache)  # a missing cache fails before the model is loaded
    from satseg.inference.options import RuntimeOptions
    from satseg.training.evaluate import load_training_checkpoint, predictor_fn

    runtime = RuntimeOptions(device=device, precision=precision, window_batch=window_batch, threads=threads)
    if checkpoint is not None:
        predictor = load_training_checkpoint(checkpoint, tokenizer, runtime)
    else:
        from satseg.inference.predictor import Predictor

        predictor = Predictor.from_pretrained(model, runtime)
    require_grid(cache, predictor.model.config.spacing)

    def progress(done: int, total: int, sample_id: str) -> None:
        log.info("[%d/%d] %s", done, total, sample_id)

    result = evaluate_cache(cache, predictor_fn(predictor), split=split, datasets=dataset or None, grid=grid,
                            tolerance_mm=tolerance, manifest=manifest, limit=limit, progress=progress)
    result.settings["model"] = predictor.name
    paths = write_evaluation(result, out or cache / "evaluation")
    for row in result.datasets():
        typer.echo(f"{row['dataset']}: Dice {row['dice']:.4f}  NSD {row['nsd']:.4f}  "
                   f"({row['classes']} classes, {row['cases']} cases)")
    for row in result.regions():
        typer.echo(f"region {row['region']}: Dice {row['dice']:.4f}  NSD {row['nsd']:.4f}")
    typer.echo(f"results: {paths['json'].parent}")
    if result.failed:
        for failure in result.failed:
            typer.echo(f"  failed {failure['dataset']} {failure['sample_id']}: {failure['reason']}", err=True)
        raise typer.Exit(EXIT_COHORT_FAILED)

