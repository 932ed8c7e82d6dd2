"""A hand-written table of prompts and what they must resolve to (written from anatomy, not from the resolver).

Each row: prompt, modality (or None), and either the set of trained terms, ``Refused(first_suggestion)``,
``Ambiguous({meanings})``, ``Untrained(terms)`` (a modality the terms were not trained on: refused by default, and
resolved with a warning when ``allow_untrained_modality``) or ``Corrected(terms)`` (a misspelling corrected).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from satseg.errors import PromptError
from satseg.vocabulary import resolve


@dataclass(frozen=True)
class Refused:
    first_suggestion: str | None  # None: any suggestion will do (nonsense)


@dataclass(frozen=True)
class Ambiguous:
    meanings: frozenset


@dataclass(frozen=True)
class Untrained:
    terms: frozenset  # refused by default; with allow_untrained_modality resolves to these AND warns


@dataclass(frozen=True)
class Corrected:
    terms: frozenset  # resolves to these, and the resolution names the correction


def L(n):  # noqa: E743
    return f"lumbar vertebrae {n} (l{n})"


def T(n):
    return f"thoracic vertebrae {n} (t{n})"


def C(n):
    return f"cervical vertebrae {n} (c{n})"


def S(*terms):
    return frozenset(terms)


DISC_L4_L5 = "intervertebral disc between lumbar vertebrae 4 (l4) and lumbar vertebrae 5 (l5)"
DISC_L5_S = "intervertebral disc between lumbar vertebrae 5 (l5) and sacrum"
DISC_L3_L4 = "intervertebral disc between lumbar vertebrae 3 (l3) and lumbar vertebrae 4 (l4)"
DISC_T11_T12 = "intervertebral disc between thoracic vertebrae 11 (t11) and thoracic vertebrae 12 (t12)"

PHRASINGS = [
    # -- exact terms with case, spacing and punctuation variants --------------------------------------------------
    ("liver", "ct", S("liver")),
    ("LIVER", "ct", S("liver")),
    ("  Liver  ", None, S("liver")),
    ("Liver.", None, S("liver")),
    ("'spleen'", "ct", S("spleen")),
    ("Left Kidney", "ct", S("left kidney")),
    ("left-kidney", "ct", S("left kidney")),
    ("LEFT_KIDNEY", "ct", S("left kidney")),
    ("Urinary Bladder", "ct", S("urinary bladder")),
    ("gall bladder", "ct", S("gallbladder")),
    ("Gall-Bladder", "mri", S("gallbladder")),
    ("brain stem", "mri", S("brainstem")),
    ("Inferior  Vena  Cava", "ct", S("inferior vena cava")),
    ("Pancreas!", "ct", S("pancreas")),
    ("small-bowel", "ct", S("small bowel")),
    ("head of femur", "ct", S("head of femur")),
    ("Portal vein and splenic vein", "ct", S("portal vein and splenic vein")),
    ("COVID-19 infection", "ct", S("covid-19 infection")),
    ("covid19 infection", "ct", S("covid-19 infection")),
    ("White-Matter Hyperintensities", "mri", S("white matter hyperintensities")),
    ("heart ascending aorta", "ct", S("heart ascending aorta")),
    ("ct_liver", None, S("liver")),
    ("lumbar vertebrae 1 (L1)", "ct", S(L(1))),
    ("Thyroid Gland", "ct", S("thyroid gland")),
    # -- laterality word order ------------------------------------------------------------------------------------
    ("kidney left", "ct", S("left kidney")),
    ("kidney (right)", "ct", S("right kidney")),
    ("Kidney, Left", "ct", S("left kidney")),
    ("adrenal gland right", "ct", S("right adrenal gland")),
    ("lung upper lobe left", "ct", S("left lung upper lobe")),
    ("femur, right", "ct", S("right femur")),
    ("lt kidney", "ct", S("left kidney")),
    ("rt lung", "ct", S("right lung")),
    ("left-sided kidney", "ct", S("left kidney")),
    ("hippocampus left", "mri", S("left hippocampus")),
    ("rib left 3", "ct", S("left rib 3")),
    ("gluteus maximus right", "ct", S("right gluteus maximus")),
    ("lower lobe of the left lung", "ct", S("left lung lower lobe")),
    ("middle lobe of right lung", "ct", S("right lung middle lobe")),
    ("head of the left femur", "ct", S("head of left femur")),
    # -- plurals and British spelling -----------------------------------------------------------------------------
    ("kidneys", "ct", S("kidney")),
    ("lungs", "ct", S("lung")),
    ("adrenal glands", "mri", S("adrenal gland")),
    ("oesophagus", "ct", S("esophagus")),
    ("brain tumour", "mri", S("brain tumor")),
    ("grey matter", "mri", S("grey matter")),
    ("gray matter", "mri", S("grey matter")),
    ("intracranial haemorrhage", "ct", S("intracranial hemorrhage")),
    ("lung nodules", "ct", S("lung nodule")),
    ("optic nerves", "ct", S("optic nerve")),
    ("hippocampi", "mri", S("hippocampus")),
    ("lymph nodes", "pet", S("lymph node")),
    ("iliac arteries", "ct", S("iliac artery")),
    ("parotid glands", "ct", S("parotid gland")),
    ("lenses", "ct", S("lens")),
    ("mastoid processes", "ct", S("mastoid process")),
    ("intervertebral disc", "mri", S("intervertebral discs")),
    ("vertebra", "ct", S("vertebrae")),
    ("bronchi", "ct", S("bronchie")),
    ("kidney cysts", "ct", S("kidney cyst")),
    ("pulmonary veins", "ct", S("pulmonary vein")),
    # -- TotalSegmentator class names -----------------------------------------------------------------------------
    ("kidney_left", "ct", S("left kidney")),
    ("kidney_right", "mri", S("right kidney")),
    ("adrenal_gland_left", "ct", S("left adrenal gland")),
    ("lung_upper_lobe_left", "ct", S("left lung upper lobe")),
    ("lung_middle_lobe_right", "ct", S("right lung middle lobe")),
    ("thyroid_gland", "ct", S("thyroid gland")),
    ("small_bowel", "ct", S("small bowel")),
    ("urinary_bladder", "ct", S("urinary bladder")),
    ("kidney_cyst_left", "ct", S("left kidney cyst")),
    ("vertebrae_S1", "ct", S("sacral vertebrae 1 (s1)")),
    ("vertebrae_L5", "ct", S(L(5))),
    ("vertebrae_T12", "ct", S(T(12))),
    ("vertebrae_C1", "ct", S(C(1))),
    ("pulmonary_vein", "ct", S("pulmonary vein")),
    ("brachiocephalic_trunk", "ct", S("brachiocephalic trunk")),
    ("subclavian_artery_right", "ct", S("right subclavian artery")),
    ("common_carotid_artery_left", "ct", S("left common carotid artery")),
    ("brachiocephalic_vein_left", "ct", S("left brachiocephalic vein")),
    ("atrial_appendage_left", "ct", S("left auricle of heart")),
    ("superior_vena_cava", "ct", S("superior vena cava")),
    ("portal_vein_and_splenic_vein", "ct", S("portal vein and splenic vein")),
    ("iliac_artery_left", "ct", S("left iliac artery")),
    ("iliac_vena_right", "ct", S("right iliac vena")),
    ("humerus_left", "ct", S("left humerus")),
    ("scapula_right", "ct", S("right scapula")),
    ("clavicula_left", "ct", S("left clavicle")),
    ("femur_right", "ct", S("right femur")),
    ("hip_left", "ct", S("left hip")),
    ("spinal_cord", "ct", S("spinal cord")),
    ("gluteus_medius_left", "ct", S("left gluteus medius")),
    ("autochthon_right", "ct", S("right autochthon")),
    ("iliopsoas_left", "ct", S("left iliopsoas")),
    ("rib_left_1", "ct", S("left rib 1")),
    ("rib_right_12", "ct", S("right rib 12")),
    ("costal_cartilages", "ct", S("costal cartilage")),
    ("intervertebral_discs", "mri", S("intervertebral discs")),
    ("lung_left", "mri", Untrained(S("left lung"))),
    ("Vertebrae_L1", "mri", S(L(1))),
    # -- synonyms (knowledge file and everyday names) -------------------------------------------------------------
    ("bladder", "ct", S("urinary bladder")),
    ("hepatic", "ct", S("liver")),
    ("gastric", "ct", S("stomach")),
    ("cardiac", "ct", S("heart")),
    ("left renal", "ct", S("left kidney")),
    ("vesical", "ct", S("urinary bladder")),
    ("postcava", "ct", S("inferior vena cava")),
    ("small intestine", "ct", S("small bowel")),
    ("large intestine", "ct", S("colon")),
    ("shoulder blade", "ct", S("scapula")),
    ("collarbone", "ct", S("clavicle")),
    ("right collarbone", "ct", S("right clavicle")),
    ("thigh bone", "ct", S("femur")),
    ("breastbone", "ct", S("sternum")),
    ("windpipe", "ct", S("trachea")),
    ("left atrium", "mri", S("left heart atrium")),
    ("right ventricle", "mri", S("right heart ventricle")),
    ("pleural effusion", "ct", S("lung effusion")),
    ("lumbar spine", "ct", S("lumbar vertebrae")),
    ("cervical spine", "ct", S("cervical vertebrae")),
    ("spine", "ct", S("vertebrae")),
    ("left eye", "ct", S("left eyeball")),
    ("psoas", "ct", S("iliopsoas")),
    ("left psoas muscle", "ct", S("left iliopsoas")),
    ("erector spinae", "ct", S("autochthon")),
    ("acoustic neuroma", "mri", S("vestibular schwannoma")),
    ("ascending aorta", "ct", S("heart ascending aorta")),
    ("renal cyst", "ct", S("kidney cyst")),
    ("left renal cyst", "ct", S("left kidney cyst")),
    ("pulmonary nodule", "ct", S("lung nodule")),
    ("hepatic tumor", "ct", S("liver tumor")),
    ("pancreatic tumour", "ct", S("pancreas tumor")),
    ("liver lesions", "ct", S("liver tumor")),
    ("prostate gland", "mri", S("prostate")),
    ("tibia", "mri", S("tibia bone")),
    ("left parotid", "ct", S("left parotid gland")),
    ("femoral head", "ct", S("head of femur")),
    ("left femoral head", "ct", S("head of left femur")),
    ("brain hemorrhage", "ct", S("intracranial hemorrhage")),
    ("transition zone", "mri", S("transition zone of prostate")),
    ("ischemic stroke", "mri", S("stroke")),
    ("left iliac vein", "ct", S("left iliac vena")),
    ("renal organs", "ct", S("kidney")),
    ("gluteus maximus muscle", "ct", S("gluteus maximus")),
    ("suprarenal glands", "ct", S("adrenal gland")),
    # -- abbreviations --------------------------------------------------------------------------------------------
    ("ivc", "ct", S("inferior vena cava")),
    ("IVC", "mri", S("inferior vena cava")),
    ("svc", "ct", S("superior vena cava")),
    ("WMH", "mri", S("white matter hyperintensities")),
    ("ich", "ct", S("intracranial hemorrhage")),
    ("tmj", "ct", S("temporomandibular joint")),
    ("l5", "ct", S(L(5))),
    ("T12", "ct", S(T(12))),
    ("C7", "ct", S(C(7))),
    ("S1", "ct", S("sacral vertebrae 1 (s1)")),
    ("L6", "ct", S(L(6))),
    ("T1", "ct", S(T(1))),
    ("rul", "ct", S("right lung upper lobe")),
    ("LLL", "ct", S("left lung lower lobe")),
    ("gm", "mri", S("grey matter")),
    ("ivd", "mri", S("intervertebral discs")),
    ("laa", "ct", S("left auricle of heart")),
    ("vertebra L3", "ct", S(L(3))),
    ("L3 vertebra", "ct", S(L(3))),
    ("first lumbar vertebra", "ct", S(L(1))),
    ("12th thoracic vertebra", "ct", S(T(12))),
    ("L4-L5 disc", "mri", S(DISC_L4_L5)),
    ("L5-S1 disc", "mri", S(DISC_L5_S)),
    ("disc L3/L4", "mri", S(DISC_L3_L4)),
    ("T11-T12 intervertebral disc", "mri", S(DISC_T11_T12)),
    ("L4/5 disc", "mri", S(DISC_L4_L5)),
    ("first rib", "ct", S("rib 1")),
    ("left 12th rib", "ct", S("left rib 12")),
    # -- compositions, both sides, ranges -------------------------------------------------------------------------
    ("left and right kidney", "ct", S("left kidney", "right kidney")),
    ("right and left lungs", "ct", S("left lung", "right lung")),
    ("both lungs", "ct", S("left lung", "right lung")),
    ("bilateral kidneys", "ct", S("left kidney", "right kidney")),
    ("kidneys (bilateral)", "ct", S("left kidney", "right kidney")),
    ("both hippocampi", "mri", S("left hippocampus", "right hippocampus")),
    ("left and right femur", "ct", S("left femur", "right femur")),
    ("liver and spleen", "ct", S("liver", "spleen")),
    ("Liver + Spleen", "ct", S("liver", "spleen")),
    ("liver, spleen and pancreas", "ct", S("liver", "spleen", "pancreas")),
    ("liver, spleen, and pancreas", "ct", S("liver", "spleen", "pancreas")),
    ("liver & gallbladder", "ct", S("liver", "gallbladder")),
    ("liver; stomach", "ct", S("liver", "stomach")),
    ("aorta plus ivc", "ct", S("aorta", "inferior vena cava")),
    ("heart, left and right lung", "ct", S("heart", "left lung", "right lung")),
    ("portal vein and splenic vein and liver", "ct", S("portal vein and splenic vein", "liver")),
    ("left kidney and left adrenal gland", "ct", S("left kidney", "left adrenal gland")),
    ("liver and left and right kidney", "ct", S("liver", "left kidney", "right kidney")),
    ("left and right lower lobes", "ct", S("left lung lower lobe", "right lung lower lobe")),
    ("L1-L5", "ct", S(*(L(n) for n in range(1, 6)))),
    ("L1 to L5", "ct", S(*(L(n) for n in range(1, 6)))),
    ("l1\u2013l5", "ct", S(*(L(n) for n in range(1, 6)))),
    ("T12-L2", "ct", S(T(12), L(1), L(2))),
    ("C1-C7", "ct", S(*(C(n) for n in range(1, 8)))),
    ("lumbar vertebrae 1-5", "ct", S(*(L(n) for n in range(1, 6)))),
    ("thoracic vertebrae 10 to 12", "ct", S(T(10), T(11), T(12))),
    ("vertebrae T1-T3", "ct", S(T(1), T(2), T(3))),
    ("L4 and L5", "ct", S(L(4), L(5))),
    ("ribs 1-3", "ct", S("rib 1", "rib 2", "rib 3")),
    ("left ribs 1-3", "ct", S("left rib 1", "left rib 2", "left rib 3")),
    ("right ribs 11 to 12", "ct", S("right rib 11", "right rib 12")),
    ("1st to 3rd ribs", "ct", S("rib 1", "rib 2", "rib 3")),
    ("bilateral ribs 1-2", "ct", S("left rib 1", "left rib 2", "right rib 1", "right rib 2")),
    ("ribs", "ct", S("rib")),
    ("left ribs", "ct", S("left rib")),
    ("lumbar vertebrae", "ct", S("lumbar vertebrae")),
    ("putamen", "mri", S("left putamen", "right putamen")),
    ("caudate nucleus", "mri", S("left caudate nucleus", "right caudate nucleus")),
    ("globus pallidus", "mri", S("left pallidum", "right pallidum")),
    ("both eyes", "ct", S("left eyeball", "right eyeball")),
    # -- modality mismatches (refused unless allowed, then resolved with a warning) -----------------------------------
    ("left lung", "mri", Untrained(S("left lung"))),
    ("white matter hyperintensities", "ct", Untrained(S("white matter hyperintensities"))),
    ("grey matter", "ct", Untrained(S("grey matter"))),
    ("tumor", "ct", Untrained(S("tumor"))),
    ("lymph node", "ct", Untrained(S("lymph node"))),
    ("thyroid", "flair", Untrained(S("thyroid"))),
    ("vestibular schwannoma", "CT", Untrained(S("vestibular schwannoma"))),
    ("both lungs", "MRI T2", Untrained(S("left lung", "right lung"))),
    ("liver", "MRI T1", S("liver")),
    ("kidney", "mr", S("kidney")),
    # -- misspellings: corrected when exactly one known word is close --------------------------------------------
    ("livr", "ct", Corrected(S("liver"))),
    ("liverr", "ct", Corrected(S("liver"))),
    ("spleeen", "ct", Corrected(S("spleen"))),
    ("pancraes", "ct", Corrected(S("pancreas"))),
    ("prostrate", "mri", Corrected(S("prostate"))),
    ("esophogus", "ct", Corrected(S("esophagus"))),
    ("gallbladdder", "ct", Corrected(S("gallbladder"))),
    ("left kidny", "ct", Corrected(S("left kidney"))),
    ("rigth kidney", "ct", Corrected(S("right kidney"))),
    ("hipocampus", "mri", Corrected(S("hippocampus"))),
    ("duodenem", "ct", Corrected(S("duodenum"))),
    ("trachia", "ct", Corrected(S("trachea"))),
    ("sternun", "ct", Corrected(S("sternum"))),
    ("aortta", "ct", Corrected(S("aorta"))),
    ("thalamos", "mri", Corrected(S("thalamus"))),
    ("urinary blader", "ct", Refused("urinary bladder")),  # 'bladder' or 'blade': two candidates
    ("cerebelum", "mri", Corrected(S("cerebellum"))),
    ("myocardum", "mri", Corrected(S("myocardium"))),
    ("liver and spleeen", "ct", Corrected(S("liver", "spleen"))),
    # -- nonsense and ambiguity -----------------------------------------------------------------------------------
    ("banana", "ct", Refused(None)),
    ("asdfgh", "ct", Refused(None)),
    ("12345", "ct", Refused(None)),
    ("abdomen", "ct", Refused(None)),
    ("segment everything", "ct", Refused(None)),
    ("lung and banana", "ct", Refused(None)),
    ("left spleen", "ct", Refused("spleen")),
    ("lv", "mri", Ambiguous(S("left heart ventricle", "lateral ventricle"))),
    ("vena cava", "ct", Ambiguous(S("inferior vena cava", "superior vena cava"))),
    ("caudate", "ct", Ambiguous(S("caudate lobe", "caudate nucleus"))),
    ("bowel", "ct", Ambiguous(S("small bowel", "colon", "intestine"))),
    ("PE", "ct", Ambiguous(S("pulmonary embolism", "lung effusion"))),
    ("canal", "ct", Ambiguous(S("spinal canal", "internal auditory canal"))),
]


def test_the_table_has_at_least_150_phrasings():
    assert len(PHRASINGS) >= 150
    assert len({(p, m) for p, m, _ in PHRASINGS}) == len(PHRASINGS)


@pytest.mark.parametrize(("prompt", "modality", "expected"), PHRASINGS,
                         ids=[f"{p}|{m}" for p, m, _ in PHRASINGS])
def test_phrasing_resolves_as_a_radiologist_expects(prompt, modality, expected):
    if isinstance(expected, Refused):
        with pytest.raises(PromptError) as caught:
            resolve(prompt, modality)
        suggestions = caught.value.suggestions
        assert 1 <= len(suggestions) <= 5
        assert not caught.value.ambiguous
        if expected.first_suggestion is not None:
            assert suggestions[0] == expected.first_suggestion, suggestions
        assert "\n" not in str(caught.value)
    elif isinstance(expected, Ambiguous):
        with pytest.raises(PromptError) as caught:
            resolve(prompt, modality)
        assert caught.value.ambiguous
        assert expected.meanings <= set(caught.value.suggestions)
        for meaning in expected.meanings:
            assert meaning in str(caught.value)
    elif isinstance(expected, Untrained):
        with pytest.raises(PromptError) as caught:
            resolve(prompt, modality)
        assert caught.value.untrained_modality and "trained on" in str(caught.value)
        resolution = resolve(prompt, modality, allow_untrained_modality=True)
        assert set(resolution.terms) == expected.terms, resolution.explanation
        assert resolution.warnings and "trained on" in resolution.warnings[0]
    else:
        resolution = resolve(prompt, modality)
        wanted = expected.terms if isinstance(expected, Corrected) else expected
        assert set(resolution.terms) == wanted, resolution.explanation
        assert len(resolution.terms) == len(wanted)  # no duplicates
        assert resolution.warnings == ()
        assert bool(resolution.corrections) == isinstance(expected, Corrected), resolution.corrections
