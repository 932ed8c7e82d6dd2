"""`satseg train prepare`: SAT-DS standardisation of real example CTs into the training cache."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from pipeline_helpers import run_cli
from training_data import build_example_dataset, write_scans

from satseg.geometry import to_model_grid
from satseg.intensity import normalize
from satseg.io.readers import read_volume
from satseg.training.cache import open_cache
from satseg.training.manifest import load_manifest
from satseg.training.prepare import (
    ScanItem,
    bundled_scans,
    prepare_dataset,
    read_scans,
    resolve_path,
)

# the example label maps hold TotalSegmentator ids; the dataset maps 1, 2, 3, 5 and merges 2 ∪ 3
GT_VALUES = {"spleen": {1}, "right kidney": {2}, "left kidney": {3}, "liver": {5}, "kidney": {2, 3}}


def prepare(data, out, manifest=None, **kwargs):
    manifest = manifest or data.manifest
    entry = load_manifest(manifest)[data.name]
    return entry, prepare_dataset(entry, read_scans(data.scans), data.root, out, manifest_path=manifest, **kwargs)


@pytest.fixture(scope="module")
def example(tmp_path_factory, reference_files):
    return build_example_dataset(tmp_path_factory.mktemp("data"), reference_files, crop_margin=2)


@pytest.fixture(scope="module")
def prepared(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    entry, report = prepare(example, out)
    assert report.failed == []
    return entry, out


def test_prepare_indexes_every_scan_with_the_manifest_terms_shapes_boxes_and_split(example, prepared):
    entry, out = prepared
    samples = {s.patient_id: s for s in open_cache(out)}
    assert set(samples) == {"ct_sm", "ct"}
    assert samples["ct"].split == "test" and samples["ct_sm"].split == "train"  # the entry's split.test
    for sample in samples.values():
        assert sample.terms == list(entry.terms) == ["spleen", "right kidney", "left kidney", "liver", "kidney"]
        assert sample.modality == "ct" and sample.dataset == example.name
        image, masks = sample.load()
        assert list(image.shape) == sample.shape and masks.shape == (5, *image.shape)
        assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-3  # z-scored
        for term, mask in zip(sample.terms, masks):
            where = np.nonzero(mask)
            assert sample.boxes[term] == [[int(w.min()) for w in where], [int(w.max()) + 1 for w in where]]
        grid = json.loads(sample.path.with_suffix(".json").read_text())
        assert grid["model_shape"] == sample.shape and grid["orientation"] == "RAS"
        assert grid["mask"].endswith(f"labels/{sample.patient_id}.nii.gz")


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_cached_image_and_masks_equal_the_scan_and_its_labels_pushed_through_the_scans_geometry(
        example, orientation, tmp_path):
    manifest = tmp_path / f"{example.name}.json"
    manifest.write_text(json.dumps(dict(example.entry, orientation=orientation)))
    _, report = prepare(example, tmp_path / "cache", manifest=manifest)
    assert report.failed == []
    for sample in open_cache(tmp_path / "cache"):
        image, masks = sample.load()
        volume = read_volume(example.root / "images" / f"{sample.patient_id}.nii.gz")
        raw, record = to_model_grid(volume, orientation=orientation)
        assert record.input_axcodes == "RAS" and record.orientation == orientation
        np.testing.assert_array_equal(image, normalize(raw, "ct"))
        labels = np.asarray(nib.load(example.root / "labels" / f"{sample.patient_id}.nii.gz").dataobj)
        for term, mask in zip(sample.terms, masks):
            expected = record.from_input_grid(np.isin(labels, list(GT_VALUES[term])).astype(np.uint8),
                                              order="nearest")
            np.testing.assert_array_equal(mask, expected.astype(bool), err_msg=term)


def test_prepare_on_another_grid_records_it_and_a_cache_never_mixes_grids(example, prepared, tmp_path):
    from satseg.errors import InputError
    from satseg.training.cache import cache_spacing

    out = tmp_path / "cache3mm"
    _, report = prepare(example, out, spacing_mm=(3.0, 3.0, 3.0))
    assert report.failed == [] and report.prepared == 2
    assert cache_spacing(out) == (3.0, 3.0, 3.0) and cache_spacing(prepared[1]) == (1.0, 1.0, 3.0)
    for sample in open_cache(out):
        image, _ = sample.load()
        raw, record = to_model_grid(read_volume(example.root / "images" / f"{sample.patient_id}.nii.gz"),
                                    spacing_mm=(3.0, 3.0, 3.0))
        np.testing.assert_array_equal(image, normalize(raw, "ct"))
        assert json.loads(sample.path.with_suffix(".json").read_text())["spacing_mm"] == [3.0, 3.0, 3.0]
    before = (out / "index.jsonl").read_bytes()
    with pytest.raises(InputError, match="3×3×3 mm grid"):
        prepare(example, out)  # SAT's 1×1×3 mm into the 3 mm cache
    with pytest.raises(InputError, match="1×1×3 mm grid"):
        prepare(example, prepared[1], spacing_mm=(2.0, 2.0, 3.0))
    assert (out / "index.jsonl").read_bytes() == before and cache_spacing(prepared[1]) == (1.0, 1.0, 3.0)


def test_fit_and_evaluate_refuse_a_cache_prepared_on_another_grid_than_the_models(tmp_path):
    from satseg.errors import InputError
    from satseg.training.cache import claim_spacing, require_grid

    claim_spacing(tmp_path, (1.0, 1.0, 3.0))
    require_grid(tmp_path, (1.0, 1.0, 3.0))
    with pytest.raises(InputError, match="1×1×3 mm grid but the model works on 3×3×3 mm"):
        require_grid(tmp_path, (3.0, 3.0, 3.0))


def test_merged_kidney_is_the_union_of_left_and_right_kidney(prepared):
    _, out = prepared
    for sample in open_cache(out):
        _, masks = sample.load()
        by_term = dict(zip(sample.terms, masks))
        left, right = by_term["left kidney"], by_term["right kidney"]
        assert left.any() and right.any() and not (left & right).any()
        np.testing.assert_array_equal(by_term["kidney"], left | right)


@pytest.mark.parametrize("mask_format", ["channels", "binary"])
def test_channel_and_binary_masks_give_the_same_terms_as_label_values(
        prepared, reference_files, tmp_path, mask_format):
    _, reference_cache = prepared
    ids = (1, 2, 3, 5) if mask_format == "channels" else (5,)
    data = build_example_dataset(tmp_path / "data", reference_files, ids=ids, mask_format=mask_format,
                                 crop_margin=2)
    if mask_format == "binary":  # the crop depends on the labels: compare against the same crop
        reference = build_example_dataset(tmp_path / "ref", reference_files, ids=ids, crop_margin=2)
        _, report = prepare(reference, tmp_path / "ref_cache")
        reference_cache = tmp_path / "ref_cache"
    _, report = prepare(data, tmp_path / "cache")
    assert report.failed == []
    expected = {s.patient_id: s for s in open_cache(reference_cache)}
    for sample in open_cache(tmp_path / "cache"):
        image, masks = sample.load()
        ref_image, ref_masks = expected[sample.patient_id].load()
        assert sample.terms == expected[sample.patient_id].terms
        np.testing.assert_array_equal(image, ref_image)
        np.testing.assert_array_equal(masks, ref_masks)


def test_prepare_resumes_without_redoing_finished_samples(example, tmp_path):
    out = tmp_path / "cache"
    _, first = prepare(example, out, limit=1)
    assert (first.prepared, first.already_done) == (1, 0)
    [done] = open_cache(out)
    stamp = done.path.stat().st_mtime_ns
    _, second = prepare(example, out)
    assert (second.prepared, second.already_done) == (1, 1)
    assert len((out / "index.jsonl").read_text().splitlines()) == 2
    assert done.path.stat().st_mtime_ns == stamp  # not rewritten
    _, third = prepare(example, out)
    assert (third.prepared, third.already_done) == (0, 2)


def test_parallel_workers_write_the_same_cache_as_one_process(example, prepared, tmp_path):
    _, serial = prepared
    _, report = prepare(example, tmp_path / "cache", workers=2)
    assert report.prepared == 2 and report.failed == []
    expected = {s.sample_id: s for s in open_cache(serial)}
    for sample in open_cache(tmp_path / "cache"):
        for got, want in zip(sample.load(), expected[sample.sample_id].load()):
            np.testing.assert_array_equal(got, want)


def test_missing_and_unreadable_files_are_reported_and_the_other_scans_are_prepared(example, tmp_path):
    (example.root / "images" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a gzip file")
    lines = example.lines + [
        {"image": "images/gone.nii.gz", "mask": "labels/gone.nii.gz", "modality": "CT", "patient_id": "gone"},
        {"image": "images/broken.nii.gz", "mask": "labels/ct.nii.gz", "modality": "CT", "patient_id": "broken"},
    ]
    scans = write_scans(tmp_path / "scans.jsonl", lines)
    out = tmp_path / "cache"
    result = run_cli("train", "prepare", "--manifest", str(example.manifest), "--scans", str(scans),
                     "--root", str(example.root), "--out", str(out))
    assert result.returncode == 3, result.stderr
    report = json.loads((out / "prepare_report.json").read_text())
    [dataset] = report["datasets"]
    assert (dataset["prepared"], dataset["failed_count"]) == (2, 2)
    kinds = {f["patient_id"]: f["kind"] for f in dataset["failed"]}
    assert kinds == {"gone": "missing", "broken": "unreadable"}
    assert "gone" in result.stderr and "broken" in result.stderr
    assert {s.patient_id for s in open_cache(out)} == {"ct_sm", "ct"}


def test_known_dataset_reads_the_bundled_sat_ds_scan_list(tmp_path):
    result = run_cli("train", "prepare", "--dataset", "TotalSegmentator_Organs", "--root", str(tmp_path),
                     "--out", str(tmp_path / "cache"), "--limit", "2")
    assert result.returncode == 3, result.stderr
    [dataset] = json.loads((tmp_path / "cache" / "prepare_report.json").read_text())["datasets"]
    assert dataset["scans"] == 1202 and dataset["failed_count"] == 2
    assert all(f["kind"] == "missing" and f["image"].startswith("data/nii/Totalsegmentator_dataset/")
               for f in dataset["failed"])


def test_bundled_scan_lists_are_the_sat_ds_files_for_all_72_datasets(shared_reference):
    manifest = load_manifest()
    assert len(manifest) == 72
    for entry in manifest:
        bundled = bundled_scans(entry.name)
        original = shared_reference / "sat" / "sat-ds" / "jsonl" / f"{entry.name}.jsonl"
        assert gzip.decompress(bundled.read_bytes()) == original.read_bytes(), entry.name
        assert len(read_scans(bundled, entry.name)) == entry.scans, entry.name


def test_sample_ids_are_stable_unique_and_file_name_safe():
    a = ScanItem(image="data/nii/X/p 1/ct.nii.gz", mask="data/nii/X/p 1/seg.nii.gz", patient_id="p 1/a")
    b = ScanItem(image="data/nii/X/p 1/t2.nii.gz", mask="data/nii/X/p 1/seg.nii.gz", patient_id="p 1/a")
    assert a.sample_id == ScanItem(a.image, a.mask, a.patient_id, "CT", "X").sample_id
    assert a.sample_id != b.sample_id
    assert a.sample_id.startswith("p-1-a_") and "/" not in a.sample_id and " " not in a.sample_id


def test_sat_ds_paths_resolve_under_its_root_or_its_data_nii_folder(tmp_path):
    relative = "data/nii/KiTS23/case_00000/imaging.nii.gz"
    (tmp_path / relative).parent.mkdir(parents=True)
    (tmp_path / relative).write_bytes(b"")
    assert resolve_path(tmp_path, relative) == tmp_path / relative
    assert resolve_path(tmp_path / "data" / "nii", relative) == tmp_path / relative
    assert resolve_path(tmp_path / "elsewhere", relative) == tmp_path / "elsewhere" / relative  # reported missing
    assert resolve_path(tmp_path / "elsewhere", str(tmp_path / relative)) == tmp_path / relative


def test_scan_lists_keep_only_the_named_dataset_and_reject_lines_without_paths(tmp_path):
    path = write_scans(tmp_path / "s.jsonl", [
        {"image": "a.nii.gz", "mask": "am.nii.gz", "patient_id": "1", "dataset": "A"},
        {"image": "b.nii.gz", "mask": "bm.nii.gz", "patient_id": "2", "dataset": "B"},
        {"image": "c.nii.gz", "mask": "cm.nii.gz", "patient_id": "3"},
    ])
    assert [s.patient_id for s in read_scans(path, "A")] == ["1", "3"]
    write_scans(path, [{"image": "a.nii.gz", "patient_id": "1"}])
    from satseg.errors import InputError

    with pytest.raises(InputError, match="line 1 lacks mask"):
        read_scans(path)
