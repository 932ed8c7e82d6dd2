"""Review of wrong silent resolutions: each test covers one mechanism (a prompt read as terms the clinician did
not mean, without refusal), with the reviewer's prompts and new ones across regions and modalities."""

from __future__ import annotations

import pytest

from satseg.vocabulary import resolve
from satseg.vocabulary.resolve import PromptResolutionError


def _terms(prompt: str, modality: str | None = "ct") -> set[str]:
    return set(resolve(prompt, modality).terms)


def _refused(prompt: str, modality: str | None = "ct") -> bool:
    try:
        resolve(prompt, modality)
    except PromptResolutionError:
        return True
    return False


# -- curated and knowledge-file entries naming a different, broader or partial structure ---------------------------
@pytest.mark.parametrize("prompt", [
    "biliary", "ventricular", "gluteal", "interventricular septum", "thyroid lobe", "humeral head",
    "proximal humerus", "left humeral head", "thoracic spinal cord", "surrounding non enhancing flair hyperintensity",
])
def test_part_or_other_structure_is_not_a_synonym(prompt):
    assert _refused(prompt)


@pytest.mark.parametrize("prompt", ["mediastinal lymph node", "abdominal lymph node", "lymphatic"])
def test_regional_lymph_nodes_are_not_the_whole_body_term(prompt):
    assert _refused(prompt, "pet")


# -- a vertebra level is never context and never the answer for another structure ---------------------------------
@pytest.mark.parametrize("prompt", [
    "muscle at the level of L3", "muscle of L3", "L3 muscle", "skeletal muscle at the L3 level",
    "psoas at L4 level", "muscle at L3 on CT", "fat at the level of L1", "T12 muscle",
])
def test_vertebra_level_with_another_structure_is_refused(prompt):
    assert _refused(prompt)


def test_vertebra_level_alone_still_resolves_and_says_level():
    resolution = resolve("L3", "ct")
    assert resolution.terms == ("lumbar vertebrae 3 (l3)",)
    assert "vertebra level" in resolution.explanation and "abbreviation (" not in resolution.explanation
    assert resolution.method == "vertebra level"


# -- dropping "muscle"/"bone"/"gland"/"cavity" keeps the category ---------------------------------------------------
@pytest.mark.parametrize("prompt", [
    "hip muscles", "femoral muscles", "costal muscle", "lung cavity", "cardiac bone", "kidney gland",
    "liver bone", "spleen muscle", "renal cavity", "scapular muscles",
])
def test_dropped_category_word_must_keep_its_kind(prompt):
    assert _refused(prompt)


@pytest.mark.parametrize("prompt, expected", [
    ("gluteus maximus muscle", "gluteus maximus"), ("iliopsoas muscle", "iliopsoas"), ("rib bone", "rib"),
    ("prostate gland", "prostate"), ("sternum bone", "sternum"),
])
def test_dropped_category_word_of_the_same_kind_still_resolves(prompt, expected):
    resolution = resolve(prompt, "ct")
    assert resolution.terms == (expected,) and resolution.method == "word dropped"
    assert "without" in resolution.explanation


def test_leftover_content_word_is_never_labelled_region():
    for prompt in ("skeletal muscle at the L3 level", "liver on prostate MRI"):
        try:
            resolution = resolve(prompt, "mri")
        except PromptResolutionError:
            continue
        assert not any(c.startswith("region") and "prostate" in c for c in resolution.context)


# -- a side carries across a list -----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, modality, expected", [
    ("left parotid and submandibular glands", "ct", {"left parotid gland", "left submandibular gland"}),
    ("left lung upper lobe and lower lobe", "ct", {"left lung upper lobe", "left lung lower lobe"}),
    ("left kidney and adrenal", "ct", {"left kidney", "left adrenal gland"}),
    ("left hippocampus and amygdala", "mri", {"left hippocampus", "left amygdala"}),
    ("left ventricle and atrium", "ct", {"left heart ventricle", "left heart atrium"}),
    ("right hip and femur", "ct", {"right hip", "right femur"}),
    ("left thalamus, putamen and caudate nucleus", "mri", {"left thalamus", "left putamen", "left caudate nucleus"}),
    ("right clavicle and scapula", "ct", {"right clavicle", "right scapula"}),
    ("left iliac artery and vein", "ct", {"left iliac artery", "left iliac vena"}),
])
def test_side_carries_to_later_list_items(prompt, modality, expected):
    assert _terms(prompt, modality) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("left kidney and liver", {"left kidney", "liver"}),  # no sided liver term: the item stays whole
    ("liver and left kidney", {"liver", "left kidney"}),  # a side never carries backwards
    ("left kidney, right kidney and spleen", {"left kidney", "right kidney", "spleen"}),
    ("left kidney and both adrenals", {"left kidney", "left adrenal gland", "right adrenal gland"}),
])
def test_side_carrying_keeps_explicit_sides_and_unpaired_items(prompt, expected):
    assert _terms(prompt) == expected


@pytest.mark.parametrize("prompt", ["left kidney and kidney tumor", "left lung and lung nodule"])
def test_side_that_has_no_sided_term_is_refused(prompt):
    assert _refused(prompt)


# -- findings: general words, qualifiers, contradictions, metastases -----------------------------------------------
@pytest.mark.parametrize("prompt, modality, expected", [
    ("lung lesions", "ct", {"lung nodule", "lung tumor"}),  # an effusion is no lesion
    ("pulmonary masses", "ct", {"lung nodule", "lung tumor"}),
    ("renal masses", "ct", {"kidney cyst", "kidney tumor"}),
    ("liver metastases", "ct", {"liver tumor"}),
    ("intracranial bleed", "ct", {"intracranial hemorrhage"}),  # a typed word on the qualifier names the term
    ("stroke lesion", "mri", {"stroke"}),
    ("tumour lesions", "pet", {"tumor"}),
])
def test_findings_that_still_resolve(prompt, modality, expected):
    assert _terms(prompt, modality) == expected


@pytest.mark.parametrize("prompt, modality", [
    ("brain lesions", "mri"), ("brain lesions", "ct"), ("cerebral abnormality", "mri"),  # stroke, WMH ... too
    ("myocardial lesions", "mri"),  # an oedema term exists: lesion or not is the clinician's call
    ("intracranial lesion", "ct"), ("nasopharyngeal mass", "ct"),  # a name part is no organ
    ("hemorrhagic stroke", "mri"), ("stroke edema", "mri"), ("covid nodules", "ct"), ("lung tumor cyst", "ct"),
    ("cystic tumor of the kidney", "ct"),
    ("metastases from lung cancer", "ct"), ("colon cancer metastases", "ct"), ("metastatic pancreatic cancer", "ct"),
    ("liver metastasis from colon cancer", "ct"),
])
def test_findings_that_must_be_refused(prompt, modality):
    assert _refused(prompt, modality)


def test_general_finding_rule_is_explained():
    explanation = resolve("lung lesions", "ct").explanation
    assert "never an effusion" in explanation


# -- spelling never changes a prefix; at distance 2 the start stays -------------------------------------------------
@pytest.mark.parametrize("prompt", [
    "extracranial hemorrhage", "intraventricular", "infraclavian artery", "hypothalamus", "subthalamus",
    "epicardium", "perirenal fat",
])
def test_no_correction_across_a_prefix(prompt):
    try:
        resolution = resolve(prompt, "ct")
    except PromptResolutionError:
        return
    assert not resolution.corrections, resolution.corrections


def test_prefix_rule_refuses_the_reviewers_cases_and_keeps_real_typos():
    assert _refused("extracranial hemorrhage") and _refused("intraventricular")
    assert _terms("gallblader") == {"gallbladder"} and _terms("subclavan artery") == {"subclavian artery"}
    assert _terms("pancraes") == {"pancreas"}


# -- a region phrase that says where the structure is ----------------------------------------------------------------
@pytest.mark.parametrize("prompt, modality, expected", [
    ("vertebrae of the lumbar spine", "ct", {"lumbar vertebrae"}),  # a multi-region structure: its regional term
    ("vertebrae in the neck", "ct", {"cervical vertebrae"}),
    ("vertebrae in the chest", "ct", {"thoracic vertebrae"}),
    ("esophagus in the neck", "ct", {"cervical esophagus"}),
    ("tumor in the neck", "pet", {"head and neck tumor"}),
    ("liver in the abdomen", "ct", {"liver"}),  # a one-region structure of that region: context
    ("kidney in the retroperitoneum", "ct", {"kidney"}),
    ("liver and spleen in the abdomen", "ct", {"liver", "spleen"}),
    ("sacrum in the pelvis", "ct", {"sacrum"}),
    ("vertebrae of the spine", "ct", {"vertebrae"}),  # the region holds all of it
    ("aorta on abdominal CT", "ct", {"aorta"}),  # a region of the scan, not of the structure
    ("MRI of the abdomen depicting the aorta", "mri", {"aorta"}),
    ("tumor on whole-body PET", "pet", {"tumor"}),
    ("Abdomen: liver", "ct", {"liver"}),
])
def test_region_phrase_kept_as_context_or_narrowing(prompt, modality, expected):
    assert _terms(prompt, modality) == expected


@pytest.mark.parametrize("prompt, modality", [
    ("aorta in the abdomen", "ct"), ("aorta of the chest", "ct"), ("esophagus in the chest", "ct"),
    ("muscles of the thigh", "ct"), ("bones of the hand", "ct"), ("fat of the thigh", "ct"),
    ("skin of the face", "ct"), ("lymph nodes in the neck", "pet"), ("lymph nodes of the abdomen", "pet"),
    ("spinal cord in the neck", "ct"), ("inferior vena cava in the abdomen", "ct"),
    ("left ventricle in the brain", "mri"), ("spleen in the chest", "ct"), ("thyroid in the pelvis", "ct"),
    ("hippocampus in the abdomen", "mri"),
])
def test_region_phrase_that_narrows_without_a_term_or_contradicts_is_refused(prompt, modality):
    assert _refused(prompt, modality)


def test_region_narrowing_is_explained():
    assert "narrows" in resolve("esophagus in the neck", "ct").explanation


# -- " - ", ":", "( )" and "," never glue two names into one -------------------------------------------------------
@pytest.mark.parametrize("prompt, modality", [
    ("liver - tumor", "ct"), ("liver: tumor", "ct"), ("liver (tumor)", "ct"), ("liver - tumor on CT", "ct"),
    ("liver, tumor", "ct"), ("left kidney (cyst)", "ct"), ("lung - nodule", "ct"), ("brain (edema)", "mri"),
    ("pancreas: tumor", "ct"),
])
def test_separators_never_glue_words_into_a_name(prompt, modality):
    glued = {"liver tumor", "left kidney cyst", "lung nodule", "brain edema", "pancreas tumor"}
    try:
        terms = _terms(prompt, modality)
    except PromptResolutionError:
        return
    assert not terms & glued, terms


@pytest.mark.parametrize("prompt, modality, expected", [
    ("liver - spleen", "ct", {"liver", "spleen"}),  # a union, as ","
    ("liver (spleen)", "ct", {"liver", "spleen"}),
    ("Brain: hippocampus", "mri", {"hippocampus"}),  # a context heading
    ("Abdomen: liver", "ct", {"liver"}),
    ("MRI brain - hippocampus", "mri", {"hippocampus"}),
    ("Kidneys (left)", "ct", {"left kidney"}),  # a side in parentheses is part of the name
    ("kidney, left", "ct", {"left kidney"}),
    ("cervical vertebrae 1 (c1)", "ct", {"cervical vertebrae 1 (c1)"}),  # the name's own parentheses
    ("inferior vena cava (IVC)", "ct", {"inferior vena cava"}),
])
def test_separators_split_or_set_a_heading_aside(prompt, modality, expected):
    assert _terms(prompt, modality) == expected


# -- --explain says what happened ---------------------------------------------------------------------------------
def test_explain_names_the_typed_item_for_a_carried_side_and_a_narrowing_region():
    carried = resolve("left kidney and adrenal", "ct")
    assert any(step.startswith("'adrenal' → left adrenal gland (side 'left' carried") for step in carried.steps)
    narrowed = resolve("esophagus in the neck", "ct")
    assert any(step.startswith("'esophagus' → cervical esophagus (region 'neck' narrows") for step in narrowed.steps)
