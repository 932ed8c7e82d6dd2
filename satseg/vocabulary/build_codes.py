"""Build ``anatomy_codes.json``: a DICOM code (category, type, laterality modifier, region) for every trained term.

Run ``python -m satseg.vocabulary.build_codes`` (writes the file next to this module; ``--check`` only compares).
The result depends only on ``vocabulary.json``, the table below and pydicom's code dictionaries (the DICOM standard's
context groups as pydicom ships them), so the build is reproducible; the pydicom version is recorded in the file.

How a term gets its codes, in this order:

1. A side in front (``left`` / ``right``) becomes the laterality modifier (SCT 7771000 Left / 24028007 Right, CID 244)
   and the rest of the term is coded.
2. :data:`CURATED`: a reviewed table for the terms whose names do not match a code meaning (other word order,
   synonyms, lesions, vertebra levels, the SAT spellings), each naming an SCT code meaning of pydicom's dictionary
   (checked at build time: a misspelt meaning fails the build), or ``None`` for "no standard code, use the local
   one" where a near match would be wrong.
3. A normalised name match (case, punctuation, plural) against the meanings of the SCT concepts in the anatomic and
   segmentation context groups (:data:`CIDS`, the segmentation property types of CID 7151 first).
4. Otherwise a local code: scheme ``99SATSEG`` (a private coding scheme, PS3.16 8.2: designators starting ``99``),
   value ``T`` + the first 12 hex digits of SHA-256 of the term (stable, at most 16 characters for SH), meaning the
   term itself.

Category (CID 7150): Morphologically Abnormal Structure (SCT 49755003) for lesion terms (the vocabulary's
``abnormal`` flag); Tissue (SCT 85756007) for codes of CID 7166 (tissue types); Anatomical Structure (SCT 91723000; CID 7150 as pydicom ships it, not the older 123037004)
otherwise. Lesion terms named after an organ (``liver tumor``) get the organ as ``region`` (AnatomicRegionSequence).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import namedtuple
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "anatomy_codes.json"
LOCAL_SCHEME = "99SATSEG"
SCT = "SCT"
# context groups searched, in order of preference: segmentation property types, then anatomic regions
CIDS = (7151, 7152, 7153, 7154, 7155, 7156, 7160, 7166, 7159, 7140, 4031, 4030, 4)
CATEGORY = {
    "structure": ("91723000", "Anatomical Structure"),
    "tissue": ("85756007", "Tissue"),
    "abnormal": ("49755003", "Morphologically Abnormal Structure"),
}
SIDES = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}

# term (without its side) → what to code it with; checked at build time against pydicom's SCT dictionary (a code or
# meaning it does not know fails the build). A string: an SCT code meaning (any case); a (value, meaning) pair: an
# SCT code whose dictionary meaning is a long form ("... structure (body structure)"); a Lesion: a morphologic type
# and the organ it is in (or None); None: no standard code fits, the local code is used (a near match would be wrong).
Lesion = namedtuple("Lesion", "type region")
CURATED: dict = {
    "left heart atrium": "Left atrium",  # sided terms with their own code: no laterality modifier
    "right heart atrium": "Right atrium",
    "left heart ventricle": "Left ventricle",
    "right heart ventricle": "Right ventricle",
    "urinary bladder": "Bladder",
    "lens": "Lens",
    "lacrimal gland": "Lacrimal gland",
    "brachiocephalic vein": "Brachiocephalic vein",
    "pallidum": "Globus Pallidus",
    "intestine": None,  # small and large together: no single code in the dictionaries
    "small bowel": "Small intestine",
    "bronchie": "Bronchus",
    "spinal canal": ("61853006", "Spinal canal"),
    "lung upper lobe": "Upper lobe of lung",
    "lung lower lobe": "Lower lobe of lung",
    "lung middle lobe": "Middle lobe of right lung",
    "heart atrium": "Atrium",
    "heart ventricle": "Ventricle",
    "heart ascending aorta": "Ascending aorta",
    "lateral ventricle": "Lateral Ventricle",
    "myocardium": None,  # only "Left Ventricle Myocardium" is in the dictionaries; SAT's mask is the whole heart wall
    "iliac artery": "Common iliac artery",
    "iliac vena": "Common iliac vein",
    "carotid artery": "Carotid Artery",
    "brachiocephalic trunk": ("12691009", "Brachiocephalic trunk"),
    "celiac trunk": ("57850000", "Celiac trunk"),
    "subclavian artery": ("36765005", "Subclavian artery"),
    "thyroid": "Thyroid",
    "thyroid gland": "Thyroid",
    "femur bone": "Femur",
    "head of femur": ("2812003", "Head of femur"),
    "tibia bone": ("12611008", "Tibia"),
    "rib cartilage": "Costal Cartilage",
    "manubrium of sternum": "Manubrium of sternum",
    "vertebrae": "Vertebra",
    "cervical vertebrae": "Cervical spine",
    "thoracic vertebrae": "Thoracic spine",
    "lumbar vertebrae": "Lumbar spine",
    "autochthon": "Erector spinae muscle",
    "eyeball": "Eyeball",
    "brainstem": "Brain Stem",
    "pituitary gland": "Pituitary",
    "oral cavity": ("74262004", "Oral cavity"),
    "nasal cavity": ("279549004", "Nasal cavity"),
    "optic nerve": ("18234004", "Optic nerve"),
    "larynx glottis": ("1307006", "Glottis"),
    "larynx supraglottis": ("119255006", "Supraglottis"),
    "buccal mucosa": ("16811007", "Buccal mucosa"),
    "lips": "Lip",
    "uterocervix": "Cervix",
    "grey matter": "Gray Matter",
    "white matter": "White Matter",
    "thoracic cavity": ("43799004", "Thoracic cavity"),
    "caudate lobe": ("71133005", "Caudate lobe of liver"),
    "portal vein and splenic vein": None,  # two vessels in one mask: no single code
    "sacral vertebrae 1 (s1)": None,  # S1 is part of the sacrum, not the sacrum
    "lumbar vertebrae 6 (l6)": None,  # a transitional vertebra
    "liver vessel": None,
    "heart tissue": None,
    "tumor": Lesion("Neoplasm", None),
    "brain tumor": Lesion("Neoplasm", "Brain"),
    "enhancing brain tumor": Lesion("Neoplasm", "Brain"),
    "necrotic brain tumor core": Lesion("Necrosis", "Brain"),
    "brain edema": Lesion("Edema", "Brain"),
    "colon cancer": Lesion("Neoplasm", "Colon"),
    "liver tumor": Lesion("Neoplasm", "Liver"),
    "lung tumor": Lesion("Neoplasm", "Lung"),
    "pancreas tumor": Lesion("Neoplasm", "Pancreas"),
    "kidney tumor": Lesion("Neoplasm", "Kidney"),
    "kidney cyst": Lesion("Cyst", "Kidney"),
    "head and neck tumor": Lesion("Neoplasm", None),
    "nasopharyngeal tumor": Lesion("Neoplasm", "Nasopharynx"),
    "vestibular schwannoma": Lesion("Neoplasm", None),
    "lung nodule": Lesion("Nodule", "Lung"),
    "intracranial hemorrhage": Lesion("Hemorrhage", "Brain"),
    "myocardial scar": Lesion("Scar tissue", None),
    "myocardial edema": Lesion("Edema", None),
    "heart atrium scar": Lesion("Scar tissue", "Atrium"),
    "pulmonary embolism": Lesion("Embolus", "Pulmonary artery"),
    "lung effusion": None,  # pleural effusion is a finding, not in the structure groups
    "covid-19 infection": None,
    "stroke": None,
    "white matter hyperintensities": None,
}


def _concepts() -> tuple[dict, dict, dict]:
    """Look-ups over pydicom's SCT concepts, each value (code, meaning, cids): normalised meaning → concept for the
    concepts of :data:`CIDS` (first CID first); lower-case meaning → concept and code → meanings over all SCT
    concepts (for :data:`CURATED`; concepts of :data:`CIDS` first)."""
    from pydicom.sr._concepts_dict import concepts

    rank = {cid: i for i, cid in enumerate(CIDS)}
    found = []
    for codes in concepts[SCT].values():
        for code, (meaning, cids) in codes.items():
            found.append((min([rank[c] for c in cids if c in rank], default=len(CIDS)), meaning, code, tuple(cids)))
    by_name: dict = {}
    by_meaning: dict = {}
    by_code: dict = {}
    for order, meaning, code, cids in sorted(found):
        if order < len(CIDS):
            by_name.setdefault(_normalise(meaning), (code, meaning, cids))
        by_meaning.setdefault(meaning.lower(), (code, meaning, cids))
        by_code.setdefault(code, (code, meaning, cids))
    return by_name, by_meaning, by_code


def _normalise(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    singular = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")) else w
                for w in words]
    return " ".join(w for w in singular if w not in ("structure", "of", "the"))


def _vertebra(name: str) -> str | None:
    """``cervical vertebrae 1 (c1)`` → ``C1 vertebra`` (the dictionaries' meaning)."""
    match = re.fullmatch(r"(?:cervical|thoracic|lumbar) vertebrae \d+ \(([ctl]\d+)\)", name)
    return f"{match.group(1).upper()} vertebra" if match else None


def _code(code: str, meaning: str, scheme: str = SCT) -> dict:
    return {"scheme": scheme, "value": code, "meaning": meaning}


def local_code(text: str, prefix: str = "T") -> dict:
    """The documented local code of a term (``T…``) or a prompt (``P…``): 99SATSEG, a stable hash value."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12].upper()
    return _code(prefix + digest, text[:64], LOCAL_SCHEME)


def build() -> dict:
    import pydicom

    from satseg.vocabulary.catalog import load

    vocabulary = load()
    by_name, by_meaning, by_code = _concepts()

    def curated(target) -> tuple:
        if isinstance(target, tuple):
            value, meaning = target
            if value not in by_code:
                raise SystemExit(f"build_codes: CURATED names SCT {value} ({meaning}), unknown to pydicom")
            return value, meaning, by_code[value][2]
        if target.lower() not in by_meaning:
            raise SystemExit(f"build_codes: CURATED names {target!r}, not an SCT meaning known to pydicom")
        return by_meaning[target.lower()]

    terms = {}
    for term, entry in vocabulary.terms.items():
        words = term.split(" ", 1)
        side = words[0] if words[0] in SIDES and len(words) > 1 else None
        name = words[1] if side else term
        modifier = _code(*SIDES[side]) if side else None
        region, concept, source = None, None, "name"
        if term in CURATED:  # a sided structure with its own code: "left heart atrium" is the Left atrium
            name, modifier = term, None
        if name in CURATED:
            target, source = CURATED[name], "curated"
            if isinstance(target, Lesion):
                concept = curated(target.type)
                region = _code(*curated(target.region)[:2]) if target.region else None
            elif target is not None:
                concept = curated(target)
        else:
            concept = by_name.get(_normalise(_vertebra(name) or name))
        if entry.abnormal or isinstance(CURATED.get(name), Lesion):
            category = CATEGORY["abnormal"]
        elif concept is not None and 7166 in concept[2]:
            category = CATEGORY["tissue"]
        else:
            category = CATEGORY["structure"]
        if concept is None:
            code, source, modifier, region = local_code(term), "local", None, None
        else:
            code = _code(concept[0], concept[1])
        terms[term] = {"category": _code(*category), "type": code, "modifier": modifier, "region": region,
                       "source": source}
    values = [t["type"]["value"] for t in terms.values() if t["type"]["scheme"] == LOCAL_SCHEME]
    if len(values) != len(set(values)):
        raise SystemExit("build_codes: two local codes collide; lengthen the hash")
    return {"format_version": 1, "pydicom": pydicom.__version__, "local_scheme": LOCAL_SCHEME, "terms": terms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the packaged file; exit 1 if it differs")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        sys.stderr.write("anatomy_codes.json is up to date\n" if same else "anatomy_codes.json differs: rebuild\n")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
