"""Findings on an organ ("renal mass", "hepatic metastases", "focal lesion of the pancreas") → lesion terms.

The lesion terms of an organ are the trained lesion classes named ``<organ> tumor|cancer|nodule|cyst``
("kidney tumor", "kidney cyst", "lung nodule", "colon cancer", "head and neck tumor"). The rule:

- a general finding word (lesion, mass, abnormality) means **the union of all lesion terms trained for that
  organ and the scan's modality**;
- a cancer word (tumour, neoplasm, cancer, carcinoma, malignancy, primary, metastasis) means the organ's tumour
  terms (``tumor``/``cancer``), a nodule its ``nodule`` terms (else its tumour terms), a cyst its ``cyst`` terms;
- terms trained on the modality are kept when there are any; otherwise all of them go on to the modality check,
  which refuses (or warns with ``allow_untrained_modality``);
- a sided organ ("left renal mass") is refused when the unsided organ has lesion kinds no sided term covers;
- no organ, or an organ without such a term, is refused with the lesion terms as suggestions.
"""

from __future__ import annotations

LESION_KINDS = {"tumor": "tumor", "cancer": "tumor", "nodule": "nodule", "cyst": "cyst"}  # last word of a term

FINDING_WORDS = {
    "lesion": "any", "mass": "any", "abnormality": "any", "finding": "any", "focus": "any",
    "tumor": "tumor", "neoplasm": "tumor", "cancer": "tumor", "carcinoma": "tumor", "adenocarcinoma": "tumor",
    "malignancy": "tumor", "malignant": "tumor", "primary": "tumor", "metastasis": "tumor", "met": "tumor",
    "metastatic": "tumor", "neoplastic": "tumor", "tumoral": "tumor", "oncologic": "tumor",
    "nodule": "nodule", "nodular": "nodule", "cyst": "cyst", "cystic": "cyst",
}
MODIFIERS = frozenset({"focal", "solitary", "multiple", "suspicious", "known", "space", "occupying", "solid",
                       "disease", "deposit", "burden", "any", "possible", "suspected", "cell", "squamous", "clear",
                       "ductal"})
LINKS = frozenset({"of", "in", "on", "within", "involving", "at", "from", "affecting", "arising", "to", "the"})


def wanted_kinds(finding_words: list[str]) -> tuple[set[str], str]:
    """Lesion kinds a set of finding words asks for, and the rule's wording for --explain."""
    kinds = {FINDING_WORDS[w] for w in finding_words}
    specific = kinds - {"any"}
    if not specific:
        return {"tumor", "nodule", "cyst"}, "a general finding word means the union of all lesion terms trained"
    return specific, f"'{' '.join(finding_words)}' means the {'/'.join(sorted(specific))} lesion terms trained"
