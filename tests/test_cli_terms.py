"""``satseg terms``: listing, filtering, JSON output and --explain, through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from satseg.cli.main import main


@pytest.fixture(scope="module")
def terminology(shared_reference):
    return json.loads((shared_reference / "sat/sat-ds/terminology_list.json").read_text())


def _json_out(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_terms_json_lists_all_498_modality_entries_with_regions_and_datasets(capsys, terminology):
    entries = _json_out(capsys, ["terms", "--json"])
    assert len(entries) == 498
    assert sorted(e["entry"] for e in entries) == sorted(terminology["all"])
    by_entry = {e["entry"]: e for e in entries}
    liver_ct = by_entry["ct_liver"]
    assert liver_ct["name"] == "liver" and liver_ct["modality"] == "ct"
    assert "abdomen" in liver_ct["regions"] and "BTCV" in liver_ct["datasets"]
    assert all(e["regions"] and e["datasets"] for e in entries)


def test_terms_json_filters_by_modality_region_and_dataset(capsys, terminology):
    mri_brain = _json_out(capsys, ["terms", "--json", "--modality", "mri", "--region", "brain"])
    expected = {e for e in terminology["region_based"]["brain"] if e.startswith("mri_")}
    assert {e["entry"] for e in mri_brain} == expected
    acdc = _json_out(capsys, ["terms", "--json", "--dataset", "ACDC"])
    assert {e["entry"] for e in acdc} == set(terminology["dataset_based"]["ACDC"])


def test_terms_query_shows_matching_terms_in_a_table(capsys):
    assert main(["terms", "adrenal", "--modality", "MRI"]) == 0
    out = capsys.readouterr().out
    assert "left adrenal gland" in out and "right adrenal gland" in out
    assert "liver" not in out


def test_terms_query_by_abbreviation_finds_the_term(capsys):
    names = {e["name"] for e in _json_out(capsys, ["terms", "wmh", "--json"])}
    assert names == {"white matter hyperintensities"}


def test_terms_query_without_match_says_so_and_suggests(capsys):
    assert main(["terms", "pancraes"]) == 0
    out = capsys.readouterr().out
    assert "no trained term matches" in out and "pancreas" in out


def test_explain_shows_terms_method_and_explanation(capsys):
    assert main(["terms", "--explain", "renal organs"]) == 0
    out = capsys.readouterr().out
    assert "terms:       kidney" in out and "method:" in out and "explanation:" in out


def test_explain_json_prints_the_resolution_record(capsys):
    record = _json_out(capsys, ["terms", "--explain", "both lungs", "--modality", "mri", "--json",
                                "--allow-untrained-modality"])
    assert record["terms"] == ["left lung", "right lung"]
    assert record["method"] == "composition" and record["modality"] == "mri"
    assert len(record["warnings"]) == 2


def test_explain_of_an_unknown_prompt_exits_2_with_suggestions(capsys):
    assert main(["terms", "--explain", "spleen tip"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("satseg: error: ") and "spleen" in err and err.count("\n") == 1


def test_explain_of_an_ambiguous_prompt_exits_2_naming_both_meanings(capsys):
    assert main(["terms", "--explain", "vena cava"]) == 2
    err = capsys.readouterr().err
    assert "inferior vena cava" in err and "superior vena cava" in err


@pytest.mark.parametrize("argv", [
    ["terms", "--region", "belly"],
    ["terms", "--dataset", "NoSuchSet"],
    ["terms", "--modality", "ultrasound"],
])
def test_bad_filters_exit_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("satseg: error: ") and err.count("\n") == 1


def test_console_script_lists_terms_as_json():
    done = subprocess.run([sys.executable, "-m", "satseg.cli.main", "terms", "--json", "--modality", "pet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {e["name"] for e in json.loads(done.stdout)} == {"head and neck tumor", "lymph node", "tumor"}


def test_explain_shows_each_step_of_the_reading(capsys):
    assert main(["terms", "--explain", "segment the splen on contrast-enhanced abdominal CT", "-m", "ct"]) == 0
    out = capsys.readouterr().out
    assert "corrected 'splen' → 'spleen'" in out and "set aside" in out and "terms:       spleen" in out


def test_explain_json_records_context_corrections_and_the_findings_rule(capsys):
    record = _json_out(capsys, ["terms", "--explain", "renal masses on CT", "--json"])
    assert set(record["terms"]) == {"kidney cyst", "kidney tumor"} and record["method"] == "finding"
    assert record["modality"] == "ct" and record["context"] and record["corrections"] == []
    assert any("union of all lesion terms" in step for step in record["steps"])


def test_explain_json_of_a_refusal_prints_the_suggestions_and_exits_2(capsys):
    assert main(["terms", "--explain", "kidney stone", "--json"]) == 2
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["refused"] and record["suggestions"][0] == "kidney" and len(record["suggestions"]) <= 5
    assert captured.err.startswith("satseg: error: ") and captured.err.count("\n") == 1


def test_explain_of_an_untrained_modality_exits_2_unless_allowed(capsys):
    assert main(["terms", "--explain", "left lung", "-m", "mri"]) == 2
    assert "trained on CT" in capsys.readouterr().err
    assert main(["terms", "--explain", "left lung", "-m", "mri", "--allow-untrained-modality"]) == 0
    assert "warning:" in capsys.readouterr().out


def test_terms_json_shows_the_dicom_codes_of_every_entry_and_of_a_resolved_prompt(capsys):
    entries = _json_out(capsys, ["terms", "--json"])
    assert all(e["code"]["type"]["scheme"] in ("SCT", "99SATSEG") for e in entries)
    by_entry = {e["entry"]: e for e in entries}
    left_kidney = by_entry["ct_left kidney"]["code"]
    assert (left_kidney["type"]["scheme"], left_kidney["type"]["value"]) == ("SCT", "64033007")  # Kidney
    assert left_kidney["modifier"]["value"] == "7771000"  # Left
    assert by_entry["ct_liver"]["code"]["type"]["value"] == "10200004"  # Liver
    resolved = _json_out(capsys, ["terms", "--json", "--explain", "left kidney", "-m", "ct"])
    assert resolved["code"] == left_kidney
