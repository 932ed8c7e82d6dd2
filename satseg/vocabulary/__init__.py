"""The prompt vocabulary: SAT's 498 trained ``modality_name`` entries, synonyms, TotalSegmentator names and
abbreviations, and the resolution of user prompts to trained terms. Imports no torch.

    >>> from satseg.vocabulary import resolve
    >>> resolve("kidneys, left", "CT").terms
    ('left kidney',)
"""

from satseg.vocabulary.catalog import (
    MODALITIES,
    ModalityTerm,
    TermEntry,
    modality_terms,
    normalize_modality,
    terms,
)
from satseg.vocabulary.resolve import PromptResolutionError, Resolution, resolve, suggest

__all__ = [
    "MODALITIES",
    "ModalityTerm",
    "PromptResolutionError",
    "Resolution",
    "TermEntry",
    "modality_terms",
    "normalize_modality",
    "resolve",
    "suggest",
    "terms",
]
