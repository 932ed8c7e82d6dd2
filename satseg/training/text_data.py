"""Text pairs for knowledge-enhanced text pretraining (SAT_SPEC §7.6), read from a SAT-Pretrain knowledge file.

A knowledge file maps a concept name to what is known about it::

    {"aorta": {"cleaned_definition": "The largest artery ...",        # a string or a list of strings
               "synonyms": ["arteria aorta", ...],                     # optional
               "relations": [["part of", "cardiovascular system"], ...],
               "citations": [...]}}                                    # ignored

Every fact becomes one *pair* of texts that should embed close together, plus the *concept* text that
decides which other pairs in a batch count as positives too:

* definition / synonym: ``(name, definition)`` and ``(name, synonym)``, concept = the name;
* relation ``(source, relation, target)``: at sampling time, with probability 0.5
  ``("source relation", target)`` with concept = target, else ``("relation target", source)`` with
  concept = source.

Names and relation targets are lower-cased (SAT lower-cases prompts). Batches draw from the definition and
relation pools in proportion to their sizes (upstream's default ratio 1.0 for both).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from satseg.errors import InputError


@dataclass(frozen=True)
class Definition:
    """A concept name and one text that names or defines it (a definition or a synonym)."""

    name: str
    text: str
    kind: str  # "definition" | "synonym"


@dataclass(frozen=True)
class Relation:
    """A knowledge-graph edge ``source --relation--> target``."""

    source: str
    relation: str
    target: str


@dataclass(frozen=True)
class TextPair:
    """One training example: ``concept`` is the anchor text, ``text`` its positive partner."""

    concept: str
    text: str


@dataclass
class KnowledgePool:
    definitions: list[Definition]
    relations: list[Relation]

    def __len__(self) -> int:
        return len(self.definitions) + len(self.relations)

    def sample(self, rng: random.Random) -> TextPair:
        """Draw one pair: a definition/synonym or a relation (each fact equally likely)."""
        index = rng.randrange(len(self))
        if index < len(self.definitions):
            fact = self.definitions[index]
            return TextPair(concept=fact.name, text=fact.text)
        return relation_pair(self.relations[index - len(self.definitions)], rng)

    def sample_batch(self, size: int, rng: random.Random) -> list[TextPair]:
        return [self.sample(rng) for _ in range(size)]


def relation_pair(edge: Relation, rng: random.Random) -> TextPair:
    """``("source relation", target)`` or ``("relation target", source)``, each with probability 0.5."""
    if rng.random() < 0.5:
        return TextPair(concept=edge.target, text=f"{edge.source} {edge.relation}")
    return TextPair(concept=edge.source, text=f"{edge.relation} {edge.target}")


def _strings(value, where: str) -> list[str]:
    """A string or a list of strings (or None) → the non-empty stripped strings."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected a string or a list of strings")
    return [v.strip() for v in value if v.strip()]


def parse_knowledge(data: dict, source: str = "knowledge file") -> KnowledgePool:
    """A SAT-Pretrain knowledge document → the pools of definitions/synonyms and relations."""
    if not isinstance(data, dict) or not data:
        raise InputError(f"{source}: expected a JSON object of concept name → knowledge")
    definitions: list[Definition] = []
    relations: list[Relation] = []
    for concept, facts in data.items():
        where = f"{source}: {concept!r}"
        if not isinstance(facts, dict):
            raise InputError(f"{where}: expected an object with cleaned_definition / synonyms / relations")
        name = concept.strip().lower()
        definitions += [Definition(name, text, "definition")
                        for text in _strings(facts.get("cleaned_definition"), f"{where}.cleaned_definition")]
        definitions += [Definition(name, text, "synonym")
                        for text in _strings(facts.get("synonyms"), f"{where}.synonyms")]
        for edge in facts.get("relations") or []:
            if not (isinstance(edge, list) and len(edge) == 2 and isinstance(edge[0], str)):
                raise InputError(f"{where}.relations: expected [relation, target] pairs, found {edge!r}")
            for target in _strings(edge[1], f"{where}.relations"):  # a target may list equivalent phrasings
                relations.append(Relation(name, edge[0].strip(), target.lower()))
    if not definitions and not relations:
        raise InputError(f"{source}: no definitions, synonyms or relations found")
    return KnowledgePool(definitions, relations)


def load_knowledge(path: str | Path) -> KnowledgePool:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"knowledge file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"knowledge file {path} is not valid JSON: {exc}") from None
    return parse_knowledge(data, str(path))


def tokenize_with_random_truncation(tokenizer, texts: list[str], rng: random.Random, *, max_tokens: int = 256,
                                    truncate_p: float = 0.5):
    """Texts → (input_ids (N, L) int64, attention_mask (N, L) int64), L = min(longest, max_tokens).

    Same ids as :class:`satseg.model.text.SATTokenizer` (``[CLS]`` pieces ``[SEP]``, lower-cased, padded
    with 0), except that a text longer than L keeps, with probability ``truncate_p``, a random window of its
    word pieces instead of the first ones (an augmentation for long definitions); ``[CLS]`` and ``[SEP]``
    stay at both ends either way.
    """
    import torch

    hf = tokenizer.tokenizer
    pieces = [hf.convert_tokens_to_ids(hf.tokenize(t.lower())) for t in texts]
    length = min(max(len(p) for p in pieces) + 2, max_tokens)
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    room = length - 2
    for i, row in enumerate(pieces):
        if len(row) > room:
            start = rng.randint(0, len(row) - room) if rng.random() < truncate_p else 0
            row = row[start:start + room]
        full = [tokenizer.cls_id, *row, tokenizer.sep_id]
        ids[i, : len(full)] = torch.tensor(full, dtype=torch.long)
    return ids, (ids > 0).long()
