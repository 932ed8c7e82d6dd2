"""`satseg train evaluate`: Dice / NSD on hand-computed cases, and evaluation of a prepared cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pipeline_helpers import run_cli
from training_data import build_example_dataset

from satseg.geometry import GridRecord, to_model_grid
from satseg.io.readers import read_volume
from satseg.training.evaluate import (
    CASE_COLUMNS,
    evaluate_cache,
    region_of,
    write_evaluation,
)
from satseg.training.manifest import load_manifest
from satseg.training.metrics import boundary_area, dice, surface_dice
from satseg.training.prepare import prepare_dataset, read_scans

SHAPE = (12, 12, 12)


def cube(start, size=4, shape=SHAPE):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


# -- Dice ------------------------------------------------------------------------------------------------


def test_dice_of_hand_computed_overlaps():
    a = cube((2, 2, 2))
    assert dice(a, a) == 1.0
    assert dice(a, cube((7, 7, 7))) == 0.0
    assert dice(a, cube((4, 2, 2))) == pytest.approx(0.5)  # 32 shared voxels of 64 + 64
    assert dice(a, cube((2, 2, 2), size=2)) == pytest.approx(2 * 8 / (64 + 8))


def test_dice_and_nsd_of_empty_masks_follow_sats_convention():
    empty = np.zeros(SHAPE, dtype=bool)
    assert dice(empty, empty) == 1.0 and surface_dice(empty, empty, (1, 1, 1)) == 1.0
    assert dice(cube((2, 2, 2)), empty) == 0.0 and surface_dice(cube((2, 2, 2)), empty, (1, 1, 1)) == 0.0
    assert dice(empty, cube((2, 2, 2))) == 0.0 and surface_dice(empty, cube((2, 2, 2)), (1, 1, 1)) == 0.0


# -- NSD -------------------------------------------------------------------------------------------------


def test_nsd_of_identical_masks_is_one_at_any_tolerance():
    a = cube((2, 2, 2))
    assert surface_dice(a, a, (1, 1, 1), tolerance_mm=0.0) == 1.0


def test_nsd_of_cubes_offset_by_one_voxel_is_one_at_one_mm():
    assert surface_dice(cube((2, 2, 2)), cube((3, 2, 2)), (1, 1, 1), 1.0) == 1.0


def test_nsd_of_cubes_offset_by_two_voxels_loses_the_leading_face_layers():
    # 4-voxel cubes, 96 faces each. Shifted by 2 along axis 0, the first voxel layer of each cube (its 16 end
    # faces + 16 side faces) is 2 mm from the other surface; all else is within 1 mm: (96 - 32) / 96.
    assert surface_dice(cube((2, 2, 2)), cube((4, 2, 2)), (1, 1, 1), 1.0) == pytest.approx(2 / 3)


def test_nsd_of_cubes_offset_by_one_voxel_at_half_a_millimetre():
    # Each cube loses its first layer (32 faces) and the 4 inner voxels of its far end face (4 faces, 1 mm
    # from the other cube's end face): (96 - 36) / 96.
    assert surface_dice(cube((2, 2, 2)), cube((3, 2, 2)), (1, 1, 1), 0.5) == pytest.approx(60 / 96)


def test_nsd_uses_the_voxel_spacing_of_each_axis():
    one = np.zeros((5, 5, 5), dtype=bool)
    one[2, 2, 2] = True
    along_z, along_x = np.roll(one, 1, axis=2), np.roll(one, 1, axis=0)
    assert surface_dice(one, along_x, (1, 1, 3), 1.0) == 1.0  # 1 mm apart
    assert surface_dice(one, along_z, (1, 1, 3), 1.0) == 0.0  # 3 mm apart
    assert surface_dice(one, along_z, (1, 1, 3), 3.0) == 1.0


def test_nsd_of_cubes_offset_along_a_3mm_axis_weights_faces_by_their_area():
    # spacing (1, 1, 3): faces normal to axis 2 are 1 mm², the others 3 mm²; a cube has 2·16·1 + 4·16·3 = 224.
    # Offset by one 3 mm slice, each cube's first slice (16·1 + 16·3 = 64) is 3 mm from the other surface;
    # the rest is within 1 mm in-plane: (224 - 64) / 224.
    assert surface_dice(cube((2, 2, 2)), cube((2, 2, 3)), (1, 1, 3), 1.0) == pytest.approx(160 / 224)
    assert surface_dice(cube((2, 2, 2)), cube((3, 2, 2)), (1, 1, 3), 1.0) == 1.0


def test_nsd_is_symmetric_and_independent_of_empty_margins():
    a, b = cube((2, 2, 2)), cube((4, 3, 2), size=3)
    assert surface_dice(a, b, (1, 2, 3), 2.0) == pytest.approx(surface_dice(b, a, (1, 2, 3), 2.0))
    big_a, big_b = np.pad(a, 20), np.pad(b, 20)
    assert surface_dice(big_a, big_b, (1, 2, 3), 2.0) == pytest.approx(surface_dice(a, b, (1, 2, 3), 2.0))


def test_boundary_area_of_one_voxel_is_its_six_faces_in_square_mm():
    one = np.zeros((3, 3, 3), dtype=bool)
    one[1, 1, 1] = True
    assert boundary_area(one, (1, 2, 3)).sum() == pytest.approx(2 * (2 * 3 + 1 * 3 + 1 * 2))
    assert boundary_area(np.ones((2, 2, 2), dtype=bool), (1, 1, 1)).sum() == 24  # array border is exposed


# -- evaluating a cache ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory, reference_files):
    """Both example CTs cropped around the kidneys: terms right kidney, left kidney, kidney."""
    data = build_example_dataset(tmp_path_factory.mktemp("data"), reference_files, ids=(2, 3), crop_margin=1)
    out = tmp_path_factory.mktemp("cache")
    entry = load_manifest(data.manifest)[data.name]
    report = prepare_dataset(entry, read_scans(data.scans), data.root, out, manifest_path=data.manifest)
    assert report.failed == []
    return data, out


def oracle(sample, image):
    """A perfect model: the cached masks as probabilities."""
    return sample.load()[1].astype(np.float32)


def test_grid_record_round_trips_through_the_cached_json(cache):
    data, out = cache
    for sample in evaluate_samples(out):
        volume = read_volume(data.root / "images" / f"{sample.patient_id}.nii.gz")
        _, record = to_model_grid(volume)
        rebuilt = GridRecord.from_dict(json.loads(sample.path.with_suffix(".json").read_text()))
        assert rebuilt.to_dict() == record.to_dict()
        probs = np.random.default_rng(0).random(record.shape).astype(np.float32)
        np.testing.assert_array_equal(rebuilt.to_input_grid(probs), record.to_input_grid(probs))


def evaluate_samples(out):
    from satseg.training.cache import open_cache

    return open_cache(out)


@pytest.mark.parametrize("grid", ["model", "native"])
def test_a_perfect_model_scores_one_on_both_grids(cache, grid):
    _, out = cache
    result = evaluate_cache(out, oracle, split="all", grid=grid)
    assert len(result.cases) == 2 * 3 and not result.failed
    for row in result.cases:
        assert row.grid == grid and row.gt_voxels > 0
        assert row.dice >= 0.99 and row.nsd >= 0.99, row


def test_native_grid_scores_against_the_original_mask_on_the_scans_own_voxels(cache):
    data, out = cache
    result = evaluate_cache(out, oracle, split="test", grid="native")
    labels = read_volume(data.root / "labels" / "ct.nii.gz").array
    counts = {"right kidney": int((labels == 2).sum()), "left kidney": int((labels == 3).sum())}
    counts["kidney"] = counts["right kidney"] + counts["left kidney"]
    assert {r.term: r.gt_voxels for r in result.cases} == counts  # 3 mm voxels, not the 1x1x3 mm grid's


def test_an_empty_prediction_scores_zero_where_the_class_is_present(cache):
    _, out = cache
    result = evaluate_cache(out, lambda s, image: np.zeros((len(s.terms), *image.shape), np.float32),
                            split="test", grid="native")
    assert all(r.dice == 0.0 and r.nsd == 0.0 and r.pred_voxels == 0 for r in result.cases)


def test_aggregates_follow_sats_class_dataset_and_region_means(cache, tmp_path):
    _, out = cache

    def left_only(sample, image):  # perfect left kidney, nothing else
        masks = sample.load()[1].astype(np.float32)
        return np.stack([m if t == "left kidney" else np.zeros_like(m) for t, m in zip(sample.terms, masks)])

    result = evaluate_cache(out, left_only, split="all", grid="model")
    classes = {(r["term"]): r for r in result.classes()}
    assert classes["left kidney"]["dice"] == 1.0 and classes["left kidney"]["cases"] == 2
    assert classes["right kidney"]["dice"] == 0.0 and classes["kidney"]["dice"] < 1.0
    [dataset] = result.datasets()
    assert dataset["dice"] == pytest.approx(np.mean([c["dice"] for c in classes.values()]))
    assert dataset["cases"] == 2 and dataset["classes"] == 3
    [region] = result.regions()
    assert region["region"] == "abdomen" and region["dice"] == pytest.approx(dataset["dice"])
    paths = write_evaluation(result, tmp_path / "eval")
    with open(paths["cases"]) as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CASE_COLUMNS and len(rows) == 6


def test_regions_come_from_the_vocabulary_with_lesions_as_abnormal():
    assert region_of("liver", "ct") == "abdomen"
    assert region_of("kidney tumor", "ct") == "abnormal"
    assert region_of("brainstem", "mri") == "brain"
    assert region_of("not a term", "ct") == "unknown"


def write_tiny_training_checkpoint(path):
    from satseg.model import build_sat, build_text_encoder

    torch.manual_seed(0)
    model, text = build_sat("tiny", deep_supervision=True), build_text_encoder("tiny")
    torch.save({"format": "satseg-train", "variant": "tiny", "model": model.state_dict(),
                "text_encoder": text.state_dict(), "config": {"model": "tiny"}, "step": 1}, path)
    return path


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, reference_files):
    """One scan (a test patient), cropped to its left kidney: 4 windows of the tiny model."""
    data = build_example_dataset(tmp_path_factory.mktemp("small"), reference_files, scans=("ct_sm",),
                                 test=("ct_sm",), ids=(3,), crop_margin=0)
    out = tmp_path_factory.mktemp("small_cache")
    entry = load_manifest(data.manifest)[data.name]
    assert prepare_dataset(entry, read_scans(data.scans), data.root, out, manifest_path=data.manifest).prepared == 1
    return data, out


def test_evaluate_command_runs_a_training_checkpoint_and_writes_csv_and_json(small_cache, mpnet_dir, tmp_path):
    _, out = small_cache
    checkpoint = write_tiny_training_checkpoint(tmp_path / "step_1.pt")
    result = run_cli("train", "evaluate", "--checkpoint", str(checkpoint), "--tokenizer", str(mpnet_dir),
                     "--cache", str(out), "--out", str(tmp_path / "eval"), "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "TotalSegExample: Dice" in result.stdout and "region abdomen" in result.stdout
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["settings"]["grid"] == "native" and evaluation["settings"]["split"] == "test"
    assert evaluation["settings"]["tolerance_mm"] == 1.0 and "step_1" in evaluation["settings"]["model"]
    assert [c["term"] for c in evaluation["cases"]] == ["left kidney"]
    for name, header in {"cases": ",".join(CASE_COLUMNS), "classes": "dataset,modality,term,region,cases,dice,nsd",
                         "datasets": "dataset,classes,cases,dice,nsd", "regions": "region,classes,dice,nsd"}.items():
        lines = (tmp_path / "eval" / f"{name}.csv").read_text().splitlines()
        assert lines[0] == header and len(lines) > 1
    for case in evaluation["cases"]:
        assert 0.0 <= case["dice"] <= 1.0 and 0.0 <= case["nsd"] <= 1.0
        assert case["patient_id"] == "ct_sm" and case["modality"] == "ct" and case["grid"] == "native"


def test_a_file_that_is_not_a_training_checkpoint_is_refused_in_one_line(small_cache, mpnet_dir, tmp_path):
    _, out = small_cache
    bogus = tmp_path / "weights.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}}, bogus)
    result = run_cli("train", "evaluate", "--checkpoint", str(bogus), "--tokenizer", str(mpnet_dir),
                     "--cache", str(out))
    assert result.returncode == 1
    assert "not a satseg training checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


def test_native_evaluation_reports_scans_whose_mask_is_gone_and_model_grid_still_works(
        reference_files, tmp_path):
    data = build_example_dataset(tmp_path / "data", reference_files, scans=("ct_sm",), test=("ct_sm",),
                                 ids=(2, 3), crop_margin=1)
    entry = load_manifest(data.manifest)[data.name]
    prepare_dataset(entry, read_scans(data.scans), data.root, tmp_path / "cache", manifest_path=data.manifest)
    (data.root / "labels" / "ct_sm.nii.gz").unlink()
    native = evaluate_cache(tmp_path / "cache", oracle, grid="native")
    assert native.cases == [] and "--grid model" in native.failed[0]["reason"]
    model = evaluate_cache(tmp_path / "cache", oracle, grid="model")
    assert len(model.cases) == 3 and all(r.dice == 1.0 for r in model.cases)


def test_training_checkpoint_is_served_with_the_architecture_fit_recorded(tmp_path, mpnet_dir):
    from dataclasses import replace

    import torch

    from satseg.model import TINY, build_sat, build_text_encoder
    from satseg.training.evaluate import load_training_checkpoint

    config = replace(TINY, window=(128, 128, 32), stride=(64, 64, 16))
    payload = {"format": "satseg-train", "variant": "tiny", "config": {}, "model_config": config.to_dict(),
               "model": build_sat(config, deep_supervision=True).state_dict(),
               "text_encoder": build_text_encoder(config).state_dict()}
    torch.save(payload, tmp_path / "latest.pt")
    predictor = load_training_checkpoint(tmp_path / "latest.pt", mpnet_dir)
    assert predictor.window == (128, 128, 32) and predictor.stride == (64, 64, 16)
