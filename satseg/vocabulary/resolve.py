"""Prompt → trained terms: normalise, match exactly, by alias, or compose a union; otherwise refuse with suggestions.

Order for one phrase: TotalSegmentator class name (``kidney_left``), terminology entry (``ct_liver``), exact term
after normalisation (case, punctuation, plural, spelling, laterality word order), alias (synonym, abbreviation,
TotalSegmentator name; an ambiguous alias is refused), vertebra/rib ranges (``L1-L5``, ``left ribs 1-3``),
both sides (``both lungs``, ``left and right kidney``), rewrites (``lower lobe of the left lung``, ``renal cyst``,
``prostate gland``, ``left shoulder blade``), and left + right when only sided terms exist (``putamen``). A prompt
that is not one phrase is split at ``,`` ``;`` ``+`` ``&`` ``and`` ``plus`` into the fewest phrases that resolve
(so ``portal vein and splenic vein`` stays one term). Fuzzy matching only ever suggests, it never resolves.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from satseg.errors import PromptError
from satseg.vocabulary._text import LATERALITY, light, phrase_key, tokens
from satseg.vocabulary.catalog import Vocabulary, load, normalize_modality

MAX_PARTS = 40
_RANGE_SEP = r"\s*(?:-|to|through|thru|until|\.\.)\s*"
_VERTEBRA_RANGE = re.compile(
    r"^(?:(?:vertebrae?|vertebral bodies|vertebral levels?|levels?|spine|from)\s+)*([ctls])\s?(\d{1,2})"
    + _RANGE_SEP + r"([ctls])?\s?(\d{1,2})(?:\s+(?:vertebrae?|vertebral bodies|levels?))?$")
_NAMED_VERTEBRA_RANGE = re.compile(
    r"^(?:from\s+)?(cervical|thoracic|lumbar)\s+(?:(?:vertebrae?|vertebral bodies|spine)\s+)?(\d{1,2})"
    + _RANGE_SEP + r"(\d{1,2})$")
_RIB_RANGE = re.compile(
    r"^(?:(left|right|both|bilateral)\s+)?(?:ribs?\s+(\d{1,2})" + _RANGE_SEP + r"(\d{1,2})|(\d{1,2})"
    + _RANGE_SEP + r"(\d{1,2})\s+ribs?)(?:\s+(?:on the\s+)?(left|right|both sides|bilateral))?$")
_BOTH_BEFORE = re.compile(r"^(?:left and right|right and left|left right|right left|both|bilateral) (.+)$")
_BOTH_AFTER = re.compile(r"^(.+?) (?:left and right|right and left|left right|right left|both|on both|bilateral)$")
_SEPARATOR = re.compile(r"(?:\s*(?:,|;|\+|&|\band\b|\bplus\b|\bas well as\b|(?<=[a-z]{3})\s*/(?=\s*[a-z]{3}))\s*)+")
_ENTRY = re.compile(r"^(ct|mri|pet)_(.+)$")
_DROPPABLE_SUFFIX = ("muscle", "bone", "gland", "organ", "structure", "region", "hemisphere", "cavity")
_ADDABLE_SUFFIX = ("gland", "bone", "artery")
_METHOD_RANK = {"exact": 0, "totalsegmentator": 1, "abbreviation": 2, "synonym": 3, "composition": 4}


@dataclass(frozen=True)
class Resolution:
    """How a prompt became the trained terms sent to the model (their masks are unioned)."""

    prompt: str  # as given
    terms: tuple[str, ...]  # trained term names, lower case as in SAT's terminology list
    method: str  # "exact" | "synonym" | "totalsegmentator" | "abbreviation" | "composition" | "free-text"
    modality: str | None = None
    warnings: tuple[str, ...] = ()
    explanation: str = ""

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "terms": list(self.terms), "method": self.method,
                "modality": self.modality, "warnings": list(self.warnings), "explanation": self.explanation}


class PromptResolutionError(PromptError):
    """A prompt that resolves to no trained term (``suggestions``: up to 5 close terms) or to two structures
    (``ambiguous`` is True and ``suggestions`` lists the meanings)."""

    def __init__(self, message: str, *, prompt: str, suggestions: tuple[str, ...] = (), ambiguous: bool = False):
        super().__init__(message)
        self.prompt = prompt
        self.suggestions = tuple(suggestions)
        self.ambiguous = ambiguous


@dataclass(frozen=True)
class _Match:
    terms: tuple[str, ...]
    method: str
    how: str


@dataclass(frozen=True)
class _Ambiguous:
    phrase: str
    options: tuple[str, ...]


@dataclass
class _Resolver:
    vocabulary: Vocabulary
    cache: dict = field(default_factory=dict)

    # -- one phrase ---------------------------------------------------------------------------------------------
    def phrase(self, text: str) -> _Match | _Ambiguous | None:
        if text not in self.cache:
            self.cache[text] = self._phrase(text)
        return self.cache[text]

    def _phrase(self, text: str) -> _Match | _Ambiguous | None:
        v = self.vocabulary
        raw = " ".join(text.lower().split())
        if not raw:
            return None
        if raw in v.totalseg and raw != v.totalseg[raw]:
            return _Match((v.totalseg[raw],), "totalsegmentator", f"TotalSegmentator class {raw!r}")
        entry = _ENTRY.match(raw)
        if entry and entry.group(2) in v.terms:
            return _Match((entry.group(2),), "exact", f"terminology entry {raw!r}")
        key = phrase_key(text)
        if not key:
            return None
        found = self.key(key, depth=2)
        if found is not None:
            return found
        for attempt in (self._range, self._both_sides, self._implicit_both_sides):
            found = attempt(text, key)
            if found is not None:
                return found
        return None

    def key(self, key: str, depth: int) -> _Match | _Ambiguous | None:
        """Exact term or alias for a normalised key, then rewrites of it (up to ``depth`` rewrites deep)."""
        v = self.vocabulary
        if key in v.term_by_key:
            return _Match((v.term_by_key[key],), "exact", "trained term")
        if key in v.ambiguous:
            return _Ambiguous(key, tuple(v.ambiguous[key]))
        if key in v.aliases:
            alias = v.aliases[key]
            return _Match((alias["term"],), alias["method"], f"{alias['method']} ({alias['source']})")
        if depth == 0:
            return None
        for rewritten, how, renamed_by in self._rewrites(key):
            found = self.key(rewritten, depth - 1)
            if isinstance(found, _Match):
                method = renamed_by if found.method == "exact" and renamed_by else found.method
                return _Match(found.terms, method, f"{how}, then {found.how}")
        return None

    def _rewrites(self, key: str):
        v = self.vocabulary
        words = key.split()
        if words[0] in LATERALITY and len(words) > 1:
            base = self.key(" ".join(words[1:]), depth=1)
            if isinstance(base, _Match) and len(base.terms) == 1:
                head, of, tail = base.terms[0].rpartition(" of ")  # "head of femur" → "head of left femur"
                for sided in (f"{words[0]} {base.terms[0]}", f"{head} of {words[0]} {tail}" if of else ""):
                    if sided and phrase_key(sided) in v.term_by_key:
                        renamed_by = None if base.method == "exact" else base.method
                        yield phrase_key(sided), f"{words[0]} side of {base.terms[0]!r}", renamed_by
        if " of " in f" {key} ":
            head, _, tail = key.partition(" of ")
            yield phrase_key(f"{tail} {head}"), "word order", None
        substituted = [v.adjectives.get(w, w) for w in words]
        if substituted != words:
            yield phrase_key(" ".join(substituted)), "adjective as noun", "synonym"
        if len(words) > 1 and words[-1] in _DROPPABLE_SUFFIX:
            yield " ".join(words[:-1]), f"without {words[-1]!r}", "synonym"
        for suffix in _ADDABLE_SUFFIX:
            vein = suffix == "artery" and any(f"{key} {w}" in v.term_by_key for w in ("vein", "vena"))
            if words[-1] not in _DROPPABLE_SUFFIX and f"{key} {suffix}" in v.term_by_key and not vein:
                yield f"{key} {suffix}", f"with {suffix!r}", "synonym"

    # -- groups -------------------------------------------------------------------------------------------------
    def _range(self, text: str, key: str) -> _Match | None:
        t = light(text).replace(",", " ").strip()
        t = " ".join(t.split())
        m = _VERTEBRA_RANGE.match(t)
        if m:
            first, last = f"{m.group(1)}{int(m.group(2))}", f"{m.group(3) or m.group(1)}{int(m.group(4))}"
            return self._level_range(first, last, t)
        m = _NAMED_VERTEBRA_RANGE.match(t)
        if m:
            letter = m.group(1)[0]
            return self._level_range(f"{letter}{int(m.group(2))}", f"{letter}{int(m.group(3))}", t)
        m = _RIB_RANGE.match(t)
        if m:
            side = m.group(1) or m.group(6)
            lo, hi = sorted(int(x) for x in ((m.group(2), m.group(3)) if m.group(2) else (m.group(4), m.group(5))))
            sides = ("left", "right") if side in ("both", "bilateral", "both sides") else (side,)
            names = [" ".join(p for p in (s, "rib", str(n)) if p) for s in sides for n in range(lo, hi + 1)]
            if all(n in self.vocabulary.terms for n in names):
                return _Match(tuple(names), "composition", f"ribs {lo} to {hi}" + (f" ({side})" if side else ""))
        return None

    def _level_range(self, first: str, last: str, text: str) -> _Match | None:
        levels = self.vocabulary.vertebra_levels
        order = [lv for lv in self.vocabulary.level_order if lv != "l6" or "l6" in (first, last)]
        if first not in order or last not in order:
            return None
        i, j = sorted((order.index(first), order.index(last)))
        names = tuple(levels[lv] for lv in order[i:j + 1])
        return _Match(names, "composition", f"vertebrae {order[i].upper()} to {order[j].upper()}")

    def _both_sides(self, text: str, key: str) -> _Match | _Ambiguous | None:
        joined = " ".join(tokens(text))
        m = _BOTH_BEFORE.match(joined) or _BOTH_AFTER.match(joined)
        if not m or phrase_key(m.group(1)).split()[:1] in (["left"], ["right"]):
            return None
        return self._sides(m.group(1), explicit=True)

    def _implicit_both_sides(self, text: str, key: str) -> _Match | _Ambiguous | None:
        if key.split()[0] in LATERALITY:
            return None
        return self._sides(key, explicit=False)

    def _sides(self, base: str, explicit: bool) -> _Match | _Ambiguous | None:
        left, right = self.phrase(f"left {base}"), self.phrase(f"right {base}")
        if isinstance(left, _Match) and isinstance(right, _Match) and left.terms != right.terms:
            return _Match(left.terms + right.terms, "composition", f"left and right {base!r}")
        if explicit:
            whole = self.phrase(base)
            if isinstance(whole, _Match):
                return _Match(whole.terms, whole.method, f"no sided terms for {base!r}; {whole.how}")
            return whole
        return None

    # -- a whole prompt -----------------------------------------------------------------------------------------
    def prompt(self, text: str) -> list[tuple[str, _Match | _Ambiguous | None]]:
        """The fewest phrases that all resolve, as (phrase, result); one unresolved phrase when none do."""
        whole = self.phrase(text)
        if whole is not None:
            return [(text, whole)]
        separators = list(_SEPARATOR.finditer(text))
        spans, start = [], 0
        for sep in separators:
            spans.append((start, sep.start()))
            start = sep.end()
        spans.append((start, len(text)))
        spans = [s for s in spans if text[s[0]:s[1]].strip()]
        if len(spans) < 2 or len(spans) > MAX_PARTS:
            return [(text, None)]
        best: list[list | None] = [[]] + [None] * len(spans)
        for end in range(1, len(spans) + 1):
            for begin in range(end):
                if best[begin] is None:
                    continue
                segment = text[spans[begin][0]:spans[end - 1][1]].strip()
                found = self.phrase(segment)
                if found is not None and (best[end] is None or len(best[begin]) + 1 < len(best[end])):
                    best[end] = best[begin] + [(segment, found)]
        if best[-1] is not None:
            return best[-1]
        reached = max(i for i, b in enumerate(best) if b is not None)  # report the part after the longest
        begin, stop = spans[reached]                                    # prefix that resolves
        return [(text[begin:stop].strip(), None)]


def _modality_warnings(terms: tuple[str, ...], modality: str | None, vocabulary: Vocabulary) -> list[str]:
    warnings = []
    for term in terms:
        trained = vocabulary.modalities_of(term)
        if modality is not None and modality not in trained:
            warnings.append(f"{term!r} was trained on {'/'.join(m.upper() for m in trained)} only, not on "
                            f"{modality.upper()}; expect unreliable masks")
    return warnings


def resolve(prompt: str, modality: str | None = None, *, free_text: bool = False) -> Resolution:
    """Resolve a user prompt to trained SAT term names.

    ``modality`` (any spelling :func:`normalize_modality` accepts) only adds warnings for terms not trained on
    it. ``free_text`` sends the prompt unchanged (with a warning unless it is a trained term). Raises
    :class:`PromptResolutionError` (a :class:`~satseg.errors.PromptError`) when nothing or two structures match.
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
            warnings += _modality_warnings((vocabulary.term_by_key[phrase_key(text)],), modality, vocabulary)
        return Resolution(str(prompt), (text,), "free-text", modality, tuple(warnings),
                          f"{text!r} sent as given (--free-text)")
    resolver = _Resolver(vocabulary)
    parts = resolver.prompt(text)
    for phrase, found in parts:
        if found is None:
            suggestions = tuple(suggest(phrase, k=5, modality=modality))
            where = f" in {text!r}" if phrase != text else ""
            raise PromptResolutionError(
                f"{phrase!r}{where} is not a trained term or known synonym; did you mean: {', '.join(suggestions)}? "
                "(list terms with 'satseg terms', or pass --free-text)", prompt=str(prompt), suggestions=suggestions)
        if isinstance(found, _Ambiguous):
            options = " or ".join(repr(o) for o in found.options)
            raise PromptResolutionError(
                f"{phrase!r} is ambiguous: it may mean {options}; use one of these",
                prompt=str(prompt), suggestions=found.options, ambiguous=True)
    terms = tuple(dict.fromkeys(t for _, found in parts for t in found.terms))
    if len(parts) == 1:
        method, how = parts[0][1].method, parts[0][1].how
        explanation = f"{text!r} → {', '.join(terms)} ({how})"
    else:
        method = "composition"
        explanation = f"{text!r} = union of " + "; ".join(
            f"{phrase!r} → {', '.join(found.terms)} ({found.how})" for phrase, found in parts)
    if len(terms) > 1:
        method = "composition"
    warnings = _modality_warnings(terms, modality, vocabulary)
    return Resolution(str(prompt), terms, method, modality, tuple(warnings), explanation)


def suggest(prompt: str, k: int = 5, modality: str | None = None) -> list[str]:
    """Up to ``k`` trained term names closest to ``prompt``, best first.

    A name scores by whole-string similarity or, if higher, by how well each of its words matches some prompt
    word, scaled down when prompt words go unmatched ("pancreass tail" → pancreas before pancreas tumor).
    Synonyms and abbreviations count for the term they stand for; terms trained on ``modality`` get a nudge.
    """
    vocabulary = load()
    modality = normalize_modality(modality) if modality else None
    query = phrase_key(prompt) or " ".join(str(prompt).lower().split())
    query_words = query.split() or [query]
    scores: dict[str, float] = {}
    candidates = list(vocabulary.term_by_key.items()) + [(key, a["term"]) for key, a in vocabulary.aliases.items()]
    for key, name in candidates:
        score = _similarity(query, key, query_words)
        if modality is not None and modality in vocabulary.modalities_of(name):
            score += 0.02
        if score > scores.get(name, 0.0):
            scores[name] = score
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:k]]


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _similarity(query: str, key: str, query_words: list[str]) -> float:
    key_words = key.split()
    word_match = sum(max(_ratio(kw, qw) for qw in query_words) for kw in key_words) / len(key_words)
    covered = sum(1 for qw in query_words if max(_ratio(qw, kw) for kw in key_words) >= 0.75) / len(query_words)
    return max(_ratio(query, key), word_match * (0.7 + 0.3 * covered))
