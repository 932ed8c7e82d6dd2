"""A sheared (gantry-tilted) grid goes to the model grid and back through its shear, not as if it were straight.

The scan is a ball defined in world coordinates, sampled on a grid whose slice axis leans off the normal of its rows
and columns (a gantry tilt). On the model grid the ball must be where it is in the world, round, and a mask made
there must come back onto the sheared grid as the ball. Stacked straight, the same voxels would put the ball's slices
k × gap × tan(tilt) aside: the checks below fail for that by millimetres. And what the model sees is what SAT's own
preprocessing (MONAI ``Orientationd`` + ``Spacingd``, which the official code runs) makes of the same sheared NIfTI,
value for value.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from satseg.errors import InputError
from satseg.geometry import to_model_grid
from satseg.io import read_volume
from satseg.io.nifti_write import nifti_like
from satseg.io.volume import Volume

CENTRE = np.array([5.0, 10.0, 15.0])
RADIUS = 18.0


def tilted_affine(degrees: float) -> np.ndarray:
    """0.8 mm pixels whose columns are rotated ``degrees`` about x, slices 2.5 mm apart along z (the table's
    motion): the slice axis leans ``degrees`` off the slice normal."""
    t = np.radians(degrees)
    return np.array([[-0.8, 0, 0, 60.0], [0, 0.8 * np.cos(t), 0, -40.0], [0, -0.8 * np.sin(t), 2.5, -30.0],
                     [0, 0, 0, 1]])


def ball_on(affine: np.ndarray, shape=(120, 110, 40)) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ index + affine[:3, 3:]
    return (np.linalg.norm(world - CENTRE[:, None], axis=0) <= RADIUS).reshape(shape)


def world_of(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return (affine[:3, :3] @ np.argwhere(mask).T + affine[:3, 3:]).T


@pytest.mark.parametrize("degrees", [15.0, -25.0])
def test_a_ball_on_a_sheared_grid_is_round_and_in_place_on_the_model_grid_and_back(degrees):
    affine = tilted_affine(degrees)
    ball = ball_on(affine)
    volume = Volume(array=ball.astype(np.float32) * 1000 + 1, affine=affine)  # > 0 everywhere: no crop
    raw, record = to_model_grid(volume)
    np.testing.assert_allclose(np.linalg.norm(record.affine[:3, :3], axis=0), (1, 1, 3), atol=1e-9)
    cosines = record.affine[:3, :3] / np.array([1.0, 1.0, 3.0])
    np.testing.assert_allclose(cosines.T @ cosines, np.eye(3), atol=1e-9)  # the model grid is orthonormal
    inside = world_of(raw > 500, record.affine)
    np.testing.assert_allclose(inside.mean(axis=0), CENTRE, atol=0.3)
    distance = np.linalg.norm(inside - CENTRE, axis=1)
    assert distance.max() <= RADIUS + 1.0

    back = record.to_input_grid((raw > 500).astype(np.float32), threshold=0.5)
    dice = 2 * np.sum(back & ball) / (back.sum() + ball.sum())
    assert dice >= 0.95, dice
    # The same voxels on a straight grid (the shear dropped) are another ball: far from the truth.
    # The slice axis made perpendicular to the rotated rows and columns (the shear dropped, as a reader that stacks
    # slices straight would do):
    straight = affine.copy()
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    straight[:3, 2] = 2.5 * normal / np.linalg.norm(normal) * np.sign(normal[2])
    assert np.abs(world_of(ball, straight).mean(axis=0) - CENTRE).max() > 2.0


def test_torch_maps_on_a_sheared_grid_come_back_like_arrays():
    torch = pytest.importorskip("torch")
    affine = tilted_affine(12.0)
    volume = Volume(array=ball_on(affine).astype(np.float32) * 1000 + 1, affine=affine)
    raw, record = to_model_grid(volume, device="cpu")
    np.testing.assert_array_equal(raw, to_model_grid(volume)[0])  # the device path steps aside for a shear
    maps = np.random.default_rng(0).random((2, *record.shape), dtype=np.float32)
    np.testing.assert_array_equal(record.to_input_grid(torch.from_numpy(maps)), record.to_input_grid(maps))


def test_sheared_nifti_reads_with_a_warning_and_masks_keep_the_shear_in_the_sform_only(tmp_path, caplog):
    sitk = pytest.importorskip("SimpleITK")
    affine = tilted_affine(20.0)
    image = nib.Nifti1Image(np.zeros((30, 20, 10), np.int16), affine)
    image.header.set_qform(affine, code=1)  # as some tools write it: the nearest grid without shear, code 1
    nib.save(image, tmp_path / "tilted.nii.gz")
    volume = read_volume(tmp_path / "tilted.nii.gz")
    assert volume.meta["shear_deg"] == pytest.approx(20.0, abs=1e-4)
    assert any("sheared by 20°" in r.getMessage() for r in caplog.records)
    mask = nifti_like(np.ones(volume.shape, np.uint8), volume, intent=1002, description="mask")
    nib.save(mask, tmp_path / "mask.nii.gz")
    written = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    source = nib.load(tmp_path / "tilted.nii.gz").header
    assert int(source["qform_code"]) == 1
    assert int(written.header["qform_code"]) == 0
    assert int(written.header["sform_code"]) == int(source["sform_code"]) > 0
    # A reader that can only hold an orthonormal grid refuses the file rather than placing it straight.
    with pytest.raises(RuntimeError, match="orthonormal"):
        sitk.ReadImage(str(tmp_path / "mask.nii.gz"))


@pytest.mark.parametrize("where", ["in-plane", "steep"])
def test_shears_no_gantry_makes_are_still_refused(tmp_path, where):
    affine = np.eye(4)
    if where == "in-plane":
        affine[0, 1] = 0.3  # rows and columns not perpendicular
    else:
        affine[1, 2] = 1.5  # the slice axis leaning 56° off the normal
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), affine), tmp_path / "s.nii.gz")
    with pytest.raises(InputError, match="not orthonormal") as info:
        read_volume(tmp_path / "s.nii.gz")
    assert "gantry tilt" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("degrees", [15.0, -25.0])
def test_the_model_grid_of_a_sheared_nifti_is_monais_value_for_value(tmp_path, degrees):
    monai = pytest.importorskip("monai.transforms")
    affine = tilted_affine(degrees)
    rng = np.random.default_rng(0)
    array = ball_on(affine).astype(np.float32) * 1000 + rng.random((120, 110, 40), dtype=np.float32) * 50 + 1
    image = nib.Nifti1Image(array, affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(None, code=0)
    nib.save(image, tmp_path / "scan.nii.gz")
    keys = ["image"]
    pipeline = monai.Compose([monai.LoadImaged(keys=keys), monai.EnsureChannelFirstd(keys=keys),
                              monai.Orientationd(keys=keys, axcodes="RAS"),
                              monai.Spacingd(keys=keys, pixdim=(1, 1, 3), mode="bilinear")])
    theirs = pipeline({"image": str(tmp_path / "scan.nii.gz")})["image"]
    raw, record = to_model_grid(read_volume(tmp_path / "scan.nii.gz"))
    assert tuple(theirs.shape[1:]) == record.resampled_shape
    np.testing.assert_allclose(np.asarray(theirs.affine), record.resampled_affine, atol=1e-9)
    cropped = np.asarray(theirs[0])[tuple(slice(a, b) for a, b in zip(record.crop_start, record.crop_stop))]
    np.testing.assert_array_equal(cropped, raw)


@pytest.mark.parametrize("sform", ["registered", "float-noisy"])
def test_unsheared_scans_keep_their_qform_in_every_output(tmp_path, sform):
    # Only a sheared grid loses its qform: a registered sform 2 mm from the qform, or an sform with direction
    # cosines off by 5e-4 (within the reader's orthonormality tolerance) on a big grid, keep the input's qform and
    # codes in the masks, as before.
    qform = np.diag([0.8, 0.8, 2.0, 1.0])
    qform[:3, 3] = (-100, -90, -60)
    affine = qform.copy()
    if sform == "registered":
        affine[:3, 3] += (2.0, 0.0, 0.0)
    else:
        affine[0, 1] = 0.8 * 5e-4
    image = nib.Nifti1Image(np.zeros((512, 512, 4), np.int16), affine)
    image.header.set_qform(qform, code=1)
    image.header.set_sform(affine, code=2)
    nib.save(image, tmp_path / "scan.nii.gz")
    volume = read_volume(tmp_path / "scan.nii.gz")
    assert "shear_deg" not in volume.meta
    mask = nifti_like(np.zeros(volume.shape, np.uint8), volume, intent=1002, description="mask")
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (1, 2)
    np.testing.assert_allclose(mask.header.get_qform(), image.header.get_qform(), atol=1e-5)
