"""``satseg weights list|download|verify|path|hash|import``: thin wrappers around :mod:`satseg.weights`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from satseg.errors import WeightsError

app = typer.Typer(help="List, download, verify, hash and import model weights.", no_args_is_help=True)


def summarize(checks) -> tuple[str, str]:
    """(downloaded, verified) words for a model's file checks, from remembered hashes only."""
    present = [c for c in checks if c.status != "missing"]
    downloaded = "yes" if len(present) == len(checks) else ("partial" if present else "no")
    statuses = {c.status for c in present}
    if not present:
        verified = "-"
    elif "mismatch" in statuses:
        verified = "MISMATCH"
    elif "unchecked" in statuses:
        verified = "not checked"
    elif "unverified" in statuses:
        verified = "no recorded hash"
    else:
        verified = "yes" if downloaded == "yes" else "partial"
    return downloaded, verified


def _size_text(entry) -> str:
    sizes = [f.size for f in entry.files.values()]
    if all(s is not None for s in sizes):
        return f"{sum(sizes) / 1e9:.2f} GB" if sum(sizes) >= 1e8 else f"{sum(sizes) / 1e6:.1f} MB"
    return " + ".join(f.approx_size or "?" for f in entry.files.values())


def _stdout():
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)  # tables unclipped when piped


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the named models: files, size, whether they are downloaded and verified."""
    from satseg import weights

    rows = []
    for entry in weights.list_models():
        downloaded, verified = summarize(weights.verify(entry.name, rehash=False))
        rows.append({
            "name": entry.name, "variant": entry.variant, "format": entry.format,
            "source": f"{entry.repo}@{entry.revision}" if entry.repo else "imported (local files)",
            "files": [f.path if entry.repo else Path(f.path).name for f in entry.files.values()],
            "size": _size_text(entry), "downloaded": downloaded, "verified": verified,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("name", "variant", "source", "files", "size", "downloaded", "verified")
    for row in rows:
        table.add_row(row["name"], row["variant"], row["source"], "\n".join(row["files"]), row["size"],
                      row["downloaded"], row["verified"])
    _stdout().print(table)


def _print_paths(files, as_json: bool) -> None:
    paths = {"checkpoint": str(files.checkpoint), "text_checkpoint": str(files.text_checkpoint),
             "tokenizer": str(files.tokenizer)}
    if as_json:
        typer.echo(json.dumps({"name": files.name, "variant": files.variant, **paths,
                               "verified": files.verified, "commit": files.commit}, indent=2))
        return
    for role, path in paths.items():
        typer.echo(f"{role}\t{path}")


@app.command("download")
def download(name: str = typer.Argument(..., help="Model name (see `satseg weights list`)."),
             as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Download a model's files into the Hugging Face cache and check them."""
    from satseg import weights

    files = weights.resolve_model(name, download=True)
    _print_paths(files, as_json)
    if not as_json:
        typer.echo(f"verified\t{'yes' if files.verified else 'unverified: no recorded hash'}")


@app.command("path")
def path(name: str = typer.Argument(..., help="Model name."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Print the local paths of a model's files (never downloads)."""
    from satseg import weights

    _print_paths(weights.resolve_model(name, download=False), as_json)


@app.command("verify")
def verify(name: str = typer.Argument(None, help="Model name; all models when left out.")) -> None:
    """Hash the local files again and compare them with the recorded sha256 (exit 1 when a file does not match or
    is missing; without a name, hub models that were never downloaded are listed, not counted as missing)."""
    from rich.table import Table

    from satseg import weights

    checks = weights.verify(name, rehash=True)
    never_downloaded = set()
    if name is None:  # a hub model with none of its files in the cache is simply not downloaded
        for model in {c.model for c in checks}:
            own = [c for c in checks if c.model == model]
            if all(c.status == "missing" for c in own) and weights.get_model(model).repo is not None:
                never_downloaded.add(model)
    table = Table("model", "file", "status", "sha256")
    for check in checks:
        label = {"unverified": "no recorded hash"}.get(check.status, check.status)
        if check.model in never_downloaded:
            label = "not downloaded"
        table.add_row(check.model, check.role, label, check.sha256 or "-")
    _stdout().print(table)
    bad = [c for c in checks if c.status == "mismatch"]
    missing = [c for c in checks if c.status == "missing" and c.model not in never_downloaded]
    problems = []
    if bad:
        problems.append(f"{len(bad)} file(s) do not match their recorded sha256: "
                        + ", ".join(f"{c.model} {c.role} ({c.path})" for c in bad))
    if missing:
        problems.append(f"{len(missing)} file(s) missing: "
                        + ", ".join(f"{c.model} {c.role} ({c.path or 'not in the cache'})" for c in missing))
    if problems:
        raise WeightsError("; ".join(problems))


@app.command("hash")
def hash_(files: list[Path] = typer.Argument(..., help="Files to hash.")) -> None:
    """Print size and sha256 of files in the manifest's form, ready to record."""
    from satseg import weights
    from satseg.errors import InputError

    for file in files:
        if not file.is_file():
            raise InputError(f"{file} is not a file")
        typer.echo(json.dumps({"path": file.name, "size": file.stat().st_size,
                               "sha256": weights.sha256_file(file)}))


@app.command("import")
def import_(
    name: str = typer.Option(..., "--name", help="Name to register (then usable as --model NAME)."),
    checkpoint: Path = typer.Option(..., "--checkpoint",
                                    help="Official segmentation checkpoint (.pth), or a satseg .safetensors file."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="Tokenizer folder (BioLORD-2023-C / MPNet)."),
    variant: str = typer.Option(None, "--variant", help="Architecture of a .pth: nano or pro (tiny for tests)."),
    text_checkpoint: Path = typer.Option(None, "--text-checkpoint", help="The .pth's paired text-encoder checkpoint."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an earlier import of the same name."),
) -> None:
    """Validate local weights (strict load) and register them under a name."""
    from satseg import weights
    from satseg.errors import InputError

    if checkpoint.name.endswith(".safetensors"):
        entry = weights.import_satseg_weights(name, checkpoint, tokenizer, replace=replace)
    else:
        if variant is None or text_checkpoint is None:
            raise InputError("an official .pth checkpoint needs --variant and --text-checkpoint")
        entry = weights.import_model(name, variant, checkpoint, text_checkpoint, tokenizer, replace=replace)
    typer.echo(f"registered {entry.name} ({entry.variant}) in {weights.satseg_home() / 'models.json'}; "
               f"use it with --model {entry.name}")
