"""``satseg train text``: knowledge-enhanced contrastive pretraining of the text encoder (SAT_SPEC §7.6)."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = ("Pretrain the text encoder on a SAT-Pretrain knowledge file (concept ↔ definition / synonym / relation "
        "contrastive learning); writes RUN/text_encoder.pth for `satseg train fit --text-init`.")


def command(
    knowledge: Path = typer.Option(..., "--knowledge", help="Knowledge file (SAT-Pretrain JSON: concept → "
                                   "cleaned_definition, synonyms, relations)."),
    mpnet: Path = typer.Option(..., "--mpnet", help="MPNet folder (all-mpnet-base-v2 or BioLORD-2023-C): "
                               "tokenizer, and starting weights for nano/pro."),
    out: Path = typer.Option(..., "--out", help="Run folder: text_encoder.pth, metrics.jsonl, text_run.json."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps (upstream: 100000)."),
    batch: int = typer.Option(128, "--batch", help="Text pairs per step."),
    lr: float = typer.Option(1e-5, "--lr", help="Peak learning rate."),
    warmup: int = typer.Option(100, "--warmup", help="Linear warmup steps, then cosine decay (upstream: 10000)."),
    open_layer: int = typer.Option(8, "--open-layer", help="Train MPNet layers above this index + the pooler "
                                   "(8: layers 9-11; -1: all layers)."),
    variant: str = typer.Option("nano", "--variant", help="Text tower of this variant: nano/pro (MPNet-base) "
                                "or tiny (tests, random start)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Longest tokenised text."),
    truncate_p: float = typer.Option(0.5, "--truncate-p", help="Chance that a too-long text keeps a random window."),
    init_text: Path = typer.Option(None, "--init-text", help="Start from this SAT text checkpoint instead."),
    save_every: int = typer.Option(0, "--save-every", help="Also write the checkpoint every N steps (0: at the end)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Random seed (sampling, truncation, initialisation)."),
) -> None:
    """Stage-1a textual pretraining of the text tower."""
    from satseg.model.config import get_config
    from satseg.training.text_pretrain import TextPretrainOptions, pretrain_text

    get_config(variant)  # an unknown variant fails before any work
    options = TextPretrainOptions(steps=steps, batch=batch, lr=lr, warmup=warmup, open_layer=open_layer,
                                  max_tokens=max_tokens, truncate_p=truncate_p, seed=seed, save_every=save_every,
                                  device=device)
    result = pretrain_text(knowledge, mpnet, out, variant=variant.lower(), options=options,
                           init_text_checkpoint=init_text)
    typer.echo(f"wrote {result.checkpoint} after {result.steps} steps (loss {result.losses[0]:.4f} → "
               f"{result.losses[-1]:.4f}, logit scale {result.logit_scale:.2f}); use it with --text-init")
