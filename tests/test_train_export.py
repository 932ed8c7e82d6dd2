"""``satseg train export``: training checkpoints and released pairs → satseg safetensors, usable by name at once."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors import safe_open

from satseg import weights
from satseg.cli.main import main
from satseg.errors import CheckpointError
from satseg.model import build_sat, build_text_encoder
from satseg.model.config import TextConfig, get_config
from satseg.model.checkpoint import load_satseg_weights, read_satseg_metadata, write_official_checkpoint
from satseg.training.export import convert_official, export_training_checkpoint, manifest_entry


@pytest.fixture()
def env(isolated_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return isolated_home


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ``satseg train fit``-style checkpoint of a tiny model: weights, one AdamW step of state, RNG states."""
    torch.manual_seed(3)
    model, text = build_sat("tiny", deep_supervision=True), build_text_encoder("tiny")
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(text.parameters()), lr=1e-3)
    sum((p * p).sum() for group in optimizer.param_groups for p in group["params"]).backward()
    optimizer.step()
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    torch.save({"format": "satseg-train", "variant": "tiny", "config": {"model": {"variant": "tiny"}, "lr": 1e-4},
                "step": 12, "model": model.state_dict(), "text_encoder": text.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state(),
                                                             "numpy": np.random.get_state()}}, path)
    return path, model, text


def _assert_same_weights(model, text, loaded_model, loaded_text, *, atol=0.0):
    for original, loaded in ((model, loaded_model), (text, loaded_text)):
        got = loaded.state_dict()
        for key, tensor in original.state_dict().items():
            if key.startswith("mid_mask_embed_proj."):
                continue
            torch.testing.assert_close(got[key], tensor, atol=atol, rtol=0 if atol == 0 else 1e-3, msg=key)


def test_export_keeps_weights_exactly_and_drops_optimizer_state_and_deep_supervision_heads(trained, tmp_path):
    path, model, text = trained

    out = export_training_checkpoint(path, tmp_path / "tiny.safetensors")

    with safe_open(str(out), framework="pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith(("sat.", "text.")) for k in keys)
    assert not any("mid_mask_embed_proj" in k for k in keys)
    meta = read_satseg_metadata(out)
    assert (meta["format"], meta["variant"], meta["dtype"], meta["step"]) == ("satseg", "tiny", "float32", "12")
    loaded_model, loaded_text = build_sat("tiny"), build_text_encoder("tiny")
    load_satseg_weights(loaded_model, loaded_text, out)
    _assert_same_weights(model, text, loaded_model, loaded_text)
    assert out.stat().st_size < path.stat().st_size / 2  # no AdamW moments


def test_fp16_export_stores_half_precision_close_to_the_trained_weights(trained, tmp_path):
    path, model, text = trained

    full = export_training_checkpoint(path, tmp_path / "full.safetensors")
    half = export_training_checkpoint(path, tmp_path / "half.safetensors", fp16=True)

    assert read_satseg_metadata(half)["dtype"] == "float16"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded_model, loaded_text = build_sat("tiny"), build_text_encoder("tiny")
    load_satseg_weights(loaded_model, loaded_text, half)
    _assert_same_weights(model, text, loaded_model, loaded_text, atol=1e-3)


def test_cli_export_registers_a_name_that_segments_a_real_ct_at_once(trained, env, mpnet_dir, reference_files, capsys):
    path, model, text = trained
    weights_file, entry_file = env / "export" / "mine.safetensors", env / "entry.json"
    weights_file.parent.mkdir()

    code = main(["train", "export", "--checkpoint", str(path), "--name", "my-tiny", "--tokenizer", str(mpnet_dir),
                 "--out", str(weights_file), "--manifest-entry", str(entry_file)])

    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(entry_file.read_text()) == printed
    spec = printed["my-tiny"]
    assert (spec["variant"], spec["format"]) == ("tiny", "satseg-safetensors")
    assert spec["files"]["checkpoint"] == {"path": str(weights_file.resolve()), "size": weights_file.stat().st_size,
                                           "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest()}
    assert spec["tokenizer"] == {"path": str(mpnet_dir.resolve())}
    files = weights.resolve_model("my-tiny", download=False)
    assert (files.format, files.checkpoint, files.text_checkpoint, files.verified) == (
        "satseg-safetensors", weights_file.resolve(), weights_file.resolve(), True)

    from satseg.inference.predictor import Predictor

    predictor = Predictor.from_pretrained("my-tiny", download=False)
    _assert_same_weights(model, text, predictor.model, predictor.text_encoder)

    scan = reference_files / "example_ct_sm.nii.gz"
    out = env / "masks"
    assert main([str(scan), "-p", "liver", "-o", str(out), "--model", "my-tiny"]) == 0, capsys.readouterr().err
    mask = nib.load(out / "liver.nii.gz")
    assert mask.shape == nib.load(scan).shape


@pytest.fixture(scope="module")
def trained_mixed(tmp_path_factory, mpnet_dir):
    """A run whose text tower differs from the variant's preset (as fit builds a tiny U-Net with MPNet's tower),
    recording its architecture (``model_config``) and tokenizer folder."""
    config = replace(get_config("tiny"), text=TextConfig(hidden=32, layers=1, heads=2, intermediate=64),
                     spacing=(3.0, 3.0, 3.0))
    torch.manual_seed(4)
    model, text = build_sat(config, deep_supervision=True), build_text_encoder(config)
    path = tmp_path_factory.mktemp("mixed") / "latest.pt"
    torch.save({"format": "satseg-train", "variant": "tiny", "model_config": config.to_dict(), "step": 5,
                "model": model.state_dict(), "text_encoder": text.state_dict(), "tokenizer": str(mpnet_dir)}, path)
    return path, model, text, config


def test_a_run_with_its_own_architecture_exports_and_registers_with_its_recorded_tokenizer(trained_mixed, env,
                                                                                           mpnet_dir):
    path, model, text, config = trained_mixed
    out = env / "mixed.safetensors"

    assert main(["train", "export", "--checkpoint", str(path), "--name", "mixed", "--out", str(out)]) == 0

    recorded = weights.satseg_file_config(read_satseg_metadata(out))
    assert recorded == config
    loaded_model, loaded_text = build_sat(recorded), build_text_encoder(recorded)
    load_satseg_weights(loaded_model, loaded_text, out)
    _assert_same_weights(model, text, loaded_model, loaded_text)
    assert weights.resolve_model("mixed", download=False).tokenizer == mpnet_dir.resolve()


def test_predictor_loads_an_exported_model_whose_architecture_differs_from_the_preset(trained_mixed, env):
    from satseg.inference.predictor import Predictor

    path = trained_mixed[0]
    assert main(["train", "export", "--checkpoint", str(path), "--name", "mixed2",
                 "--out", str(env / "mixed2.safetensors")]) == 0

    predictor = Predictor.from_pretrained("mixed2", download=False)

    _assert_same_weights(trained_mixed[1], trained_mixed[2], predictor.model, predictor.text_encoder)


def test_an_exported_model_segments_on_the_grid_it_was_trained_on(trained_mixed, env, reference_files):
    from satseg.inference.predictor import Predictor

    assert main(["train", "export", "--checkpoint", str(trained_mixed[0]), "--name", "coarse",
                 "--out", str(env / "coarse.safetensors")]) == 0
    predictor = Predictor.from_pretrained("coarse", download=False)
    scan = reference_files / "example_ct_sm.nii.gz"

    result = predictor.segment(scan, ["liver"])

    grid = result.grid  # a GridRecord (or its dict form)
    assert tuple(grid.spacing_mm if hasattr(grid, "spacing_mm") else grid["spacing_mm"]) == (3.0, 3.0, 3.0)
    assert result.masks["liver"].shape == nib.load(scan).shape


def test_a_changed_exported_file_is_refused_at_use(trained, env, mpnet_dir, capsys):
    path, _, _ = trained
    out = env / "m.safetensors"
    assert main(["train", "export", "--checkpoint", str(path), "--name", "m", "--tokenizer", str(mpnet_dir),
                 "--out", str(out)]) == 0
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))

    with pytest.raises(weights.WeightsError, match="does not match what was imported"):
        weights.resolve_model("m")


def test_checkpoint_that_does_not_fit_the_variant_is_refused_naming_the_key(trained, tmp_path, mpnet_dir, capsys):
    path, model, text = trained
    state = dict(model.state_dict())
    state["mask_embed_proj.9.weight"] = state.pop("mask_embed_proj.0.weight")
    broken = tmp_path / "broken.pt"
    torch.save({"format": "satseg-train", "variant": "tiny", "step": 1, "model": state,
                "text_encoder": text.state_dict()}, broken)

    with pytest.raises(CheckpointError, match=r"missing \(first: mask_embed_proj\.0\.weight"):
        export_training_checkpoint(broken, tmp_path / "x.safetensors")
    code = main(["train", "export", "--checkpoint", str(broken), "--name", "x", "--tokenizer", str(mpnet_dir),
                 "--no-register", "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "satseg: error:" in err and "mask_embed_proj.9.weight" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_released_checkpoint_given_as_a_training_run_gets_a_hint(tmp_path):
    seg = write_official_checkpoint(build_sat("tiny"), tmp_path / "tiny.pth")

    with pytest.raises(CheckpointError, match="use --official"):
        export_training_checkpoint(seg, tmp_path / "x.safetensors")


def test_a_pickle_needing_other_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "satseg-train", "hook": Path("/etc")}, path)  # pathlib global: not allowed

    with pytest.raises(CheckpointError, match="allow-list"):
        export_training_checkpoint(path, tmp_path / "x.safetensors")


def test_cli_converts_a_released_pair_to_fp16_safetensors(env, mpnet_dir, capsys):
    torch.manual_seed(5)
    model, text = build_sat("tiny", deep_supervision=True), build_text_encoder("tiny")
    optimizer_state = {"state": {0: {"exp_avg": torch.zeros(1000)}}, "param_groups": [{"lr": np.float64(1e-4)}]}
    seg = write_official_checkpoint(model, env / "nano.pth", step=3, optimizer_state=optimizer_state)
    txt = write_official_checkpoint(text, env / "nano_text_encoder.pth", text=True, step=3)

    code = main(["train", "export", "--official", str(seg), "--text-checkpoint", str(txt), "--variant", "tiny",
                 "--fp16", "--name", "released-half", "--tokenizer", str(mpnet_dir)])

    assert code == 0, capsys.readouterr().err
    out = env / "released-half.safetensors"
    assert read_satseg_metadata(out)["dtype"] == "float16"
    loaded_model, loaded_text = build_sat("tiny"), build_text_encoder("tiny")
    load_satseg_weights(loaded_model, loaded_text, out)
    _assert_same_weights(model, text, loaded_model, loaded_text, atol=1e-3)
    assert weights.get_model("released-half").format == "satseg-safetensors"


def test_official_conversion_refuses_swapped_files(tmp_path):
    seg = write_official_checkpoint(build_sat("tiny"), tmp_path / "seg.pth")
    txt = write_official_checkpoint(build_text_encoder("tiny"), tmp_path / "txt.pth", text=True)

    with pytest.raises(CheckpointError, match="swapped"):
        convert_official(txt, seg, "tiny", tmp_path / "x.safetensors")


def test_cli_refuses_a_taken_name_before_converting(trained, env, mpnet_dir, capsys):
    path, _, _ = trained
    args = ["train", "export", "--checkpoint", str(path), "--tokenizer", str(mpnet_dir)]
    assert main([*args, "--name", "twice", "--out", str(env / "a.safetensors")]) == 0

    assert main([*args, "--name", "twice", "--out", str(env / "b.safetensors")]) == 2
    assert "already imported" in capsys.readouterr().err and not (env / "b.safetensors").exists()
    assert main([*args, "--name", "sat-nano", "--out", str(env / "c.safetensors")]) == 2
    assert main([*args, "--name", "twice", "--replace", "--out", str(env / "b.safetensors")]) == 0
    assert weights.get_model("twice").checkpoint.path == str((env / "b.safetensors").resolve())


def test_cli_needs_exactly_one_input(env, mpnet_dir, capsys):
    assert main(["train", "export", "--name", "x", "--tokenizer", str(mpnet_dir)]) == 2
    assert "either --checkpoint" in capsys.readouterr().err
    assert main(["train", "export", "--name", "x", "--tokenizer", str(mpnet_dir), "--official", "a.pth"]) == 2
    assert "--text-checkpoint and --variant" in capsys.readouterr().err


def test_hub_form_entry_is_a_valid_manifest_entry_with_one_file_and_the_tokenizer_beside_it(trained, env, mpnet_dir):
    path, _, _ = trained
    out = export_training_checkpoint(path, env / "tiny.safetensors")

    entry = manifest_entry("tiny-hub", "tiny", out, mpnet_dir, hub_repo="me/sat-tiny")

    spec = entry["tiny-hub"]
    assert spec["files"]["checkpoint"]["path"] == "tiny.safetensors"
    parsed = weights.parse_manifest({"schema_version": 1, "models": entry}, "test")["tiny-hub"]
    assert parsed.repo == "me/sat-tiny" and parsed.text_checkpoint == parsed.checkpoint
    assert parsed.checkpoint.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert parsed.tokenizer.repo == "me/sat-tiny"
    assert set(parsed.tokenizer.files) == {"tokenizer_config.json", "vocab.txt"}
    assert set(parsed.tokenizer.optional_files) == {"tokenizer.json", "special_tokens_map.json"}


def test_weights_import_registers_a_satseg_safetensors_file(isolated_home, tmp_path, mpnet_dir, capsys):
    from satseg.model.checkpoint import save_satseg_weights

    path = save_satseg_weights(build_sat("tiny"), build_text_encoder("tiny"), tmp_path / "site.safetensors")
    assert main(["weights", "import", "--name", "site-tiny", "--checkpoint", str(path),
                 "--tokenizer", str(mpnet_dir)]) == 0
    files = weights.resolve_model("site-tiny", download=False)
    assert files.format == "satseg-safetensors" and files.checkpoint == path.resolve()
    assert main(["weights", "import", "--name", "x", "--checkpoint", str(tmp_path / "a.pth"),
                 "--tokenizer", str(mpnet_dir)]) == 2
    assert "needs --variant and --text-checkpoint" in capsys.readouterr().err
