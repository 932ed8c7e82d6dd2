"""File names for prompts: ``"Left Kidney"`` → ``left_kidney``.

A name is lowercase ASCII ``[a-z0-9_]``, never empty, at most ``MAX_NAME_LENGTH`` characters, and never
one of the names Windows reserves for devices (``con``, ``nul``, ``com1``, ...), so the same prompt gives
the same file name on every filesystem, case-sensitive or not.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_NAME_LENGTH = 100
"""Longest stem; leaves room for ``_<n>`` and ``.nii.gz`` within every filesystem's 255-byte limit."""

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(10)}
MAX_FOLDER_NAME_BYTES = 200
"""Longest case folder name in UTF-8 bytes (room for suffixes within the 255-byte limit)."""
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake_case(prompt: str) -> str:
    """One prompt's file stem before collisions are resolved.

    Accents are folded (``"Hüfte"`` → ``hufte``), camel case is split (``"LeftKidney"`` → ``left_kidney``),
    every run of other characters becomes one ``_``: ``"Lumbar vertebrae 5 (L5)"`` →
    ``lumbar_vertebrae_5_l5``. A prompt with no usable character becomes ``structure``.
    """
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    text = _CAMEL_BOUNDARY.sub("_", text).lower()
    name = _NOT_WORD.sub("_", text).strip("_")
    name = name[:MAX_NAME_LENGTH].rstrip("_")
    if not name:
        name = "structure"
    if name in _WINDOWS_RESERVED:
        name += "_"
    return name


def output_names(prompts: list[str], reserved: Iterable[str] = ()) -> list[str]:
    """A distinct file stem per prompt, in prompt order.

    Every prompt whose :func:`snake_case` name is free keeps it, the first occurrence winning; later
    duplicates get the smallest free ``_2``, ``_3``, ... suffix. A natural name is never taken by
    another prompt's suffix: ``["liver", "Liver", "liver 2"]`` → ``liver``, ``liver_3``, ``liver_2``.
    The result depends only on the list, so reruns and every case of a cohort name files alike.

    Args:
        prompts: the prompts as the user wrote them.
        reserved: stems already used by other outputs (e.g. the multilabel file); never returned.
    """
    bases = [snake_case(p) for p in prompts]
    taken = set(reserved)
    names: list[str | None] = [None] * len(bases)
    for i, base in enumerate(bases):
        if base not in taken:
            names[i] = base
            taken.add(base)
    for i, base in enumerate(bases):
        if names[i] is not None:
            continue
        n = 2
        while f"{base}_{n}" in taken:
            n += 1
        names[i] = f"{base}_{n}"
        taken.add(names[i])
    return names  # type: ignore[return-value]


def safe_folder_name(name: str) -> str:
    """``name`` made into one harmless path component, for case folders named after scans or jobs.

    Path separators and control characters become ``_``, leading dots become ``_`` (so ``..``, ``.`` and hidden
    names cannot be made), trailing dots and spaces go (Windows drops them), an empty result is ``case``, Windows
    device names get a ``_`` and the name is cut to :data:`MAX_FOLDER_NAME_BYTES` bytes of UTF-8. Anything else
    (letters of any script, digits, spaces, punctuation) is kept, so ordinary names are unchanged.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = "".join("_" if c in "/\\" or unicodedata.category(c).startswith("C") else c for c in text).strip()
    stripped = text.lstrip(".")
    text = "_" * (len(text) - len(stripped)) + stripped
    text = text.rstrip(". ")
    encoded = text.encode("utf-8")[:MAX_FOLDER_NAME_BYTES]
    text = encoded.decode("utf-8", "ignore").rstrip(". ")
    if not text:
        return "case"
    if text.split(".")[0].lower() in _WINDOWS_RESERVED:
        text = "_" + text
    return text
