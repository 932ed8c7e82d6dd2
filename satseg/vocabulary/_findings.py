"""Findings on an organ ("renal mass", "hepatic metastases", "focal lesion of the pancreas") → lesion terms.

The lesion terms of an organ are SAT's lesion classes (its ``abnormal`` list, and their sided variants) named
``<organ> <type>``: "kidney tumor", "kidney cyst", "lung nodule", "colon cancer", "myocardial scar", "brain
edema", "head and neck tumor". The rule:

1. a phrase that is a lesion term or its synonym is that term ("brain tumour", "stroke lesion", "COVID-19
   lesions" → covid-19 infection; "tumour lesions" on PET → tumor);
2. finding words are typed: tumour (tumour, neoplasm, cancer, carcinoma, malignancy, primary, metastasis),
   cyst, nodule, haemorrhage, oedema, scar, effusion; general (lesion, mass, abnormality);
3. organ + typed word → the organ's lesion terms of that type;
4. organ + general word → **the union of all lesion terms trained for that organ and the scan's modality**;
5. no such term → refusal (the modality check refuses a term trained only on another modality, or warns with
   ``allow_untrained_modality``); a sided organ ("left renal mass") is refused when the unsided organ has lesion
   types no sided term covers; no organ → refusal with the lesion terms as suggestions.
"""

from __future__ import annotations

# Last word of a lesion term → its type.
LESION_TYPES = {"tumor": "tumor", "cancer": "tumor", "nodule": "nodule", "cyst": "cyst", "hemorrhage": "hemorrhage",
                "edema": "edema", "scar": "scar", "effusion": "effusion"}

FINDING_WORDS = {
    "lesion": "any", "mass": "any", "abnormality": "any", "finding": "any", "focus": "any",
    "tumor": "tumor", "neoplasm": "tumor", "cancer": "tumor", "carcinoma": "tumor", "adenocarcinoma": "tumor",
    "malignancy": "tumor", "malignant": "tumor", "primary": "tumor", "metastasis": "tumor", "met": "tumor",
    "metastatic": "tumor", "neoplastic": "tumor", "tumoral": "tumor",
    "nodule": "nodule", "nodular": "nodule", "cyst": "cyst", "cystic": "cyst",
    "hemorrhage": "hemorrhage", "bleed": "hemorrhage", "bleeding": "hemorrhage", "hematoma": "hemorrhage",
    "hemorrhagic": "hemorrhage", "edema": "edema", "edematous": "edema", "scar": "scar", "scarring": "scar",
    "fibrosis": "scar", "infarction": "scar", "effusion": "effusion",
}
MODIFIERS = frozenset({"focal", "solitary", "multiple", "suspicious", "known", "space", "occupying", "solid",
                       "disease", "deposit", "burden", "any", "possible", "suspected", "cell", "squamous", "clear",
                       "ductal", "acute", "subacute", "chronic", "peritumoral", "perilesional", "vasogenic",
                       "hypermetabolic", "hypodense", "hyperdense", "hypoattenuating", "hyperattenuating",
                       "hyperintense", "hypointense", "avid", "fdg", "active", "metabolically"})
LINKS = frozenset({"of", "in", "on", "within", "involving", "at", "from", "affecting", "arising", "to", "the"})


def wanted_types(finding_words: list[str]) -> tuple[set[str], str]:
    """Lesion types a set of finding words asks for, and the rule's wording for --explain."""
    types = {FINDING_WORDS[w] for w in finding_words}
    specific = types - {"any"}
    if not specific:
        return set(LESION_TYPES.values()), ("a general finding word (lesion, mass, abnormality) means the union of "
                                            "all lesion terms trained")
    return specific, f"{' '.join(finding_words)!r} means the {'/'.join(sorted(specific))}-type lesion terms trained"
