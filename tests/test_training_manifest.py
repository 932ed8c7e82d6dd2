"""The 72-dataset training manifest (train/datasets/) and the training configs (train/configs/*.yaml)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from satseg.errors import InputError
from satseg.training.manifest import load_manifest, validate_entry

REPO = Path(__file__).resolve().parents[1]
DATASETS_DIR = REPO / "train" / "datasets"
SCHEMA = json.loads((REPO / "train" / "datasets.schema.json").read_text())
CONFIGS = REPO / "train" / "configs"


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.fixture(scope="module")
def sat_ds(shared_reference: Path) -> Path:
    return shared_reference / "sat" / "sat-ds"


@pytest.fixture(scope="module")
def vocabulary(sat_ds: Path) -> dict:
    return json.loads((sat_ds / "terminology_list.json").read_text())


@pytest.fixture(scope="module")
def jsonl_patients(sat_ds: Path) -> dict[str, set[str]]:
    out = {}
    for path in sorted((sat_ds / "jsonl").glob("*.jsonl")):
        with path.open() as fh:
            out[path.stem] = {json.loads(line)["patient_id"] for line in fh}
    return out


def test_manifest_holds_exactly_the_72_sat_ds_datasets(manifest, jsonl_patients):
    assert len(manifest) == 72
    assert sorted(manifest.names) == sorted(jsonl_patients)


def test_every_entry_file_validates_against_the_json_schema():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    for path in sorted(DATASETS_DIR.glob("*.json")):
        errors = [e.message for e in validator.iter_errors(json.loads(path.read_text()))]
        assert errors == [], path.name


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["merges"].append({"term": "kidney", "from": ["left kidney", "no such organ"]}), "unknown members"),
    (lambda d: d.update(modality="xray"), "modality"),
    (lambda d: d["labels"][0].pop("value"), "integer value"),
    (lambda d: d["split"].pop("test"), "split"),
    (lambda d: d.update(orientation="RRS"), "orientation"),
    (lambda d: d["terms"].reverse(), "terms must list"),
])
def test_a_broken_entry_is_rejected_by_the_loader_and_the_schema(tmp_path, breakage, message):
    data = json.loads((DATASETS_DIR / "AMOS22_CT.json").read_text())
    assert validate_entry(data) == []
    breakage(data)
    (tmp_path / "AMOS22_CT.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        load_manifest(tmp_path)
    if message not in ("unknown members", "terms must list"):  # order/merge semantics are beyond JSON Schema
        assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data)), message


def test_loading_a_missing_manifest_raises_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_manifest(tmp_path / "nowhere")


def test_every_mapping_target_is_a_trained_term_for_the_datasets_modality(manifest, vocabulary):
    trained_all = set(vocabulary["all"])
    for entry in manifest:
        targets = {lab.term for lab in entry.labels if lab.term} | {m.term for m in entry.merges} | set(entry.terms)
        missing = sorted(t for t in targets if f"{entry.modality}_{t}" not in trained_all)
        assert missing == [], entry.name


def test_term_sets_equal_what_terminology_list_says_was_trained_per_dataset(manifest, vocabulary):
    mismatched = [e.name for e in manifest
                  if {f"{e.modality}_{t}" for t in e.terms} != set(vocabulary["dataset_based"][e.name])]
    noted = [e.name for e in manifest if any(n.startswith("Terminology mismatch") for n in e.notes)]
    assert mismatched == noted == []


def test_test_split_matches_the_reference_split_files(manifest, sat_ds, jsonl_patients):
    for entry in manifest:
        split_path = sat_ds / "split_json" / entry.split.source.rsplit("/", 1)[1]
        reference = json.loads(split_path.read_text())
        assert entry.split.sha256 == hashlib.sha256(split_path.read_bytes()).hexdigest(), entry.name
        assert entry.split.test == set(reference["test"]), entry.name
        assert entry.split.test_patients == len(set(reference["test"])), entry.name


def test_everyone_not_in_test_is_exactly_the_reference_training_patients(manifest, sat_ds, jsonl_patients):
    for entry in manifest:
        reference = json.loads((sat_ds / "split_json" / entry.split.source.rsplit("/", 1)[1]).read_text())
        patients = jsonl_patients[entry.name]
        assigned = entry.split.assign(sorted(patients))
        train = {pid for pid, part in assigned.items() if part == "train"}
        assert train == (set(reference["train"]) - set(reference["test"])) & patients, entry.name


def test_split_assign_labels_listed_patients_test_and_others_train(manifest):
    kits = manifest["KiTS23"]
    assert kits.split.assign(["case_00003", "case_00000"]) == {"case_00003": "test", "case_00000": "train"}


def test_orientation_overrides_are_asr_ipl_lps_as_sat_ds_and_ras_elsewhere(manifest):
    overrides = {e.name: e.orientation for e in manifest if e.orientation != "RAS"}
    assert overrides == {"MRSpineSeg": "ASR", "VerSe": "ASR", "ToothFairy": "IPL", "BTCV_Cervix": "LPS"}


def test_kidney_is_left_plus_right_and_includes_tumour_and_cyst_where_sat_ds_does(manifest):
    assert manifest["AMOS22_CT"].term_sources()["kidney"] == {"left kidney", "right kidney"}
    assert manifest["KiTS23"].term_sources()["kidney"] == {"kidney", "kidney tumor", "kidney cyst"}
    assert manifest["KiTS23"].label_map["kidney cyst"] == ("kidney", "kidney cyst")
    assert manifest["KiPA22"].term_sources()["kidney"] == {"kidney", "kidney tumor"}
    assert manifest["WORD"].term_sources()["head of femur"] == {"head of left femur", "head of right femur"}


def test_raw_mask_values_follow_the_sat_ds_loader(manifest):
    acdc = {lab.term: lab.value for lab in manifest["ACDC"].labels}
    assert acdc == {"left heart ventricle": 3, "right heart ventricle": 1, "myocardium": 2}
    dap = {lab.raw: lab.value for lab in manifest["DAP_Atlas"].labels}
    assert (dap["colon"], dap["rectum"], dap["gallbladder"]) == (9, 10, 11)
    assert manifest["DAP_Atlas"].label_map["rectum"] == ()
    segrap = manifest["SegRap2023_Task1"].term_sources()
    assert "left temporal lobe hippocampus overlap" in segrap["left hippocampus"] & segrap["left temporal lobe"]


def test_sampler_settings_match_dataset_config_72(manifest, shared_reference):
    config = json.loads((shared_reference / "sat" / "sat" / "dataset_config_72.json").read_text())
    for entry in manifest:
        assert dict(entry.sampler) == {k: config[entry.name][k] for k in entry.sampler}, entry.name
    assert manifest["DAP_Atlas"].sampler["sampling_weight"] == 3.0


def test_committed_manifest_is_what_the_build_script_generates(tmp_path, shared_reference):
    subprocess.run([sys.executable, str(REPO / "train" / "build_manifest.py"), "--reference", str(shared_reference),
                    "--out", str(tmp_path)], check=True)
    built = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_bytes() for p in DATASETS_DIR.glob("*.json")}
    assert built.keys() == committed.keys()
    assert [name for name in built if built[name] != committed[name]] == []


def _config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


def test_nano_and_pro_configs_carry_the_papers_hyperparameters():
    for name, per_gpu, nodes, variant in [("nano", 2, 1, "nano"), ("pro", 1, 2, "pro")]:
        cfg = _config(name)
        assert cfg["model"] == {"variant": variant, "deep_supervision": True}
        assert cfg["data"]["crop_size"] == [288, 288, 64] and cfg["data"]["max_queries"] == 32
        assert cfg["batch"] == {"per_gpu": per_gpu, "accumulate": 1}
        assert cfg["schedule"] == {"steps": 200000, "warmup_steps": 20000, "decay": "cosine",
                                      "freeze_query_side_steps": 0}
        assert cfg["optim"] == {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
        assert cfg["precision"] == {"amp": True, "dtype": "float16", "grad_scaler": True}
        assert cfg["distributed"]["gpus_per_node"] * cfg["distributed"]["nodes"] == 8 * nodes
        assert cfg["text_encoder"]["open_bert_layer"] == 8
        assert sum(cfg["loss"]["deep_supervision_weights"]) == pytest.approx(1.0, abs=1e-6)
        assert cfg["augmentation"]["RandZoom"] == {"prob": 0.2, "min_zoom": 0.7, "max_zoom": 1.4, "mode": ["area", "nearest"]}
        assert cfg["sampler"]["label_based_crop_prob"] == 0.5


@pytest.mark.parametrize("name", ["nano", "pro", "tiny"])
def test_every_config_value_line_cites_its_source(name):
    value_line = re.compile(r"^\s*[A-Za-z_]+:\s*\S")
    uncited = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines()
               if value_line.match(line) and not re.search(r"#\s*(spec \d|72\.json|satseg)", line)]
    assert uncited == []


def test_all_configs_share_one_schema_and_tiny_is_a_small_cpu_run():
    keys = {name: set(_config(name)) for name in ("tiny", "nano", "pro")}
    assert keys["tiny"] == keys["nano"] == keys["pro"]
    tiny = _config("tiny")
    crop = tiny["data"]["crop_size"]
    assert all(c % 32 == 0 for c in crop) and crop[0] * crop[1] * crop[2] <= 160 * 160 * 64  # a CPU-sized crop
    assert tiny["schedule"]["steps"] <= 5000 and tiny["precision"]["amp"] is False
    assert tiny["distributed"]["backend"] == "gloo"
