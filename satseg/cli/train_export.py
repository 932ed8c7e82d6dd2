"""``satseg train export``: trained (or released) weights → one safetensors file + manifest entry + local name."""

from __future__ import annotations

import json
from pathlib import Path

import typer

HELP = ("Export a training checkpoint (or convert a released SAT checkpoint pair) to satseg's safetensors "
        "format, print its weights_manifest.json entry and register it as --model NAME.")


def command(
    name: str = typer.Option(..., "--name", help="Model name to register (then: satseg scan.nii.gz --model NAME)."),
    tokenizer: Path = typer.Option(None, "--tokenizer", help="Tokenizer folder (BioLORD-2023-C / all-mpnet-base-v2); "
                                   "default for --checkpoint: the folder the training run used."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Training checkpoint (RUN/checkpoints/latest.pt) of "
                                    "`satseg train fit`."),
    official: Path = typer.Option(None, "--official", help="Or: a released SAT segmentation checkpoint (.pth)."),
    text_checkpoint: Path = typer.Option(None, "--text-checkpoint", help="With --official: its paired text encoder."),
    variant: str = typer.Option(None, "--variant", help="With --official: nano or pro."),
    fp16: bool = typer.Option(False, "--fp16", help="Store floating-point weights as float16 (half the size)."),
    out: Path = typer.Option(None, "--out", help="Output .safetensors (default: NAME.safetensors beside the input)."),
    manifest_entry_file: Path = typer.Option(None, "--manifest-entry", help="Also write the manifest entry here."),
    hub_repo: str = typer.Option(None, "--hub-repo", help="Write the entry for publishing in this hub repo "
                                 "(upload the file and the tokenizer files there)."),
    register: bool = typer.Option(True, "--register/--no-register", help="Register NAME in $SATSEG_HOME/models.json."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an earlier registration of NAME."),
) -> None:
    """Write satseg weights from a training run or a released checkpoint pair."""
    from satseg import weights
    from satseg.errors import InputError
    from satseg.io.atomic import write_text_atomic
    from satseg.training import export

    if (checkpoint is None) == (official is None):
        raise InputError("give either --checkpoint (a training run) or --official (a released SAT checkpoint)")
    if official is not None and (text_checkpoint is None or variant is None):
        raise InputError("--official needs --text-checkpoint and --variant (nano or pro)")
    if register:
        weights.check_new_model_name(name, replace)  # fail before the (possibly long) conversion
    source = checkpoint or official
    if not source.is_file():
        raise InputError(f"checkpoint {source} does not exist")
    out = out or source.parent / f"{name}.safetensors"
    if out.suffix != ".safetensors":
        raise InputError(f"--out {out}: the file name must end in .safetensors")

    if checkpoint is not None:
        run = export.read_training_checkpoint(checkpoint)
        tokenizer = tokenizer or (Path(run.tokenizer) if run.tokenizer else None)
        if tokenizer is None:
            raise InputError(f"{checkpoint} records no tokenizer folder; pass --tokenizer")
        weights.check_tokenizer_dir(tokenizer)
        export.export_training_checkpoint(run, out, fp16=fp16)
    else:
        if tokenizer is None:
            raise InputError("--official needs --tokenizer (the BioLORD-2023-C / all-mpnet-base-v2 folder)")
        weights.check_tokenizer_dir(tokenizer)
        export.convert_official(official, text_checkpoint, variant.lower(), out, fp16=fp16)
    model_variant = weights.validate_satseg_file(out)
    entry = export.manifest_entry(name, model_variant, out, tokenizer, hub_repo=hub_repo)
    weights.parse_manifest({"schema_version": weights.SCHEMA_VERSION, "models": entry}, "the exported entry")
    text = json.dumps(entry, indent=2)
    typer.echo(text)
    if manifest_entry_file is not None:
        write_text_atomic(manifest_entry_file, text + "\n")
    if register:
        weights.import_satseg_weights(name, out, tokenizer, replace=replace)
        typer.echo(f"registered {name} ({model_variant}, {out.stat().st_size / 1e6:.1f} MB) in "
                   f"{weights.satseg_home() / 'models.json'}; use it with --model {name}", err=True)
