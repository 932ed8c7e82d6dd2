"""Matching one phrase (the resolver's core); a whole prompt is split into phrases by :mod:`._lists`.

Order for one phrase: TotalSegmentator class name (``kidney_left``), terminology entry (``ct_liver``), exact term
after normalisation, alias (synonym, abbreviation, TotalSegmentator name, word form; an ambiguous alias is
refused), a named group (:mod:`._groups`, with or without a side), rewrites of the key, fewest first (a side on a
term, word order, word forms, a dropped "gland"/"bone"…, Latin and category-first order, an implied head noun:
"internal jugular" → vein, two completions are ambiguous), vertebra/rib ranges, both sides, a finding on an organ
(:mod:`._findings`) and left + right when only sided terms exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from satseg.vocabulary._findings import FindingReader
from satseg.vocabulary._groups import GroupReader
from satseg.vocabulary._lists import ListReader
from satseg.vocabulary._match import Ambiguous, Match, Refusal, resolved
from satseg.vocabulary._text import LATERALITY, counts, light, phrase_key, tokens
from satseg.vocabulary.catalog import MODALITIES, Vocabulary, load

__all__ = ["ADDABLE_SUFFIX", "DROPPABLE_SUFFIX", "Ambiguous", "Match", "Refusal", "Resolver", "resolved",
           "resolver_for"]

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
_ENTRY = re.compile(r"^(ct|mri|pet)_(.+)$")
DROPPABLE_SUFFIX = ("muscle", "bone", "gland", "organ", "structure", "region", "hemisphere", "cavity")
ADDABLE_SUFFIX = ("gland", "bone", "artery")  # a term trained on another modality under a longer name
# A head noun left out where the rest names one structure only ("internal jugular", "right caudate" → nucleus,
# "celiac" → trunk, "left subclavian" → artery); two completions ("brachiocephalic": trunk or vein, "left iliac":
# artery or vena) are no reading. Only completions to a trained term name count, so "thigh" is never "thigh bone".
IMPLIED_HEADS = ("gland", "bone", "artery", "vein", "vena", "trunk", "nucleus", "process")
_SIDED_SUFFIX = ("hemisphere",)  # "left cerebellar hemisphere" is the left cerebellum; both hemispheres are not
_POSITIONAL = ("inferior", "superior", "anterior", "posterior", "medial", "lateral", "upper", "lower", "middle")
# Dropping a category word keeps the category: what is left must name a structure of that kind ("hip muscles" is
# no hip bone, "costal muscle" no rib, "lung cavity" no lung). A term is of a kind when one of its words is here.
KINDS = {
    "muscle": frozenset({"muscle", "gluteus", "iliopsoas", "psoas", "autochthon", "myocardium", "constrictor"}),
    "bone": frozenset({"bone", "femur", "humerus", "rib", "vertebrae", "skull", "sacrum", "hip", "clavicle",
                       "scapula", "mandible", "sternum", "tibia", "mastoid", "manubrium"}),
    "gland": frozenset({"gland", "thyroid", "prostate", "thymus", "pancreas", "breast", "gonad"}),
    "cavity": frozenset({"cavity", "canal", "ventricle", "ear", "sinus"}),
}


@dataclass
class Resolver(ListReader, FindingReader, GroupReader):
    vocabulary: Vocabulary
    modality: str | None = None
    cache: dict = field(default_factory=dict)
    _lesions: dict | None = None
    _heads: frozenset | None = None

    # -- one phrase ---------------------------------------------------------------------------------------------
    def phrase(self, text: str) -> Match | Ambiguous | Refusal | None:
        if text not in self.cache:
            if len(self.cache) > _CACHE_LIMIT:
                self.cache.clear()
            self.cache[text] = None  # a phrase that refers back to itself does not resolve
            self.cache[text] = self._phrase(text)
        return self.cache[text]

    def _phrase(self, text: str) -> Match | Ambiguous | Refusal | None:
        v = self.vocabulary
        raw = " ".join(text.lower().split())
        if not raw:
            return None
        if raw in v.totalseg and raw != v.totalseg[raw]:
            return Match((v.totalseg[raw],), "totalsegmentator", f"TotalSegmentator class {raw!r}")
        entry = _ENTRY.match(raw)
        if entry and entry.group(2) in v.terms:
            return Match((entry.group(2),), "exact", f"terminology entry {raw!r}")
        key = phrase_key(text)
        if not key or counts(text):  # "12 ribs" counts ribs; it names none of them
            return None
        found = self.key(key, depth=2)
        if found is not None:
            return found
        refusal = None
        for attempt in (self._range, self._both_sides, self._finding, self._implicit_both_sides):
            found = attempt(text, key)
            if isinstance(found, Refusal):
                refusal = refusal or found
            elif found is not None:
                return found
        return refusal

    def key(self, key: str, depth: int) -> Match | Ambiguous | Refusal | None:
        """Exact term, alias or named group for a normalised key, then rewrites of it (up to ``depth`` rewrites
        deep); a Refusal only for a refused group."""
        v = self.vocabulary
        if key in v.term_by_key:
            return Match((v.term_by_key[key],), "exact", "trained term")
        if key in v.ambiguous:
            return Ambiguous(key, tuple(v.ambiguous[key]))
        if key in v.aliases:
            alias = v.aliases[key]
            if alias["source"] == "word form":
                return Match((alias["term"],), alias["method"], f"word form {key!r} → {alias['term']!r}")
            if alias["source"] == "vertebra level":  # "L3", "lumbar 3": a level name, not an abbreviation
                return Match((alias["term"],), "vertebra level", f"vertebra level {key!r}")
            return Match((alias["term"],), alias["method"], f"{alias['method']} ({alias['source']})")
        group = self.group(key)
        if group is not None:
            return group
        if depth == 0:
            return None
        words = key.split()
        base = self.key(" ".join(words[1:]), depth=1) if words[0] in LATERALITY and len(words) > 1 else None
        if isinstance(base, (Match, Refusal)) and base.group:  # "left gluteal muscles", "lobes of the right lung"
            return self.side_of_group(words[0], base)
        rewrites = list(self._rewrites(key, base))
        refusal = None
        for level in range(depth):  # the fewest rewrites first: "costal cartilage region" is costal cartilage,
            for rewritten, how, renamed_by in rewrites:  # not "rib cartilage" by a word form and a dropped word
                found = self.key(rewritten, level)
                if isinstance(found, Refusal):  # a refused group ("lobes of the liver") stays refused
                    refusal = refusal or found
                if isinstance(found, Match) and not self._keeps_kind(how, found):
                    continue
                if isinstance(found, Match):
                    method = renamed_by if found.method == "exact" and renamed_by else found.method
                    lossy = found.lossy or how.startswith("without")
                    return Match(found.terms, method, f"{how}, then {found.how}", lossy, found.group)
        options = tuple(dict.fromkeys(self._completions(key).values()))
        if refusal is None and len(options) > 1:  # "brachiocephalic": trunk or vein; "left iliac": artery or vena
            return Ambiguous(key, options)
        return refusal

    @staticmethod
    def _keeps_kind(how: str, found: Match) -> bool:
        """After dropping a category word ("without 'muscle'"), every term must be of that kind."""
        if not how.startswith("without "):
            return True
        kind = KINDS.get(how.split("'")[1])
        return kind is None or all(kind & set(phrase_key(t).split()) for t in found.terms)

    def head_nouns(self) -> frozenset[str]:
        """Last words of the trained names of two or more words ("gland", "cavity", "lobe", "bowel")."""
        if self._heads is None:
            self._heads = frozenset(k.split()[-1] for k in self.vocabulary.term_by_key
                                    if len(k.split()) > 1 and k.split()[-1].isalpha())
        return self._heads

    def _rewrites(self, key: str, base: Match | Ambiguous | Refusal | None):
        """(key, how, method) rewrites of a key; ``base`` is the key without its side word, read (or None)."""
        v = self.vocabulary
        words = key.split()
        if words[0] in LATERALITY and len(words) > 1:
            if isinstance(base, Match) and len(base.terms) == 1:
                head, of, tail = base.terms[0].rpartition(" of ")  # "head of femur" → "head of left femur"
                for sided in (f"{words[0]} {base.terms[0]}", f"{head} of {words[0]} {tail}" if of else ""):
                    if sided and phrase_key(sided) in v.term_by_key:
                        renamed_by = None if base.method == "exact" else base.method
                        dropped = "without a word, then " if base.lossy else ""
                        yield phrase_key(sided), f"{dropped}{words[0]} side of {base.terms[0]!r}", renamed_by
        if " of " in f" {key} ":
            head, _, tail = key.partition(" of ")
            yield phrase_key(f"{tail} {head}"), "word order", None
        substituted = [v.adjectives.get(w, w) for w in words]
        if substituted != words:
            forms = ", ".join(f"{w!r} → {s!r}" for w, s in zip(words, substituted) if w != s)
            yield phrase_key(" ".join(substituted)), f"word form {forms}", "synonym"
        last = max((i for i, w in enumerate(words) if not w.isdigit()), default=0)  # "3 ventricle region" → key
        if last > 0 and words[last] in DROPPABLE_SUFFIX and (words[last] not in _SIDED_SUFFIX  # "ventricle region 3"
                                                             or words[0] in LATERALITY):
            yield " ".join(words[:last] + words[last + 1:]), f"without {words[last]!r}", "word dropped"
        if len(words) > 1 and words[-1] in _POSITIONAL:  # "vena cava inferior" (Latin order)
            yield phrase_key(" ".join([words[-1], *words[:-1]])), "word order", None
        side = words[:1] if words[0] in LATERALITY else []
        rest = words[len(side):]
        if len(rest) > 1 and rest[0] in self.head_nouns():  # "Bowel_Small", "Glnd_Lacrimal_L": category first
            yield phrase_key(" ".join(side + rest[1:] + rest[:1])), "word order (category first)", None
        completions = self._completions(key)  # "internal jugular", "right caudate": one structure only
        if len(set(completions.values())) == 1:
            head = next(iter(completions))
            yield f"{key} {head}", f"with the implied head noun {head!r}", "synonym"

    def _completions(self, key: str) -> dict[str, str]:
        """Head noun → trained term for each :data:`IMPLIED_HEADS` word that completes the key to a term name."""
        words = key.split()
        if words[-1] in DROPPABLE_SUFFIX or words[-1] in IMPLIED_HEADS:
            return {}
        found = {h: self.vocabulary.term_by_key.get(f"{key} {h}") for h in IMPLIED_HEADS}
        return {h: t for h, t in found.items() if t is not None}

    # -- groups -------------------------------------------------------------------------------------------------
    def _range(self, text: str, key: str) -> Match | None:
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
                return Match(tuple(names), "composition", f"ribs {lo} to {hi}" + (f" ({side})" if side else ""))
        return None

    def _level_range(self, first: str, last: str, text: str) -> Match | None:
        levels = self.vocabulary.vertebra_levels
        order = [lv for lv in self.vocabulary.level_order if lv != "l6" or "l6" in (first, last)]
        if first not in order or last not in order:
            return None
        i, j = sorted((order.index(first), order.index(last)))
        names = tuple(levels[lv] for lv in order[i:j + 1])
        return Match(names, "composition", f"vertebrae {order[i].upper()} to {order[j].upper()}")

    def _both_sides(self, text: str, key: str) -> Match | Ambiguous | None:
        joined = " ".join(tokens(text))
        head, of, tail = joined.partition(" of ")
        if of and tail.split()[0] in ("both", "bilateral"):  # "lobes of both lungs" → both lung lobes
            joined = f"{tail} {head}"
        m = _BOTH_BEFORE.match(joined) or _BOTH_AFTER.match(joined)
        if not m or phrase_key(m.group(1)).split()[:1] in (["left"], ["right"]):
            return None
        return self._sides(m.group(1), explicit=True)

    def _implicit_both_sides(self, text: str, key: str) -> Match | Ambiguous | None:
        if key.split()[0] in LATERALITY:
            return None
        return self._sides(key, explicit=False)

    def _sides(self, base: str, explicit: bool) -> Match | Ambiguous | None:
        left, right = self.phrase(f"left {base}"), self.phrase(f"right {base}")
        if isinstance(left, Match) and isinstance(right, Match) and left.terms != right.terms:
            return Match(left.terms + right.terms, "composition", f"left and right {base!r}",
                         group=left.group if left.group == right.group else None)
        if explicit:
            whole = self.phrase(base)
            if isinstance(whole, Match):
                return Match(whole.terms, whole.method, f"no sided terms for {base!r}; {whole.how}")
            return whole
        return None


@lru_cache(maxsize=len(MODALITIES) + 1)
def resolver_for(modality: str | None) -> Resolver:
    return Resolver(load(), modality)
