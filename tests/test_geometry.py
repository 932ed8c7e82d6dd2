"""Model-grid geometry: SAT/MONAI's orientation → 1×1×3 mm → foreground crop, and its exact inverse."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from satseg.errors import InputError
from satseg.geometry import to_model_grid
from satseg.io import Volume, read_volume

CT_ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def monai_shape(n: int, spacing_in: float, spacing_out: float) -> int:
    """MONAI Spacing (scale_extent=False): voxel centres span (n-1)·s_in; output centres every s_out."""
    return int(np.round((n - 1) * spacing_in / spacing_out + 1.0))


def smooth_volume(shape, affine, seed=0) -> Volume:
    """A positive blob in a negative background, smooth enough for linear interpolation to be meaningful."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    array = (1000.0 * np.exp(-3 * r2) - 300.0 + rng.normal(0, 5, shape)).astype(np.float32)
    return Volume(array=array, affine=np.asarray(affine, dtype=float))


def sagittal_affine(spacing=(0.9, 1.1, 4.0)) -> np.ndarray:
    """Axis 0 → anterior, axis 1 → inferior, axis 2 → left: a sagittal stack stored slice-last."""
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float) @ np.diag(spacing)
    affine[:3, 3] = [40.0, -12.5, 80.0]
    return affine


def oblique_affine(spacing=(0.8, 0.9, 2.5)) -> np.ndarray:
    a, b = np.deg2rad(12), np.deg2rad(-20)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = [-3.0, 7.0, 11.0]
    return affine


def test_real_ct_goes_to_a_ras_1x1x3_grid_with_monai_shape(reference_files):
    vol = read_volume(reference_files / "example_ct_sm.nii.gz")
    raw, record = to_model_grid(vol)
    assert record.resampled_shape == tuple(monai_shape(n, 3.0, s) for n, s in zip(vol.shape, (1, 1, 3)))
    assert nib.aff2axcodes(record.affine) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(record.affine[:3, :3], axis=0), [1, 1, 3])
    assert raw.dtype == np.float32 and raw.shape == record.shape
    # the grid starts on the input's first voxel centre (MONAI's corner-aligned offset)
    assert np.allclose(record.resampled_affine[:3, 3], vol.affine[:3, 3])


def test_lps_mr_is_flipped_to_ras_with_monai_shape(reference_files):
    vol = read_volume(reference_files / "example_mr_sm.nii.gz")
    raw, record = to_model_grid(vol)
    assert record.input_axcodes == "LPS"
    assert nib.aff2axcodes(record.affine) == ("R", "A", "S")
    assert record.resampled_shape == tuple(monai_shape(n, 3.0, s) for n, s in zip(vol.shape, (1, 1, 3)))


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.2), (0.5, 0.5, 1.5), (0.9765625, 0.9765625, 2.0)])
def test_resampled_shape_follows_monai_rule_for_odd_spacings(spacing):
    shape = (64, 57, 31)
    vol = smooth_volume(shape, np.diag([*spacing, 1.0]))
    _, record = to_model_grid(vol)
    assert record.resampled_shape == tuple(monai_shape(n, s, t) for n, s, t in zip(shape, spacing, (1, 1, 3)))


def test_exact_half_voxel_tie_rounds_as_monai_does():
    # 30 slices of 1.25 mm span 37.5 mm = 12.5 slices of 3 mm: MONAI 1.6.1 (Spacingd, checked by hand) gives 13,
    # because its floating-point extent lands just below the tie
    vol = smooth_volume((64, 57, 31), np.diag([0.7, 0.7, 1.25, 1.0]))
    _, record = to_model_grid(vol)
    assert record.resampled_shape == (45, 40, 13)


def test_sagittal_stack_is_permuted_before_resampling():
    shape, spacing = (40, 50, 12), (0.9, 1.1, 4.0)
    _, record = to_model_grid(smooth_volume(shape, sagittal_affine(spacing)))
    # RAS axis 0 (L→R) is input axis 2, axis 1 (P→A) input axis 0, axis 2 (I→S) input axis 1
    expected = (monai_shape(12, 4.0, 1.0), monai_shape(40, 0.9, 1.0), monai_shape(50, 1.1, 3.0))
    assert record.resampled_shape == expected
    _, asr = to_model_grid(smooth_volume(shape, sagittal_affine(spacing)), orientation="ASR")
    assert asr.resampled_shape == (monai_shape(40, 0.9, 1.0), monai_shape(50, 1.1, 1.0), monai_shape(12, 4.0, 3.0))
    assert nib.aff2axcodes(asr.affine) == ("A", "S", "R")


def test_oblique_scan_keeps_its_direction_cosines():
    affine = oblique_affine()
    _, record = to_model_grid(smooth_volume((30, 28, 16), affine))
    cosines = record.affine[:3, :3] / np.linalg.norm(record.affine[:3, :3], axis=0)
    assert np.allclose(cosines, affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0), atol=1e-12)


def test_spacing_within_monai_tolerance_is_not_resampled():
    vol = smooth_volume((20, 18, 10), np.diag([1.0004, 0.9998, 3.0, 1.0]))
    raw, record = to_model_grid(vol)
    assert not record.interpolated
    box = tuple(slice(a, b) for a, b in zip(record.crop_start, record.crop_stop))
    np.testing.assert_array_equal(raw, vol.array[box])


def test_a_known_world_point_lands_on_its_model_voxel():
    # 2 mm in-plane and 3 mm slices: input voxel centres fall exactly on model-grid nodes
    affine = sagittal_affine(spacing=(2.0, 3.0, 2.0))
    array = np.full((20, 16, 18), -100.0, dtype=np.float32)
    index = np.array([7, 5, 11])
    array[tuple(index)] = 900.0
    array[2:18, 2:14, 2:16] += 101.0  # a positive body so the crop box is known to hold the point
    raw, record = to_model_grid(Volume(array=array, affine=affine))
    world = affine @ np.append(index, 1.0)
    model_index = np.linalg.solve(record.affine, world)[:3]
    assert np.allclose(model_index, np.round(model_index), atol=1e-9)
    assert raw[tuple(np.round(model_index).astype(int))] == pytest.approx(1001.0)
    assert np.unravel_index(np.argmax(raw), raw.shape) == tuple(np.round(model_index).astype(int))


def test_crop_box_is_the_tight_box_of_positive_voxels(reference_files):
    raw, record = to_model_grid(read_volume(reference_files / "example_ct_sm.nii.gz"))
    for axis in range(3):
        first, last = np.take(raw, 0, axis=axis), np.take(raw, -1, axis=axis)
        assert first.max() > 0 and last.max() > 0
    assert all(0 <= a < b <= n for a, b, n in zip(record.crop_start, record.crop_stop, record.resampled_shape))
    assert record.shape != record.resampled_shape  # air around the body was removed


def test_scan_without_positive_voxels_is_not_cropped():
    vol = Volume(array=np.full((10, 10, 6), -5.0, np.float32), affine=np.diag([2.0, 2.0, 3.0, 1.0]))
    raw, record = to_model_grid(vol)
    assert raw.shape == record.resampled_shape


@pytest.mark.parametrize("case", ["ct", "mr"])
def test_ground_truth_round_trip_keeps_organs(reference_files, case):
    image, seg = {"ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
                  "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")}[case]
    vol = read_volume(reference_files / image)
    labels = np.asanyarray(nib.load(reference_files / seg).dataobj)
    _, record = to_model_grid(vol)
    masks = np.stack([(labels == value).astype(np.float32) for value in CT_ORGANS.values()])
    forward = record.from_input_grid(masks, order="linear")
    assert forward.shape == (len(CT_ORGANS), *record.shape)
    back = record.to_input_grid(forward, order="linear")
    assert back.shape == masks.shape
    for name, mask, restored in zip(CT_ORGANS, masks, back):
        assert mask.sum() > 0
        assert dice(mask > 0.5, restored > 0.5) >= 0.98, name


@pytest.mark.parametrize("layout", ["ras", "lps", "sagittal", "sagittal-asr", "oblique"])
def test_image_comes_back_in_the_input_voxel_order(layout):
    affine = {
        "ras": np.diag([2.0, 2.0, 3.0, 1.0]),
        "lps": np.diag([-2.0, -2.0, 3.0, 1.0]),
        "sagittal": sagittal_affine(spacing=(2.0, 3.0, 2.0)),
        "sagittal-asr": sagittal_affine(spacing=(2.0, 1.0, 3.0)),
        "oblique": oblique_affine(spacing=(2.0, 2.0, 3.0)),
    }[layout]
    vol = smooth_volume((24, 20, 14), affine)
    raw, record = to_model_grid(vol, orientation="ASR" if layout.endswith("asr") else "RAS")
    back = record.to_input_grid(raw)
    assert back.shape == vol.shape and back.dtype == np.float32
    inside = back != 0
    assert inside.mean() > 0.1
    # away from the crop edges, the image survives the trip
    core = (vol.array > 50) & inside
    assert np.abs(back[core] - vol.array[core]).max() < 1.0


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("layout", ["lps", "sagittal", "oblique", "ct"])
def test_tensor_maps_come_back_exactly_like_arrays(layout, device, request):
    """The GPU's way back to the input grid (torch tensors, interpolated where they live) gives the numpy
    path's float32 values bit for bit, and the same masks when thresholded there."""
    import torch

    if layout == "ct":
        vol = read_volume(request.getfixturevalue("reference_files") / "example_ct_sm.nii.gz")
    else:
        vol = smooth_volume((24, 20, 14), {"lps": np.diag([-0.9, -1.3, 2.0, 1.0]), "sagittal": sagittal_affine(),
                                           "oblique": oblique_affine()}[layout])
    _, record = to_model_grid(vol)
    rng = np.random.default_rng(3)
    maps = rng.random((2, *record.shape), dtype=np.float32)
    expected = record.to_input_grid(maps)
    got = record.to_input_grid(torch.from_numpy(maps).to(device))
    assert got.dtype == np.float32 and got.shape == expected.shape == (2, *vol.shape)
    assert np.array_equal(got, expected)
    assert got[0].flags.f_contiguous and got[1].flags.f_contiguous  # NIfTI's order: written without a copy
    single = record.to_input_grid(torch.from_numpy(maps[1]).to(device), threshold=0.5)
    assert single.dtype == np.uint8 and single.shape == vol.shape and single.flags.f_contiguous
    assert np.array_equal(single, (expected[1] > 0.5).astype(np.uint8))
    assert 0 < single.mean() < 1
    assert np.array_equal(record.to_input_grid(maps[1], threshold=0.5), single)


@pytest.mark.parametrize("layout", ["ras", "lps", "sagittal", "sagittal-asr", "oblique", "ct"])
def test_arrays_come_back_fortran_ordered_and_masks_thresholded_as_they_are_interpolated(layout, request):
    """The CPU's way back: every map Fortran-ordered (NIfTI's order, written without a transposing copy),
    whatever the orientation, and ``threshold=`` gives exactly ``map > threshold``."""
    if layout == "ct":
        vol = read_volume(request.getfixturevalue("reference_files") / "example_ct_sm.nii.gz")
    else:
        vol = smooth_volume((24, 20, 14), {
            "ras": np.diag([0.9, 1.3, 2.0, 1.0]), "lps": np.diag([-0.9, -1.3, 2.0, 1.0]),
            "sagittal": sagittal_affine(), "sagittal-asr": sagittal_affine(), "oblique": oblique_affine()}[layout])
    _, record = to_model_grid(vol, orientation="ASR" if layout.endswith("asr") else "RAS")
    maps = np.random.default_rng(5).random((2, *record.shape), dtype=np.float32)
    back = record.to_input_grid(maps)
    assert back.shape == (2, *vol.shape) and all(back[n].flags.f_contiguous for n in range(2))
    for n in range(2):
        assert np.array_equal(back[n], record.to_input_grid(maps[n]))  # one map at a time: the same values
        mask = record.to_input_grid(maps[n], threshold=0.5)
        assert mask.dtype == np.uint8 and mask.flags.f_contiguous
        assert np.array_equal(mask, (back[n] > 0.5).astype(np.uint8)) and 0 < mask.mean() < 1
    labels = (maps > 0.5).astype(np.int16)
    assert np.array_equal(record.to_input_grid(labels, order="nearest", threshold=0),
                          (record.to_input_grid(labels, order="nearest") > 0).astype(np.uint8))


@pytest.mark.parametrize("tensor", [False, True])
def test_separable_interpolation_gives_the_same_values_in_every_memory_layout(tensor):
    import itertools

    import torch

    from satseg.geometry import _separable_linear

    rng = np.random.default_rng(2)
    data = rng.random((2, 9, 7, 5), dtype=np.float32)
    positions = [np.sort(rng.uniform(-1.5, n + 0.5, size=m)) for n, m in zip((9, 7, 5), (13, 11, 16))]
    positions[1][3] = positions[1][4]  # a repeated position
    source = torch.from_numpy(data) if tensor else data
    reference = np.asarray(_separable_linear(source, positions))
    assert reference.shape == (2, 13, 11, 16) and (reference == 0).any() and (reference > 0).any()
    for layout in itertools.permutations(range(3)):
        got = np.asarray(_separable_linear(source, positions, layout=layout))
        assert got.shape == (2, *(reference.shape[a + 1] for a in layout)) and got.flags.c_contiguous
        assert np.array_equal(got.transpose(0, *(layout.index(a) + 1 for a in range(3))), reference)


def test_values_outside_the_crop_box_are_zero(reference_files):
    vol = read_volume(reference_files / "example_ct_sm.nii.gz")
    _, record = to_model_grid(vol)
    back = record.to_input_grid(np.ones(record.shape, np.float32))
    # each input voxel's position on the model grid, from the affines alone
    grid = np.indices(vol.shape).reshape(3, -1)
    to_model = np.linalg.solve(record.affine, vol.affine)
    q = (to_model[:3, :3] @ grid + to_model[:3, 3:]).T
    shape = np.asarray(record.shape)
    well_inside = np.all((q >= 1) & (q <= shape - 2), axis=1)
    well_outside = np.any((q <= -1) | (q >= shape), axis=1)
    assert well_outside.any() and well_inside.any()
    assert np.all(back.reshape(-1)[well_inside] == 1.0)
    assert np.all(back.reshape(-1)[well_outside] == 0.0)


def test_nearest_order_keeps_label_values(reference_files):
    vol = read_volume(reference_files / "example_ct_sm.nii.gz")
    labels = np.asanyarray(nib.load(reference_files / "example_seg.nii.gz").dataobj)
    _, record = to_model_grid(vol)
    forward = record.from_input_grid(labels, order="nearest")
    assert forward.dtype == labels.dtype
    assert set(np.unique(forward)) <= set(np.unique(labels))
    back = record.to_input_grid(forward, order="nearest")
    assert back.dtype == labels.dtype and back.shape == labels.shape
    liver = CT_ORGANS["liver"]
    assert dice(labels == liver, back == liver) >= 0.98


def test_grid_record_serialises_to_json(reference_files):
    _, record = to_model_grid(read_volume(reference_files / "example_mr_sm.nii.gz"))
    data = json.loads(json.dumps(record.to_dict()))
    assert data["input_shape"] == list(record.input_shape)
    assert data["model_shape"] == list(record.shape)
    assert data["input_axcodes"] == "LPS" and data["orientation"] == "RAS"
    assert np.allclose(data["model_affine"], record.affine)


def test_arrays_of_the_wrong_shape_are_refused(reference_files):
    _, record = to_model_grid(read_volume(reference_files / "example_ct_sm.nii.gz"))
    with pytest.raises(ValueError, match="shape"):
        record.to_input_grid(np.zeros((3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="order"):
        record.to_input_grid(np.zeros(record.shape, np.float32), order="cubic")
    with pytest.raises(ValueError, match="threshold"):
        record.to_input_grid(np.zeros(record.shape, np.float32), threshold=-0.1)


@pytest.mark.parametrize("code", ["RAX", "RRS", "RA", "LPSI"])
def test_invalid_orientation_is_an_input_error(code):
    with pytest.raises(InputError, match="orientation"):
        to_model_grid(smooth_volume((8, 8, 8), np.eye(4)), orientation=code)


@pytest.mark.slow
def test_big_ct_preprocesses_in_seconds():
    import time

    array = np.full((512, 512, 300), -1024, dtype=np.int16, order="F")  # NIfTI data arrive Fortran-ordered
    array[60:450, 100:400, :] = 40
    vol = Volume(array=array, affine=np.diag([-0.7, -0.7, 1.0, 1.0]))
    start = time.perf_counter()
    raw, record = to_model_grid(vol)
    forward_s = time.perf_counter() - start
    start = time.perf_counter()
    back = record.to_input_grid(np.ones(record.shape, np.float32))
    inverse_s = time.perf_counter() - start
    assert raw.shape == record.shape and back.shape == vol.shape
    assert forward_s < 10 and inverse_s < 20, (forward_s, inverse_s)


def test_the_predictors_gpu_way_back_gives_the_cpu_masks_and_maps(reference_files):
    """input_grid.back_on_gpu (run here on a CPU tensor: the same torch code) against the numpy way."""
    import torch

    from satseg.inference.input_grid import back_on_gpu

    _, record = to_model_grid(read_volume(reference_files / "example_ct_sm.nii.gz"))
    prob = np.random.default_rng(5).random(record.shape, dtype=np.float32)
    mask, on_input = back_on_gpu(record, torch.from_numpy(prob), 0.5, True)
    expected = record.to_input_grid(prob)
    assert np.array_equal(on_input, expected)
    assert np.array_equal(mask, (expected > 0.5).astype(np.uint8)) and mask.dtype == np.uint8
    mask_only, none = back_on_gpu(record, torch.from_numpy(prob), 0.5, False)
    assert none is None and np.array_equal(mask_only, mask)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs CUDA"))])
@pytest.mark.parametrize("layout", ["lps", "sagittal", "oblique", "fortran-int16", "reversed-view", "ct", "mr"])
def test_resampling_on_a_torch_device_matches_scipy(layout, device, request):
    """The GPU's preprocessing (torch, float64, axis by axis) against scipy's: same grid and crop, values
    equal to float64 rounding."""
    if layout in ("ct", "mr"):
        name = {"ct": "example_ct_sm.nii.gz", "mr": "example_mr_sm.nii.gz"}[layout]
        vol = read_volume(request.getfixturevalue("reference_files") / name)
    elif layout == "reversed-view":  # negative strides (a flipped view), torch cannot take them as they are
        base = smooth_volume((22, 2, 12), np.diag([0.7, 0.8, 2.5, 1.0]))
        vol = Volume(array=base.array[:, ::-1, ::-1], affine=base.affine)
    elif layout == "fortran-int16":
        base = smooth_volume((30, 26, 12), np.diag([-0.7, 0.8, 2.5, 1.0]))
        vol = Volume(array=np.asfortranarray(base.array.astype(np.int16)), affine=base.affine)
    else:
        vol = smooth_volume((24, 20, 14), {"lps": np.diag([-0.9, -1.3, 2.0, 1.0]), "sagittal": sagittal_affine(),
                                           "oblique": oblique_affine()}[layout])
    expected, record = to_model_grid(vol)
    got, got_record = to_model_grid(vol, device=device)
    assert record.interpolated and got.dtype == np.float32
    assert got_record.to_dict() == record.to_dict()
    # float64 values equal to rounding; once stored as float32, at most one unit in the last place apart
    one_ulp = np.spacing(np.abs(expected).astype(np.float32)) + 1e-12 * max(1.0, float(np.abs(expected).max()))
    assert np.all(np.abs(got - expected) <= one_ulp)
    assert np.mean(got == expected) > 0.99
