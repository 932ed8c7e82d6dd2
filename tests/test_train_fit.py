"""`satseg train fit`: sampler, loss, schedule, checkpoints and exact resume, on the real example CT."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from satseg.training.cache import CachedSample, append_index, open_cache, write_sample

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "tiny.yaml"
# TotalSegmentator `total` ids → SAT terms (the organs the overfit check scores)
ORGANS = {1: "spleen", 2: "right kidney", 3: "left kidney", 5: "liver"}
FAST = ["--set", "data.crop_size=[64,64,32]", "--set", "text_encoder.init=random",
        "--set", "text_encoder.open_bert_layer=0", "--set", "checkpoint.latest_every_steps=1",
        "--set", "schedule.steps=20", "--set", "schedule.warmup_steps=2",
        "--set", "schedule.freeze_query_side_steps=0"]


def build_example_cache(reference_files: Path, root: Path, *, dataset: str = "TotalSegmentator_Organs",
                        scans=(("example_ct_sm.nii.gz", "example_seg.nii.gz"),), split: str = "train",
                        spacing=(1.0, 1.0, 3.0)) -> Path:
    """A prepared cache of real example CTs (model grid, CT normalisation, organ masks pushed nearest)."""
    from satseg.geometry import to_model_grid
    from satseg.intensity import normalize
    from satseg.io import read_volume
    from satseg.training.cache import claim_spacing

    root.mkdir(parents=True, exist_ok=True)
    claim_spacing(root, spacing)
    for image_name, label_name in scans:
        raw, grid = to_model_grid(read_volume(reference_files / image_name), spacing_mm=spacing)
        labels = np.asarray(read_volume(reference_files / label_name).array)
        channels = np.stack([labels == value for value in ORGANS]).astype(np.uint8)
        masks = grid.from_input_grid(channels, order="nearest").astype(bool)
        sample = CachedSample(dataset=dataset, sample_id=image_name.split(".")[0], patient_id=image_name,
                              split=split, modality="ct", terms=list(ORGANS.values()), shape=[])
        append_index(root, write_sample(root, sample, normalize(raw, "ct"), masks, grid.to_dict()))
    return root


@pytest.fixture(scope="module")
def example_cache(reference_files, tmp_path_factory) -> Path:
    return build_example_cache(reference_files, tmp_path_factory.mktemp("cache"))


class Finished:
    def __init__(self, returncode: int, stderr: str):
        self.returncode, self.stderr = returncode, stderr


def fit_args(config: Path, cache: Path, out: Path, tokenizer: Path, *extra: str) -> list[str]:
    return ["train", "fit", "--config", str(config), "--cache", str(cache), "--out", str(out),
            "--tokenizer", str(tokenizer), "--device", "cpu", *FAST, *extra]


def run_fit(config: Path, cache: Path, out: Path, tokenizer: Path, *extra: str) -> Finished:
    """``satseg train fit`` in this process (one thread, like the subprocess runs)."""
    import contextlib
    import io

    from satseg.cli.main import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = main(fit_args(config, cache, out, tokenizer, *extra))
    finally:
        torch.set_num_threads(threads)
    return Finished(code, stderr.getvalue())


def start_fit_process(config: Path, cache: Path, out: Path, tokenizer: Path, *extra: str) -> subprocess.Popen:
    """``satseg train fit`` in a child process (to be killed)."""
    args = [sys.executable, "-m", "satseg.cli.main", *fit_args(config, cache, out, tokenizer, *extra)]
    return subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


# -- sampler ----------------------------------------------------------------------------------------------


def _sample(dataset: str, terms: list[str], boxes: dict) -> CachedSample:
    return CachedSample(dataset=dataset, sample_id="x", patient_id="x", split="train", modality="ct", terms=terms,
                        shape=[100, 100, 40], boxes=boxes)


def test_dataset_weight_is_inverse_sqrt_size_times_sampling_weight():
    from satseg.training.sampler import SamplerSettings, sample_weights

    small = [_sample("A", ["liver"], {"liver": [[0, 0, 0], [10, 10, 10]]})]
    large = [_sample("B", ["liver"], {"liver": [[0, 0, 0], [10, 10, 10]]}) for _ in range(9)]
    settings = {"A": SamplerSettings(sampling_weight=2.0), "B": SamplerSettings()}
    weights = sample_weights(small + large, settings, (64, 64, 32), 8)
    assert weights[0] == pytest.approx(2.0 / math.sqrt(1))
    assert weights[1:] == pytest.approx([1.0 / 3.0] * 9)
    share_a = weights[0] / weights.sum()
    assert share_a == pytest.approx(2.0 / (2.0 + 3.0))  # 9 scans of B weigh 9 × 1/3 = 3 in all


def test_large_rois_and_many_labels_repeat_a_scan():
    from satseg.training.sampler import repeat_count

    roi = _sample("A", ["a", "b"], {"a": [[0, 0, 0], [128, 64, 32]], "b": [[0, 0, 0], [10, 10, 10]]})
    assert repeat_count(roi, (64, 64, 32), 8) == 2  # the ROI spans two crops along H
    labels = _sample("A", [f"t{i}" for i in range(24)], {"t0": [[0, 0, 0], [10, 10, 10]]})
    assert repeat_count(labels, (64, 64, 32), 8) == 3  # 24 labels / 8 queries


def test_negative_prompts_are_capped_at_the_ratio_of_positives():
    from satseg.training.sampler import choose_prompts

    rng = np.random.default_rng(0)
    is_positive = [True, False, True, False, False, True, False, True, False, False]
    chosen = choose_prompts(is_positive, max_queries=8, neg_ratio=0.5, rng=rng)
    assert chosen[:4] == [0, 2, 5, 7]  # every positive, first
    assert len(chosen) == 6 and not any(is_positive[i] for i in chosen[4:])
    assert len(choose_prompts(is_positive, max_queries=5, neg_ratio=0.5, rng=rng)) == 5  # the cap wins
    only_negatives = choose_prompts([False] * 12, max_queries=8, neg_ratio=0.5, rng=rng)
    assert len(only_negatives) == 8 and len(set(only_negatives)) == 8


def test_foreground_crops_contain_the_organ_they_were_centred_on(example_cache):
    from satseg.training.sampler import SamplerSettings, SATSampler

    samples = open_cache(example_cache)
    label_based = SamplerSettings(foreground_crop_prob=1.0, label_based_crop_prob=1.0)
    sampler = SATSampler(samples, {"TotalSegmentator_Organs": label_based}, (64, 64, 32), 8, seed=3)
    for index in range(12):
        patch = sampler.draw(index)
        assert patch.image.shape == (64, 64, 32) and patch.masks.shape == (len(patch.terms), 64, 64, 32)
        assert patch.masks.any(), f"draw {index}: a foreground crop without foreground"
        assert patch.masks[0].any()  # the first prompt is a positive one
    random_crops = SATSampler(samples, {"TotalSegmentator_Organs": SamplerSettings(foreground_crop_prob=0.0)},
                              (64, 64, 32), 8, seed=3)
    empty = sum(not random_crops.draw(i).masks.any() for i in range(40))
    assert empty > 0  # uniform crops of this scan often miss every organ


def test_draws_depend_only_on_seed_rank_and_index(example_cache):
    from satseg.training.sampler import SamplerSettings, SATSampler

    settings = {"TotalSegmentator_Organs": SamplerSettings()}
    a = SATSampler(open_cache(example_cache), settings, (64, 64, 32), 8, seed=5)
    b = SATSampler(open_cache(example_cache), settings, (64, 64, 32), 8, seed=5)
    other_rank = SATSampler(open_cache(example_cache), settings, (64, 64, 32), 8, seed=5, rank=1)
    for index in (7, 2, 7):
        pa, pb = a.draw(index), b.draw(index)
        assert pa.start == pb.start and pa.terms == pb.terms and np.array_equal(pa.image, pb.image)
    assert [a.draw(i).start for i in range(6)] != [other_rank.draw(i).start for i in range(6)]


def test_scans_smaller_than_the_crop_are_zero_padded_at_the_far_end():
    from satseg.training.sampler import pad_to

    masks = np.ones((2, 10, 70, 20), dtype=bool)
    padded = pad_to(masks, (64, 64, 32))
    assert padded.shape == (2, 64, 70, 32)
    assert padded[:, :10, :, :20].all() and not padded[:, 10:].any() and not padded[:, :, :, 20:].any()


# -- augmentation -------------------------------------------------------------------------------------------


def test_augmentation_keeps_shapes_and_masks_follow_the_zoom():
    from satseg.training.augment import Augmenter, zoom

    image = torch.zeros(32, 32, 16)
    masks = torch.zeros(1, 32, 32, 16, dtype=torch.bool)
    masks[0, 12:20, 12:20, 6:10] = True
    image[masks[0]] = 1.0
    zoomed_image, zoomed_masks = zoom(image, masks, 1.5)
    assert zoomed_image.shape == image.shape and zoomed_masks.shape == masks.shape
    assert zoomed_masks.sum() > masks.sum() * 2  # 1.5³ ≈ 3.4× the volume
    assert zoomed_image[zoomed_masks[0]].mean() > 0.9
    everything = Augmenter({"RandZoom": {"prob": 1.0, "min_zoom": 0.7, "max_zoom": 1.4},
                            "RandGaussianNoise": {"prob": 1.0, "mean": 0.0, "std": 0.1},
                            "RandGaussianSharpen": {"prob": 1.0},
                            "RandScaleIntensity": {"prob": 1.0, "factors": [-0.25, 0.25]},
                            "RandAdjustContrast": {"prob": 1.0, "gamma": [0.7, 1.5], "retain_stats": True}})
    out_image, out_masks = everything(image.numpy(), masks.numpy(), np.random.default_rng(1))
    assert out_image.shape == (32, 32, 16) and out_image.dtype == np.float32 and out_masks.dtype == bool
    assert not np.allclose(out_image, image.numpy())


def test_contrast_adjustment_with_retained_stats_keeps_mean_and_std():
    from satseg.training.augment import adjust_contrast

    image = torch.randn(16, 16, 8)
    out = adjust_contrast(image, 1.4, retain_stats=True)
    assert out.mean().item() == pytest.approx(image.mean().item(), abs=1e-5)
    assert out.std().item() == pytest.approx(image.std().item(), rel=1e-4)
    assert not torch.allclose(out, image)


# -- loss ----------------------------------------------------------------------------------------------------


def test_dice_and_bce_on_hand_computed_cases():
    from satseg.training.loss import SegmentationLoss

    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 4, 1, 1)
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0]).reshape(1, 1, 4, 1, 1)  # p = 0.5 everywhere
    parts = SegmentationLoss()(logits, target, torch.ones(1, 1))
    # Dice: 1 - 2·(0.5+0.5) / (4·0.25 + 2) = 1 - 2/3;  BCE: ln 2 per voxel
    assert parts.dice.item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    assert parts.bce.item() == pytest.approx(math.log(2), abs=1e-6)
    assert parts.total.item() == pytest.approx(1 / 3 + math.log(2), abs=1e-6)
    perfect = SegmentationLoss()(torch.tensor([30.0, 30, -30, -30]).reshape(1, 1, 4, 1, 1), target, torch.ones(1, 1))
    assert perfect.dice.item() == pytest.approx(0.0, abs=1e-6) and perfect.bce.item() < 1e-12


def test_padded_prompts_do_not_count():
    from satseg.training.loss import SegmentationLoss

    target = torch.zeros(1, 2, 4, 4, 4)
    target[0, 0, :2] = 1
    logits = torch.full((1, 2, 4, 4, 4), 5.0)
    loss = SegmentationLoss()
    one = loss(logits[:, :1], target[:, :1], torch.ones(1, 1))
    padded = loss(logits, target, torch.tensor([[1.0, 0.0]]))  # the second prompt is padding
    assert padded.total.item() == pytest.approx(one.total.item(), abs=1e-6)
    both = loss(logits, target, torch.ones(1, 2))
    assert both.total.item() != pytest.approx(one.total.item(), abs=1e-3)


def test_embedding_floor_penalty_counts_only_the_shortfall_of_real_prompts():
    from satseg.training.loss import embedding_floor_penalty

    pre = torch.tensor([[[-0.75, 0.3, -0.5, 2.0], [-1.5, -1.5, -1.5, -1.5]]], requires_grad=True)  # (B=1, N=2, C=4)
    real_first = embedding_floor_penalty([pre], torch.tensor([[1.0, 0.0]]), floor=-0.5)
    assert real_first.item() == pytest.approx(0.25 ** 2 / 4, abs=1e-7)  # only -0.75 is below the floor
    real_first.backward()
    assert pre.grad[0, 0].tolist() == pytest.approx([-0.125, 0.0, 0.0, 0.0])  # descent lifts it towards the floor
    assert pre.grad[0, 1].abs().sum().item() == 0.0  # padding prompt
    both = embedding_floor_penalty([pre, pre], torch.ones(1, 2), floor=-0.5)  # heads add up; prompts average
    assert both.item() == pytest.approx(2 * (0.25 ** 2 / 4 + 1.0) / 2, abs=1e-6)
    assert embedding_floor_penalty([pre.detach().clamp(min=-0.5)], torch.ones(1, 2), floor=-0.5).item() == 0.0


def test_deep_supervision_weights_halve_per_scale_and_sum_to_one():
    from satseg.training.loss import SegmentationLoss, deep_supervision_weights

    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    target = torch.zeros(1, 1, 16, 16, 16)
    target[0, 0, :8] = 1  # half of every scale (16, 8, 4, 2 voxels a side) after nearest downsampling
    outputs = [torch.zeros(1, 1, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i) for i in range(4)]
    outputs[0] = torch.where(target > 0, 20.0, -20.0)  # full resolution perfect, the others p = 0.5
    parts = SegmentationLoss()(outputs, target, torch.ones(1, 1))
    # at p = 0.5 on half-foreground targets: Dice = 1 - 0.5n / 0.75n = 1/3, BCE = ln 2, at every scale
    assert parts.total.item() == pytest.approx((7 / 15) * (1 / 3 + math.log(2)), abs=1e-5)
    assert parts.dice.item() == pytest.approx((7 / 15) / 3, abs=1e-5)


# -- schedule -------------------------------------------------------------------------------------------------


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero():
    from satseg.training.optim import warmup_cosine_lr

    lr = [warmup_cosine_lr(s, 1e-4, 10, 110) for s in range(1, 111)]
    assert lr[0] == pytest.approx(1e-5) and lr[4] == pytest.approx(5e-5) and lr[9] == pytest.approx(1e-4)
    assert lr[59] == pytest.approx(0.5e-4)  # half-way through the cosine (step 60 = warmup + 50 of 100)
    assert lr[34] == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 100)) * 1e-4)
    assert all(a >= b for a, b in itertools.pairwise(lr[9:]))
    assert 0 < lr[-1] < 1e-7  # the last step stays just above zero, as upstream


# -- the command -----------------------------------------------------------------------------------------------


def test_fit_writes_metrics_and_a_complete_checkpoint(example_cache, mpnet_dir, tmp_path):
    from satseg.training.checkpointing import build_from_checkpoint, load_checkpoint

    run = tmp_path / "run"
    result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"step", "loss", "dice_loss", "bce", "lr", "time"}
    import yaml

    peak = float(yaml.safe_load(TINY.read_text())["optim"]["lr"])
    assert rows[0]["lr"] == pytest.approx(peak / 2) and rows[1]["lr"] == pytest.approx(peak)  # FAST: warmup 2
    payload = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert payload["format"] == "satseg-train" and payload["variant"] == "tiny" and payload["step"] == 2
    assert any(k.startswith("mid_mask_embed_proj.") for k in payload["model"])
    assert {"optimizer", "scheduler", "scaler", "rng", "sampler", "config", "text_encoder"} <= set(payload)
    model, text = build_from_checkpoint(payload)
    assert not model.deep_supervision and text.config.hidden == 64


def test_resumed_run_repeats_the_uninterrupted_loss_trajectory(example_cache, mpnet_dir, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_fit(TINY, example_cache, straight, mpnet_dir, "--steps", "6").returncode == 0
    assert run_fit(TINY, example_cache, broken, mpnet_dir, "--steps", "3").returncode == 0
    # log a step past the checkpoint, as a run killed mid-way would, then resume
    with open(broken / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
    resumed = run_fit(TINY, example_cache, broken, mpnet_dir, "--steps", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = losses(straight), losses(broken)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=0), f"step {step}"


def test_run_killed_after_a_checkpoint_resumes_exactly(example_cache, mpnet_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_fit(TINY, example_cache, straight, mpnet_dir, "--steps", "5").returncode == 0
    process = start_fit_process(TINY, example_cache, killed, mpnet_dir, "--steps", "20")
    latest = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if latest.is_file() and len(losses(killed)) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    resumed = run_fit(TINY, example_cache, killed, mpnet_dir, "--steps", "5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = losses(straight), losses(killed)
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert all(got[s] == pytest.approx(expected[s], abs=1e-6, rel=0) for s in got)


def test_a_second_run_into_the_same_folder_needs_resume(example_cache, mpnet_dir, tmp_path):
    run = tmp_path / "run"
    assert run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "1").returncode == 0
    again = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "2")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_mpnet_folder_starts_the_text_tower_and_only_open_layers_train(example_cache, mpnet_dir, tmp_path):
    from safetensors.torch import load_file

    from satseg.training.checkpointing import load_checkpoint

    run = tmp_path / "run"
    result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "1", "--text-init", str(mpnet_dir),
                     "--set", "text_encoder.open_bert_layer=10")
    assert result.returncode == 0, result.stderr
    text = load_checkpoint(run / "checkpoints" / "latest.pt")["text_encoder"]
    original = load_file(str(mpnet_dir / "model.safetensors"))
    assert torch.equal(text["mpnet.encoder.layer.3.attention.attn.q.weight"],
                       original["encoder.layer.3.attention.attn.q.weight"])  # frozen
    assert not torch.equal(text["mpnet.encoder.layer.11.attention.attn.q.weight"],
                           original["encoder.layer.11.attention.attn.q.weight"])  # layer 11 > 10 trains
    assert text["projection_layer.2.weight"].shape == (64, 768)  # MPNet 768 → the tiny model's 64


def test_unknown_dataset_in_the_config_is_a_one_line_error(example_cache, mpnet_dir, tmp_path):
    result = run_fit(TINY, example_cache, tmp_path / "run", mpnet_dir, "--set", "data.datasets=[NoSuchData]")
    assert result.returncode == 2
    assert "TotalSegmentator_Organs" in result.stderr and "Traceback" not in result.stderr


def test_fresh_text_heads_give_each_prompt_its_own_query(example_cache, mpnet_dir, tmp_path):
    """A fresh modality embedding must not swamp the text: with torch's N(0, 1) rows every CT prompt started as
    one query (cosine 0.997-0.999) and the tiny model learned organ-vs-background but not which organ."""
    from satseg.training import distributed
    from satseg.training.fit import FitOptions, build_everything, load_config

    config = load_config(TINY, ["text_encoder.init=random"])
    options = FitOptions(cache=example_cache, out=tmp_path / "run", tokenizer=mpnet_dir)
    built = build_everything(config, options, distributed.init_from_env("cpu", None), None)
    queries = torch.nn.functional.normalize(built.text.eval().encode(list(ORGANS.values()), "ct", built.tokenizer))
    cosines = queries @ queries.T
    assert cosines[~torch.eye(len(ORGANS), dtype=torch.bool)].max() < 0.95


def test_checkpoint_records_the_training_crop_as_the_inference_window(example_cache, mpnet_dir, tmp_path):
    from satseg.training.checkpointing import build_from_checkpoint, load_checkpoint

    run = tmp_path / "run"
    result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "1", "--set", "data.crop_size=[96,64,32]")
    assert result.returncode == 0, result.stderr
    model, _ = build_from_checkpoint(load_checkpoint(run / "checkpoints" / "latest.pt"))
    assert model.config.window == (96, 64, 32) and model.config.stride == (48, 32, 16)


def test_the_model_learns_on_the_grid_its_cache_was_prepared_on_and_records_it(reference_files, mpnet_dir,
                                                                              tmp_path):
    from satseg.training.checkpointing import build_from_checkpoint, load_checkpoint

    cache = build_example_cache(reference_files, tmp_path / "cache", spacing=(3.0, 3.0, 3.0))
    refused = run_fit(TINY, cache, tmp_path / "refused", mpnet_dir, "--steps", "1",
                      "--set", "model.spacing=[1.0, 1.0, 3.0]")
    assert refused.returncode == 2 and "3×3×3 mm grid" in refused.stderr and "--spacing 1 1 3" in refused.stderr
    assert not (tmp_path / "refused" / "checkpoints").exists()

    result = run_fit(TINY, cache, tmp_path / "run", mpnet_dir, "--steps", "1")
    assert result.returncode == 0, result.stderr
    model, _ = build_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt"))
    assert model.config.spacing == (3.0, 3.0, 3.0)


def test_a_fresh_run_may_change_the_architecture_numbers_and_records_them(example_cache, mpnet_dir, tmp_path):
    from satseg.training.checkpointing import build_from_checkpoint, load_checkpoint

    wider = "model.architecture={features: [16, 16, 16, 32, 32, 32], mask_hidden: 48}"
    result = run_fit(TINY, example_cache, tmp_path / "run", mpnet_dir, "--steps", "1", "--set", wider)
    assert result.returncode == 0, result.stderr
    model, _ = build_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt"))
    assert model.config.features == (16, 16, 16, 32, 32, 32) and model.config.mask_dim == 16
    assert model.mask_embed_proj[0].out_features == 48

    for bad, complaint in (("{width: 3}", "unknown width"), ("{features: [8, 8]}", "6 positive integers"),
                           ("{query_dim: 62}", "not divisible by decoder_heads")):
        refused = run_fit(TINY, example_cache, tmp_path / bad[1:6], mpnet_dir, "--steps", "1",
                          "--set", f"model.architecture={bad}")
        assert refused.returncode == 2 and complaint in refused.stderr, refused.stderr


def test_the_query_side_stays_fixed_for_its_frozen_steps_while_the_u_net_learns(example_cache, mpnet_dir, tmp_path):
    from satseg.training.checkpointing import load_checkpoint

    run = tmp_path / "run"
    result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "3", "--set", "checkpoint.every_steps=1",
                     "--set", "schedule.freeze_query_side_steps=2")
    assert result.returncode == 0, result.stderr
    states = {k: load_checkpoint(run / "checkpoints" / f"step_{k}.pt") for k in (1, 2, 3)}

    def changed(prefix: str, a: int, b: int, part: str = "model") -> bool:
        return any(not torch.equal(tensor, states[b][part][key]) for key, tensor in states[a][part].items()
                   if key.startswith(prefix))

    for prefix in ("mask_embed_proj.", "transformer_decoder.", "projection_layer.", "mid_mask_embed_proj."):
        assert not changed(prefix, 1, 2), prefix  # held during steps 1-2
        assert changed(prefix, 2, 3), prefix  # trained from step 3
    assert not changed("", 1, 2, "text_encoder")  # the text tower is part of the query side (open here)
    assert changed("", 2, 3, "text_encoder")
    assert changed("backbone.", 1, 2)  # the U-Net learns throughout


def test_the_embedding_floor_term_reaches_the_mask_heads_and_stays_out_of_the_logged_loss(example_cache, mpnet_dir,
                                                                                        tmp_path):
    from satseg.training.checkpointing import load_checkpoint

    runs = {}
    for weight in (0.0, 100.0):
        run = tmp_path / f"floor{weight:g}"
        result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "1", "--set", "schedule.freeze_query_side_steps=0",
                         "--set", f"loss.embedding_floor_weight={weight}", "--set", "loss.embedding_floor=0.5")
        assert result.returncode == 0, result.stderr
        runs[weight] = (load_checkpoint(run / "checkpoints" / "latest.pt")["model"], losses(run))
    (plain, plain_loss), (floored, floored_loss) = runs[0.0], runs[100.0]
    assert floored_loss == pytest.approx(plain_loss, abs=1e-6)  # metrics log Dice + BCE only
    for head in ("mask_embed_proj.2.bias", "mid_mask_embed_proj.0.2.bias"):
        lifted = floored[head] - plain[head]
        assert lifted.mean().item() > 0, head  # fresh pre-activations sit mostly below 0.5: the term lifts the biases


@pytest.mark.slow
def test_tiny_model_overfits_liver_spleen_and_kidneys_of_the_scan_it_trained_on(reference_files, mpnet_dir,
                                                                                 shared_reference, tmp_path):
    """The scripted example (prepare → text stage → fit tiny.yaml on CPU → export → evaluate → segment) on real CT:
    Dice ≥ 0.80 per organ of the masks `satseg SCAN --model tiny-overfit` writes for the scan it trained on."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("overfit_example_ct",
                                                  REPO / "train" / "examples" / "overfit_example_ct.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    knowledge = shared_reference / "sat" / "sat-pretrain" / "supplementary_lab2def_gpt.json"
    report = example.main(["--reference-files", str(reference_files), "--mpnet", str(mpnet_dir),
                           "--knowledge", str(knowledge), "--work", str(tmp_path / "overfit")])
    assert set(report["dice_trained_scan"]) == {"liver", "spleen", "left kidney", "right kidney"}
    for organ, dice in report["dice_trained_scan"].items():
        assert dice >= 0.80, f"{organ}: Dice {dice} on the scan it trained on"
    for organ in report["dice_trained_scan"]:  # train evaluate agrees on the native grid
        assert report["evaluate_dice_native"][f"ct_sm:{organ}"] >= 0.80


def test_init_from_a_released_layout_file_keeps_its_weights_and_adds_fresh_deep_supervision_heads(
        example_cache, mpnet_dir, tmp_path):
    from satseg.model.build import build_sat
    from satseg.model.checkpoint import write_official_checkpoint
    from satseg.training.checkpointing import load_checkpoint

    torch.manual_seed(11)
    released = build_sat("tiny")  # an inference file: no mid_mask_embed_proj
    write_official_checkpoint(released, tmp_path / "released.pth")
    run = tmp_path / "run"
    result = run_fit(TINY, example_cache, run, mpnet_dir, "--steps", "1", "--init", str(tmp_path / "released.pth"),
                     "--set", "optim.lr=0.0",  # lr 0: the weights stay where they started
                     "--set", "model.architecture={features: [16, 16, 16, 16, 32, 32]}")  # ignored: the file's own
    assert result.returncode == 0, result.stderr
    assert "model.architecture (for fresh runs) is not used" in result.stderr
    model = load_checkpoint(run / "checkpoints" / "latest.pt")["model"]
    for key, tensor in released.state_dict().items():
        assert torch.equal(model[key], tensor), key
    assert any(k.startswith("mid_mask_embed_proj.") for k in model)
