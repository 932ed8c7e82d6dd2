"""The trained vocabulary as data: terms with modalities, body regions and source datasets; modality names.

Loaded once from ``vocabulary.json`` (package data written by :mod:`satseg.vocabulary.build`); no torch.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from satseg.errors import InputError
from satseg.vocabulary._text import light, phrase_key

MODALITIES = ("ct", "mri", "pet")

_MRI_WORDS = frozenset({
    "mri", "mr", "cmr", "mra", "nmr", "magnetic", "resonance", "t1", "t2", "t1w", "t2w", "t1c", "t1ce", "t1gd",
    "t1wi", "t2wi", "t2star", "flair", "dwi", "adc", "swi", "dixon", "pd", "pdw", "dti", "bold", "stir", "mprage",
})
_CT_WORDS = frozenset({"ct", "cta", "cect", "ncct", "hrct", "cbct", "ctpa", "computed", "tomography"})
_PET_WORDS = frozenset({"pet", "pt", "fdg", "psma", "suv"})  # PT: the DICOM Modality of PET


@dataclass(frozen=True)
class ModalityTerm:
    """One trained ``modality_name`` entry of SAT's terminology list (498 in all)."""

    entry: str  # "ct_left kidney"
    name: str  # "left kidney": the text sent to the model
    modality: str  # "ct" | "mri" | "pet"
    regions: tuple[str, ...]
    datasets: tuple[str, ...]
    abnormal: bool  # a lesion class

    def to_dict(self) -> dict:
        return {"entry": self.entry, "name": self.name, "modality": self.modality, "regions": list(self.regions),
                "datasets": list(self.datasets), "abnormal": self.abnormal}


@dataclass(frozen=True)
class TermEntry:
    """A trained term name with everything it was trained on, over all modalities."""

    name: str
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    datasets: tuple[str, ...]
    abnormal: bool
    entries: tuple[ModalityTerm, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "modalities": list(self.modalities), "regions": list(self.regions),
                "datasets": list(self.datasets), "abnormal": self.abnormal}


class Vocabulary:
    """Parsed ``vocabulary.json`` with the look-up tables resolution needs."""

    def __init__(self, document: dict):
        self.document = document
        self.entries = tuple(ModalityTerm(e["entry"], e["name"], e["modality"], tuple(e["regions"]),
                                          tuple(e["datasets"]), e["abnormal"]) for e in document["entries"])
        by_name: dict[str, list[ModalityTerm]] = {}
        for entry in self.entries:
            by_name.setdefault(entry.name, []).append(entry)
        self.terms = {name: _term_entry(name, items) for name, items in sorted(by_name.items())}
        self.term_by_key = {phrase_key(name): name for name in self.terms}
        self.aliases: dict[str, dict] = document["aliases"]
        self.ambiguous: dict[str, list[str]] = document["ambiguous"]
        self.alias_keys: dict[str, list[str]] = {}
        for key, alias in self.aliases.items():
            self.alias_keys.setdefault(alias["term"], []).append(key)
        self.adjectives: dict[str, str] = document["adjectives"]
        self.knowledge_words = frozenset(document.get("knowledge_words", ()))  # real words, never corrected
        self.groups: dict[str, dict] = document.get("groups", {})  # name → members, missing, refused, source
        self.group_keys: dict[str, str] = document.get("group_keys", {})  # name key → group name
        self.vertebra_levels: dict[str, str] = dict(document["vertebra_levels"])
        self.level_order = [abbr for abbr, _ in document["vertebra_levels"]]
        self.totalseg = {ts.lower(): term for task in ("total", "total_mr")
                         for ts, term in document["totalsegmentator"][task].items() if term is not None}
        self.regions = sorted({r for e in self.entries for r in e.regions})
        self.datasets = sorted({d for e in self.entries for d in e.datasets})

    def modalities_of(self, name: str) -> tuple[str, ...]:
        return self.terms[name].modalities


def _term_entry(name: str, items: list[ModalityTerm]) -> TermEntry:
    return TermEntry(
        name=name,
        modalities=tuple(m for m in MODALITIES if any(e.modality == m for e in items)),
        regions=tuple(sorted({r for e in items for r in e.regions})),
        datasets=tuple(sorted({d for e in items for d in e.datasets})),
        abnormal=any(e.abnormal for e in items),
        entries=tuple(items),
    )


@lru_cache(maxsize=1)
def load() -> Vocabulary:
    """The packaged vocabulary (read once)."""
    text = resources.files("satseg.vocabulary").joinpath("vocabulary.json").read_text(encoding="utf-8")
    return Vocabulary(json.loads(text))


def normalize_modality(text: str) -> str:
    """``"CT"``, ``"MRI T1"``, ``"flair"``, ``"PET/CT"`` … → ``"ct"`` | ``"mri"`` | ``"pet"``; InputError otherwise.

    PET wins over CT in combined names (the PET volume is the one prompted with PET terms).
    """
    words = set(re.split(r"[^a-z0-9]+", light(str(text))))
    if words & _PET_WORDS:
        return "pet"
    if words & _MRI_WORDS or any(re.fullmatch(r"t[12]\w*", w) for w in words):
        return "mri"
    if words & _CT_WORDS:
        return "ct"
    raise InputError(f"unknown modality {text!r}; use one of: ct, mri, pet "
                     "(MRI sequence names such as t1, t2, flair, dwi also mean mri)")


def _check_region(region: str, vocabulary: Vocabulary) -> str:
    wanted = " ".join(light(region).replace("-", " ").split())
    if wanted not in vocabulary.regions:
        raise InputError(f"unknown region {region!r}; use one of: {', '.join(vocabulary.regions)}")
    return wanted


def _check_dataset(dataset: str, vocabulary: Vocabulary) -> str:
    by_lower = {d.lower(): d for d in vocabulary.datasets}
    if dataset.lower() in by_lower:
        return by_lower[dataset.lower()]
    close = difflib.get_close_matches(dataset.lower(), list(by_lower), n=5, cutoff=0.5)
    hint = ", ".join(by_lower[c] for c in close) if close else f"{len(vocabulary.datasets)} datasets"
    raise InputError(f"unknown dataset {dataset!r}; close names: {hint} (see 'satseg terms --json')")


def _matches_query(name: str, query_key: str, vocabulary: Vocabulary) -> bool:
    if query_key in phrase_key(name):
        return True
    return any(query_key in key for key in vocabulary.alias_keys.get(name, ()))


def modality_terms(modality: str | None = None, region: str | None = None, dataset: str | None = None,
                   query: str | None = None) -> list[ModalityTerm]:
    """Trained ``modality_name`` entries matching every given filter (all 498 without filters).

    ``query`` matches term names and their synonyms, abbreviations and TotalSegmentator names by substring
    after normalisation (``"kidneys"`` finds ``"left kidney"``; ``"ivc"`` finds ``"inferior vena cava"``).
    """
    vocabulary = load()
    modality = normalize_modality(modality) if modality else None
    region = _check_region(region, vocabulary) if region else None
    dataset = _check_dataset(dataset, vocabulary) if dataset else None
    query_key = phrase_key(query) if query else ""
    names = {n for n in vocabulary.terms if _matches_query(n, query_key, vocabulary)} if query_key else None
    return [e for e in vocabulary.entries
            if (modality is None or e.modality == modality) and (region is None or region in e.regions)
            and (dataset is None or dataset in e.datasets) and (names is None or e.name in names)]


def terms(modality: str | None = None, region: str | None = None, dataset: str | None = None,
          query: str | None = None) -> list[TermEntry]:
    """Trained term names (451 without filters) having at least one entry that matches every filter.

    Each :class:`TermEntry` describes the term over all modalities, not only the filtered one.
    """
    vocabulary = load()
    names = {e.name for e in modality_terms(modality, region, dataset, query)}
    return [vocabulary.terms[n] for n in sorted(names)]
