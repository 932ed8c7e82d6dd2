"""``satseg.load_model``: every kind of source through one factory and one strict loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import satseg
from satseg import weights
from satseg.errors import CheckpointError, InputError, WeightsError
from satseg.model import build_sat, build_text_encoder
from satseg.model.checkpoint import save_satseg_weights, write_official_checkpoint
from satseg.model.factory import LoadedModel, load_model
from satseg.training.export import export_training_checkpoint

HEADS = "mid_mask_embed_proj."


@pytest.fixture(scope="module")
def reference():
    """A tiny model with deep-supervision heads and its text encoder (random weights, seeded)."""
    torch.manual_seed(7)
    return build_sat("tiny", deep_supervision=True), build_text_encoder("tiny")


@pytest.fixture(scope="module")
def sources(reference, tmp_path_factory):
    """The same weights in each file kind a user can hand to load_model."""
    model, text = reference
    folder = tmp_path_factory.mktemp("sources")
    seg = write_official_checkpoint(model, folder / "tiny.pth")
    txt = write_official_checkpoint(text, folder / "tiny_text.pth", text=True)
    safetensors = save_satseg_weights(model, text, folder / "tiny.safetensors")
    run = folder / "latest.pt"
    torch.save({"format": "satseg-train", "variant": "tiny", "model_config": model.config.to_dict(), "step": 5,
                "model": model.state_dict(), "text_encoder": text.state_dict(), "config": {}}, run)
    return {"pair": (seg, txt), "safetensors": safetensors, "training": run}


def assert_same(loaded: LoadedModel, reference, *, heads: bool = False):
    model, text = reference
    got = loaded.model.state_dict()
    want = {k: v for k, v in model.state_dict().items() if heads or not k.startswith(HEADS)}
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key
    got = loaded.text_encoder.state_dict()
    assert sorted(got) == sorted(text.state_dict())
    for key, tensor in text.state_dict().items():
        assert torch.equal(got[key], tensor), key


def test_every_kind_of_file_loads_to_the_same_state_dicts(sources, reference, mpnet_dir):
    for kind in ("pair", "safetensors", "training"):
        loaded = load_model(sources[kind], tokenizer=mpnet_dir)

        assert_same(loaded, reference)
        assert not loaded.model.training and not loaded.text_encoder.training
        assert loaded.tokenizer is not None and loaded.config.name == "tiny"
        assert loaded.cache_key.startswith(loaded.name + ":")


def test_imported_names_load_to_the_same_state_dicts_and_verify(sources, reference, mpnet_dir, isolated_home):
    weights.import_model("pair-tiny", "tiny", *sources["pair"], mpnet_dir)
    weights.import_satseg_weights("safe-tiny", sources["safetensors"], mpnet_dir)

    for name in ("pair-tiny", "safe-tiny"):
        loaded = satseg.load_model(name, download=False)

        assert_same(loaded, reference)
        assert loaded.name == name and loaded.verified is True
        assert loaded.tokenizer_dir == Path(mpnet_dir).resolve()
        digests = [weights.sha256_file(p) for p in loaded.files]
        assert loaded.cache_key == ":".join([name, *digests])  # the sha256 was computed while verifying


def test_deep_supervision_heads_are_kept_only_when_asked(sources, reference):
    kept = load_model(sources["training"], deep_supervision=True)
    dropped = load_model(sources["pair"])

    assert_same(kept, reference, heads=True)
    assert kept.model.deep_supervision and not dropped.model.deep_supervision
    assert load_model((sources["pair"][0], None)).text_encoder is None  # the segmentation file alone (fit --init)


def _edit_training_state(src: Path, dst: Path, edit) -> Path:
    payload = torch.load(src, weights_only=True)
    edit(payload["model"])
    torch.save(payload, dst)
    return dst


def _edit_pair(src: tuple[Path, Path], dst: Path, edit) -> tuple[Path, Path]:
    payload = torch.load(src[0], weights_only=True)
    edit(payload["model_state_dict"])
    torch.save(payload, dst)
    return dst, src[1]


def _edit_safetensors(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    from satseg.model.checkpoint import read_satseg_metadata

    tensors = load_file(str(src))
    part = {k[4:]: v for k, v in tensors.items() if k.startswith("sat.")}
    edit(part)
    tensors = {**{k: v for k, v in tensors.items() if not k.startswith("sat.")}, **{"sat." + k: v for k, v in part.items()}}
    save_file(tensors, str(dst), metadata=read_satseg_metadata(src))
    return dst


@pytest.mark.parametrize("kind, editor", [("pair", _edit_pair), ("safetensors", _edit_safetensors),
                                          ("training", _edit_training_state)])
def test_a_renamed_key_gives_the_one_strict_error_for_every_kind(sources, tmp_path, kind, editor):
    def rename(state):
        key = next(k for k in state if k.endswith("mask_embed_proj.0.weight") and HEADS not in k)
        state[key.replace(".0.weight", ".9.weight")] = state.pop(key)

    suffix = ".safetensors" if kind == "safetensors" else ".pt"
    broken = editor(sources[kind], tmp_path / f"broken{suffix}", rename)

    with pytest.raises(CheckpointError, match=r"does not fit SAT-tiny: 1 missing \(first: mask_embed_proj\.0\.weight\); "
                                              r"1 unexpected \(first: mask_embed_proj\.9\.weight\)"):
        load_model(broken)


def test_a_wrong_shape_names_both_shapes(sources, tmp_path):
    def widen(state):
        state["mask_embed_proj.2.weight"] = torch.zeros(9, 32)

    broken = _edit_training_state(sources["training"], tmp_path / "wide.pt", widen)

    with pytest.raises(CheckpointError, match=r"wrong shape \(first: mask_embed_proj\.2\.weight \(file \[9, 32\], "
                                              r"model \[8, 32\]\)"):
        load_model(broken)


def test_a_tampered_imported_file_is_refused_by_verification(sources, tmp_path, mpnet_dir, isolated_home):
    copy = tmp_path / "site.safetensors"
    copy.write_bytes(sources["safetensors"].read_bytes())
    weights.import_satseg_weights("site-tiny", copy, mpnet_dir)
    data = bytearray(copy.read_bytes())
    data[-8] ^= 0xFF  # one byte of the last tensor: same size, same keys, other weights
    copy.write_bytes(bytes(data))

    with pytest.raises(WeightsError, match="does not match what was imported"):
        load_model("site-tiny")
    unchecked = load_model("site-tiny", verify=False)
    assert unchecked.verified is None


def test_a_training_checkpoint_and_its_export_give_the_same_model(sources, tmp_path):
    exported = export_training_checkpoint(sources["training"], tmp_path / "exported.safetensors")

    run, file = load_model(sources["training"]), load_model(exported)

    for a, b in ((run.model, file.model), (run.text_encoder, file.text_encoder)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert run.config == file.config and run.step == 5 and file.step is None


def test_precision_and_device_are_applied(sources):
    loaded = load_model(sources["safetensors"], precision="bf16", device="cpu")

    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.text_encoder.parameters()} == {"cpu"}
    with pytest.raises(InputError, match="precision"):
        load_model(sources["safetensors"], precision="fp8")


def test_a_missing_file_and_a_swapped_pair_are_refused_in_one_line(sources, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="swapped"):
        load_model(tuple(reversed(sources["pair"])))
    with pytest.raises(CheckpointError, match="SAT-tiny model, but SAT-nano was asked for"):
        load_model(sources["pair"], variant="nano")


def test_importing_satseg_stays_free_of_torch_until_load_model_is_used():
    code = ("import sys, satseg; assert 'torch' not in sys.modules; f = satseg.load_model; "
            "from satseg.model.factory import load_model; assert f is load_model; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
