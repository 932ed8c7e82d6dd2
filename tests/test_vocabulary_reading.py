"""Reading free text (issue 15): context set aside, word forms, findings, word order, groups, misspellings, no
partial reading, untrained modality. Each test pins one mechanism with cases across regions and modalities."""

from __future__ import annotations

import json
import shutil

import pytest

from satseg.errors import PromptError
from satseg.inference.options import PromptOptions
from satseg.vocabulary import PromptResolutionError, resolve
from satseg.vocabulary.build import build


def _terms(prompt: str, modality: str | None = None, **kwargs) -> set[str]:
    return set(resolve(prompt, modality, **kwargs).terms)


def _refused(prompt: str, modality: str | None = None, **kwargs) -> PromptResolutionError:
    with pytest.raises(PromptResolutionError) as caught:
        resolve(prompt, modality, **kwargs)
    assert "\n" not in str(caught.value)
    return caught.value


# -- 1. context ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("Pancreas in contrast-enhanced abdominal CT", "ct", {"pancreas"}),
    ("segmentation target: urinary bladder on CT", "ct", {"urinary bladder"}),
    ("Please delineate the spleen in the abdominal CT", "ct", {"spleen"}),
    ("boundaries of the left kidney", "mri", {"left kidney"}),
    ("mask of the gallbladder visualized in abdominal MR scans", "mri", {"gallbladder"}),
    ("white matter hyperintensities on FLAIR", "mri", {"white matter hyperintensities"}),
    ("hippocampus on 3D T1-weighted MPRAGE", "mri", {"hippocampus"}),
    ("lymph nodes on whole-body PET/CT", "pet", {"lymph node"}),
    ("contour the mandible on the planning CT of the head and neck", "ct", {"mandible"}),
    ("heart of the thoracic cavity", "ct", {"heart"}),
    ("lateral ventricles of the brain", "mri", {"lateral ventricle"}),
    ("CT abdomen and pelvis: urinary bladder", "ct", {"urinary bladder"}),
    ("transition zone on prostate MRI", "mri", {"transition zone of prostate"}),
    ("pulmonary artery on CT pulmonary angiography", "ct", {"pulmonary artery"}),
    ("left lung upper lobe, chest CT, lung window", "ct", {"left lung upper lobe"}),
])
def test_imaging_task_region_and_filler_words_are_set_aside(prompt, modality, expected):
    resolution = resolve(prompt, modality)
    assert set(resolution.terms) == expected
    assert resolution.context and all(": " in c for c in resolution.context)
    assert any(step.startswith("set aside") for step in resolution.steps)


def test_context_is_recorded_by_kind_in_the_resolution():
    resolution = resolve("Pancreas in contrast-enhanced abdominal CT", "ct")
    kinds = {c.split(":")[0] for c in resolution.context}
    assert {"modality", "region"} <= kinds
    assert "contrast enhanced" in " ".join(resolution.context) and "abdominal" in resolution.explanation


def test_a_structure_adjective_in_front_of_a_structure_is_never_set_aside():
    for prompt in ("thoracic aorta", "abdominal aorta", "cervical spinal cord"):
        assert _refused(prompt, "ct").suggestions


@pytest.mark.parametrize(("prompt", "modality", "named"), [
    ("liver on MRI", "ct", "MRI"), ("left kidney on contrast-enhanced CT", "mri", "CT"),
    ("brain tumour on T2-weighted images", "ct", "MRI"), ("spleen, FDG PET", "mri", "PET"),
])
def test_a_modality_in_the_prompt_that_contradicts_the_scan_is_refused_naming_both(prompt, modality, named):
    error = _refused(prompt, modality)
    assert named in str(error) and modality.upper() in str(error)


def test_a_modality_named_in_the_prompt_is_used_when_none_is_given():
    assert resolve("liver on MRI").modality == "mri"
    assert _refused("left lung on MRI").untrained_modality
    assert _refused("lymph nodes on PET/CT", "ct").untrained_modality  # PET/CT names CT too: no contradiction


def test_t1_and_t2_are_vertebrae_unless_next_to_a_sequence_word():
    assert _terms("T2 vertebra", "ct") == {"thoracic vertebrae 2 (t2)"}
    assert _terms("T1", "ct") == {"thoracic vertebrae 1 (t1)"}
    assert _terms("liver on T2", "mri") == {"liver"}
    assert _terms("thalamus on T1 MPRAGE", "mri") == {"thalamus"}
    assert _refused("liver T2", "mri").suggestions[0] == "liver"


def test_a_trained_name_that_contains_a_context_word_stays_whole():
    assert _terms("mediastinal tissue on chest CT", "ct") == {"mediastinal tissue"}
    assert _terms("adipose tissue on CT", "ct") == {"fat"}
    assert _terms("head and neck tumour on PET", "pet") == {"head and neck tumor"}


# -- 2. word forms --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("renal", "ct", {"kidney"}), ("left renal", "mri", {"left kidney"}), ("hepatic", "mri", {"liver"}),
    ("splenic", "ct", {"spleen"}), ("pancreatic", "ct", {"pancreas"}), ("gastric", "mri", {"stomach"}),
    ("vesical", "ct", {"urinary bladder"}), ("cardiac", "ct", {"heart"}), ("cerebellar", "mri", {"cerebellum"}),
    ("left cerebellar hemisphere", "mri", {"left cerebellum"}), ("costal cartilage", "ct", {"costal cartilage"}),
    ("gluteal", "ct", set()), ("pulmonary nodule", "ct", {"lung nodule"}), ("sacral", "ct", {"sacrum"}),
])
def test_adjectives_and_classical_roots_map_to_the_organ_noun(prompt, modality, expected):
    if not expected:
        _refused(prompt, modality)  # a word form alone names no structure when the noun is no term ("gluteus")
    else:
        assert _terms(prompt, modality) == expected


@pytest.mark.parametrize(("prompt", "expected"), [
    ("pulmonary artery", "pulmonary artery"), ("renal vein", "renal vein"), ("renal artery", "renal artery"),
    ("pulmonary vein", "pulmonary vein"), ("portal vein and splenic vein", "portal vein and splenic vein"),
])
def test_real_multi_word_terms_stay_themselves(prompt, expected):
    resolution = resolve(prompt, "ct")
    assert resolution.terms == (expected,) and resolution.method == "exact"


def test_an_adjective_before_an_untrained_structure_is_refused_not_read_as_the_organ():
    error = _refused("hepatic vein", "ct")
    assert "liver" in error.suggestions


def test_the_build_writes_word_forms_from_the_knowledge_file_and_the_curated_table(tmp_path, shared_reference,
                                                                                    totalseg_dir):
    (tmp_path / "sat-ds").mkdir()
    (tmp_path / "sat-pretrain").mkdir()
    shutil.copy(shared_reference / "sat/sat-ds/terminology_list.json", tmp_path / "sat-ds")
    knowledge = {"spleen": {"synonyms": ["Lienal structure identified via abdominal CT"]}}
    (tmp_path / "sat-pretrain/supplementary_lab2def_gpt.json").write_text(json.dumps(knowledge))
    document = build(tmp_path, totalseg_dir / "map_to_binary.py")
    assert document["adjectives"]["lienal"] == "spleen"  # from the knowledge file
    assert document["adjectives"]["renal"] == "kidney"  # from curated.json
    assert document["aliases"]["splenic"]["term"] == "spleen"  # a word form is not ambiguous with "splenic vein"


# -- 3. findings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("renal masses", "ct", {"kidney tumor", "kidney cyst"}),
    ("kidney lesion", "ct", {"kidney tumor", "kidney cyst"}),
    ("renal cell carcinoma", "ct", {"kidney tumor"}),
    ("cyst of the right kidney", "ct", {"right kidney cyst"}),
    ("hepatic metastases", "mri", {"liver tumor"}),
    ("focal liver lesion", "ct", {"liver tumor"}),
    ("pancreatic adenocarcinoma", "ct", {"pancreas tumor"}),
    ("colon mass", "ct", {"colon cancer"}),
    ("lung mets", "ct", {"lung tumor"}),
    ("pulmonary nodules", "ct", {"lung nodule"}),
    ("brain metastases", "mri", {"brain tumor"}),
    ("myocardial oedema", "mri", {"myocardial edema"}),
    ("nasopharyngeal carcinoma", "ct", {"nasopharyngeal tumor"}),
    ("tumour lesions", "pet", {"tumor"}),
    ("acute ischemic stroke lesion", "mri", {"stroke"}),
])
def test_a_finding_on_an_organ_resolves_to_its_lesion_terms_for_the_modality(prompt, modality, expected):
    resolution = resolve(prompt, modality)
    assert set(resolution.terms) == expected
    assert all(modality in resolve(t, modality).modality for t in resolution.terms)


def test_a_general_finding_word_takes_the_union_and_explain_says_so():
    resolution = resolve("renal mass", "ct")
    assert resolution.method == "finding"
    assert "union of all lesion terms" in resolution.explanation and "kidney" in resolution.explanation


@pytest.mark.parametrize(("prompt", "modality"), [
    ("thyroid nodule", "ct"), ("bone metastases", "ct"), ("splenic lesion", "ct"), ("liver cyst", "ct"),
    ("lesion", "ct"), ("left renal mass", "ct"), ("prostate cancer", "mri"),
])
def test_a_finding_without_a_trained_lesion_term_is_refused_with_suggestions(prompt, modality):
    error = _refused(prompt, modality)
    assert error.suggestions and not error.ambiguous


def test_a_finding_trained_only_on_another_modality_is_refused_naming_it():
    error = _refused("renal mass", "mri")
    assert error.untrained_modality and "trained on CT" in str(error)
    assert _terms("renal mass", "mri", allow_untrained_modality=True) == {"kidney tumor", "kidney cyst"}


# -- 4. word order and naming schemes -------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("kidney right", "mri", "right kidney"), ("lung lower lobe right", "ct", "right lung lower lobe"),
    ("rib left 7", "ct", "left rib 7"), ("seventh rib on the right", "ct", "right rib 7"),
    ("vertebra L3", "ct", "lumbar vertebrae 3 (l3)"), ("L3 vertebra", "mri", "lumbar vertebrae 3 (l3)"),
    ("third lumbar vertebra", "ct", "lumbar vertebrae 3 (l3)"),
    ("segment IV of the liver", "ct", "left medial segment of liver"),
    ("Couinaud segment 7", "ct", "right posterior superior segment of liver"),
    ("prostate transition zone", "mri", "transition zone of prostate"),
    ("vena cava inferior", "ct", "inferior vena cava"),
    ("Glnd_Submand_R", "ct", "right submandibular gland"), ("OpticNrv_L", "ct", "left optic nerve"),
    ("Bowel_Small", "ct", "small bowel"), ("SpinalCord", "ct", "spinal cord"), ("Lobe_Temporal_R", "ct",
                                                                                 "right temporal lobe"),
    ("femur", "mri", "femur bone"),
])
def test_word_orders_and_naming_schemes_resolve(prompt, modality, expected):
    assert resolve(prompt, modality).terms == (expected,)


@pytest.mark.parametrize(("prompt", "expected"), [
    ("left/right kidney", {"left kidney", "right kidney"}), ("liver/spleen", {"liver", "spleen"}),
    ("liver or spleen", {"liver", "spleen"}), ("grey and white matter", {"grey matter", "white matter"}),
    ("kidney tumor and cyst", {"kidney tumor", "kidney cyst"}),
])
def test_slashes_or_and_shared_words_make_unions(prompt, expected):
    modality = "mri" if "matter" in prompt else "ct"
    assert _terms(prompt, modality) == expected


def test_a_leading_number_before_a_plural_is_a_count_not_an_ordinal():
    assert _refused("12 ribs", "ct").suggestions
    assert _terms("12th rib", "ct") == {"rib 12"}
    assert _terms("1st to 3rd ribs", "ct") == {"rib 1", "rib 2", "rib 3"}
    assert _terms("COVID-19 lesions", "ct") == {"covid-19 infection"}


# -- 5. groups ------------------------------------------------------------------------------------------------------

def test_a_written_out_union_lists_its_members_in_the_explanation():
    resolution = resolve("liver, spleen and pancreas", "ct")
    assert set(resolution.terms) == {"liver", "spleen", "pancreas"}
    assert all(t in resolution.explanation for t in resolution.terms)


@pytest.mark.parametrize("prompt", ["great vessels", "rotator cuff", "hamstrings", "limbic system", "brain lobes"])
def test_a_named_group_without_a_curated_membership_is_refused(prompt):
    assert _refused(prompt, "ct" if prompt not in ("limbic system", "brain lobes") else "mri").suggestions


# -- 6. misspellings ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "expected", "correction"), [
    ("splen", "ct", "spleen", "'splen' → 'spleen'"), ("gallblader", "mri", "gallbladder", None),
    ("pancraes", "ct", "pancreas", None), ("hipocampus", "mri", "hippocampus", None),
    ("left kidny", "ct", "left kidney", None), ("esophogus", "ct", "esophagus", None),
    ("thalamos", "mri", "thalamus", None),  # 'thalamic' is a word form of the same structure: one candidate
])
def test_a_word_close_to_exactly_one_known_word_is_corrected_and_said(prompt, modality, expected, correction):
    resolution = resolve(prompt, modality)
    assert resolution.terms == (expected,)
    assert resolution.corrections and any(s.startswith("corrected") for s in resolution.steps)
    if correction:
        assert resolution.corrections == (correction,)
        assert f"corrected {correction}" in resolution.explanation


def test_a_word_close_to_two_known_words_is_refused_naming_both():
    error = _refused("urinary blader", "ct")
    assert "'bladder'" in str(error) and "'blade'" in str(error)
    assert error.suggestions[0] == "urinary bladder"


@pytest.mark.parametrize("prompt", ["cerebrum", "kidney stone", "ureter", "lever", "river", "light", "eight ribs"])
def test_real_words_are_never_corrected_into_terms(prompt):
    error = _refused(prompt, "ct")
    assert "corrected" not in " ".join(error.steps)


def test_short_words_are_never_corrected():
    assert _refused("lvr", "ct").suggestions


# -- 7. no silent partial reading -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "first"), [
    ("liver fat fraction", "mri", "liver"), ("kidney stone", "ct", "kidney"), ("thoracic aorta", "ct", "aorta"),
    ("liver volume", "ct", "liver"), ("spleen tip", "ct", "spleen"), ("left spleen", "ct", "spleen"),
])
def test_a_leftover_content_word_means_refusal_with_the_right_suggestion_first(prompt, modality, first):
    error = _refused(prompt, modality)
    assert error.suggestions[0] == first and len(error.suggestions) <= 5


def test_the_refusal_names_the_words_it_did_not_understand():
    assert "'stone'" in str(_refused("kidney stone", "ct"))


# -- 8. untrained modality ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "modality", "trained"), [
    ("left lung", "mri", "CT"), ("white matter hyperintensities", "ct", "MRI"), ("lymph node", "ct", "PET"),
    ("thyroid", "pet", "CT"), ("vestibular schwannoma", "CT", "MRI"),
])
def test_a_term_not_trained_on_the_modality_is_refused_naming_where_it_was_trained(prompt, modality, trained):
    error = _refused(prompt, modality)
    assert isinstance(error, PromptError) and error.exit_code == 2 and error.untrained_modality
    assert f"trained on {trained}" in str(error) and "--allow-untrained-modality" in str(error)


def test_allow_untrained_modality_resolves_with_the_warning_kept():
    resolution = resolve("left lung", "mri", allow_untrained_modality=True)
    assert resolution.terms == ("left lung",)
    assert resolution.warnings and "trained on CT" in resolution.warnings[0]
    assert resolution.to_dict()["warnings"] == list(resolution.warnings)


def test_prompt_options_refuse_untrained_modality_by_default_and_resolve_prompts_passes_the_choice():
    from satseg.inference.prompts import resolve_prompts

    assert PromptOptions().allow_untrained_modality is False
    with pytest.raises(PromptError, match="trained on CT"):
        resolve_prompts(["left lung"], "mri", PromptOptions())
    prompt, = resolve_prompts(["left lung"], "mri", PromptOptions(allow_untrained_modality=True))
    record = prompt.to_dict()
    assert record["terms"] == ["left lung"] and record["warnings"] and record["output"] == "left_lung"


# -- determinism ----------------------------------------------------------------------------------------------------

def test_reading_is_deterministic():
    prompts = ["Pancreas in contrast-enhanced abdominal CT", "renal masses", "splen", "kidney right"]
    first = [resolve(p, "ct").to_dict() for p in prompts]
    assert [resolve(p, "ct").to_dict() for p in prompts] == first
    assert json.loads(json.dumps(first)) == first


def test_every_step_of_a_resolution_is_a_one_line_string():
    resolution = resolve("segment the splen on contrast-enhanced abdominal CT", "ct")
    assert resolution.terms == ("spleen",)
    assert all(isinstance(s, str) and "\n" not in s for s in resolution.steps)


@pytest.mark.parametrize("prompt", ["CT, scan", "+", "of the", "in the abdomen", "( )", "and", "left", "T1 weighted"])
def test_prompts_of_context_words_only_are_refused_not_crashed(prompt):
    assert isinstance(_refused(prompt, "ct"), PromptError)


def test_random_word_salad_only_ever_raises_prompt_errors():
    import random

    rng = random.Random(15)
    words = ("liver kidney left right of the in on and or , ; + / : ( ) ct mri pet scan lesion mass T1 L1 12 3rd "
             "axial contrast-enhanced abdominal whole-body head neck renal splen tumour PET/CT segment").split()
    for _ in range(2000):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        try:
            resolve(prompt, rng.choice(["ct", "mri", "pet", None]))
        except PromptError:
            pass


@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("Brain MRI, hippocampus", "mri", {"hippocampus"}), ("Cardiac MRI, myocardium", "mri", {"myocardium"}),
    ("MRI brain - hippocampus", "mri", {"hippocampus"}), ("Brain MRI, T1: left thalamus", "mri", {"left thalamus"}),
    ("brain MRI", "mri", {"brain"}), ("CT head and neck: parotid glands", "ct", {"parotid gland"}),
    ("Abdomen: liver", "ct", {"liver"}), ("Brain: hippocampus", "mri", {"hippocampus"}),
])
def test_the_exam_named_before_a_list_is_context_not_one_more_structure(prompt, modality, expected):
    assert _terms(prompt, modality) == expected


@pytest.mark.parametrize(("prompt", "expected"), [
    ("nodules in both lungs", {"lung nodule"}), ("bilateral renal masses", {"kidney tumor", "kidney cyst"}),
])
def test_a_finding_on_both_sides_is_the_organs_lesion_terms(prompt, expected):
    assert _terms(prompt, "ct") == expected


def test_a_finding_on_one_side_of_an_organ_with_unsided_lesion_terms_is_refused_with_them():
    error = _refused("There is a 2 cm mass in the right kidney", "ct")
    assert "not sided" in str(error) and "kidney tumor" in error.suggestions
    assert "lung tumor" in _refused("tumor in the left lung", "ct").suggestions


@pytest.mark.parametrize(("prompt", "expected"), [
    ("thyroid gland, bone", {"thyroid gland", "bone"}), ("left optic nerve, the bone", {"left optic nerve", "bone"}),
    ("left middle ear / muscle", {"left middle ear", "muscle"}), ("rib 9 / right rib 10", {"rib 9", "right rib 10"}),
    ("gluteus maximus muscle, left", {"left gluteus maximus"}), ("Kidneys, left", {"left kidney"}),
])
def test_a_word_dropped_by_a_rewrite_is_never_a_structure_named_after_a_separator(prompt, expected):
    assert _terms(prompt, "ct") == expected
