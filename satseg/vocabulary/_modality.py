"""The scan's modality against the prompt: a modality named in the prompt must agree with it, a term trained on
it under another name is renamed ("femur" → "femur bone" on MRI), and a term (or a named group's member) not
trained on it is refused unless untrained modalities are allowed."""

from __future__ import annotations

from satseg.vocabulary._groups import RULE as GROUP_RULE
from satseg.vocabulary._phrases import ADDABLE_SUFFIX, DROPPABLE_SUFFIX
from satseg.vocabulary._resolution import PromptResolutionError
from satseg.vocabulary._suggest import suggest
from satseg.vocabulary._text import LATERALITY
from satseg.vocabulary.catalog import Vocabulary


def _upper(modality: str) -> str:
    return "/".join(m.upper() for m in modality.split("+"))


def check_named_modality(named: list[tuple[str, str]], modality: str | None, prompt: str) -> str | None:
    """The scan's modality, after checking the modalities the prompt names against it."""
    if modality is not None:
        for word, names in named:
            if modality not in names.split("+"):
                raise PromptResolutionError(
                    f"{prompt!r} names {_upper(names)} ({word!r}) but the scan's modality is {modality.upper()}; "
                    f"drop {word!r} from the prompt or give --modality {names.split('+')[0]}", prompt=prompt)
        return modality
    values = {names for _, names in named}
    if len(values) == 1 and "+" not in next(iter(values)):
        return next(iter(values))
    return None


def modality_name(term: str, modality: str | None, vocabulary: Vocabulary, steps: list[str]) -> str:
    """The name the same structure was trained under on ``modality`` where the term itself was not ("femur" on
    CT is "femur bone" on MRI): the term with or without a suffix such as "bone" or "gland"."""
    if modality is None or modality in vocabulary.modalities_of(term):
        return term
    head, _, last = term.rpartition(" ")
    for other in [f"{term} {s}" for s in ADDABLE_SUFFIX] + ([head] if last in DROPPABLE_SUFFIX else []):
        if other in vocabulary.terms and modality in vocabulary.modalities_of(other):
            steps.append(f"{term!r} is trained on {modality.upper()} as {other!r}")
            return other
    return term


def modality_check(terms: tuple[str, ...], modality: str | None, vocabulary: Vocabulary, allow: bool,
                    prompt: str, steps: list[str]) -> list[str]:
    untrained = [t for t in terms if modality is not None and modality not in vocabulary.modalities_of(t)]
    if not untrained:
        return []
    per_term = [f"{t!r} was trained on {'/'.join(m.upper() for m in vocabulary.modalities_of(t))} only, not on "
                f"{modality.upper()}" for t in untrained]
    said = "; ".join(per_term)
    if not allow:
        words = {w for t in untrained for w in t.split() if w not in LATERALITY and not w.isdigit()}
        options = tuple(n for n in suggest(untrained[0], k=40, modality=modality)  # same structure words only
                        if modality in vocabulary.modalities_of(n) and words & set(n.split()))[:5]
        nearby = f"; trained on {modality.upper()}: {', '.join(options)}" if options else ""
        raise PromptResolutionError(
            f"{said}: its mask would be unreliable, so it is refused (pass --allow-untrained-modality to run it "
            f"anyway){nearby}", prompt=prompt, suggestions=options, untrained_modality=True, steps=tuple(steps))
    return [f"{s}; expect unreliable masks (run with --allow-untrained-modality)" for s in per_term]


def groups_read(parts: list, modality: str | None, vocabulary: Vocabulary) -> tuple[dict, ...]:
    """The named groups among the phrases, with the members read (in the scan's modality's names)."""
    out = []
    for phrase, found in parts:
        if found.group is not None:
            members = [modality_name(t, modality, vocabulary, []) for t in found.terms]
            out.append({"group": found.group, "phrase": phrase, "members": list(dict.fromkeys(members)),
                        "rule": GROUP_RULE, "source": vocabulary.groups[found.group]["source"]})
    return tuple(out)


def check_group_modality(groups: tuple[dict, ...], modality: str | None, vocabulary: Vocabulary, prompt: str,
                          steps: list[str]) -> None:
    """A group with a member not trained on the scan's modality is refused whole, naming those members."""
    for group in groups:
        members = group["members"]
        untrained = [t for t in members if modality is not None and modality not in vocabulary.modalities_of(t)]
        if not untrained:
            continue
        trained = [t for t in members if t not in untrained]
        where = "; ".join(f"{t!r} (trained on {'/'.join(m.upper() for m in vocabulary.modalities_of(t))} only)"
                          for t in untrained)
        said = f"; trained on {modality.upper()}: {', '.join(trained)}" if trained else ""
        raise PromptResolutionError(
            f"{group['phrase']!r} is the group {group['group']!r} ({len(members)} members); on "
            f"{modality.upper()} {len(untrained)} of them {'is' if len(untrained) == 1 else 'are'} not trained: {where}. The group is refused rather "
            f"than segmented in part (pass --allow-untrained-modality to run all members anyway){said}",
            prompt=prompt, suggestions=tuple(trained)[:5], untrained_modality=True, steps=tuple(steps),
            group={**group, "untrained": untrained})
