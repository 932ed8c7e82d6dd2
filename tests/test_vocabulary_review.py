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
