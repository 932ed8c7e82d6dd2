"""Prompt → trained terms: read the prompt, match what names a structure, or refuse — never guess.

A prompt is first matched as typed (:mod:`satseg.vocabulary._phrases`: exact terms, aliases, TotalSegmentator
names, named groups, word order, word forms, implied head nouns, ranges, both sides, findings, unions at ``,``
``;`` ``+`` ``&`` ``/`` ``and`` ``or`` ``plus``). When that fails it is read word by word: a misspelled word is
corrected where exactly one known word is close (:mod:`satseg.vocabulary._spelling`), imaging, task and filler
words are set aside, then region phrases (:mod:`satseg.vocabulary._context`), and what is left must match
completely. Every word is accounted for — matched, set aside as context, or corrected — or the prompt is refused
with suggestions (:mod:`satseg.vocabulary._suggest`): never a match on part of the words. A modality named in the
prompt that contradicts the scan's is refused, and so is a term not trained on the scan's modality unless
``allow_untrained_modality`` (:mod:`satseg.vocabulary._modality`; a named group with such a member is refused
whole, naming it). The :class:`Resolution` records every step (``--explain`` prints them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from satseg.vocabulary import _context, _findings, _lexicon
from satseg.vocabulary._groups import RULE as GROUP_RULE
from satseg.vocabulary._modality import (
    check_group_modality,
    check_named_modality,
    groups_read,
    modality_check,
    modality_name,
)
from satseg.vocabulary._phrases import Ambiguous, Refusal, resolved, resolver_for
from satseg.vocabulary._resolution import PromptResolutionError, Resolution
from satseg.vocabulary._spelling import Speller
from satseg.vocabulary._suggest import suggest
from satseg.vocabulary._text import canonical, phrase_key, tokens
from satseg.vocabulary.catalog import Vocabulary, load, normalize_modality

__all__ = ["PromptResolutionError", "Resolution", "resolve", "suggest"]

_EXTRA_KNOWN = ("both", "bilateral", "left", "right", "lt", "rt", "l", "r", "to", "through", "thru", "until",
                "and", "or", "plus", "as", "well", "sided", "side", "vertebra", "level", "from", "segment",
                "couinaud", "muscle", "bone", "gland", "organ", "hemisphere", "sinister", "dexter")


@lru_cache(maxsize=1)
def _speller() -> Speller:
    v = load()
    targets = {w for keys in (v.term_by_key, v.aliases, v.ambiguous, v.adjectives) for key in keys for w in key.split()}
    targets |= set(_findings.FINDING_WORDS) | {w for w in map(canonical, _lexicon.WORDS) if len(w) >= 6}
    groups = {w for key in v.group_keys for w in key.split()}
    known = targets | groups | {canonical(w) for w in _lexicon.WORDS} | set(_findings.MODIFIERS) | set(_findings.LINKS)
    known |= set(_EXTRA_KNOWN)
    return Speller(known, targets, never_corrected=v.knowledge_words | {canonical(w) for w in v.knowledge_words},
                   fallback=groups)


def _is_name(phrase: str) -> bool:
    """Whether a phrase is a trained term, an alias or a group name (as typed, up to spelling and word order)."""
    v = load()
    key = phrase_key(phrase)
    return key in v.term_by_key or key in v.aliases or key in v.group_keys


@dataclass
class _Reading:
    parts: list
    modality: str | None
    context: list[str] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


def _read(text: str, modality: str | None, prompt: str) -> _Reading:
    """Match the prompt as typed; else correct, set context aside and match what is left (or refuse)."""
    parts = resolver_for(modality).prompt(text)
    if resolved(parts):
        return _Reading(parts, modality)
    words = _context.words_of(text, _is_name)
    reading = _Reading(parts, modality)
    named = _context.named_modalities(words)
    if named:
        modality = check_named_modality(named, modality, prompt)
        if modality != reading.modality:
            reading.steps.append(f"modality {modality.upper()} taken from the prompt")
        reading.modality = modality
    speller = _speller()
    for word in words:
        if word.label != _context.CONTENT or word.canon in speller.known or word.text in speller.known:
            continue
        candidates = _candidates(speller, word)
        if len(candidates) == 1:
            reading.corrections.append(f"{word.text!r} → {candidates[0]!r}")
            word.text = word.canon = candidates[0]
        elif len(candidates) > 1:
            shown = " or ".join(repr(c) for c in candidates[:5])
            options = tuple(dict.fromkeys(
                _suggest_for(text.lower().replace(word.text, c), modality)[0][0] for c in candidates[:3]))
            raise PromptResolutionError(
                f"{word.text!r} in {prompt!r} is not a known word and could be {shown}; write the one you mean",
                prompt=prompt, suggestions=options, steps=tuple(reading.steps))
    if reading.corrections:
        _context.label(words, _is_name)
        reading.steps += [f"corrected {c}" for c in reading.corrections]
    resolver = resolver_for(modality)
    tried = {text}
    kept, aside = text, []
    for regions in (False, True):
        kept, aside = _context.set_aside(words, regions)
        if not any(c.isalnum() for c in kept):
            kept = ""
            break
        if kept in tried:
            continue
        tried.add(kept)
        parts = resolver.prompt(kept)
        if resolved(parts):
            break
    reading.parts = parts
    reading.context = [f"{label}: {phrase!r}" for label, phrase in aside]
    if aside:
        reading.steps.append("set aside " + ", ".join(f"{label} {phrase!r}" for label, phrase in aside))
    if not kept.strip():
        reading.parts = [(text, None)]
    elif resolved(parts):
        for run in _context.structure_regions(words):
            reading.parts = _in_region(reading.parts, run, resolver, reading, prompt)
    return reading


# Structures that run through several body regions though SAT lists one region for them: a region named with them
# ("aorta in the abdomen") asks for a part, never the whole.
_SPANNING = {"aorta": {"thorax", "abdomen"}, "inferior vena cava": {"thorax", "abdomen"}, "vertebrae": {"spine"},
             "spinal cord": {"spine"}, "spinal canal": {"spine"}, "intervertebral discs": {"spine"}}


def _span(term: str, vocabulary: Vocabulary) -> set[str] | None:
    """The regions a structure runs through when it runs through several (None for a one-region structure)."""
    regions = set(vocabulary.terms[term].regions)
    if term in _SPANNING:
        return _SPANNING[term]
    return regions if len(regions) > 1 or "whole body" in regions else None


def _in_region(parts: list, run: list[str], resolver, reading: _Reading, prompt: str) -> list:
    """Check each structure against a region phrase said to hold it ("in the neck"): a structure of that region
    keeps it as context; one that spans several regions becomes its one regional term ("esophagus in the neck" →
    cervical esophagus), else is refused; one that lies elsewhere ("left ventricle in the brain") is refused."""
    vocabulary = load()
    named = set().union(*(_lexicon.REGION_OF.get(w, set()) for w in run))
    if not named:
        return parts
    near = named.union(*(_lexicon.REGION_NEIGHBOURS.get(r, set()) for r in named))
    where = " ".join(run)
    qualifiers = [w for w in run if w in _lexicon.REGION_OF] + [
        _lexicon.REGION_ADJECTIVE[w] for w in run if w in _lexicon.REGION_ADJECTIVE] + sorted(named) + [where]
    out = []
    for phrase, found in parts:
        if isinstance(found, Refusal) or not getattr(found, "terms", None):
            out.append((phrase, found))
            continue
        terms = found.terms
        spans = [_span(t, vocabulary) for t in terms]
        if any(spans):
            options = {}
            for q in dict.fromkeys(qualifiers):
                regional = resolver.phrase(f"{q} {phrase}")
                ts = getattr(regional, "terms", None)
                if (ts and set(ts) != set(terms) and not isinstance(regional, Refusal)
                        and all(set(vocabulary.terms[t].regions) & near for t in ts)):
                    options.setdefault(ts, (f"{q} {phrase}", regional))
            if len(options) == 1:
                (ts, (said, regional)), = options.items()
                out.append((phrase, type(regional)(ts, regional.method,
                                                   f"region {where!r} narrows it, as {said!r}; {regional.how}")))
                continue
            if not options and all(span is None or span <= named for span in spans):
                out.append((phrase, found))  # "vertebrae of the spine", "spinal cord in the spine": the whole
                continue
            shown = [t for ts in options for t in ts]
            raise PromptResolutionError(
                f"{phrase!r} ({', '.join(terms)}) spans several body regions and "
                + (f"could be {' or '.join(repr(t) for t in shown)} in {where!r}" if shown else
                   f"no trained term is its part in {where!r}")
                + f"; name the structure without the region, or a term from: satseg terms --region "
                  f"'{sorted(named)[0]}'", prompt=prompt, suggestions=tuple(shown or terms)[:5],
                steps=tuple(reading.steps))
        elsewhere = [t for t in terms if not set(vocabulary.terms[t].regions) & near]
        if elsewhere:
            raise PromptResolutionError(
                f"{prompt!r} places {', '.join(repr(t) for t in elsewhere)} in {where!r}, but it lies in the "
                f"{'/'.join(vocabulary.terms[elsewhere[0]].regions)}; write the structure you mean",
                prompt=prompt, suggestions=tuple(suggest(f"{where} {phrase}", k=5, modality=reading.modality)),
                steps=tuple(reading.steps))
        out.append((phrase, found))
    return out


def _candidates(speller: Speller, word: _context.Word) -> list[str]:
    """Known words close to an unknown word, as typed or else in singular; an adjective and its organ noun
    ("duodenal", "duodenum") count once, as the noun."""
    candidates = speller.candidates(word.text) or (speller.candidates(word.canon) if word.canon != word.text else [])
    adjectives = load().adjectives
    nouns = {c: adjectives.get(c, c) for c in candidates}
    return [c for c in candidates if nouns[c] == c or nouns[c] not in candidates]


def resolve(prompt: str, modality: str | None = None, *, free_text: bool = False,
            allow_untrained_modality: bool = False) -> Resolution:
    """Resolve a user prompt to trained SAT term names.

    ``modality`` (any spelling :func:`normalize_modality` accepts): a term not trained on it is refused with the
    modalities it was trained on, unless ``allow_untrained_modality`` (then it resolves with a warning); a
    modality named in the prompt must agree with it. ``free_text`` sends the prompt unchanged (with a warning
    unless it is a trained term). Raises :class:`PromptResolutionError` (a :class:`~satseg.errors.PromptError`)
    when nothing, only part of the prompt, or two structures match.
    """
    vocabulary = load()
    modality = normalize_modality(modality) if modality else None
    text = str(prompt).strip()
    if not text or not phrase_key(text):
        raise PromptResolutionError(f"empty prompt {prompt!r}; give a structure name such as 'liver'",
                                    prompt=str(prompt))
    if free_text:
        is_term = phrase_key(text) in vocabulary.term_by_key
        warnings = [] if is_term else [
            f"free text {text!r} is sent to the text encoder unchanged; the released SAT models only know their "
            f"{len(vocabulary.terms)} trained terms, so the mask may be meaningless"]
        if is_term:
            warnings += modality_check((vocabulary.term_by_key[phrase_key(text)],), modality, vocabulary,
                                        allow_untrained_modality, str(prompt), [])
        return Resolution(str(prompt), (text,), "free-text", modality, tuple(warnings),
                          f"{text!r} sent as given (--free-text)", steps=("sent as given (--free-text)",))
    reading = _read(text, modality, str(prompt))
    steps = list(reading.steps)
    for phrase, found in reading.parts:
        if found is None or isinstance(found, Refusal):
            _refuse(phrase, found, text, reading, str(prompt))
        if isinstance(found, Ambiguous):
            options = " or ".join(repr(o) for o in found.options)
            raise PromptResolutionError(
                f"{phrase!r} is ambiguous: it may mean {options}; use one of these",
                prompt=str(prompt), suggestions=found.options, ambiguous=True, steps=tuple(steps))
    parts = reading.parts
    terms = tuple(dict.fromkeys(t for _, found in parts for t in found.terms))
    steps += [f"{phrase!r} → {', '.join(found.terms)} ({found.how})" for phrase, found in parts]
    if len(parts) == 1:
        method = parts[0][1].method
    else:
        method = "composition"
    if len(terms) > 1 and method not in ("finding", "group"):
        method = "composition"
    prefix = "".join(f"{s}; " for s in reading.steps)
    if len(parts) == 1:
        explanation = f"{text!r} → {', '.join(terms)} ({prefix}{parts[0][1].how})"
    else:
        explanation = f"{text!r} = {prefix}union of " + "; ".join(
            f"{phrase!r} → {', '.join(found.terms)} ({found.how})" for phrase, found in parts)
    terms = tuple(dict.fromkeys(modality_name(t, reading.modality, vocabulary, steps) for t in terms))
    groups = groups_read(parts, reading.modality, vocabulary)
    if not allow_untrained_modality:
        check_group_modality(groups, reading.modality, vocabulary, str(prompt), steps)
    warnings = modality_check(terms, reading.modality, vocabulary, allow_untrained_modality, str(prompt), steps)
    return Resolution(str(prompt), terms, method, reading.modality, tuple(warnings), explanation,
                      tuple(reading.context), tuple(reading.corrections), tuple(steps), groups)


def _refuse(phrase: str, found: Refusal | None, text: str, reading: _Reading, prompt: str) -> None:
    if isinstance(found, Refusal):
        group = None
        if found.group is not None:
            record = load().groups[found.group]
            group = {"group": found.group, "members": list(record["members"]), "missing": list(record["missing"]),
                     "rule": GROUP_RULE, "source": record["source"]}
        raise PromptResolutionError(found.message, prompt=prompt, suggestions=found.suggestions[:5],
                                    steps=tuple(reading.steps), group=group)
    suggestions, leftover = _suggest_for(phrase, reading.modality)
    where = f" in {text!r}" if phrase != text else ""
    unread = f" ({', '.join(repr(w) for w in leftover)} not understood)" if leftover else ""
    raise PromptResolutionError(
        f"{phrase!r}{where} is not a trained term or known synonym{unread}; did you mean: {', '.join(suggestions)}? "
        "(list terms with 'satseg terms', or pass --free-text)", prompt=prompt, suggestions=suggestions,
        steps=tuple(reading.steps))


def _suggest_for(phrase: str, modality: str | None) -> tuple[tuple[str, ...], list[str]]:
    """Suggestions for an unresolved phrase (read with its word forms) and the words no term or alias uses."""
    v = load()
    words = tokens(phrase)
    mapped = [v.adjectives.get(w, w) for w in words if w not in _findings.LINKS]
    known = _speller().known
    leftover = [w for w in words if w not in known and not w.isdigit()]
    query = " ".join(mapped) or phrase
    return tuple(suggest(query, k=5, modality=modality)), leftover
