"""Matching one phrase, and a whole prompt as the fewest phrases that match (the resolver's core).

Order for one phrase: TotalSegmentator class name (``kidney_left``), terminology entry (``ct_liver``), exact term
after normalisation, alias (synonym, abbreviation, TotalSegmentator name, word form; an ambiguous alias is
refused), rewrites of the key, fewest first (word order, word forms, a dropped or added "gland"/"bone"…, Latin and
category-first order), vertebra/rib ranges, both sides, a finding on an organ (:mod:`satseg.vocabulary._findings`)
and left + right when only sided terms exist. A prompt that is not one phrase is split at separators into the
fewest phrases that all match; "grey and white matter" and "kidney tumor and cyst" share a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from satseg.vocabulary import _context, _findings
from satseg.vocabulary._text import (
    HARD_SEPARATOR,
    LATERALITY,
    counts,
    light,
    phrase_key,
    sides_out_of_parens,
    tokens,
)
from satseg.vocabulary.catalog import MODALITIES, Vocabulary, load

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
_SEPARATOR = re.compile(r"(?:\s*(?:,|;|\+|&|\band\b|\bor\b|\bplus\b|\bas well as\b|(?<=[a-z]{3})\s*/(?=\s*[a-z]{3})|"
                        r"(?<=\S)\s+/\s+(?=\S))\s*)+")
_ENTRY = re.compile(r"^(ct|mri|pet)_(.+)$")
DROPPABLE_SUFFIX = ("muscle", "bone", "gland", "organ", "structure", "region", "hemisphere", "cavity")
ADDABLE_SUFFIX = ("gland", "bone", "artery")
_SHARED_HEAD = re.compile(r"^([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+) (.+)$")
_SHARED_MODIFIER = re.compile(r"^(.+) ([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+)$")
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


@dataclass(frozen=True)
class Match:
    terms: tuple[str, ...]
    method: str
    how: str
    lossy: bool = False  # a word was dropped on the way ("gland", "bone", "region"): never across a separator


@dataclass(frozen=True)
class Ambiguous:
    phrase: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """A phrase understood well enough to say why it cannot be resolved (a finding without a lesion term)."""

    message: str
    suggestions: tuple[str, ...]


@dataclass
class Resolver:
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

    def key(self, key: str, depth: int) -> Match | Ambiguous | None:
        """Exact term or alias for a normalised key, then rewrites of it (up to ``depth`` rewrites deep)."""
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
        if depth == 0:
            return None
        rewrites = list(self._rewrites(key))
        for level in range(depth):  # the fewest rewrites first: "costal cartilage region" is costal cartilage,
            for rewritten, how, renamed_by in rewrites:  # not "rib cartilage" by a word form and a dropped word
                found = self.key(rewritten, level)
                if isinstance(found, Match) and not self._keeps_kind(how, found):
                    continue
                if isinstance(found, Match):
                    method = renamed_by if found.method == "exact" and renamed_by else found.method
                    lossy = found.lossy or how.startswith("without")
                    return Match(found.terms, method, f"{how}, then {found.how}", lossy)
        return None

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

    def _rewrites(self, key: str):
        v = self.vocabulary
        words = key.split()
        if words[0] in LATERALITY and len(words) > 1:
            base = self.key(" ".join(words[1:]), depth=1)
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
        for suffix in ADDABLE_SUFFIX:
            vein = suffix == "artery" and any(f"{key} {w}" in v.term_by_key for w in ("vein", "vena"))
            if words[-1] not in DROPPABLE_SUFFIX and f"{key} {suffix}" in v.term_by_key and not vein:
                yield f"{key} {suffix}", f"with {suffix!r}", "synonym"

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
            return Match(left.terms + right.terms, "composition", f"left and right {base!r}")
        if explicit:
            whole = self.phrase(base)
            if isinstance(whole, Match):
                return Match(whole.terms, whole.method, f"no sided terms for {base!r}; {whole.how}")
            return whole
        return None

    def _carry_side(self, parts: list) -> list:
        """A side named on a list item carries to the unsided items after it ("left kidney and adrenal" = left
        kidney + left adrenal gland); an item whose structure has sided terms but not under that name is ambiguous
        (refused), one with no sided terms ("left kidney and liver") stays whole. "both"/"bilateral" ends it."""
        out, side = [], None
        for segment, found in parts:
            words = phrase_key(segment).split()
            named = next((w for w in words if w in LATERALITY), None)
            if named or {"both", "bilateral"} & set(tokens(segment)) or not isinstance(found, Match):
                side = named
                out.append((segment, found))
                continue
            if side is None:
                out.append((segment, found))
                continue
            sided = self.phrase(f"{side} {segment}")
            if isinstance(sided, Match) and sided.terms != found.terms:
                out.append((segment, Match(sided.terms, sided.method,
                                           f"side {side!r} carried from the list, as {side + ' ' + segment!r}; "
                                           f"{sided.how}")))
                continue
            options = [t for t in found.terms for s in LATERALITY
                       for m in [self.phrase(f"{s} {t}")] if isinstance(m, Match) and m.terms != (t,)]
            if options or isinstance(sided, (Ambiguous, Refusal)):
                options = [t for t in found.terms for s in LATERALITY
                           for m in [self.phrase(f"{s} {t}")] if isinstance(m, Match) for t in m.terms]
                options = tuple(dict.fromkeys(options + list(found.terms)))
                out.append((segment, Refusal(
                    f"{segment!r} follows {side!r} in a list, but no {side} term is trained under that name; "
                    f"write the side of each item (one of: {', '.join(options)})", options)))
                continue
            out.append((segment, found))
        return out

    def _shared_head(self, text: str) -> list | None:
        """"grey and white matter" = grey matter + white matter, when the first word alone is no structure;
        "kidney tumor and cyst" = kidney tumor + kidney cyst, when the last word alone is none."""
        plain = " ".join(light(text).split())
        m = _SHARED_HEAD.match(plain)
        if m and not {m.group(1), m.group(2)} & {*LATERALITY, "both"} and not isinstance(
                self.phrase(m.group(1)), (Match, Ambiguous)):
            first, second = f"{m.group(1)} {m.group(3)}", f"{m.group(2)} {m.group(3)}"
        else:
            m = _SHARED_MODIFIER.match(plain)
            nouns = self.head_nouns() | set(_findings.LESION_TYPES)  # "tumor and cyst", not "muscle, left"
            if not m or isinstance(self.phrase(m.group(3)), (Match, Ambiguous)) or not {
                    tokens(m.group(2))[0], tokens(m.group(3))[0]} <= nouns:
                return None
            first, second = f"{m.group(1)} {m.group(2)}", f"{m.group(1)} {m.group(3)}"
        parts = [(first, self.phrase(first)), (second, self.phrase(second))]
        return parts if resolved(parts) else None

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
                owner = organ.terms[0] if isinstance(organ, Match) and len(organ.terms) == 1 else organ_key
                index.setdefault(owner, []).append((name, _findings.LESION_TYPES[words[-1]]))
            self._lesions = index
        return self._lesions

    def _finding(self, text: str, key: str) -> Match | Refusal | None:
        words = tokens(text)
        found = [w for w in words if w in _findings.FINDING_WORDS]
        if not found:
            return None
        rest = [w for w in words if w not in _findings.FINDING_WORDS and w not in _findings.MODIFIERS
                and w not in ("both", "bilateral")]  # "nodules in both lungs": the organ's lesion terms
        while rest and rest[0] in _findings.LINKS:
            rest.pop(0)
        while rest and rest[-1] in _findings.LINKS:
            rest.pop()
        on_modality = f" on {self.modality.upper()}" if self.modality else ""
        typed = {_findings.FINDING_WORDS[w] for w in found} - {"any"}
        if _findings.METASTASIS_WORDS & set(found) and (
                "from" in words or {w for w in found if w not in _findings.METASTASIS_WORDS and
                                    _findings.FINDING_WORDS[w] == "tumor"}):
            return Refusal(f"{text!r} names metastases with their primary tumour: metastases lie elsewhere and no "
                           f"term segments them by their primary; name the organ they are in ('liver metastases')",
                           self._lesion_terms()[:5])
        if len(typed) > 1:
            return Refusal(f"{text!r} names two kinds of finding ({', '.join(sorted(typed))}); write each as its "
                           f"own prompt", self._lesion_terms()[:5])
        for named in [rest] if rest else [[w] for w in found]:  # "stroke lesion", "COVID-19 lesions", "tumour
            lesion = self._lesion_term(named)                     # lesions": a lesion term with a finding word
            if lesion is not None:
                kinds = {_findings.term_type(t, phrase_key(t).split()) for t in lesion.terms}
                if typed and kinds != typed:  # "hemorrhagic stroke", "covid nodules": the word contradicts it
                    return Refusal(f"{text!r}: {' '.join(found)!r} does not fit {', '.join(lesion.terms)!r}; "
                                   f"write the lesion term alone", tuple(lesion.terms))
                return Match(lesion.terms, lesion.method, f"{' '.join(found)!r} on a lesion term: {lesion.how}")
        if not rest:
            options = self._lesion_terms()
            return Refusal(f"{text!r} names a finding but no organ; lesion terms trained{on_modality}: "
                            f"{', '.join(options)}", options[:5])
        organ, owner = self._organ(rest)
        if owner is None:
            return None
        types, rule = _findings.wanted_types(found)
        lesions = self.lesions().get(owner, [])
        side, _, unsided = owner.partition(" ")
        if not lesions and side in LATERALITY and unsided in self.lesions():
            options = tuple(t for t, _ in self.lesions()[unsided])
            return Refusal(f"{text!r}: the lesion terms of the {unsided} are not sided; choose among "
                           f"{', '.join(options)}", options)
        if not lesions:
            return Refusal(f"no lesion term is trained for {owner!r} (asked for by {text!r})",
                            tuple(dict.fromkeys([*self._lesion_terms(), owner]))[:5])
        if side in LATERALITY and unsided in self.lesions():
            missing = {k for _, k in self.lesions()[unsided]} - {k for _, k in lesions}
            if missing & types:
                options = tuple(t for t, _ in lesions + self.lesions()[unsided])
                return Refusal(f"{text!r}: the {'/'.join(sorted(missing & types))} lesion terms of the {unsided} "
                                f"are not sided; choose among {', '.join(options)}", options)
        chosen = [t for t, k in lesions if k in types]
        general = not typed
        if general and owner not in self.vocabulary.terms:  # "intracranial lesion": a name part, not an organ
            options = tuple(t for t, _ in lesions)
            return Refusal(f"{text!r}: {' '.join(rest)!r} is no organ; name the lesion term "
                           f"({', '.join(options)})", options)
        on = [t for t in _findings.LESIONS_INSIDE.get(owner, ()) if t in self.vocabulary.terms] + [
            t for t, k in lesions if k == "edema"]  # oedema: a lesion or not is the clinician's call
        inside = [t for t in on if self.modality is None or self.modality in self.vocabulary.modalities_of(t)]
        if general and inside:
            trained = [t for t in chosen if self.modality is None or self.modality in self.vocabulary.modalities_of(t)]
            options = tuple(dict.fromkeys(trained + inside))
            return Refusal(f"{text!r} could be any of the {owner}'s lesion terms{on_modality}: "
                           f"{', '.join(options)}; name the ones you mean", options)
        if not chosen:
            options = tuple(t for t, _ in lesions)
            return Refusal(f"no {'/'.join(sorted(types))} lesion term is trained for {owner!r}; its lesion terms: "
                            f"{', '.join(options)}", options)
        trained = [t for t in chosen if self.modality in self.vocabulary.modalities_of(t)]
        chosen = trained or chosen
        how = f"finding {' '.join(found)!r} on {owner!r}{organ}; rule: {rule} for the {owner}{on_modality}"
        return Match(tuple(chosen), "finding", how)

    def _lesion_term(self, words: list[str]) -> Match | None:
        """A lesion term named by the words ("ischemic stroke", "covid 19", "tumor"), else None."""
        found = self.phrase(" ".join(words))
        if isinstance(found, Match) and all(self.vocabulary.terms[t].abnormal for t in found.terms):
            return found
        return None

    def _organ(self, words: list[str]) -> tuple[str, str | None]:
        text = " ".join(words)
        found = self.phrase(text)
        if isinstance(found, Match) and len(found.terms) == 1:
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
    def prompt(self, text: str) -> list[tuple[str, Match | Ambiguous | Refusal | None]]:
        """The fewest phrases that all resolve, as (phrase, result); one unresolved phrase when none do. " - ",
        ":" and "( )" separate phrases as "," does (a side in parentheses stays: "kidney (left)")."""
        text = sides_out_of_parens(text)
        pieces = [p.strip() for p in HARD_SEPARATOR.split(text) if p.strip()]
        if len(pieces) < 2:
            return self._prompt(" ".join(pieces) or text)
        whole = self.phrase(text)  # a name with its own parentheses: "cervical vertebrae 1 (c1)"
        if isinstance(whole, Match) and any(HARD_SEPARATOR.search(t) for t in whole.terms):
            return [(text, whole)]
        head = text.split(":", 1)[0] if ":" in text else ""
        if head.strip() and all(w.label != _context.CONTENT for w in _context.words_of(head)):
            return [(text, None)]  # "Brain: hippocampus": a heading, read as context
        out = []
        for piece in pieces:
            parts = self._prompt(piece)
            if not resolved(parts):
                return parts
            out += parts
        return out

    def _prompt(self, text: str) -> list[tuple[str, Match | Ambiguous | Refusal | None]]:
        whole = self.phrase(text)
        separators = list(_SEPARATOR.finditer(text))
        listed = re.search(r"[,;]", text) is not None and not any(  # "liver, tumor" is two names, never
            set(tokens(p)) <= {*LATERALITY, "both", "bilateral"} for p in re.split(r"[,;]", text))  # "liver tumor"
        if isinstance(whole, Ambiguous) or isinstance(whole, Match) and not (whole.lossy and separators) and not (
                listed and not any("," in t for t in whole.terms)):
            return [(text, whole)]
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
                if end - begin > 1 and re.search(r"[,;]", segment):
                    continue  # a comma or semicolon always separates names
                found = self.phrase(segment)
                if isinstance(found, Match) and found.lossy and end - begin > 1:
                    continue  # "thyroid gland, bone" is two structures, not "thyroid gland" without "bone"
                if isinstance(found, (Match, Ambiguous)) and (
                        best[end] is None or len(best[begin]) + 1 < len(best[end])):
                    best[end] = best[begin] + [(segment, found)]
        if best[-1] is not None:
            return self._carry_side(best[-1])
        shared = self._shared_head(text)
        if shared is not None:
            return shared
        if whole is not None and not (listed and isinstance(whole, Match)):  # "kidney, left" is one name
            return [(text, whole)]
        reached = max(i for i, b in enumerate(best) if b is not None)  # report the part after the longest
        begin, stop = spans[reached]                                    # prefix that resolves
        part = text[begin:stop].strip()
        return [(part, self.phrase(part))]


def resolved(parts) -> bool:
    return all(isinstance(found, (Match, Ambiguous)) for _, found in parts)


@lru_cache(maxsize=len(MODALITIES) + 1)
def resolver_for(modality: str | None) -> Resolver:
    return Resolver(load(), modality)
