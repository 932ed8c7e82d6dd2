"""DICOM codes of the trained terms (SegmentedPropertyCategory / Type, laterality modifier, anatomic region).

Read from ``anatomy_codes.json`` (package data, built by ``python -m satseg.vocabulary.build_codes``, which documents
how each term is coded). Every code is a dict ``{"scheme", "value", "meaning"}``; ``scheme`` is ``SCT`` (SNOMED CT,
from the DICOM standard's context groups as pydicom ships them) or ``99SATSEG`` (satseg's documented local codes).
No torch import.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from satseg.vocabulary.build_codes import CATEGORY, LOCAL_SCHEME, SCT, local_code

__all__ = ["LOCAL_SCHEME", "anatomy_code", "segment_code"]


@lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("satseg.vocabulary").joinpath("anatomy_codes.json").read_text(encoding="utf-8")
    return json.loads(text)["terms"]


def anatomy_code(term: str) -> dict:
    """The codes of one trained term.

    Returns:
        ``{"category": code, "type": code, "modifier": code | None, "region": code | None, "source": how}``;
        ``source`` is ``"name"`` (matched a code meaning), ``"curated"`` (the reviewed table) or ``"local"``.

    Raises:
        KeyError: ``term`` is not a trained term.
    """
    entry = _table()[term]
    return {key: (dict(value) if isinstance(value, dict) else value) for key, value in entry.items()}


def segment_code(terms: list[str], prompt: str) -> dict:
    """The codes of one output (a prompt resolved to one or several trained terms).

    One term: its code. Several terms (a union, e.g. ``kidneys`` → left + right kidney) that share one type code:
    that type, with their modifier when they all have the same one, else none. Otherwise the prompt's own local
    code (``99SATSEG``, value ``P`` + a hash of the prompt) with the terms' common category (Anatomical Structure
    when they differ).
    """
    codes = [anatomy_code(t) for t in terms]
    if len(codes) == 1:
        return codes[0]
    types = {_key(c["type"]) for c in codes}
    categories = {_key(c["category"]) for c in codes}
    category = codes[0]["category"] if len(categories) == 1 else _code(*CATEGORY["structure"])
    if len(types) == 1:
        modifiers = {_key(c["modifier"]) if c["modifier"] else None for c in codes}
        regions = {_key(c["region"]) if c["region"] else None for c in codes}
        return {"category": category, "type": codes[0]["type"],
                "modifier": codes[0]["modifier"] if len(modifiers) == 1 else None,
                "region": codes[0]["region"] if len(regions) == 1 else None, "source": "union"}
    return {"category": category, "type": local_code(prompt, prefix="P"), "modifier": None, "region": None,
            "source": "local"}


def _key(code: dict) -> tuple[str, str]:
    return code["scheme"], code["value"]


def _code(value: str, meaning: str) -> dict:
    return {"scheme": SCT, "value": value, "meaning": meaning}
