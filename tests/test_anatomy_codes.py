"""Coded anatomy (issue 17): every trained term has SegmentedPropertyCategory/Type codes, SNOMED CT from the DICOM
standard's context groups as pydicom ships them, or a documented local code; the table is what the build step
makes from the vocabulary."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest
from pydicom.sr._cid_dict import cid_concepts
from pydicom.sr._concepts_dict import concepts

from satseg.vocabulary import build_codes
from satseg.vocabulary.catalog import load
from satseg.vocabulary.codes import anatomy_code, segment_code

SCT_MEANINGS = {code: meaning for codes in concepts["SCT"].values() for code, (meaning, _) in codes.items()}


def test_packaged_table_is_what_the_build_step_makes():
    packaged = json.loads(resources.files("satseg.vocabulary").joinpath("anatomy_codes.json").read_text("utf-8"))
    assert packaged == json.loads(json.dumps(build_codes.build()))


def test_every_trained_term_has_a_category_and_type_from_sct_or_the_local_scheme():
    category_codes = {code for keyword in cid_concepts[7150]["SCT"] for code in concepts["SCT"][keyword]}
    for term in load().terms:
        code = anatomy_code(term)
        assert code["category"]["scheme"] == "SCT" and code["category"]["value"] in category_codes, term
        kind = code["type"]
        if kind["scheme"] == "SCT":
            assert kind["value"] in SCT_MEANINGS, term
        else:
            digest = hashlib.sha256(term.encode()).hexdigest()[:12].upper()
            assert (kind["scheme"], kind["value"], kind["meaning"]) == ("99SATSEG", "T" + digest, term[:64])
            assert len(kind["value"]) <= 16
        if code["modifier"]:
            assert term.split()[0] in ("left", "right")
            assert code["modifier"]["value"] == {"left": "7771000", "right": "24028007"}[term.split()[0]]


@pytest.mark.parametrize(("term", "category", "value", "modifier", "region"), [
    ("liver", "91723000", "10200004", None, None),
    ("left kidney", "91723000", "64033007", "7771000", None),
    ("right adrenal gland", "91723000", "23451007", "24028007", None),
    ("inferior vena cava", "91723000", "64131007", None, None),
    ("left heart atrium", "91723000", "82471001", None, None),  # Left atrium: its own code, no modifier
    ("lumbar vertebrae 3 (l3)", "91723000", "36470004", None, None),
    ("liver tumor", "49755003", "108369006", None, "10200004"),  # Neoplasm in the liver
    ("kidney cyst", "49755003", "367643001", None, "64033007"),
    ("fat", "85756007", "55603005", None, None),  # Tissue
])
def test_known_terms_get_the_standard_codes(term, category, value, modifier, region):
    code = anatomy_code(term)
    assert code["category"]["value"] == category
    assert code["type"]["value"] == value and code["type"]["scheme"] == "SCT"
    assert (code["modifier"] or {}).get("value") == modifier
    assert (code["region"] or {}).get("value") == region


def test_most_terms_outside_the_brain_parcellation_have_standard_codes():
    terms = list(load().terms)
    local = [t for t in terms if anatomy_code(t)["type"]["scheme"] != "SCT"]
    assert len(terms) - len(local) >= 250


def test_union_of_sides_keeps_the_shared_type_and_other_unions_get_the_prompt_code():
    kidneys = segment_code(["left kidney", "right kidney"], "kidneys")
    assert kidneys["type"]["value"] == "64033007" and kidneys["modifier"] is None
    mixed = segment_code(["spleen", "stomach"], "spleen and stomach")
    digest = hashlib.sha256(b"spleen and stomach").hexdigest()[:12].upper()
    assert mixed["type"] == {"scheme": "99SATSEG", "value": "P" + digest, "meaning": "spleen and stomach"}
    assert segment_code(["liver"], "the liver") == anatomy_code("liver")


def test_unknown_term_raises_key_error():
    with pytest.raises(KeyError):
        anatomy_code("not a term")
