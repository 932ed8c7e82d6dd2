"""Misspelled words: a word the vocabulary does not know, within edit distance 1 (2 for words of 8+ letters) of
exactly one word it knows, is corrected; two or more such words → the caller refuses, naming them. A correction
never changes a prefix (extra/intra/inter/supra/infra/sub/peri/para/hypo/hyper/pre/post/endo/epi: "extracranial"
is not "intracranial") and, at distance 2, keeps the first three letters.

Distances are Damerau–Levenshtein with adjacent transpositions ("pancraes" → "pancreas" is one edit). Candidates
are found with a symmetric-deletion index (every known word with up to two letters deleted), built once on first
use, so a look-up costs a few dictionary probes rather than a pass over the vocabulary.
"""

from __future__ import annotations

MIN_LENGTH = 4  # shorter words (abbreviations, "l4") are never corrected
LONG_WORD = 8
# A prefix changes the meaning ("extracranial" is not "intracranial"): no correction across one.
PREFIXES = ("extra", "intra", "inter", "supra", "infra", "sub", "peri", "para", "hypo", "hyper", "pre", "post",
            "endo", "epi")


def _prefix(word: str) -> str:
    return next((p for p in sorted(PREFIXES, key=len, reverse=True) if word.startswith(p) and len(word) > len(p) + 2),
                "")


def plausible(word: str, candidate: str, dist: int) -> bool:
    """A correction keeps the word's prefix, and at distance 2 its first three letters."""
    if _prefix(word) != _prefix(candidate):
        return False
    return dist < 2 or word[:3] == candidate[:3]


def max_distance(word: str) -> int:
    return 2 if len(word) >= LONG_WORD else 1


def _deletions(word: str, depth: int) -> set[str]:
    """The word with up to ``depth`` letters deleted (the word itself included)."""
    out = frontier = {word}
    for _ in range(min(depth, len(word) - 1)):
        frontier = {w[:i] + w[i + 1:] for w in frontier for i in range(len(w))}
        out = out | frontier
    return out


def distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two neighbours)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


class Speller:
    """Corrections against a fixed set of known words."""

    def __init__(self, known: set[str], targets: set[str], never_corrected: frozenset[str] = frozenset(),
                 fallback: set[str] = frozenset()):
        self.known = frozenset(known)  # never corrected
        self.never_corrected = never_corrected  # real words that are no term: left for the caller to refuse
        # Words a misspelling may be corrected to; ``fallback`` words (group names) only where no target is close,
        # so that a group name never makes a correction ambiguous ("cerebelum" stays cerebellum, not cerebrum).
        self.indexes: list[dict[str, list[str]]] = []
        self.longest = 0
        for words in (targets, set(fallback) - set(targets)):
            index: dict[str, list[str]] = {}
            indexed = sorted(w for w in words if w.isalpha() and len(w) >= MIN_LENGTH - 1)
            for word in indexed:
                for deleted in _deletions(word, 2):
                    index.setdefault(deleted, []).append(word)
            self.indexes.append(index)
            self.longest = max([self.longest, *map(len, indexed)])

    def candidates(self, word: str) -> list[str]:
        """Known words within the allowed distance of an unknown ``word`` (empty for short or known words)."""
        if word in self.known or word in self.never_corrected or not word.isalpha() or len(word) < MIN_LENGTH:
            return []
        limit = max_distance(word)
        if len(word) > self.longest + limit:  # no known word is that close (and its deletions grow as len³)
            return []
        deletions = _deletions(word, limit)
        for index in self.indexes:
            seen = {c for d in deletions for c in index.get(d, ())}
            close = {c: d for c in sorted(seen) if (d := distance(word, c)) <= limit}
            if not close:
                continue
            if len(close) == 1 and not plausible(word, *next(iter(close.items()))):
                return []  # the only close word changes a prefix or the word's start: no correction
            return list(close)  # two or more: the caller refuses, naming them (an implausible one still counts)
        return []
