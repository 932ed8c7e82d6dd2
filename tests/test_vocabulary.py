"""The packaged vocabulary: completeness against SAT's files, self-resolution, ambiguity, build reproducibility."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import FrozenInstanceError
from importlib import resources
from pathlib import Path

import pytest

from satseg.errors import InputError, PromptError
from satseg.vocabulary import (
    PromptResolutionError,
    modality_terms,
    normalize_modality,
    resolve,
    suggest,
    terms,
)
from satseg.vocabulary.build import build, render

PACKAGED = resources.files("satseg.vocabulary").joinpath("vocabulary.json")


@pytest.fixture(scope="module")
def terminology(shared_reference: Path) -> dict:
    return json.loads((shared_reference / "sat/sat-ds/terminology_list.json").read_text())


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(PACKAGED.read_text(encoding="utf-8"))


def _names(terminology: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for entry in terminology["all"]:
        modality, name = entry.split("_", 1)
        out.setdefault(name, set()).add(modality)
    return out


# -- completeness -----------------------------------------------------------------------------------------------

def test_all_498_modality_entries_are_listed_with_regions_and_datasets(terminology):
    entries = modality_terms()
    assert sorted(e.entry for e in entries) == sorted(terminology["all"])
    for entry in entries:
        assert entry.regions == tuple(sorted(r for r, items in terminology["region_based"].items()
                                             if entry.entry in items))
        assert entry.datasets == tuple(sorted(d for d, items in terminology["dataset_based"].items()
                                              if entry.entry in items))
        assert entry.regions and entry.datasets
        assert entry.abnormal == (entry.entry in terminology["abnormal"])


def test_terms_groups_entries_by_name_with_all_their_modalities(terminology):
    names = _names(terminology)
    listed = {t.name: set(t.modalities) for t in terms()}
    assert listed == names
    assert len(listed) == 451


def test_filters_select_the_entries_sat_lists_for_that_modality_region_and_dataset(terminology):
    assert {e.entry for e in modality_terms(modality="MRI")} == set(terminology["modality_based"]["mri"])
    assert {e.entry for e in modality_terms(region="Head and Neck")} == set(terminology["region_based"]["head and neck"])
    assert {e.entry for e in modality_terms(dataset="btcv")} == set(terminology["dataset_based"]["BTCV"])
    both = {e.entry for e in modality_terms(modality="ct", region="thorax")}
    assert both == {e for e in terminology["region_based"]["thorax"] if e.startswith("ct_")}


def test_query_finds_terms_by_part_of_name_or_by_alias():
    assert {"left kidney", "right kidney", "kidney", "kidney cyst"} <= {t.name for t in terms(query="kidneys")}
    assert "inferior vena cava" in {t.name for t in terms(query="ivc")}
    assert "left clavicle" in {t.name for t in terms(query="clavicula_left")}


def test_unknown_region_and_dataset_are_one_line_input_errors():
    with pytest.raises(InputError, match="abdomen") as region:
        terms(region="belly")
    with pytest.raises(InputError, match="BTCV") as dataset:
        terms(dataset="BTVC")
    assert "\n" not in str(region.value) + str(dataset.value)


# -- self-resolution --------------------------------------------------------------------------------------------

def test_every_trained_term_resolves_to_itself_exactly_for_each_modality_it_was_trained_on(terminology):
    for name, modalities in _names(terminology).items():
        for modality in modalities:
            for spelling in (name, name.upper(), f" {name.title()} "):
                resolution = resolve(spelling, modality)
                assert resolution.terms == (name,), (spelling, resolution)
                assert resolution.method == "exact"
                assert resolution.warnings == ()


def test_every_terminology_entry_string_resolves_to_its_term(terminology):
    for entry in terminology["all"]:
        assert resolve(entry).terms == (entry.split("_", 1)[1],)


def test_every_totalsegmentator_total_and_total_mr_class_resolves_to_its_mapped_term(totalseg_dir, document):
    class_map = _class_map(totalseg_dir / "map_to_binary.py")
    section = document["totalsegmentator"]
    assert len(section["total"]) == len(class_map["total"]) == 117
    assert len(section["total_mr"]) == len(class_map["total_mr"]) == 50
    for task in ("total", "total_mr"):
        for ts_name in class_map[task].values():
            mapped = section[task][ts_name]
            if mapped is None:
                assert ts_name in section["without_sat_term"][task]
                continue
            resolution = resolve(ts_name)
            assert resolution.terms == (mapped,)
            assert resolution.method in ("totalsegmentator", "exact")


def test_totalsegmentator_names_map_to_the_right_structures_by_hand(document):
    total = document["totalsegmentator"]["total"]
    assert total["kidney_left"] == "left kidney"
    assert total["vertebrae_L1"] == "lumbar vertebrae 1 (l1)"
    assert total["vertebrae_S1"] == "sacral vertebrae 1 (s1)"
    assert total["clavicula_right"] == "right clavicle"
    assert total["atrial_appendage_left"] == "left auricle of heart"
    assert total["rib_left_7"] == "left rib 7"
    assert total["costal_cartilages"] == "costal cartilage"
    assert document["totalsegmentator"]["total_mr"]["lung_left"] == "left lung"
    assert "lung_left" in document["totalsegmentator"]["not_trained_for_mri"]


def _class_map(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "class_map":
            return ast.literal_eval(node.value)
    raise AssertionError("no class_map")


# -- ambiguity --------------------------------------------------------------------------------------------------

def test_every_alias_points_at_exactly_one_trained_term(document, terminology):
    names = _names(terminology)
    for key, alias in document["aliases"].items():
        assert alias["term"] in names, key
        assert key not in document["ambiguous"]


def test_every_ambiguous_alias_is_refused_naming_all_its_meanings(document):
    for key, options in document["ambiguous"].items():
        with pytest.raises(PromptResolutionError) as caught:
            resolve(key)
        assert caught.value.ambiguous
        assert set(caught.value.suggestions) == set(options)
        assert all(option in str(caught.value) for option in options)


def test_build_marks_a_synonym_listed_under_two_concepts_as_ambiguous(tmp_path, shared_reference, totalseg_dir):
    reference = _reference_with_knowledge(tmp_path, shared_reference, {
        "liver": {"synonyms": ["Glorp organ in abdominal CT"]},
        "spleen": {"synonyms": ["glorp organ", "Lienal tissue observed in abdominal CT scans"]},
    })
    document = build(reference, totalseg_dir / "map_to_binary.py")
    assert document["ambiguous"]["glorp organ"] == ["liver", "spleen"]
    assert "glorp organ" not in document["aliases"]
    assert document["aliases"]["lienal"]["term"] == "spleen"  # cut out of the descriptive phrase


def test_build_marks_a_broader_one_word_synonym_as_ambiguous(tmp_path, shared_reference, totalseg_dir):
    reference = _reference_with_knowledge(tmp_path, shared_reference, {
        "spinal canal": {"synonyms": ["Canal in whole body CT"]},
    })
    document = build(reference, totalseg_dir / "map_to_binary.py")
    assert {"spinal canal", "internal auditory canal"} <= set(document["ambiguous"]["canal"])


def test_a_knowledge_synonym_never_overrides_a_trained_term(tmp_path, shared_reference, totalseg_dir):
    reference = _reference_with_knowledge(tmp_path, shared_reference, {
        "heart": {"synonyms": ["Thoracic cavity observed in chest CT"]},
    })
    document = build(reference, totalseg_dir / "map_to_binary.py")
    assert "thoracic cavity" not in document["aliases"] and "thoracic cavity" not in document["ambiguous"]


def _reference_with_knowledge(tmp_path: Path, shared_reference: Path, knowledge: dict) -> Path:
    (tmp_path / "sat-ds").mkdir()
    (tmp_path / "sat-pretrain").mkdir()
    shutil.copy(shared_reference / "sat/sat-ds/terminology_list.json", tmp_path / "sat-ds")
    (tmp_path / "sat-pretrain/supplementary_lab2def_gpt.json").write_text(json.dumps(knowledge))
    return tmp_path


# -- the build --------------------------------------------------------------------------------------------------

def test_build_script_regenerates_the_packaged_file_byte_for_byte(tmp_path, shared_reference, totalseg_dir):
    out = tmp_path / "vocabulary.json"
    subprocess.run([sys.executable, "-m", "satseg.vocabulary.build", "--reference", str(shared_reference),
                    "--totalseg-map", str(totalseg_dir / "map_to_binary.py"), "--output", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == PACKAGED.read_bytes()
    assert render(build(shared_reference / "sat", totalseg_dir / "map_to_binary.py")).encode() == out.read_bytes()


def test_packaged_vocabulary_ships_names_but_no_definition_prose(document, shared_reference):
    text = PACKAGED.read_text(encoding="utf-8")
    knowledge = json.loads((shared_reference / "sat/sat-pretrain/supplementary_lab2def_gpt.json").read_text())
    definitions = [v["cleaned_definition"] for v in knowledge.values() if v.get("cleaned_definition")]
    assert "cleaned_definition" not in text
    assert not any(d[:60] in text for d in definitions if isinstance(d, str))
    assert max(len(key.split()) for key in document["aliases"]) <= 8


# -- API details ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("CT", "ct"), ("ct", "ct"), ("CTA", "ct"), ("computed tomography", "ct"), ("mri", "mri"), ("MR", "mri"),
    ("MRI T1", "mri"), ("t2", "mri"), ("T1w", "mri"), ("FLAIR", "mri"), ("dwi", "mri"), ("MRI ADC", "mri"),
    ("pet", "pet"), ("PET/CT", "pet"), ("FDG-PET", "pet"),
])
def test_normalize_modality_accepts_common_spellings(given, expected):
    assert normalize_modality(given) == expected


def test_normalize_modality_rejects_unknown_with_one_line_listing_accepted_values():
    with pytest.raises(InputError) as caught:
        normalize_modality("x-ray")
    message = str(caught.value)
    assert "\n" not in message and all(m in message for m in ("ct", "mri", "pet"))


def test_resolution_is_frozen_and_serialises_to_json():
    resolution = resolve("both lungs", "mri", allow_untrained_modality=True)
    with pytest.raises(FrozenInstanceError):
        resolution.terms = ()
    data = json.loads(json.dumps(resolution.to_dict()))
    assert data == {"prompt": "both lungs", "terms": ["left lung", "right lung"], "method": "composition",
                    "modality": "mri", "warnings": list(resolution.warnings),
                    "explanation": resolution.explanation, "context": [], "corrections": [],
                    "steps": list(resolution.steps), "groups": []}
    assert len(data["warnings"]) == 2


def test_methods_name_how_each_prompt_was_matched():
    assert resolve("Left Kidney").method == "exact"
    assert resolve("kidney_left").method == "totalsegmentator"
    assert resolve("ivc").method == "abbreviation"
    assert resolve("collarbone").method == "synonym"
    assert resolve("liver and spleen").method == "composition"
    assert resolve("L1-L3").method == "composition"


def test_unresolved_prompt_error_is_a_one_line_prompt_error_with_up_to_five_suggestions():
    with pytest.raises(PromptError) as caught:
        resolve("pancreass tail region")
    error = caught.value
    assert isinstance(error, InputError) and error.exit_code == 2
    assert "\n" not in str(error) and 1 <= len(error.suggestions) <= 5
    assert error.suggestions[0] == "pancreas"
    assert all(s in str(error) for s in error.suggestions)


@pytest.mark.parametrize("empty", ["", "   ", "?!", "()"])
def test_empty_prompts_are_refused(empty):
    with pytest.raises(PromptError):
        resolve(empty)


def test_free_text_sends_the_prompt_unchanged_with_a_warning():
    resolution = resolve("the fluffy bit near the kidney", "ct", free_text=True)
    assert resolution.terms == ("the fluffy bit near the kidney",)
    assert resolution.method == "free-text"
    assert resolution.warnings and "trained" in resolution.warnings[0]
    assert resolve("liver", "ct", free_text=True).warnings == ()


def test_suggest_returns_at_most_k_distinct_trained_terms_best_first():
    found = suggest("left kidny", k=3)
    assert found[0] == "left kidney" and len(found) == 3 == len(set(found))
    assert suggest("hepatc")[0] == "liver"  # via the synonym "hepatic"
    assert suggest("thalamos", modality="mri")[0] == "thalamus"


def test_importing_the_vocabulary_and_resolving_does_not_import_torch():
    code = ("import sys, satseg.vocabulary as v; v.resolve('liver and spleen'); v.terms(); "
            "raise SystemExit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
