"""Findings on an organ ("renal mass", "hepatic metastases", "focal lesion of the pancreas") → lesion terms.

The lesion terms of an organ are SAT's lesion classes (its ``abnormal`` list, and their sided variants) named
``<organ> <type>``: "kidney tumor", "kidney cyst", "lung nodule", "colon cancer", "myocardial scar", "brain
edema", "head and neck tumor". The rule:

1. a phrase that is a lesion term or its synonym is that term ("brain tumour", "stroke lesion", "COVID-19
   lesions" → covid-19 infection; "tumour lesions" on PET → tumor);
2. finding words are typed: tumour (tumour, neoplasm, cancer, carcinoma, malignancy, primary, metastasis),
   cyst, nodule, haemorrhage, oedema, scar, effusion; general (lesion, mass, abnormality);
3. organ + typed word → the organ's lesion terms of that type;
4. organ + general word (lesion, mass, abnormality, finding, focus) → **the union of the organ's lesion-type terms
   trained for the scan's modality**: tumour, nodule, cyst, haemorrhage and scar types; an effusion (fluid in a
   space) is never a lesion ("lung lesions" = lung nodule + lung tumor). Where the organ also has an oedema term
   (whether oedema counts is the clinician's call: "myocardial lesions"), or other lesion terms lie in the organ
   without its name (:data:`LESIONS_INSIDE`: the brain's stroke, white matter hyperintensities, intracranial
   haemorrhage), the prompt is refused with all of them as options — never a partial set. The word
   before the finding must name an organ: a qualifier that is only part of a lesion term's name ("intracranial
   lesion", "nasopharyngeal mass") is refused;
4a. a typed finding word must agree with the lesion term it is put on ("hemorrhagic stroke", "stroke edema",
   "covid nodules" are refused), and two different types in one phrase ("lung tumor cyst") are refused;
4b. metastases named with their primary ("metastases from lung cancer", "colon cancer metastases") are refused:
   metastases lie elsewhere, and no term segments them by their primary;
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
# Lesion types a general finding word asks for (no oedema, no effusion: they are no lesions).
GENERAL_TYPES = frozenset({"tumor", "nodule", "cyst", "hemorrhage", "scar"})
# Lesion terms without a lesion-type word in their name, by type (None: a disease, no single type).
TERM_TYPES = {"vestibular schwannoma": "tumor", "stroke": None, "covid-19 infection": None,
              "pulmonary embolism": None, "white matter hyperintensities": None}
# Lesion terms that lie in an organ without its name: a general word on the organ must not leave them out.
LESIONS_INSIDE = {"brain": ("stroke", "white matter hyperintensities", "intracranial hemorrhage")}
METASTASIS_WORDS = frozenset({"metastasis", "metastatic", "met"})

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
        return set(GENERAL_TYPES), ("a general finding word (lesion, mass, abnormality) means the union of all "
                                    "lesion terms trained (tumor, nodule, cyst, hemorrhage, scar; never an "
                                    "effusion; refused where an edema term could also be meant)")
    return specific, f"{' '.join(finding_words)!r} means the {'/'.join(sorted(specific))}-type lesion terms trained"


def term_type(name: str, key_words: list[str]) -> str | None:
    """The lesion type of a lesion term: from :data:`TERM_TYPES`, else a type word in its name."""
    if name in TERM_TYPES:
        return TERM_TYPES[name]
    return next((LESION_TYPES[w] for w in reversed(key_words) if w in LESION_TYPES), None)
