"""What reading one phrase gives: a match on trained terms, an ambiguity, or a refusal with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Match:
    terms: tuple[str, ...]
    method: str
    how: str
    lossy: bool = False  # a word was dropped on the way ("gland", "bone", "region"): never across a separator
    group: str | None = None  # the named group the terms are the members of ("gluteal muscles")


@dataclass(frozen=True)
class Ambiguous:
    phrase: str
    options: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    """A phrase understood well enough to say why it cannot be resolved (a finding without a lesion term)."""

    message: str
    suggestions: tuple[str, ...]
    group: str | None = None  # a named group that is refused ("liver lobes": no quadrate lobe is trained)


def resolved(parts) -> bool:
    return all(isinstance(found, (Match, Ambiguous)) for _, found in parts)
