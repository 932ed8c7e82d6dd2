"""Text normalisation shared by the vocabulary build and prompt resolution.

:func:`phrase_key` turns a phrase into a comparison key: lower case, punctuation as spaces, British spellings and
plurals folded, ordinals as numbers after the structure ("first rib" → "rib 1"), and a lone laterality word moved
to the front ("Kidneys (left)" → "left kidney"). Term names and user prompts go through the same function, so a
key match means "the same phrase up to spelling". The key is never shown to users and never sent to the model.
"""

from __future__ import annotations

import re
import unicodedata

LATERALITY = ("left", "right")

# Words that change nothing in a structure name.
_DROPPED_WORDS = frozenset({"the", "a", "an", "all", "entire", "whole", "sided", "side"})

_LATERALITY_ABBREVIATIONS = {"lt": "left", "rt": "right", "l": "left", "r": "right", "sinister": "left",
                             "dexter": "right"}

# British → American (SAT's own names mix both, e.g. "grey matter" but "tumor"; keys use one spelling).
_SPELLING = {
    "tumour": "tumor", "oesophagus": "esophagus", "oesophageal": "esophageal", "oedema": "edema",
    "haemorrhage": "hemorrhage", "haemorrhagic": "hemorrhagic", "haematoma": "hematoma", "grey": "gray",
    "caecum": "cecum", "centre": "center", "fibre": "fiber", "ischaemic": "ischemic", "ischaemia": "ischemia",
    "anaemia": "anemia", "oestrogen": "estrogen", "foetal": "fetal", "paediatric": "pediatric",
    "haemangioma": "hemangioma", "tumours": "tumors", "oedematous": "edematous",
    # Latin names TotalSegmentator and the knowledge file use for English terms.
    "clavicula": "clavicle", "claviculae": "clavicle",
    # One word for one finding.
    "infarct": "infarction", "infarcts": "infarction",
    # Radiotherapy structure names (AAPM TG-263: "Glnd_Submand_R", "OpticNrv_L", "Musc_Constrict").
    "bilaterally": "bilateral",
    "glnd": "gland", "submand": "submandibular", "nrv": "nerve", "musc": "muscle",
}

# Irregular plurals and Latin forms → singular.
_SINGULAR = {
    "vertebrae": "vertebra", "atria": "atrium", "hippocampi": "hippocampus", "thalami": "thalamus",
    "femora": "femur", "humeri": "humerus", "scapulae": "scapula", "cochleae": "cochlea", "amygdalae": "amygdala",
    "bronchi": "bronchus", "bronchie": "bronchus", "nuclei": "nucleus", "lenses": "lens", "gyri": "gyrus",
    "testes": "testis", "ovaries": "ovary", "corpora": "corpus", "cavities": "cavity",
    "canals": "canal", "processes": "process", "sinuses": "sinus", "meninges": "meninx", "foramina": "foramen",
    "ganglia": "ganglion", "ribs": "rib", "vertebras": "vertebra", "discs": "disc", "disks": "disc", "disk": "disc",
    "metastases": "metastasis", "metastasi": "metastasis", "neoplasia": "neoplasm", "carcinomata": "carcinoma",
    "foci": "focus", "masses": "mass", "diagnoses": "diagnosis",
}
# Singular words that end in "s" and must keep it.
_KEEP_S_ENDINGS = ("ss", "us", "is", "os")
_KEEP_S_WORDS = frozenset({"lens", "accumbens", "pons", "biceps", "triceps", "quadriceps", "diabetes", "series",
                           "pancreas", "iliopsoas", "psoas", "atlas", "vas", "gas", "bias"})

_SIDE_PREPOSITIONS = frozenset({"on", "of", "at", "in"})

_ORDINAL_WORDS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12,
}

# Two words written as one in SAT's names ("gall bladder" → "gallbladder").
_COMPOUNDS = {("gall", "bladder"): "gallbladder", ("brain", "stem"): "brainstem", ("eye", "ball"): "eyeball"}

# Couinaud liver segments are written in Roman numerals ("segment IV"); only after "segment" are they numbers.
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8}
_SEGMENT_ROMAN = re.compile(r"\b(segments?|couinaud)\s+(viii|vii|vi|iv|v|iii|ii|i)\b")

_DASHES = re.compile(r"[\u2010-\u2015\u2212]")
_ORDINAL_SUFFIX = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)\b")
_WORD_DIGITS = re.compile(r"\b([a-z]{3,})(\d{1,2})\b")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z][a-z])")  # "OpticChiasm", "SpinalCord"; not "mpMRI"
_TG263 = [(re.compile(p), r) for p, r in (
    (r"^[av]_(?=[a-z]{3})", ""),  # category prefixes "A_" (artery) and "V_" (vein): the name says it
    (r"_i$", " inferior"), (r"_s$", " superior"), (r"\bvenacava\b", "vena cava"),
)]


def light(text: str) -> str:
    """Lower case, unicode dashes as ``-``, ordinals as numbers, single spaces; punctuation kept."""
    text = _CAMEL.sub(" ", unicodedata.normalize("NFKC", text)).lower().strip()
    if "_" in text:
        for pattern, replacement in _TG263:
            text = pattern.sub(replacement, text)
    text = _DASHES.sub("-", text).replace("_", " ")
    text = _ORDINAL_SUFFIX.sub(r"\1", text)
    text = re.sub(r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b", lambda m: str(_ORDINAL_WORDS[m.group(1)]), text)
    text = _WORD_DIGITS.sub(r"\1 \2", text)  # "rib1" → "rib 1"; "l1", "t12" stay
    text = _SEGMENT_ROMAN.sub(lambda m: f"{m.group(1)} {_ROMAN[m.group(2)]}", text)
    return " ".join(text.split())


_SIDE_IN_PARENS = re.compile(r"\(\s*(left|right|lt|rt|l|r|both|bilateral)\s*\)", re.IGNORECASE)
# " - ", ":" and "( )" separate names; they never glue two words into one name ("liver - tumor").
HARD_SEPARATOR = re.compile(r"\s+[-\u2010-\u2015]\s+|:|\(|\)")


def sides_out_of_parens(text: str) -> str:
    """"Kidney (left)" → "Kidney left": a side in parentheses is part of the name, not a second name."""
    return _SIDE_IN_PARENS.sub(lambda m: f" {m.group(1)} ", text)


def singular(word: str) -> str:
    """One word in singular form (``kidneys`` → ``kidney``, ``arteries`` → ``artery``, ``pancreas`` unchanged)."""
    if word in _SINGULAR:
        return _SINGULAR[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_KEEP_S_ENDINGS) or word in _KEEP_S_WORDS:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    return word[:-1]


def canonical(word: str) -> str:
    """One lower-case word in the form keys use: American spelling, singular (``tumours`` → ``tumor``)."""
    return singular(_SPELLING.get(word, word))


def tokens(text: str) -> list[str]:
    """Canonical word list of a phrase (see module docstring); laterality is not moved here."""
    words = _NON_ALNUM.sub(" ", re.sub(r"[&+]", " and ", light(text).replace("'", ""))).split()
    out: list[str] = []
    for i, word in enumerate(words):
        if word in _LATERALITY_ABBREVIATIONS and len(words) > 1:
            follows_word = i + 1 < len(words) and not words[i + 1].isdigit() and words[i + 1] != "spine"
            ends_name = i == len(words) - 1 and words[i - 1].isalpha() and len(words[i - 1]) > 2
            if len(word) > 1 or (i == 0 and follows_word) or ends_name:
                word = _LATERALITY_ABBREVIATIONS[word]
        word = _SPELLING.get(word, word)
        word = singular(word)
        if word in _DROPPED_WORDS and len(words) > 1:
            continue
        if out and (out[-1], word) in _COMPOUNDS:
            out[-1] = _COMPOUNDS[(out[-1], word)]
            continue
        out.append(word)
    return out


def counts(text: str) -> bool:
    """A number before a plural is a count ("12 ribs"), not an ordinal ("12th rib", "left 12 rib")."""
    typed = [w for w in _NON_ALNUM.sub(" ", light(text)).split() if w not in ("the", "all", *LATERALITY)]
    if len(typed) < 2 or not typed[0].isdigit():
        return False
    return typed[1].isalpha() and canonical(typed[1]) != typed[1]


def phrase_key(text: str) -> str:
    """Comparison key of a phrase; a single laterality word anywhere moves to the front."""
    words = tokens(text)
    if len(words) > 2 and words[-1] in LATERALITY and words[-2] in _SIDE_PREPOSITIONS:  # "rib 7 on the right"
        del words[-2]
    sides = [w for w in words if w in LATERALITY]
    if len(sides) == 1 and words[0] != sides[0]:
        words.remove(sides[0])
        words.insert(0, sides[0])
    # An ordinal before the structure goes after it: "left 1 rib" → "left rib 1", "1 lumbar vertebra" → ...
    first = 1 if words and words[0] in LATERALITY else 0
    if (len(words) > first + 1 and words[first].isdigit() and not any(w.isdigit() for w in words[first + 1:])
            and not counts(text)):
        words.append(words.pop(first))
    return " ".join(words)
