"""``satseg terms``: list, search and explain the prompt vocabulary (thin: the work is in satseg.vocabulary)."""

from __future__ import annotations

import json

import typer

HELP = "List and search the terms the models were trained on; --explain shows how a prompt resolves."

_MAX_DATASETS_SHOWN = 3


def terms(
    query: str = typer.Argument(None, help="Search text: part of a term, a synonym, an abbreviation ('ivc')."),
    modality: str = typer.Option(None, "--modality", "-m", help="Only terms trained on this modality: ct, mri, pet."),
    region: str = typer.Option(None, "--region", "-r", help="Only terms of this body region (e.g. abdomen, brain)."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Only terms trained from this dataset (e.g. BTCV)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: one object per modality-term entry."),
    explain: str = typer.Option(None, "--explain", "-e", metavar="PROMPT",
                                help="Show how PROMPT resolves to trained terms (exit 2 if it does not)."),
    free_text: bool = typer.Option(False, "--free-text", help="With --explain: send PROMPT unchanged."),
    allow_untrained_modality: bool = typer.Option(
        False, "--allow-untrained-modality",
        help="With --explain: resolve terms not trained on --modality (with a warning) instead of refusing them."),
) -> None:
    from satseg import vocabulary

    if explain is not None:
        try:
            resolution = vocabulary.resolve(explain, modality, free_text=free_text,
                                            allow_untrained_modality=allow_untrained_modality)
        except vocabulary.PromptResolutionError as refusal:
            if as_json:
                typer.echo(json.dumps(refusal.to_dict(), indent=2, ensure_ascii=False))
            else:
                _print_refusal(refusal)
            raise
        if as_json:
            from satseg.vocabulary.codes import segment_code

            data = resolution.to_dict()
            data["code"] = segment_code(list(resolution.terms), explain) if resolution.method != "free-text" else None
            typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            _print_resolution(resolution)
        return
    entries = vocabulary.modality_terms(modality=modality, region=region, dataset=dataset, query=query)
    if as_json:
        from satseg.vocabulary.codes import anatomy_code

        typer.echo(json.dumps([dict(e.to_dict(), code=anatomy_code(e.name)) for e in entries], indent=1,
                              ensure_ascii=False))
        return
    if not entries:
        hint = f"; closest terms: {', '.join(vocabulary.suggest(query, modality=modality))}" if query else ""
        typer.echo(f"no trained term matches{hint}")
        return
    _print_table(entries)


def _print_table(entries) -> None:
    from rich.console import Console
    from rich.table import Table

    by_name: dict[str, list] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    table = Table(title=f"{len(by_name)} trained terms ({len(entries)} modality entries)")
    for column in ("term", "modalities", "regions", "datasets"):
        table.add_column(column, overflow="fold")
    for name, items in by_name.items():
        datasets = sorted({d for e in items for d in e.datasets})
        shown = ", ".join(datasets[:_MAX_DATASETS_SHOWN])
        if len(datasets) > _MAX_DATASETS_SHOWN:
            shown += f" +{len(datasets) - _MAX_DATASETS_SHOWN}"
        table.add_row(name, ", ".join(e.modality for e in items),
                      ", ".join(sorted({r for e in items for r in e.regions})), shown)
    Console().print(table)


def _print_resolution(resolution) -> None:
    typer.echo(f"prompt:      {resolution.prompt}")
    for step in resolution.steps:
        typer.echo(f"step:        {step}")
    for group in resolution.groups:
        _print_group(group)
    typer.echo(f"terms:       {'; '.join(resolution.terms)}")
    typer.echo(f"method:      {resolution.method}")
    if resolution.modality:
        typer.echo(f"modality:    {resolution.modality}")
    typer.echo(f"explanation: {resolution.explanation}")
    for warning in resolution.warnings:
        typer.echo(f"warning:     {warning}")


def _print_refusal(refusal) -> None:
    """The steps read before the refusal and the suggestions, on stdout; the error line itself goes to stderr."""
    typer.echo(f"prompt:      {refusal.prompt}")
    for step in refusal.steps:
        typer.echo(f"step:        {step}")
    if refusal.group is not None:
        _print_group(refusal.group)
    typer.echo("terms:       (refused)")
    if refusal.suggestions:
        typer.echo(f"suggestions: {'; '.join(refusal.suggestions)}")


def _print_group(group: dict) -> None:
    """A named group: its members, what is missing or untrained, the rule and the source of the membership."""
    typer.echo(f"group:       {group['group']!r} = {' + '.join(group['members'])}")
    if group.get("missing"):
        typer.echo(f"missing:     {', '.join(group['missing'])} (never trained)")
    if group.get("untrained"):
        typer.echo(f"untrained:   {', '.join(group['untrained'])} (not trained on this modality)")
    typer.echo(f"rule:        {group['rule']}")
    typer.echo(f"source:      {group['source']}")
