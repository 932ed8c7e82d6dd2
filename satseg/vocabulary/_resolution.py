"""What resolving a prompt gives: a :class:`Resolution` (the trained terms and every step), or a
:class:`PromptResolutionError` (the refusal, with suggestions and the steps read before it)."""

from __future__ import annotations

from dataclasses import dataclass

from satseg.errors import PromptError


@dataclass(frozen=True)
class Resolution:
    """How a prompt became the trained terms sent to the model (their masks are unioned)."""

    prompt: str  # as given
    terms: tuple[str, ...]  # trained term names, lower case as in SAT's terminology list
    method: str  # "exact" | "synonym" | "word dropped" ("prostate gland" → prostate) | "totalsegmentator" |
    #              "abbreviation" | "vertebra level" ("L3") | "composition" | "finding" | "group" | "free-text"
    modality: str | None = None
    warnings: tuple[str, ...] = ()
    explanation: str = ""
    context: tuple[str, ...] = ()  # words set aside, as "modality: 'contrast enhanced ct'"
    corrections: tuple[str, ...] = ()  # "'splen' → 'spleen'"
    steps: tuple[str, ...] = ()  # how it was read, in order (what --explain shows)
    groups: tuple[dict, ...] = ()  # named groups read: {"group", "phrase", "members", "rule", "source"}

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "terms": list(self.terms), "method": self.method,
                "modality": self.modality, "warnings": list(self.warnings), "explanation": self.explanation,
                "context": list(self.context), "corrections": list(self.corrections), "steps": list(self.steps),
                "groups": [dict(g) for g in self.groups]}


class PromptResolutionError(PromptError):
    """A prompt that resolves to no trained term (``suggestions``: up to 5 close terms, the likeliest first), to
    two structures (``ambiguous`` is True and ``suggestions`` lists the meanings), or to a term not trained on the
    scan's modality (``untrained_modality`` is True). ``steps`` says how far the reading got."""

    def __init__(self, message: str, *, prompt: str, suggestions: tuple[str, ...] = (), ambiguous: bool = False,
                 untrained_modality: bool = False, steps: tuple[str, ...] = (), group: dict | None = None):
        super().__init__(message)
        self.prompt = prompt
        self.suggestions = tuple(suggestions)
        self.ambiguous = ambiguous
        self.untrained_modality = untrained_modality
        self.steps = tuple(steps)
        self.group = group  # the named group refused: {"group", "members", "missing", "rule", "source"}

    def to_dict(self) -> dict:
        out = {"prompt": self.prompt, "refused": str(self), "suggestions": list(self.suggestions),
               "ambiguous": self.ambiguous, "untrained_modality": self.untrained_modality, "steps": list(self.steps)}
        if self.group is not None:
            out["group"] = dict(self.group)
        return out
