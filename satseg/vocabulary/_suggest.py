"""Suggestions for a prompt that is refused: the trained term names closest to it, best first."""

from __future__ import annotations

import difflib
from functools import lru_cache

from satseg.vocabulary._text import phrase_key
from satseg.vocabulary.catalog import load, normalize_modality


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
