"""Named groups (issue 15 item 5) and implied head nouns, through the real vocabulary and ``resolve``.

Expected members come from the textbook definitions written in ``curated.json`` (read here as the input it is)
or are spelled out below; none is computed by the resolver.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import satseg.vocabulary
from satseg.cli.main import main
from satseg.vocabulary import PromptResolutionError, build, resolve
from satseg.vocabulary.catalog import load

CURATED = json.loads((Path(satseg.vocabulary.__file__).parent / "curated.json").read_text(encoding="utf-8"))
GROUPS = CURATED["groups"]
RESOLVED = {name: g for name, g in GROUPS.items() if not g.get("missing") and not g.get("refused")}
GLUTEI = ("gluteus maximus", "gluteus medius", "gluteus minimus")


def _refused(prompt: str, modality: str | None = None, **kwargs) -> PromptResolutionError:
    with pytest.raises(PromptResolutionError) as caught:
        resolve(prompt, modality, **kwargs)
    return caught.value


def _trained_on(members: list[str]) -> set[str]:
    vocabulary = load()
    return set.intersection(*(set(vocabulary.modalities_of(m)) for m in members))


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_every_group_name_resolves_to_its_members_on_a_modality_they_were_all_trained_on(name):
    group = RESOLVED[name]
    modality = sorted(_trained_on(group["members"]))[0]
    for phrase in [name, *group.get("names", [])]:
        resolution = resolve(phrase, modality)
        assert set(resolution.terms) == set(group["members"]), phrase
        assert resolution.method == "group" and not resolution.warnings
        assert resolution.groups[0]["group"] == name and resolution.groups[0]["source"] == group["source"]


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_a_group_with_a_member_untrained_on_the_modality_is_refused_whole_naming_that_member(name):
    members = RESOLVED[name]["members"]
    vocabulary = load()
    for modality in ("ct", "mri", "pet"):
        untrained = [m for m in members if modality not in vocabulary.modalities_of(m)]
        if not untrained:
            continue
        refusal = _refused(name, modality)
        assert refusal.untrained_modality and all(repr(m) in str(refusal) for m in untrained)
        assert refusal.group["untrained"] == untrained
        allowed = resolve(name, modality, allow_untrained_modality=True)  # all members, each untrained one warned
        assert set(allowed.terms) == set(members) and len(allowed.warnings) == len(untrained)


def test_lung_lobes_on_mri_name_the_modality_they_were_trained_on():
    refusal = _refused("lung lobes", "mri")
    assert "trained on CT only" in str(refusal) and refusal.suggestions == ()


def test_inner_ear_on_mri_is_refused_though_the_cochlea_is_trained_there():
    refusal = _refused("inner ear", "mri")
    assert refusal.group["untrained"] == ["vestibule semicircular canal"]
    assert refusal.suggestions == ("cochlea",)  # the trained member, named for the user to choose


@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("left gluteal muscles", "ct", {f"left {g}" for g in GLUTEI}),
    ("gluteal muscles (right)", "ct", {f"right {g}" for g in GLUTEI}),
    ("bilateral glutei", "ct", {f"{s} {g}" for s in ("left", "right") for g in GLUTEI}),
    ("lobes of the left lung", "ct", {"left lung upper lobe", "left lung lower lobe"}),
    ("upper lobes of both lungs", "ct", {"left lung upper lobe", "right lung upper lobe"}),
    ("right heart chambers", "mri", {"right heart atrium", "right heart ventricle"}),
    ("left lentiform nucleus", "mri", {"left putamen", "left pallidum"}),
    ("right shoulder girdle", "ct", {"right clavicle", "right scapula"}),
])
def test_a_side_keeps_the_members_of_that_side(prompt, modality, expected):
    assert set(resolve(prompt, modality).terms) == expected


@pytest.mark.parametrize(("prompt", "modality", "unsided"), [
    ("left cerebrum", "mri", "grey matter"), ("right abdominal veins", "ct", "inferior vena cava"),
    ("left liver segments", "ct", "caudate lobe"), ("left venae cavae", "ct", "superior vena cava"),
])
def test_a_side_on_a_group_with_an_unsided_member_is_refused_naming_it(prompt, modality, unsided):
    assert repr(unsided) in str(_refused(prompt, modality))


@pytest.mark.parametrize(("prompt", "missing"), [
    ("liver lobes", "quadrate lobe"), ("lobes of the liver", "quadrate lobe"),
    ("major salivary glands", "sublingual gland"), ("left salivary glands", "sublingual gland"),
])
def test_a_group_with_a_textbook_member_sat_never_trained_is_refused_naming_it(prompt, missing):
    refusal = _refused(prompt, "ct")
    assert repr(missing) in str(refusal) and refusal.group["missing"] == [missing]
    assert refusal.suggestions and not refusal.untrained_modality


def test_rib_cage_is_refused_with_its_reason_and_the_trained_members_suggested():
    refusal = _refused("the rib cage on chest CT", "ct")
    assert "definitions differ" in str(refusal) and set(refusal.suggestions) >= {"rib", "sternum"}


@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("Segment the gluteal muscels on pelvic CT", "ct", set(GLUTEI)),  # misspelt, with context
    ("glutael muscles", "ct", set(GLUTEI)),
    ("cerebral hemispheres on T1-weighted MRI", "mri", {"grey matter", "white matter", "deep grey matter"}),
    ("left heart and aorta", "ct", {"left heart atrium", "left heart ventricle", "aorta"}),
    ("left heart and lungs", "ct", {"left heart atrium", "left heart ventricle", "lung"}),  # the name's side stays
    ("the four chambers of the heart", "ct",
     {"left heart atrium", "left heart ventricle", "right heart atrium", "right heart ventricle"}),
])
def test_groups_go_through_context_spelling_and_lists(prompt, modality, expected):
    assert set(resolve(prompt, modality).terms) == expected


def test_group_words_never_make_an_existing_correction_ambiguous():
    assert resolve("cerebelum", "mri").terms == ("cerebellum",)  # not 'cerebrum' (a group name)
    assert resolve("inferior vena cave", "ct").terms == ("inferior vena cava",)  # not 'cavae' or 'cage'


def test_no_group_name_is_a_trained_term_name():
    vocabulary = load()
    assert not set(vocabulary.group_keys) & set(vocabulary.term_by_key)


def test_the_build_refuses_a_group_member_that_is_no_trained_term():
    tables = build._Tables(["liver", "spleen"])
    with pytest.raises(ValueError, match="no trained terms"):
        build._groups({"x": {"members": ["liver", "pancreas"], "source": "s"}}, tables, {"liver": {"ct"}})
    groups, keys = build._groups({"organs": {"names": ["solid organs"], "members": ["liver", "spleen"],
                                            "source": "s"}}, tables, {"liver": {"ct"}, "spleen": {"ct"}})
    assert keys == {"organ": "organs", "solid organ": "organs"} and groups["organs"]["members"] == ["liver", "spleen"]


@pytest.mark.parametrize(("prompt", "modality", "expected"), [
    ("right internal jugular", "ct", ("right internal jugular vein",)),
    ("internal jugulars", "ct", ("internal jugular vein",)),
    ("left caudate", "mri", ("left caudate nucleus",)),  # the caudate lobe has no side
    ("celiac", "ct", ("celiac trunk",)),
    ("left brachiocephalic", "ct", ("left brachiocephalic vein",)),  # the brachiocephalic trunk is unsided
    ("tibia", "mri", ("tibia bone",)),
])
def test_an_implied_head_noun_completes_a_name_with_one_completion(prompt, modality, expected):
    assert resolve(prompt, modality).terms == expected


@pytest.mark.parametrize(("prompt", "options"), [
    ("brachiocephalic", {"brachiocephalic trunk", "brachiocephalic vein"}),
    ("left iliac", {"left iliac artery", "left iliac vena"}),
])
def test_two_completions_are_ambiguous_and_both_are_named(prompt, options):
    refusal = _refused(prompt, "ct")
    assert refusal.ambiguous and set(refusal.suggestions) == options


@pytest.mark.parametrize("prompt", ["thigh", "collar", "left optic", "jugular foramen"])
def test_no_completion_through_a_synonym_or_between_two_structures(prompt):
    _refused(prompt, "ct")


def test_terms_explain_json_lists_group_members_rule_and_source(capsys):
    assert main(["terms", "--explain", "left gluteal muscles", "-m", "ct", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    group = data["groups"][0]
    assert group["group"] == "gluteal muscles" and set(group["members"]) == {f"left {g}" for g in GLUTEI}
    assert "union" in group["rule"] and "Gray" in group["source"]
    assert main(["terms", "--explain", "lung lobes", "-m", "mri"]) == 2
    out = capsys.readouterr().out
    assert "group:" in out and "untrained:" in out and "source:" in out
