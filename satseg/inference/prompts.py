"""The prompts of a request as one typed list: what the user wrote, the file it goes to, how it was read.

    >>> prompts = resolve_prompts(["liver", "kidneys"], "ct", PromptOptions())
    >>> [(p.text, p.output_name, p.terms) for p in prompts]
    [('liver', 'liver', ('liver',)), ('kidneys', 'kidneys', ('left kidney', 'right kidney'))]
"""

from __future__ import annotations

from dataclasses import dataclass

from satseg.errors import InputError
from satseg.inference.options import PromptOptions

# Files a case folder may hold besides the masks: no prompt may be named like them.
RESERVED_NAMES = frozenset({"segmentation", "statistics", "preview", "report", "probabilities"})


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request.

    Attributes:
        text: the prompt as the user wrote it.
        output_name: the file stem of its outputs (unique within the request, snake_case).
        resolution: how it became trained terms (:class:`~satseg.vocabulary.resolve.Resolution`).
    """

    text: str
    output_name: str
    resolution: object

    @property
    def terms(self) -> tuple[str, ...]:
        """The trained terms whose masks are unioned for this prompt."""
        return tuple(self.resolution.terms)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(self.resolution.warnings)

    def to_dict(self) -> dict:
        """The resolution's record (JSON-ready) with ``output``: what reports and run.json hold."""
        return dict(self.resolution.to_dict(), output=self.output_name)


def resolve_prompts(texts: list[str], modality: str | None, options: PromptOptions | None = None) -> list[Prompt]:
    """Resolve every prompt to trained terms for ``modality`` (or refuse the request) → one :class:`Prompt` each.

    Raises:
        InputError: no prompt, or an empty one.
        PromptError: a prompt that resolves to nothing trained (with suggestions), or to a term not trained for the
            modality (unless ``options.allow_untrained_modality``).
    """
    from satseg.outputs import output_names
    from satseg.vocabulary import resolve

    options = options or PromptOptions()
    texts = [p for p in (texts or []) if p is not None]
    if not texts or not any(p.strip() for p in texts):
        raise InputError("no prompt given: add at least one -p/--prompt (see `satseg terms` for what the models know)")
    if any(not p.strip() for p in texts):
        raise InputError("an empty prompt was given; every -p/--prompt needs a structure name")
    resolutions = [resolve(p, modality, free_text=options.free_text,
                           allow_untrained_modality=options.allow_untrained_modality) for p in texts]
    names = output_names(texts, reserved=RESERVED_NAMES)
    return [Prompt(text, name, resolution) for text, name, resolution in zip(texts, names, resolutions)]


def unique_terms(prompts: list[Prompt]) -> list[str]:
    """The trained terms of all prompts, each once, in first-use order (the model's query order)."""
    return list(dict.fromkeys(t for p in prompts for t in p.terms))


def check_cohort_prompts(cases: list, prompts: list[str] | None, modality: str | None,
                         prompt_options: PromptOptions) -> None:
    """Refuse a case without prompts, unknown prompts, and terms not trained for a modality that is known already,
    before any case runs or a model loads (a mistake in line 5,000 of a jobs file is found now, not hours into
    the cohort)."""
    from satseg.errors import PromptError
    from satseg.vocabulary import normalize_modality

    if not prompts:
        for case in cases:
            if not case.prompts:
                raise InputError(f"{case.origin or case.name}: no prompts for this case: add -p/--prompt "
                                 "(or a non-empty \"prompts\" list to every job in --jobs)")
    checked = set()
    if prompts:
        resolve_prompts(list(prompts), normalize_modality(modality) if modality else None, prompt_options)
        checked.add((tuple(prompts), modality))
    for case in cases:
        key = (tuple(case.prompts or ()), case.modality or modality)
        if not case.prompts or key in checked:
            continue
        try:
            resolve_prompts(list(case.prompts), normalize_modality(key[1]) if key[1] else None, prompt_options)
        except PromptError as exc:
            raise InputError(f"{case.origin or case.name}: {exc}") from None
        checked.add(key)
