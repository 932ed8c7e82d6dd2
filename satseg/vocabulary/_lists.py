"""A whole prompt as the fewest phrases that all match: separators (``,`` ``;`` ``+`` ``&`` ``/`` ``and`` ``or``
``plus``, and " - ", ":" and "( )" as hard breaks), a side carried along a list ("left kidney and adrenal"), and
a word shared by two names ("grey and white matter", "kidney tumor and cyst"). Mixed into
:class:`satseg.vocabulary._phrases.Resolver`, which supplies ``phrase`` and ``head_nouns``.
"""

from __future__ import annotations

import re

from satseg.vocabulary import _context, _findings
from satseg.vocabulary._match import Ambiguous, Match, Refusal, resolved
from satseg.vocabulary._text import HARD_SEPARATOR, LATERALITY, light, phrase_key, sides_out_of_parens, tokens

MAX_PARTS = 40
_SEPARATOR = re.compile(r"(?:\s*(?:,|;|\+|&|\band\b|\bor\b|\bplus\b|\bas well as\b|(?<=[a-z]{3})\s*/(?=\s*[a-z]{3})|"
                        r"(?<=\S)\s+/\s+(?=\S))\s*)+")
_SHARED_HEAD = re.compile(r"^([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+) (.+)$")
_SHARED_MODIFIER = re.compile(r"^(.+) ([a-z]+)\s*(?:,|/|\band\b|\bor\b|&|\+)\s*([a-z]+)$")


class ListReader:
    """Splitting a prompt into phrases (see module docstring)."""

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


    def _carry_side(self, parts: list) -> list:
        """A side named on a list item carries to the unsided items after it ("left kidney and adrenal" = left
        kidney + left adrenal gland); an item whose structure has sided terms but not under that name is ambiguous
        (refused), one with no sided terms ("left kidney and liver") stays whole. "both"/"bilateral" ends it."""
        out, side = [], None
        for segment, found in parts:
            words = phrase_key(segment).split()
            named = next((w for w in words if w in LATERALITY), None)
            if isinstance(found, Match) and found.group and found.group.split()[0] in LATERALITY:
                named = None  # "left heart and lungs": the side is part of the group's name, it carries nowhere
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
                                           f"{sided.how}", group=sided.group)))
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

