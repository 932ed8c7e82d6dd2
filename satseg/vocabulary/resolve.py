"""Prompt → trained terms: read the prompt, match it exactly or by alias, or compose a union; otherwise refuse.

A prompt is first matched as typed. Order for one phrase: TotalSegmentator class name (``kidney_left``),
terminology entry (``ct_liver``), exact term after normalisation (case, punctuation, plural, spelling, laterality
word order), alias (synonym, abbreviation, TotalSegmentator name; an ambiguous alias is refused), rewrites (word
order "lower lobe of the left lung", word forms "renal cyst" → "kidney cyst", "prostate gland"), vertebra/rib
ranges (``L1-L5``), both sides (``both lungs``), left + right when only sided terms exist (``putamen``), a
finding on an organ ("renal mass", see :mod:`satseg.vocabulary._findings`) and named groups (``gluteal
muscles``). A prompt that is not one phrase is split at ``,`` ``;`` ``+`` ``&`` ``/`` ``and`` ``or`` ``plus``
into the fewest phrases that resolve (so ``portal vein and splenic vein`` stays one term).

When that fails, the prompt is read word by word (:mod:`satseg.vocabulary._context`): misspelled words are
corrected where exactly one known word is close (:mod:`satseg.vocabulary._spelling`), imaging, task and filler
words are set aside, then region phrases ("in the abdomen", "abdominal CT"); what is left must match completely.
Every word is accounted for — matched, set aside as context, or corrected — or the prompt is refused with
suggestions: never a match on part of the words. A modality named in the prompt that contradicts the scan's is
refused, and so is a term not trained on the scan's modality unless ``allow_untrained_modality``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache

from satseg.errors import PromptError
from satseg.vocabulary import _context, _findings
from satseg.vocabulary._spelling import Speller
from satseg.vocabulary._text import LATERALITY, canonical, counts, light, phrase_key, tokens
from satseg.vocabulary.catalog import MODALITIES, Vocabulary, load, normalize_modality

MAX_PARTS = 40
_CACHE_LIMIT = 50_000
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
_BOTH_AFTER = re.compile(r"^(.+?) (?:left and right|right and left|left right|right left|both|on both|bilateral|"
                         r"on both sides)$")
_SEPARATOR = re.compile(r"(?:\s*(?:,|;|\+|&|\band\b|\bor\b|\bplus\b|\bas well as\b|(?<=[a-z]{3})\s*/(?=\s*[a-z]{3}))"
                        r"\s*)+")
_ENTRY = re.compile(r"^(ct|mri|pet)_(.+)$")
_DROPPABLE_SUFFIX = ("muscle", "bone", "gland", "organ", "structure", "region", "hemisphere", "cavity")
_ADDABLE_SUFFIX = ("gland", "bone", "artery")
_SHARED_HEAD = re.compile(r"^([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+) (.+)$")
_SHARED_MODIFIER = re.compile(r"^(.+) ([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+)$")
_SIDED_SUFFIX = ("hemisphere",)  # "left cerebellar hemisphere" is the left cerebellum; both hemispheres are not
_POSITIONAL = ("inferior", "superior", "anterior", "posterior", "medial", "lateral", "upper", "lower", "middle")
_EXTRA_KNOWN = ("both", "bilateral", "left", "right", "lt", "rt", "l", "r", "to", "through", "thru", "until",
                "and", "or", "plus", "as", "well", "sided", "side", "vertebra", "level", "from", "segment",
                "couinaud", "muscle", "bone", "gland", "organ", "hemisphere", "sinister", "dexter")


@dataclass(frozen=True)
class Resolution:
    """How a prompt became the trained terms sent to the model (their masks are unioned)."""

    prompt: str  # as given
    terms: tuple[str, ...]  # trained term names, lower case as in SAT's terminology list
    method: str  # "exact" | "synonym" | "totalsegmentator" | "abbreviation" | "composition" | "finding" | "free-text"
    modality: str | None = None
    warnings: tuple[str, ...] = ()
    explanation: str = ""
    context: tuple[str, ...] = ()  # words set aside, as "modality: 'contrast enhanced ct'"
    corrections: tuple[str, ...] = ()  # "'splen' → 'spleen'"
    steps: tuple[str, ...] = ()  # how it was read, in order (what --explain shows)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "terms": list(self.terms), "method": self.method,
                "modality": self.modality, "warnings": list(self.warnings), "explanation": self.explanation,
                "context": list(self.context), "corrections": list(self.corrections), "steps": list(self.steps)}


class PromptResolutionError(PromptError):
    """A prompt that resolves to no trained term (``suggestions``: up to 5 close terms, the likeliest first), to
    two structures (``ambiguous`` is True and ``suggestions`` lists the meanings), or to a term not trained on the
    scan's modality (``untrained_modality`` is True). ``steps`` says how far the reading got."""

    def __init__(self, message: str, *, prompt: str, suggestions: tuple[str, ...] = (), ambiguous: bool = False,
                 untrained_modality: bool = False, steps: tuple[str, ...] = ()):
        super().__init__(message)
        self.prompt = prompt
        self.suggestions = tuple(suggestions)
        self.ambiguous = ambiguous
        self.untrained_modality = untrained_modality
        self.steps = tuple(steps)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "refused": str(self), "suggestions": list(self.suggestions),
                "ambiguous": self.ambiguous, "untrained_modality": self.untrained_modality, "steps": list(self.steps)}


@dataclass(frozen=True)
class _Match:
    terms: tuple[str, ...]
    method: str
    how: str


@dataclass(frozen=True)
class _Ambiguous:
    phrase: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class _Refusal:
    """A phrase understood well enough to say why it cannot be resolved (a finding without a lesion term)."""

    message: str
    suggestions: tuple[str, ...]


@dataclass
class _Resolver:
    vocabulary: Vocabulary
    modality: str | None = None
    cache: dict = field(default_factory=dict)
    _lesions: dict | None = None
    _heads: frozenset | None = None

    # -- one phrase ---------------------------------------------------------------------------------------------
    def phrase(self, text: str) -> _Match | _Ambiguous | _Refusal | None:
        if text not in self.cache:
            if len(self.cache) > _CACHE_LIMIT:
                self.cache.clear()
            self.cache[text] = None  # a phrase that refers back to itself does not resolve
            self.cache[text] = self._phrase(text)
        return self.cache[text]

    def _phrase(self, text: str) -> _Match | _Ambiguous | _Refusal | None:
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
        if not key or counts(text):  # "12 ribs" counts ribs; it names none of them
            return None
        found = self.key(key, depth=2)
        if found is not None:
            return found
        refusal = None
        for attempt in (self._range, self._both_sides, self._finding, self._implicit_both_sides):
            found = attempt(text, key)
            if isinstance(found, _Refusal):
                refusal = refusal or found
            elif found is not None:
                return found
        return refusal

    def key(self, key: str, depth: int) -> _Match | _Ambiguous | None:
        """Exact term or alias for a normalised key, then rewrites of it (up to ``depth`` rewrites deep)."""
        v = self.vocabulary
        if key in v.term_by_key:
            return _Match((v.term_by_key[key],), "exact", "trained term")
        if key in v.ambiguous:
            return _Ambiguous(key, tuple(v.ambiguous[key]))
        if key in v.aliases:
            alias = v.aliases[key]
            if alias["source"] == "word form":
                return _Match((alias["term"],), alias["method"], f"word form {key!r} → {alias['term']!r}")
            return _Match((alias["term"],), alias["method"], f"{alias['method']} ({alias['source']})")
        if depth == 0:
            return None
        rewrites = list(self._rewrites(key))
        for level in range(depth):  # the fewest rewrites first: "costal cartilage region" is costal cartilage,
            for rewritten, how, renamed_by in rewrites:  # not "rib cartilage" by a word form and a dropped word
                found = self.key(rewritten, level)
                if isinstance(found, _Match):
                    method = renamed_by if found.method == "exact" and renamed_by else found.method
                    return _Match(found.terms, method, f"{how}, then {found.how}")
        return None

    def head_nouns(self) -> frozenset[str]:
        """Last words of the trained names of two or more words ("gland", "cavity", "lobe", "bowel")."""
        if self._heads is None:
            self._heads = frozenset(k.split()[-1] for k in self.vocabulary.term_by_key
                                    if len(k.split()) > 1 and k.split()[-1].isalpha())
        return self._heads

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
            forms = ", ".join(f"{w!r} → {s!r}" for w, s in zip(words, substituted) if w != s)
            yield phrase_key(" ".join(substituted)), f"word form {forms}", "synonym"
        last = max((i for i, w in enumerate(words) if not w.isdigit()), default=0)  # "3 ventricle region" → key
        if last > 0 and words[last] in _DROPPABLE_SUFFIX and (words[last] not in _SIDED_SUFFIX  # "ventricle region 3"
                                                             or words[0] in LATERALITY):
            yield " ".join(words[:last] + words[last + 1:]), f"without {words[last]!r}", "synonym"
        if len(words) > 1 and words[-1] in _POSITIONAL:  # "vena cava inferior" (Latin order)
            yield phrase_key(" ".join([words[-1], *words[:-1]])), "word order", None
        side = words[:1] if words[0] in LATERALITY else []
        rest = words[len(side):]
        if len(rest) > 1 and rest[0] in self.head_nouns():  # "Bowel_Small", "Glnd_Lacrimal_L": category first
            yield phrase_key(" ".join(side + rest[1:] + rest[:1])), "word order (category first)", None
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

    def _shared_head(self, text: str) -> list | None:
        """"grey and white matter" = grey matter + white matter, when the first word alone is no structure;
        "kidney tumor and cyst" = kidney tumor + kidney cyst, when the last word alone is none."""
        plain = " ".join(light(text).split())
        m = _SHARED_HEAD.match(plain)
        if m and not isinstance(self.phrase(m.group(1)), (_Match, _Ambiguous)):
            first, second = f"{m.group(1)} {m.group(3)}", f"{m.group(2)} {m.group(3)}"
        else:
            m = _SHARED_MODIFIER.match(plain)
            if not m or isinstance(self.phrase(m.group(3)), (_Match, _Ambiguous)):
                return None
            first, second = f"{m.group(1)} {m.group(2)}", f"{m.group(1)} {m.group(3)}"
        parts = [(first, self.phrase(first)), (second, self.phrase(second))]
        return parts if _resolved(parts) else None

    # -- findings -----------------------------------------------------------------------------------------------
    def lesions(self) -> dict[str, list[tuple[str, str]]]:
        """Organ (term name, or the name's key where no term) → [(lesion term, type)], from the term names."""
        if self._lesions is None:
            v = self.vocabulary
            index: dict[str, list[tuple[str, str]]] = {}
            for name, entry in v.terms.items():
                words = phrase_key(name).split()
                if len(words) < 2 or words[-1] not in _findings.LESION_TYPES:
                    continue
                unsided = v.term_by_key.get(" ".join(words[1:]))
                if not (entry.abnormal or words[0] in LATERALITY and unsided and v.terms[unsided].abnormal):
                    continue
                organ_key = " ".join(words[:-1])
                organ = self.key(organ_key, depth=1)
                owner = organ.terms[0] if isinstance(organ, _Match) and len(organ.terms) == 1 else organ_key
                index.setdefault(owner, []).append((name, _findings.LESION_TYPES[words[-1]]))
            self._lesions = index
        return self._lesions

    def _finding(self, text: str, key: str) -> _Match | _Refusal | None:
        words = tokens(text)
        found = [w for w in words if w in _findings.FINDING_WORDS]
        if not found:
            return None
        rest = [w for w in words if w not in _findings.FINDING_WORDS and w not in _findings.MODIFIERS]
        while rest and rest[0] in _findings.LINKS:
            rest.pop(0)
        while rest and rest[-1] in _findings.LINKS:
            rest.pop()
        on_modality = f" on {self.modality.upper()}" if self.modality else ""
        for named in [rest] if rest else [[w] for w in found]:  # "stroke lesion", "COVID-19 lesions", "tumour
            lesion = self._lesion_term(named)                     # lesions": a lesion term with a finding word
            if lesion is not None:
                return _Match(lesion.terms, lesion.method, f"{' '.join(found)!r} on a lesion term: {lesion.how}")
        if not rest:
            options = self._lesion_terms()
            return _Refusal(f"{text!r} names a finding but no organ; lesion terms trained{on_modality}: "
                            f"{', '.join(options)}", options[:5])
        organ, owner = self._organ(rest)
        if owner is None:
            return None
        types, rule = _findings.wanted_types(found)
        lesions = self.lesions().get(owner, [])
        if not lesions:
            return _Refusal(f"no lesion term is trained for {owner!r} (asked for by {text!r})",
                            tuple(dict.fromkeys([*self._lesion_terms(), owner]))[:5])
        side, _, unsided = owner.partition(" ")
        if side in LATERALITY and unsided in self.lesions():
            missing = {k for _, k in self.lesions()[unsided]} - {k for _, k in lesions}
            if missing & types:
                options = tuple(t for t, _ in lesions + self.lesions()[unsided])
                return _Refusal(f"{text!r}: the {'/'.join(sorted(missing & types))} lesion terms of the {unsided} "
                                f"are not sided; choose among {', '.join(options)}", options)
        chosen = [t for t, k in lesions if k in types]
        if not chosen:
            options = tuple(t for t, _ in lesions)
            return _Refusal(f"no {'/'.join(sorted(types))} lesion term is trained for {owner!r}; its lesion terms: "
                            f"{', '.join(options)}", options)
        trained = [t for t in chosen if self.modality in self.vocabulary.modalities_of(t)]
        chosen = trained or chosen
        how = f"finding {' '.join(found)!r} on {owner!r}{organ}; rule: {rule} for the {owner}{on_modality}"
        return _Match(tuple(chosen), "finding", how)

    def _lesion_term(self, words: list[str]) -> _Match | None:
        """A lesion term named by the words ("ischemic stroke", "covid 19", "tumor"), else None."""
        found = self.phrase(" ".join(words))
        if isinstance(found, _Match) and all(self.vocabulary.terms[t].abnormal for t in found.terms):
            return found
        return None

    def _organ(self, words: list[str]) -> tuple[str, str | None]:
        text = " ".join(words)
        found = self.phrase(text)
        if isinstance(found, _Match) and len(found.terms) == 1:
            how = "" if found.terms[0] == text else f" ({found.how})"
            return how, found.terms[0]
        key = phrase_key(text)
        if key in self.lesions():
            return "", key
        substituted = " ".join(self.vocabulary.adjectives.get(w, w) for w in key.split())
        if substituted in self.lesions():
            return f" (word form {key!r} → {substituted!r})", substituted
        return "", None

    def _lesion_terms(self) -> tuple[str, ...]:
        names = [t for items in self.lesions().values() for t, _ in items]
        names += [n for n, e in self.vocabulary.terms.items() if e.abnormal and n in _findings.FINDING_WORDS]
        on = [t for t in names if self.modality in self.vocabulary.modalities_of(t)]
        return tuple(sorted(on or names))

    # -- a whole prompt -----------------------------------------------------------------------------------------
    def prompt(self, text: str) -> list[tuple[str, _Match | _Ambiguous | _Refusal | None]]:
        """The fewest phrases that all resolve, as (phrase, result); one unresolved phrase when none do."""
        whole = self.phrase(text)
        if isinstance(whole, (_Match, _Ambiguous)):
            return [(text, whole)]
        separators = list(_SEPARATOR.finditer(text))
        spans, start = [], 0
        for sep in separators:
            spans.append((start, sep.start()))
            start = sep.end()
        spans.append((start, len(text)))
        spans = [s for s in spans if text[s[0]:s[1]].strip()]
        if len(spans) < 2 or len(spans) > MAX_PARTS:
            return [(text, whole)]
        best: list[list | None] = [[]] + [None] * len(spans)
        for end in range(1, len(spans) + 1):
            for begin in range(end):
                if best[begin] is None:
                    continue
                segment = text[spans[begin][0]:spans[end - 1][1]].strip()
                found = self.phrase(segment)
                if isinstance(found, (_Match, _Ambiguous)) and (
                        best[end] is None or len(best[begin]) + 1 < len(best[end])):
                    best[end] = best[begin] + [(segment, found)]
        if best[-1] is not None:
            return best[-1]
        shared = self._shared_head(text)
        if shared is not None:
            return shared
        if whole is not None:
            return [(text, whole)]
        reached = max(i for i, b in enumerate(best) if b is not None)  # report the part after the longest
        begin, stop = spans[reached]                                    # prefix that resolves
        part = text[begin:stop].strip()
        return [(part, self.phrase(part))]


@lru_cache(maxsize=len(MODALITIES) + 1)
def _resolver(modality: str | None) -> _Resolver:
    return _Resolver(load(), modality)


@lru_cache(maxsize=1)
def _speller() -> Speller:
    v = load()
    targets = {w for keys in (v.term_by_key, v.aliases, v.ambiguous, v.adjectives) for key in keys for w in key.split()}
    targets |= set(_findings.FINDING_WORDS) | {w for w in map(canonical, _context.WORDS) if len(w) >= 6}
    known = targets | {canonical(w) for w in _context.WORDS} | set(_findings.MODIFIERS) | set(_findings.LINKS)
    known |= set(_EXTRA_KNOWN)
    return Speller(known, targets, never_corrected=v.knowledge_words | {canonical(w) for w in v.knowledge_words})


def _is_name(phrase: str) -> bool:
    """Whether a phrase is a trained term or an alias (as typed, up to spelling and word order)."""
    v = load()
    key = phrase_key(phrase)
    return key in v.term_by_key or key in v.aliases


def _resolved(parts) -> bool:
    return all(isinstance(found, (_Match, _Ambiguous)) for _, found in parts)


def _upper(modality: str) -> str:
    return "/".join(m.upper() for m in modality.split("+"))


@dataclass
class _Reading:
    parts: list
    modality: str | None
    context: list[str] = field(default_factory=list)
    corrections: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)


def _read(text: str, modality: str | None, prompt: str) -> _Reading:
    """Match the prompt as typed; else correct, set context aside and match what is left (or refuse)."""
    parts = _resolver(modality).prompt(text)
    if _resolved(parts):
        return _Reading(parts, modality)
    words = _context.words_of(text, _is_name)
    reading = _Reading(parts, modality)
    named = _context.named_modalities(words)
    if named:
        modality = _check_named_modality(named, modality, prompt)
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
    resolver = _resolver(modality)
    tried = {text}
    kept, aside = text, []
    for regions in (False, True):
        kept, aside = _context.set_aside(words, regions)
        if not kept.strip():
            break
        if kept in tried:
            continue
        tried.add(kept)
        parts = resolver.prompt(kept)
        if _resolved(parts):
            break
    reading.parts = parts
    reading.context = [f"{label}: {phrase!r}" for label, phrase in aside]
    if aside:
        reading.steps.append("set aside " + ", ".join(f"{label} {phrase!r}" for label, phrase in aside))
    if not kept.strip():
        reading.parts = [(text, None)]
    return reading


def _candidates(speller: Speller, word: _context.Word) -> list[str]:
    """Known words close to an unknown word, as typed or else in singular; an adjective and its organ noun
    ("duodenal", "duodenum") count once, as the noun."""
    candidates = speller.candidates(word.text) or speller.candidates(word.canon)
    adjectives = load().adjectives
    nouns = {c: adjectives.get(c, c) for c in candidates}
    return [c for c in candidates if nouns[c] == c or nouns[c] not in candidates]


def _check_named_modality(named: list[tuple[str, str]], modality: str | None, prompt: str) -> str | None:
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


def _modality_name(term: str, modality: str | None, vocabulary: Vocabulary, steps: list[str]) -> str:
    """The name the same structure was trained under on ``modality`` where the term itself was not ("femur" on
    CT is "femur bone" on MRI): the term with or without a suffix such as "bone" or "gland"."""
    if modality is None or modality in vocabulary.modalities_of(term):
        return term
    head, _, last = term.rpartition(" ")
    for other in [f"{term} {s}" for s in _ADDABLE_SUFFIX] + ([head] if last in _DROPPABLE_SUFFIX else []):
        if other in vocabulary.terms and modality in vocabulary.modalities_of(other):
            steps.append(f"{term!r} is trained on {modality.upper()} as {other!r}")
            return other
    return term


def _modality_check(terms: tuple[str, ...], modality: str | None, vocabulary: Vocabulary, allow: bool,
                    prompt: str, steps: list[str]) -> list[str]:
    untrained = [t for t in terms if modality is not None and modality not in vocabulary.modalities_of(t)]
    if not untrained:
        return []
    said = "; ".join(f"{t!r} was trained on {'/'.join(m.upper() for m in vocabulary.modalities_of(t))} only, "
                     f"not on {modality.upper()}" for t in untrained)
    if not allow:
        words = {w for t in untrained for w in t.split() if w not in LATERALITY and not w.isdigit()}
        options = tuple(n for n in suggest(untrained[0], k=40, modality=modality)  # same structure words only
                        if modality in vocabulary.modalities_of(n) and words & set(n.split()))[:5]
        nearby = f"; trained on {modality.upper()}: {', '.join(options)}" if options else ""
        raise PromptResolutionError(
            f"{said}: its mask would be unreliable, so it is refused (pass --allow-untrained-modality to run it "
            f"anyway){nearby}", prompt=prompt, suggestions=options, untrained_modality=True, steps=tuple(steps))
    return [f"{t!r} was trained on {'/'.join(m.upper() for m in vocabulary.modalities_of(t))} only, not on "
            f"{modality.upper()}; expect unreliable masks (run with --allow-untrained-modality)" for t in untrained]


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
            warnings += _modality_check((vocabulary.term_by_key[phrase_key(text)],), modality, vocabulary,
                                        allow_untrained_modality, str(prompt), [])
        return Resolution(str(prompt), (text,), "free-text", modality, tuple(warnings),
                          f"{text!r} sent as given (--free-text)", steps=("sent as given (--free-text)",))
    reading = _read(text, modality, str(prompt))
    steps = list(reading.steps)
    for phrase, found in reading.parts:
        if found is None or isinstance(found, _Refusal):
            _refuse(phrase, found, text, reading, str(prompt))
        if isinstance(found, _Ambiguous):
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
    if len(terms) > 1 and method != "finding":
        method = "composition"
    prefix = "".join(f"{s}; " for s in reading.steps)
    if len(parts) == 1:
        explanation = f"{text!r} → {', '.join(terms)} ({prefix}{parts[0][1].how})"
    else:
        explanation = f"{text!r} = {prefix}union of " + "; ".join(
            f"{phrase!r} → {', '.join(found.terms)} ({found.how})" for phrase, found in parts)
    terms = tuple(dict.fromkeys(_modality_name(t, reading.modality, vocabulary, steps) for t in terms))
    warnings = _modality_check(terms, reading.modality, vocabulary, allow_untrained_modality, str(prompt), steps)
    return Resolution(str(prompt), terms, method, reading.modality, tuple(warnings), explanation,
                      tuple(reading.context), tuple(reading.corrections), tuple(steps))


def _refuse(phrase: str, found: _Refusal | None, text: str, reading: _Reading, prompt: str) -> None:
    if isinstance(found, _Refusal):
        raise PromptResolutionError(found.message, prompt=prompt, suggestions=found.suggestions[:5],
                                    steps=tuple(reading.steps))
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


def suggest(prompt: str, k: int = 5, modality: str | None = None) -> list[str]:
    """Up to ``k`` trained term names closest to ``prompt``, best first.

    A name scores by whole-string similarity or, if higher, by how well each of its words matches some prompt
    word, scaled down when prompt words go unmatched ("pancreass tail" → pancreas before pancreas tumor).
    Synonyms and abbreviations count for the term they stand for; terms trained on ``modality`` get a nudge.
    Only the names sharing the most letter triples with the prompt are scored (a few milliseconds a call).
    """
    vocabulary = load()
    modality = normalize_modality(modality) if modality else None
    query = phrase_key(prompt) or " ".join(str(prompt).lower().split())
    query_words = query.split() or [query]
    scores: dict[str, float] = {}
    for key, name in _shortlist(query):
        score = _similarity(query, key, query_words)
        if modality is not None and modality in vocabulary.modalities_of(name):
            score += 0.02
        if score > scores.get(name, 0.0):
            scores[name] = score
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return [name for name, _ in ranked[:k]]


_SHORTLIST = 80


@lru_cache(maxsize=1)
def _candidate_trigrams() -> tuple[list[tuple[str, str]], list[frozenset[str]]]:
    vocabulary = load()
    candidates = list(vocabulary.term_by_key.items()) + [(key, a["term"]) for key, a in vocabulary.aliases.items()]
    return candidates, [_trigrams(key) for key, _ in candidates]


def _trigrams(text: str) -> frozenset[str]:
    grams = set()
    for word in text.split():
        padded = f"  {word} "
        grams.update(padded[i:i + 3] for i in range(len(padded) - 2))
    return frozenset(grams)


def _shortlist(query: str) -> list[tuple[str, str]]:
    """The (key, term) candidates sharing the most letter triples with the query (relative to their size)."""
    candidates, grams = _candidate_trigrams()
    wanted = _trigrams(query)
    scored = sorted(range(len(candidates)), key=lambda i: -len(wanted & grams[i]) / (len(grams[i]) + len(wanted)))
    return [candidates[i] for i in scored[:_SHORTLIST]]


@lru_cache(maxsize=65536)
def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def _similarity(query: str, key: str, query_words: list[str]) -> float:
    key_words = key.split()
    word_match = sum(max(_ratio(kw, qw) for qw in query_words) for kw in key_words) / len(key_words)
    covered = sum(1 for qw in query_words if max(_ratio(qw, kw) for kw in key_words) >= 0.75) / len(query_words)
    contained = 0.1 if len(query_words) > 1 and set(query_words) <= set(key_words) else 0.0  # "portal vein"
    return max(_ratio(query, key), word_match * (0.7 + 0.3 * covered)) + contained
