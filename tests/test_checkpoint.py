"""Official-format checkpoints load strictly and safely; anything else is refused with a clear message."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from satseg.errors import CheckpointError
from satseg.model import build_sat, build_text_encoder
from satseg.model.checkpoint import (
    load_satseg_weights,
    load_segmentation_checkpoint,
    load_text_checkpoint,
    safe_load,
    save_satseg_weights,
    validate_official_files,
    write_official_checkpoint,
)


def tiny_optimizer_state(model: torch.nn.Module) -> dict:
    """An AdamW state as upstream saves it: numpy-float learning rate in the param groups."""
    params = list(model.parameters())[:2]
    return {
        "state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": np.float64(0.5 * 1e-4 * (1 + np.cos(np.pi * 0.3))), "betas": (0.9, 0.999),
                          "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False, "params": [0, 1]}],
    }


def as_numpy1_pickle(path: Path) -> None:
    """Rewrite the pickle's numpy globals the way numpy 1.x (which wrote the released files) names them."""
    with zipfile.ZipFile(path) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for info, data in entries:
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            zf.writestr(info, data)


@pytest.fixture()
def tiny_official(tmp_path):
    torch.manual_seed(1)
    model = build_sat("tiny", deep_supervision=True)
    text = build_text_encoder("tiny")
    seg_path = write_official_checkpoint(model, tmp_path / "nano.pth", step=1000,
                                         optimizer_state=tiny_optimizer_state(model))
    text_path = write_official_checkpoint(text, tmp_path / "nano_text_encoder.pth", text=True, step=1000)
    as_numpy1_pickle(seg_path)
    return model, text, seg_path, text_path


def test_official_layout_has_prefix_aliases_and_numpy_scalars(tiny_official):
    _, _, seg_path, _ = tiny_official
    raw = safe_load(seg_path)
    keys = list(raw["model_state_dict"])
    assert all(k.startswith("module.") for k in keys)
    assert any(".all_modules.0." in k for k in keys) and any(".all_modules.1." in k for k in keys)
    assert any(k.startswith("module.mid_mask_embed_proj.") for k in keys)
    assert isinstance(raw["optimizer_state_dict"]["param_groups"][0]["lr"], np.floating)


def test_tiny_official_checkpoint_loads_strictly_and_exactly(tiny_official):
    model, text, seg_path, text_path = tiny_official
    fresh = build_sat("tiny")  # inference model: no deep-supervision heads
    load_segmentation_checkpoint(fresh, seg_path)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], rtol=0, atol=0)
    fresh_text = build_text_encoder("tiny")
    load_text_checkpoint(fresh_text, text_path)
    for key, value in fresh_text.state_dict().items():
        torch.testing.assert_close(value, text.state_dict()[key], rtol=0, atol=0)


def test_loading_into_a_meta_model_assigns_the_file_tensors(tiny_official):
    model, _, seg_path, _ = tiny_official
    meta = build_sat("tiny", device="meta")
    load_segmentation_checkpoint(meta, seg_path, assign=True)
    assert all(p.device.type == "cpu" for p in meta.parameters())
    torch.testing.assert_close(meta.mask_embed_proj[0].weight, model.mask_embed_proj[0].weight)


def _rewrite_state(src: Path, dst: Path, edit) -> Path:
    raw = safe_load(src)
    state = dict(raw["model_state_dict"])
    edit(state)
    raw["model_state_dict"] = state
    torch.save(raw, dst)
    return dst


def test_renamed_key_is_refused_naming_the_missing_and_unexpected_key(tiny_official, tmp_path):
    _, _, seg_path, _ = tiny_official
    key = "module.transformer_decoder.layers.1.linear1.weight"

    def rename(state):
        state["module.transformer_decoder.layers.1.linear_1.weight"] = state.pop(key)

    bad = _rewrite_state(seg_path, tmp_path / "renamed.pth", rename)
    with pytest.raises(CheckpointError) as err:
        load_segmentation_checkpoint(build_sat("tiny"), bad)
    message = str(err.value)
    assert "1 missing (first: transformer_decoder.layers.1.linear1.weight)" in message
    assert "1 unexpected (first: transformer_decoder.layers.1.linear_1.weight)" in message
    assert "\n" not in message


def test_wrong_shape_is_refused_naming_both_shapes(tiny_official, tmp_path):
    _, _, seg_path, _ = tiny_official

    def reshape(state):
        state["module.mask_embed_proj.2.weight"] = torch.zeros(7, 32)

    bad = _rewrite_state(seg_path, tmp_path / "shape.pth", reshape)
    with pytest.raises(CheckpointError, match=r"wrong shape \(first: mask_embed_proj.2.weight \(file \[7, 32\], model \[8, 32\]\)"):
        load_segmentation_checkpoint(build_sat("tiny"), bad)


def test_truncated_file_is_refused(tiny_official, tmp_path):
    _, _, seg_path, _ = tiny_official
    data = seg_path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmentation_checkpoint(build_sat("tiny"), bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_a_disallowed_global_is_refused_without_running_it(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, bad)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle .*(posix|os)\.system"):
        safe_load(bad)


def test_plain_pickle_that_is_not_a_torch_file_is_refused(tmp_path):
    bad = tmp_path / "plain.pth"
    bad.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        safe_load(bad)


def test_swapped_model_and_text_files_are_refused_with_a_hint(tiny_official):
    _, _, seg_path, text_path = tiny_official
    with pytest.raises(CheckpointError, match="swapped"):
        load_segmentation_checkpoint(build_sat("tiny"), text_path)
    with pytest.raises(CheckpointError, match="swapped"):
        load_text_checkpoint(build_text_encoder("tiny"), seg_path)


def test_pretrain_knowledge_checkpoint_is_refused_as_text_encoder(tmp_path):
    text = build_text_encoder("tiny")
    state = {"module." + k: v for k, v in text.state_dict().items()}
    state["module.temperature"] = torch.tensor(2.0)
    bad = tmp_path / "multimodal_sat_ds.pth"
    torch.save({"model_state_dict": state}, bad)
    with pytest.raises(CheckpointError, match="SAT-Pretrain"):
        load_text_checkpoint(build_text_encoder("tiny"), bad)


def test_alias_that_differs_from_its_twin_is_refused(tiny_official, tmp_path):
    _, _, seg_path, _ = tiny_official

    def corrupt(state):
        key = "module.backbone.encoder.stages.0.0.convs.0.all_modules.0.weight"
        state[key] = state[key].clone() + 1

    bad = _rewrite_state(seg_path, tmp_path / "alias.pth", corrupt)
    with pytest.raises(CheckpointError, match="alias differ"):
        load_segmentation_checkpoint(build_sat("tiny"), bad)


def test_old_transformers_position_ids_buffer_is_accepted_and_checked(tmp_path):
    text = build_text_encoder("tiny")
    state = {"module." + k.replace("mpnet.", "text_tower.biolord.", 1): v for k, v in text.state_dict().items()}
    state["module.text_tower.biolord.embeddings.position_ids"] = torch.arange(514)[None]
    good = tmp_path / "with_ids.pth"
    torch.save({"model_state_dict": state}, good)
    load_text_checkpoint(build_text_encoder("tiny"), good)
    state["module.text_tower.biolord.embeddings.position_ids"] = torch.zeros(1, 514, dtype=torch.long)
    torch.save({"model_state_dict": state}, good)
    with pytest.raises(CheckpointError, match="position_ids"):
        load_text_checkpoint(build_text_encoder("tiny"), good)


def test_validate_official_files_checks_structure_only(tiny_official):
    _, _, seg_path, text_path = tiny_official
    validate_official_files("tiny", seg_path, text_path)
    with pytest.raises(CheckpointError, match="SAT-tiny model, but SAT-nano was asked for"):
        validate_official_files("nano", seg_path, text_path)


def test_satseg_safetensors_roundtrip_fp32_exact_and_fp16_close(tmp_path):
    torch.manual_seed(2)
    model, text = build_sat("tiny"), build_text_encoder("tiny")
    for fp16 in (False, True):
        path = save_satseg_weights(model, text, tmp_path / f"w{int(fp16)}.safetensors", fp16=fp16)
        m2, t2 = build_sat("tiny", device="meta"), build_text_encoder("tiny", device="meta")
        load_satseg_weights(m2, t2, path, assign=True)
        tol = {"rtol": 1e-3, "atol": 1e-3} if fp16 else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(m2.projection_layer[0].weight, model.projection_layer[0].weight, **tol)
        torch.testing.assert_close(t2.modality_embed.weight, text.modality_embed.weight, **tol)
        assert m2.projection_layer[0].weight.dtype == torch.float32
    assert "optimizer" not in str(safe_keys(path))


def safe_keys(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def test_truncated_safetensors_is_refused(tmp_path):
    path = save_satseg_weights(build_sat("tiny"), build_text_encoder("tiny"), tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError):
        load_satseg_weights(build_sat("tiny"), build_text_encoder("tiny"), path)
