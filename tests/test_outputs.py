"""Outputs: file names, masks on the input grid, the multilabel image and legend, statistics, report,
and writes that never leave a partial file."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from satseg.io.volume import Volume
from satseg.outputs import (
    compute_statistics,
    legend_sidecar_path,
    output_names,
    read_legend,
    write_mask,
    write_multilabel,
    write_probability,
    write_report,
    write_statistics,
)
from satseg.outputs.multilabel import LEGEND_ECODE, RULE_PROBABILITY, RULE_SMALLER

# TotalSegmentator "total" class ids in example_seg.nii.gz (map_to_binary.py)
SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, LIVER = 1, 2, 3, 5


def load_volume(path: Path) -> Volume:
    image = nib.load(path)
    return Volume(np.asarray(image.dataobj), image.affine, image.header, source=path)


def raw_header(path: Path) -> nib.Nifti1Header:
    """The header bytes as stored (nibabel's loaded header moves scaling into the data proxy)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        return nib.Nifti1Header.from_fileobj(fh)


@pytest.fixture(scope="module")
def ct(reference_files: Path) -> Volume:
    return load_volume(reference_files / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def ct_labels(reference_files: Path) -> np.ndarray:
    return np.asarray(nib.load(reference_files / "example_seg.nii.gz").dataobj)


def synthetic_volume(shape=(20, 24, 16), affine=None) -> Volume:
    if affine is None:
        affine = np.diag([2.0, 2.0, 3.0, 1.0])
    rng = np.random.default_rng(0)
    return Volume(rng.normal(40, 10, shape).astype(np.float32), np.asarray(affine, dtype=float), None)


def cube(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return mask


# --- names -------------------------------------------------------------------------------------------


def test_output_names_are_snake_case_of_the_prompts():
    prompts = ["left kidney", "Lumbar vertebrae 5 (L5)", "LeftKidney", "Hüfte", "liver  tumour!", "T1w lesion"]
    assert output_names(prompts) == [
        "left_kidney",
        "lumbar_vertebrae_5_l5",
        "left_kidney_2",
        "hufte",
        "liver_tumour",
        "t1w_lesion",
    ]


def test_output_name_collisions_are_resolved_in_prompt_order_without_stealing_natural_names():
    assert output_names(["Liver", "liver"]) == ["liver", "liver_2"]
    assert output_names(["liver", "Liver", "liver 2"]) == ["liver", "liver_3", "liver_2"]
    assert output_names(["liver", "labels"], reserved={"labels"}) == ["liver", "labels_2"]


def test_output_names_are_safe_file_names_on_every_filesystem(tmp_path: Path):
    prompts = ["../../etc/passwd", "con", "NUL", "", "   ", "a" * 300, "tumour/lesion", "*?<>|", "ü", "Aorta"]
    names = output_names(prompts)
    assert len(set(names)) == len(names)
    for name in names:
        assert re.fullmatch(r"[a-z0-9_]+", name), name
        assert len(name) <= 110
        assert name not in {"con", "nul", "prn", "aux", "com1", "lpt1"}
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    assert names[1] == "con_" and names[2] == "nul_"


# --- masks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scan, labels", [("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")]
)
def test_written_mask_has_the_input_grid_header_codes_and_exact_values(reference_files, tmp_path, scan, labels):
    volume = load_volume(reference_files / scan)
    mask = np.asarray(nib.load(reference_files / labels).dataobj) == SPLEEN
    assert mask.any()
    out = write_mask(mask, volume, tmp_path / "spleen.nii.gz")

    written = nib.load(out)
    source = nib.load(reference_files / scan)
    assert written.shape == source.shape
    assert np.array_equal(written.affine, source.affine)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
    stored = raw_header(out)
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_z"):
        assert np.array_equal(stored[field], source.header[field]), field
    assert stored.get_data_dtype() == np.uint8
    assert (float(stored["scl_slope"]), float(stored["scl_inter"])) == (1.0, 0.0)
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8
    assert np.array_equal(data, mask.astype(np.uint8))


def test_mask_without_input_header_gets_scanner_codes_from_the_affine(tmp_path):
    affine = np.array([[-1.5, 0.1, 0, 90], [0, 1.5, 0, -120], [0, 0, 2.5, 40], [0, 0, 0, 1]])  # sheared
    volume = synthetic_volume(affine=affine)
    mask = cube(volume.shape, (2, 3, 4), (8, 9, 10))
    out = write_mask(mask, volume, tmp_path / "m.nii.gz")
    stored = raw_header(out)
    assert (int(stored["qform_code"]), int(stored["sform_code"])) == (1, 1)
    assert np.allclose(nib.load(out).affine, affine, atol=1e-5)
    assert np.array_equal(np.asarray(nib.load(out).dataobj), mask)


def test_mask_with_values_other_than_0_and_1_is_refused(tmp_path):
    volume = synthetic_volume()
    with pytest.raises(ValueError, match="only 0 and 1"):
        write_mask(np.full(volume.shape, 0.7), volume, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("values", [np.int16([0, 2]), np.int16([-1, 1]), np.uint16([0, 7]), np.float32([0, 0.5])])
def test_mask_integer_and_float_values_outside_0_and_1_are_refused_whatever_the_dtype(values, tmp_path):
    volume = synthetic_volume()
    mask = np.zeros(volume.shape, values.dtype)
    mask[1, 2, 3], mask[4, 5, 6] = values
    with pytest.raises(ValueError, match="only 0 and 1"):
        write_mask(mask, volume, tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_binary_uint8_reuses_bool_and_uint8_memory_and_keeps_the_order():
    from satseg.outputs.masks import binary_uint8

    mask = np.asfortranarray(np.random.default_rng(0).random((9, 7, 5)) > 0.5)
    as_bytes = binary_uint8(mask)
    assert as_bytes.dtype == np.uint8 and np.shares_memory(as_bytes, mask) and as_bytes.flags.f_contiguous
    assert np.array_equal(as_bytes, mask.astype(np.uint8))
    assert binary_uint8(as_bytes) is as_bytes
    strided = binary_uint8(mask[::2, :, 1:])  # not contiguous: still a view with the right values
    assert np.array_equal(strided, mask[::2, :, 1:].astype(np.uint8))
    assert np.array_equal(binary_uint8(mask.astype(np.int64)), as_bytes)


@pytest.mark.parametrize("order", ["F", "C"])
def test_masks_maps_and_label_images_are_the_bytes_nibabel_serialises(order, ct, tmp_path):
    """Streamed into the compressor (no in-memory copy of the file): the payload is exactly nibabel's own
    serialisation, for either memory order, and the gzip header carries no temporary name and no time."""
    from satseg.outputs.masks import INTENT_LABEL, INTENT_NONE, nifti_like

    rng = np.random.default_rng(1)
    mask = np.asarray(rng.random(ct.shape) > 0.6, order=order)
    prob = np.asarray(rng.random(ct.shape, dtype=np.float32), order=order)
    expected_mask = nifti_like(mask.astype(np.uint8), ct, intent=INTENT_LABEL, description="satseg mask")
    expected_mask.header["cal_min"], expected_mask.header["cal_max"] = 0, 1
    expected_prob = nifti_like(prob, ct, intent=INTENT_NONE, description="satseg probability")
    expected_prob.header["cal_min"], expected_prob.header["cal_max"] = 0, 1
    for written, expected in ((write_mask(mask, ct, tmp_path / "m.nii.gz"), expected_mask),
                              (write_probability(prob, ct, tmp_path / "p.nii.gz"), expected_prob)):
        raw = written.read_bytes()
        assert raw[3] & 0x08 == 0 and raw[4:8] == bytes(4)  # no FNAME field, mtime 0
        assert gzip.decompress(raw) == expected.to_bytes()
    labels = tmp_path / "segmentation.nii.gz"
    legend = write_multilabel({"a": mask, "b": ~mask}, ct, labels)
    back = nib.load(labels)
    assert np.array_equal(np.asarray(back.dataobj), np.where(mask, 1, 2))
    assert read_legend(labels, source="header") == legend  # the header extension survives the streamed writing


def test_probability_map_is_float32_on_the_input_grid(ct, tmp_path):
    prob = np.linspace(0, 1, int(np.prod(ct.shape))).reshape(ct.shape)
    out = write_probability(prob, ct, tmp_path / "p.nii.gz")
    written = nib.load(out)
    assert written.get_data_dtype() == np.float32
    assert np.array_equal(written.affine, ct.affine)
    assert np.array_equal(np.asarray(written.dataobj), prob.astype(np.float32))


# --- multilabel --------------------------------------------------------------------------------------


def test_multilabel_values_follow_prompt_order_and_legend_reads_back_from_sidecar_and_header(ct, ct_labels, tmp_path):
    masks = {
        "liver": ct_labels == LIVER,
        "spleen": ct_labels == SPLEEN,
        "kidney_left": ct_labels == KIDNEY_LEFT,
        "kidney_right": ct_labels == KIDNEY_RIGHT,
    }
    prompts = {"liver": "Liver", "spleen": "spleen", "kidney_left": "left kidney", "kidney_right": "right kidney"}
    terms = {"kidney_left": ["left kidney"]}
    out = tmp_path / "labels.nii.gz"
    legend = write_multilabel(masks, ct, out, prompts=prompts, terms=terms)

    image = nib.load(out)
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8 and image.shape == ct.shape and np.array_equal(image.affine, ct.affine)
    for value, name in enumerate(masks, start=1):
        assert np.array_equal(labels == value, masks[name]), name
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}

    assert legend_sidecar_path(out) == tmp_path / "labels.json"
    from_sidecar = read_legend(out, source="sidecar")
    from_header = read_legend(out, source="header")
    assert from_sidecar == from_header == legend
    assert legend["labels"]["3"] == {
        "name": "kidney_left",
        "prompt": "left kidney",
        "terms": ["left kidney"],
        "voxels": int((ct_labels == KIDNEY_LEFT).sum()),
    }
    assert legend["labels"]["1"]["prompt"] == "Liver" and "terms" not in legend["labels"]["1"]
    assert legend["overlaps"] == [] and legend["overlap_rule"] == RULE_SMALLER
    # Only our legend travels in the header: the input's own extensions are not copied.
    assert image.header.extensions.get_codes() == [LEGEND_ECODE]


def test_multilabel_does_not_copy_extensions_of_the_input_header(reference_files, tmp_path):
    labelled = load_volume(reference_files / "example_seg.nii.gz")
    assert len(labelled.header.extensions) == 1  # TotalSegmentator's own label table
    write_multilabel({"spleen": labelled.array == SPLEEN}, labelled, tmp_path / "ml.nii.gz")
    assert nib.load(tmp_path / "ml.nii.gz").header.extensions.get_codes() == [LEGEND_ECODE]


def test_overlap_goes_to_the_smaller_structure_without_probabilities(tmp_path):
    volume = synthetic_volume()
    liver = cube(volume.shape, (2, 2, 2), (14, 14, 12))
    tumour = cube(volume.shape, (4, 4, 4), (7, 7, 7))
    legend = write_multilabel({"liver": liver, "liver_tumour": tumour}, volume, tmp_path / "ml.nii.gz")
    labels = np.asarray(nib.load(tmp_path / "ml.nii.gz").dataobj)

    assert labels.max() == 2  # never summed into a third value
    assert np.array_equal(labels == 2, tumour)
    assert np.array_equal(labels == 1, liver & ~tumour)
    assert legend["overlap_rule"] == RULE_SMALLER
    assert legend["overlaps"] == [
        {"structures": ["liver", "liver_tumour"], "voxels": 27, "assigned": {"liver": 0, "liver_tumour": 27}}
    ]


def test_overlap_between_equal_sizes_goes_to_the_earlier_prompt(tmp_path):
    volume = synthetic_volume()
    a = cube(volume.shape, (0, 0, 0), (4, 4, 4))
    b = cube(volume.shape, (2, 0, 0), (6, 4, 4))
    write_multilabel({"b_first": b, "a_second": a}, volume, tmp_path / "ml.nii.gz")
    labels = np.asarray(nib.load(tmp_path / "ml.nii.gz").dataobj)
    assert np.all(labels[a & b] == 1)
    assert np.array_equal(labels == 2, a & ~b)


def test_overlap_goes_to_the_higher_probability_voxel_by_voxel(tmp_path):
    volume = synthetic_volume()
    a = cube(volume.shape, (0, 0, 0), (10, 10, 10))  # larger, but wins where it is more probable
    b = cube(volume.shape, (5, 0, 0), (12, 10, 10))
    prob_a = np.where(a, 0.9, 0.0)
    prob_b = np.where(b, 0.6, 0.0)
    prob_b[8:, :, :] = np.where(b[8:], 0.95, 0.0)  # b more probable on i >= 8
    prob_b[5, :, :] = np.where(b[5], 0.9, 0.0)  # tie on i == 5 → a, the earlier prompt
    probabilities = {"a": prob_a, "b": prob_b}
    legend = write_multilabel({"a": a, "b": b}, volume, tmp_path / "ml.nii.gz", probabilities=probabilities)
    labels = np.asarray(nib.load(tmp_path / "ml.nii.gz").dataobj)

    overlap = a & b
    expected_b = overlap.copy()
    expected_b[:8] = False
    assert np.array_equal(labels[overlap] == 2, expected_b[overlap])
    assert np.array_equal(labels == 1, a & ~expected_b)
    assert legend["overlap_rule"] == RULE_PROBABILITY
    n_b = int(expected_b.sum())
    assert legend["overlaps"][0]["assigned"] == {"a": int(overlap.sum()) - n_b, "b": n_b}


def test_more_than_255_structures_are_written_as_uint16(tmp_path):
    volume = synthetic_volume(shape=(10, 10, 5))
    masks = {}
    for n, flat_index in enumerate(range(300)):
        mask = np.zeros(volume.shape, dtype=bool)
        mask.reshape(-1)[flat_index] = True
        masks[f"s{n}"] = mask
    legend = write_multilabel(masks, volume, tmp_path / "ml.nii.gz")
    labels = np.asarray(nib.load(tmp_path / "ml.nii.gz").dataobj)
    assert labels.dtype == np.uint16
    assert np.array_equal(labels.reshape(-1)[:300], np.arange(1, 301))
    assert legend["labels"]["300"]["name"] == "s299"


# --- statistics --------------------------------------------------------------------------------------


def test_volume_is_voxel_count_times_voxel_volume_and_intensity_is_the_input_values(reference_files, ct, ct_labels):
    kidney = (ct_labels == KIDNEY_RIGHT).copy()
    kidney[:, :, :3] = kidney[:, :, -3:] = False  # keep it off the scan border
    stats = compute_statistics({"kidney_right": kidney}, ct)["kidney_right"]

    zooms = nib.load(reference_files / "example_ct_sm.nii.gz").header.get_zooms()
    assert stats["reason"] is None and stats["border"] == []
    assert stats["voxels"] == int(kidney.sum())
    assert stats["volume_mm3"] == pytest.approx(kidney.sum() * float(np.prod(zooms)), rel=1e-9)
    hu = nib.load(reference_files / "example_ct_sm.nii.gz").get_fdata()[kidney]
    assert stats["intensity"]["mean"] == pytest.approx(hu.mean())
    assert stats["intensity"]["std"] == pytest.approx(hu.std())
    assert (stats["intensity"]["min"], stats["intensity"]["max"]) == (hu.min(), hu.max())
    assert -100 < stats["intensity"]["mean"] < 200  # soft tissue in HU, not air or bone


def test_centroid_and_bbox_of_a_cube_are_at_its_known_world_position():
    # LPS-stored voxels: i runs to patient left, j to posterior; world is RAS+ millimetres.
    affine = np.array([[-2.0, 0, 0, 100.0], [0, -2.0, 0, 50.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])
    volume = synthetic_volume(shape=(30, 30, 20), affine=affine)
    mask = cube(volume.shape, (10, 20, 5), (15, 25, 8))  # i 10..14, j 20..24, k 5..7
    stats = compute_statistics({"cube": mask}, volume)["cube"]

    assert stats["centroid_voxel"] == [12.0, 22.0, 6.0]
    assert stats["centroid_mm"] == pytest.approx([100 - 24.0, 50 - 44.0, -30 + 18.0])
    assert stats["bbox_voxel"] == {"min": [10, 20, 5], "max": [14, 24, 7]}
    assert stats["bbox_mm"]["min"] == pytest.approx([100 - 28.0, 50 - 48.0, -30 + 15.0])
    assert stats["bbox_mm"]["max"] == pytest.approx([100 - 20.0, 50 - 40.0, -30 + 21.0])
    assert stats["volume_mm3"] == pytest.approx(5 * 5 * 3 * 12.0)


def test_liver_and_spleen_centroids_lie_on_the_patients_right_and_left(ct, ct_labels):
    stats = compute_statistics({"liver": ct_labels == LIVER, "spleen": ct_labels == SPLEEN}, ct)
    assert stats["liver"]["centroid_mm"][0] > stats["spleen"]["centroid_mm"][0]  # RAS+: +x is patient right


def test_absent_structure_is_null_with_reason_absent(ct):
    stats = compute_statistics({"gallbladder": np.zeros(ct.shape, dtype=bool)}, ct)["gallbladder"]
    assert stats["reason"] == "absent"
    assert stats["voxels"] == 0
    for key in ("volume_mm3", "volume_mm3_in_scan", "intensity", "bbox_voxel", "bbox_mm", "centroid_mm"):
        assert stats[key] is None, key


def test_structure_touching_the_scan_border_has_null_volume_with_reason(ct, ct_labels):
    liver = ct_labels == LIVER
    stats = compute_statistics({"liver": liver}, ct)["liver"]
    assert stats["reason"] == "touches the scan border"
    assert stats["volume_mm3"] is None
    assert set(stats["border"]) == {"k-", "k+"}
    voxel_mm3 = abs(np.linalg.det(ct.affine[:3, :3]))
    assert stats["volume_mm3_in_scan"] == pytest.approx(liver.sum() * voxel_mm3)
    assert stats["centroid_mm"] is not None and stats["bbox_mm"] is not None


def test_structure_with_no_finite_intensity_has_null_intensity_with_reason():
    volume = synthetic_volume()
    volume.array[4:8, 4:8, 4:8] = np.nan
    stats = compute_statistics({"x": cube(volume.shape, (4, 4, 4), (8, 8, 8))}, volume)["x"]
    assert stats["intensity"] is None and stats["reason"] == "no finite intensity inside the mask"
    assert stats["volume_mm3"] == pytest.approx(64 * 12.0)


def test_statistics_file_is_strict_json_with_nulls_and_conventions(ct, ct_labels, tmp_path):
    stats = compute_statistics({"spleen": ct_labels == SPLEEN, "absent": np.zeros(ct.shape, bool)}, ct)
    out = write_statistics(stats, tmp_path / "statistics.json", ct)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(out.read_text(), parse_constant=refuse)
    assert document["structures"]["absent"]["volume_mm3"] is None
    assert document["structures"]["absent"]["reason"] == "absent"
    assert document["structures"]["spleen"]["voxels"] == int((ct_labels == SPLEEN).sum())
    assert "RAS+" in document["conventions"]["world_frame"]
    assert document["scan"]["shape"] == list(ct.shape)


# --- report ------------------------------------------------------------------------------------------


def test_report_is_strict_json_with_numpy_values_converted(tmp_path):
    report = {
        "timings_s": {"inference": np.float32(1.5)},
        "voxels": np.int64(3),
        "shape": np.array([2, 3]),
        "flag": np.bool_(True),
        "output": tmp_path / "liver.nii.gz",
        "bad": np.nan,
        "prompts": ("liver",),
    }
    out = write_report(tmp_path / "run.json", report)
    assert json.loads(out.read_text()) == {
        "timings_s": {"inference": 1.5},
        "voxels": 3,
        "shape": [2, 3],
        "flag": True,
        "output": str(tmp_path / "liver.nii.gz"),
        "bad": None,
        "prompts": ["liver"],
    }


def test_report_with_an_unserialisable_value_raises_and_writes_nothing(tmp_path):
    (tmp_path / "run.json").write_text('{"earlier": true}')
    with pytest.raises(TypeError, match="object"):
        write_report(tmp_path / "run.json", {"model": object()})
    assert json.loads((tmp_path / "run.json").read_text()) == {"earlier": True}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


# --- failures midway ---------------------------------------------------------------------------------

_FAIL_MIDWAY = textwrap.dedent(
    """
    import resource, signal, sys
    import nibabel as nib, numpy as np
    from satseg.io.volume import Volume
    from satseg.outputs import write_multilabel, write_probability

    scan, target, kind = sys.argv[1:4]
    image = nib.load(scan)
    volume = Volume(np.asarray(image.dataobj), image.affine, image.header)
    rng = np.random.default_rng(1)
    # The OS refuses to grow any file past 64 KiB: the write fails midway with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    if kind == "probability":
        write_probability(rng.random(volume.shape), volume, target)
    else:
        noise = rng.integers(0, 4, volume.shape)
        write_multilabel({f"s{v}": noise == v for v in (1, 2, 3)}, volume, target)
    """
)


def _run_failing_write(scan: Path, target: Path, kind: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _FAIL_MIDWAY, str(scan), str(target), kind], capture_output=True, text=True, timeout=120
    )


def test_a_mask_write_failing_midway_leaves_the_earlier_file_and_no_partial_file(
    reference_files, ct, ct_labels, tmp_path
):
    target = tmp_path / "spleen.nii.gz"
    write_mask(ct_labels == SPLEEN, ct, target)
    before = target.read_bytes()

    result = _run_failing_write(reference_files / "example_ct_sm.nii.gz", target, "probability")

    assert result.returncode != 0
    assert "File too large" in result.stderr
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["spleen.nii.gz"]


def test_a_multilabel_write_failing_midway_keeps_the_earlier_image_and_legend(reference_files, ct, ct_labels, tmp_path):
    target = tmp_path / "labels.nii.gz"
    write_multilabel({"spleen": ct_labels == SPLEEN}, ct, target)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"labels.nii.gz", "labels.json"}

    result = _run_failing_write(reference_files / "example_ct_sm.nii.gz", target, "multilabel")

    assert result.returncode != 0
    assert "File too large" in result.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_rename_onto_a_folder_fails_without_leaving_a_temporary_file(ct, ct_labels, tmp_path):
    (tmp_path / "spleen.nii.gz").mkdir()
    with pytest.raises(OSError):
        write_mask(ct_labels == SPLEEN, ct, tmp_path / "spleen.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["spleen.nii.gz"]
    assert os.listdir(tmp_path / "spleen.nii.gz") == []


def test_atomic_writes_get_the_usual_file_permissions(tmp_path):
    import os
    import stat

    from satseg.io.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
