"""The model is SAT: every key and shape of the released checkpoints, and the parameter counts."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from satseg.model import build_sat, build_text_encoder, count_parameters
from satseg.model.checkpoint import map_segmentation_state, map_text_state
from satseg.model.posenc import sinusoidal_3d


def read_key_file(path: Path) -> dict[str, tuple[int, ...]]:
    """Parse ``key<TAB>[shape]<TAB>dtype[<TAB># note]`` lines of the reference key dumps."""
    keys = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, *_ = line.split("\t")
        keys[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return keys


def meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant", ["nano", "pro"])
def test_segmentation_model_matches_every_released_key_and_shape(variant, shared_reference):
    official = read_key_file(shared_reference / "sat-keys" / f"{variant}_keys.txt")
    assert len(official) == {"nano": 292, "pro": 380}[variant]
    model = build_sat(variant, deep_supervision=True, device="meta")
    # The documented mapping: strip "module.", fold the all_modules aliases into conv / norm.
    stripped = {k.removeprefix("module."): torch.empty(s, device="meta") for k, s in official.items()}
    mapped = map_segmentation_state(stripped, keep_deep_supervision=True)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == meta_shapes(model)


@pytest.mark.parametrize("variant", ["nano", "pro"])
def test_inference_model_drops_only_the_deep_supervision_heads(variant, shared_reference):
    official = read_key_file(shared_reference / "sat-keys" / f"{variant}_keys.txt")
    stripped = {k.removeprefix("module."): torch.empty(s, device="meta") for k, s in official.items()}
    mapped = map_segmentation_state(stripped, keep_deep_supervision=False)
    model = build_sat(variant, deep_supervision=False, device="meta")
    assert set(mapped) == set(meta_shapes(model))
    assert not any(k.startswith("mid_mask_embed_proj") for k in mapped)


def test_text_encoder_matches_every_released_key_and_shape(shared_reference):
    official = read_key_file(shared_reference / "sat-keys" / "text_encoder_keys.txt")
    stripped = {k.removeprefix("module."): torch.empty(s, device="meta") for k, s in official.items()
                if not k.endswith("position_ids")}  # optional buffer, handled by its own test
    encoder = build_text_encoder("nano", device="meta")
    assert {k: tuple(v.shape) for k, v in map_text_state(stripped).items()} == meta_shapes(encoder)


@pytest.mark.parametrize(
    ("variant", "deep_supervision", "expected"),
    [("nano", True, 110_277_568), ("nano", False, 109_194_624),
     ("pro", True, 477_087_360), ("pro", False, 475_561_344)],
)
def test_parameter_counts_match_the_paper_models(variant, deep_supervision, expected):
    assert count_parameters(build_sat(variant, deep_supervision=deep_supervision, device="meta")) == expected


def test_text_encoder_parameter_count():
    assert count_parameters(build_text_encoder("pro", device="meta")) == 110_670_720


def test_building_on_meta_allocates_no_weights():
    model = build_sat("pro", device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())


def test_positional_encoding_matches_an_independent_computation():
    """Re-derive PositionalEncoding3D(768) on the 9×9×3 grid in float64 with plain math."""
    grid, channels = (9, 9, 3), 768
    got = sinusoidal_3d(grid, channels)
    assert got.shape == (243, 768) and got.dtype == torch.float32
    per_axis = 256
    freqs = [1.0 / (10000 ** (2 * k / per_axis)) for k in range(per_axis // 2)]
    row = 0
    for h in range(9):
        for w in range(9):
            for d in range(3):
                expected = []
                for p in (h, w, d):
                    for f in freqs:
                        expected += [math.sin(p * f), math.cos(p * f)]
                assert torch.allclose(got[row].double(), torch.tensor(expected, dtype=torch.float64), atol=2e-6), row
                row += 1


def test_positional_encoding_spot_values():
    pe = sinusoidal_3d((9, 9, 3), 768)
    token = (4 * 9 + 7) * 3 + 2  # h=4, w=7, d=2
    assert pe[token, 0] == pytest.approx(math.sin(4.0), abs=1e-6)      # H axis, first frequency
    assert pe[token, 1] == pytest.approx(math.cos(4.0), abs=1e-6)
    assert pe[token, 256] == pytest.approx(math.sin(7.0), abs=1e-6)    # W axis
    assert pe[token, 512 + 2] == pytest.approx(math.sin(2.0 / 10000 ** (2 / 256)), abs=1e-6)  # D axis, 2nd freq


def test_tiny_model_forward_shapes_and_prompt_independence():
    torch.manual_seed(0)
    model = build_sat("tiny").eval()
    image = torch.randn(2, 3, 64, 64, 32)
    queries = torch.randn(5, model.config.query_dim)
    with torch.no_grad():
        features = model.encode_image(image)
        assert features.tokens.shape == (2 * 2 * 1, 2, model.config.query_dim)
        logits = model.decode(features, queries)
        assert logits.shape == (2, 5, 64, 64, 32)
        # No self-attention between prompts: decoding them one chunk at a time changes nothing.
        chunked = torch.cat([model.decode(features, queries[i:i + 2]) for i in range(0, 5, 2)], dim=1)
    torch.testing.assert_close(chunked, logits, rtol=1e-5, atol=1e-5)


def test_deep_supervision_returns_four_scales():
    model = build_sat("tiny", deep_supervision=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64, 32), torch.randn(3, model.config.query_dim))
    assert [tuple(o.shape[2:]) for o in outs] == [(64, 64, 32), (32, 32, 16), (16, 16, 8), (8, 8, 4)]


def test_memory_saving_decoder_path_gives_the_same_values():
    torch.manual_seed(3)
    model = build_sat("tiny", deep_supervision=True).eval()
    image = torch.randn(1, 3, 64, 64, 32)
    with torch.no_grad():
        _, reference = model.backbone(image, all_scales=True)
        features = model.encode_image(image)
    assert len(features.per_pixel) == len(reference) == 5  # full, /2, /4, /8, /16
    for got, expected in zip(features.per_pixel, reference):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_fused_instance_norm_matches_the_modules_in_value_and_gradient(monkeypatch):
    from satseg.model import unet
    from satseg.model.unet import ConvNormAct, instance_norm_leaky_relu

    torch.manual_seed(0)
    block = ConvNormAct(3, 6)
    with torch.no_grad():  # non-trivial affine parameters and a large mean, where a one-pass variance would drift
        block.norm.weight.uniform_(0.5, 2.0)
        block.norm.bias.uniform_(-1.0, 1.0)
    y = (torch.randn(2, 6, 9, 8, 7) * 3 + 40).requires_grad_()
    expected = block.act(block.norm(y.clone()))
    got = instance_norm_leaky_relu(y, block.norm.weight, block.norm.bias, block.norm.eps, block.act.negative_slope)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert (got < 0).any() and (got > 0).any()  # both branches of the LeakyReLU are exercised
    grad_expected = torch.autograd.grad(expected.square().sum(), (y, block.norm.weight))
    grad_got = torch.autograd.grad(got.square().sum(), (y, block.norm.weight))
    for a, b in zip(grad_got, grad_expected):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4)

    # only the norm's bias trains (frozen conv and norm weight): still the autograd branch, with a gradient
    frozen_y = y.detach().clone()
    bias_grad = torch.autograd.grad(instance_norm_leaky_relu(
        frozen_y, block.norm.weight.detach(), block.norm.bias, block.norm.eps).sum(), block.norm.bias)[0]
    assert torch.isfinite(bias_grad).all() and bias_grad.abs().sum() > 0

    # bf16 activations: statistics in float32, channel group by channel group for big tensors
    monkeypatch.setattr(unet, "_STATS_CHUNK", 9 * 8 * 7 * 4)  # forces groups of 2 channels
    low = y.detach().to(torch.bfloat16)
    reference = block.act(block.norm(low.float())).detach()
    with torch.inference_mode():
        scratch = low.clone()
        inference = instance_norm_leaky_relu(scratch, block.norm.weight, block.norm.bias, block.norm.eps)
        assert inference.data_ptr() == scratch.data_ptr()  # without autograd, written over its input
    training = instance_norm_leaky_relu(low, block.norm.weight, block.norm.bias, block.norm.eps)
    for chunked in (inference, training):
        assert chunked.dtype == torch.bfloat16
        # one bf16 rounding of the result (what autocast's float32 InstanceNorm gives when cast back), no more
        torch.testing.assert_close(chunked.detach().float(), reference.to(torch.bfloat16).float(), atol=1e-2, rtol=8e-3)


@pytest.mark.parametrize("deep_supervision, channels_last", [(False, False), (True, False), (False, True)])
def test_inference_memory_savings_leave_the_image_features_bit_identical(deep_supervision, channels_last):
    """Without autograd the full-resolution skip is stored beside room for the last concatenation and each
    concatenation is freed after its first convolution: the features must not change by a single bit."""
    from satseg.model import build_sat

    torch.manual_seed(0)
    model = build_sat("tiny", deep_supervision=deep_supervision).eval()
    image = torch.randn(1, 3, *model.config.window)
    if channels_last:  # the GPU's layout
        model = model.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        lean = model.encode_image(image)
    with torch.enable_grad():  # the plain path: torch.cat, every tensor kept by the caller
        plain = model.encode_image(image)
        skips = model.backbone.encoder(image)
        outs = model.backbone.decoder(skips, all_scales=deep_supervision)
    assert torch.equal(lean.tokens, plain.tokens.detach())
    assert len(lean.per_pixel) == len(plain.per_pixel) == (5 if deep_supervision else 1)
    for a, b, c in zip(lean.per_pixel, plain.per_pixel, outs):
        assert torch.equal(a, b.detach()) and torch.equal(a, c.detach())


def test_the_concatenation_room_keeps_the_layout_of_the_skip():
    from satseg.model.unet import _room_for

    x = torch.randn(1, 4, 6, 5, 3)
    assert _room_for(x).shape == (1, 8, 6, 5, 3) and _room_for(x).is_contiguous()
    last = x.contiguous(memory_format=torch.channels_last_3d)
    assert _room_for(last).is_contiguous(memory_format=torch.channels_last_3d)
