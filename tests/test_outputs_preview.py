"""The preview PNG: a valid image, anatomy upright and radiological whatever the file's voxel order."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from satseg.io.volume import Volume
from satseg.outputs import write_preview
from satseg.outputs.preview import CT_WINDOW, display_slice, intensity_window, to_ras

SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, LIVER = 1, 2, 3, 5


def load(path: Path) -> tuple[Volume, np.ndarray]:
    image = nib.load(path)
    return Volume(np.asarray(image.dataobj), image.affine, image.header, source=path), image


@pytest.fixture(scope="module")
def ct_case(reference_files: Path):
    volume, _ = load(reference_files / "example_ct_sm.nii.gz")
    labels = np.asarray(nib.load(reference_files / "example_seg.nii.gz").dataobj)
    masks = {"spleen": labels == SPLEEN, "kidney_right": labels == KIDNEY_RIGHT, "liver": labels == LIVER}
    return volume, masks


def reordered(volume: Volume, masks: dict, ornt: np.ndarray) -> tuple[Volume, dict]:
    """The same scan stored in another voxel order (``ornt`` as in nibabel.orientations)."""
    import nibabel.orientations as nio

    transform = nio.inv_ornt_aff(ornt, volume.shape)
    array = nio.apply_orientation(volume.array, ornt)
    moved = Volume(array, volume.affine @ transform, None, source=volume.source)
    return moved, {k: nio.apply_orientation(m, ornt) for k, m in masks.items()}


def test_preview_is_a_valid_png_of_sensible_size(ct_case, tmp_path):
    volume, masks = ct_case
    out = write_preview(volume, masks, tmp_path / "preview.png", modality="ct")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert 800 <= width <= 3000 and 300 <= height <= 2000
    assert pixels.std() > 10  # not a blank canvas
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_preview_is_the_same_picture_whatever_the_voxel_order_of_the_file(ct_case, tmp_path):
    volume, masks = ct_case
    as_lps = reordered(volume, masks, np.array([[0, -1], [1, -1], [2, 1]]))  # RAS → LPS storage
    as_sal = reordered(volume, masks, np.array([[2, 1], [1, 1], [0, 1]]))  # axes permuted
    assert nib.aff2axcodes(as_lps[0].affine) == ("L", "P", "S")
    pictures = []
    for n, (vol, msk) in enumerate([(volume, masks), as_lps, as_sal]):
        out = write_preview(vol, msk, tmp_path / f"p{n}.png", modality="ct")
        with Image.open(out) as image:
            pictures.append(np.asarray(image.convert("RGB")))
    assert np.array_equal(pictures[0], pictures[1])
    assert np.array_equal(pictures[0], pictures[2])


def test_display_puts_patient_right_on_image_left_anterior_and_superior_on_top():
    # A RAS volume with markers at the patient's far right (x max), front (y max) and top (z max).
    ras = np.zeros((9, 11, 13))
    ras[8, 5, 6] = 1  # right
    ras[4, 10, 6] = 2  # anterior
    ras[4, 5, 12] = 3  # superior
    axial = display_slice(ras, 2, 6)
    coronal = display_slice(ras, 1, 5)
    sagittal = display_slice(ras, 0, 4)

    assert axial.shape == (11, 9)  # rows A→P, columns R→L
    assert np.argwhere(axial == 1)[0][1] == 0  # right on the left
    assert np.argwhere(axial == 2)[0][0] == 0  # anterior at the top
    assert np.argwhere(coronal == 1)[0][1] == 0  # right on the left
    assert np.argwhere(coronal == 3)[0][0] == 0  # superior at the top
    assert np.argwhere(sagittal == 2)[0][1] == 0  # anterior on the left
    assert np.argwhere(sagittal == 3)[0][0] == 0  # superior at the top


@pytest.mark.parametrize("scan, labels", [("example_ct_sm", "example_seg"), ("example_mr_sm", "example_seg_mr")])
def test_liver_shows_on_the_image_left_and_spleen_on_the_right_for_ras_and_lps_scans(reference_files, scan, labels):
    volume, _ = load(reference_files / f"{scan}.nii.gz")
    segmentation = np.asarray(nib.load(reference_files / f"{labels}.nii.gz").dataobj)
    liver, _ = to_ras(segmentation == LIVER, volume.affine)
    spleen, _ = to_ras(segmentation == SPLEEN, volume.affine)
    # Column of each organ in the axial projection: radiological display puts patient right (liver) left.
    liver_column = np.argwhere(display_slice(liver.any(axis=2, keepdims=True), 2, 0))[:, 1].mean()
    spleen_column = np.argwhere(display_slice(spleen.any(axis=2, keepdims=True), 2, 0))[:, 1].mean()
    assert liver_column < spleen_column


def test_to_ras_reports_the_spacing_of_the_reordered_axes():
    affine = np.array([[0, 0, -3.0, 0], [-1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # i→P, j→S, k→L
    array, spacing = to_ras(np.zeros((4, 5, 6)), affine)
    assert array.shape == (6, 4, 5)
    assert spacing == (3.0, 1.0, 2.0)


def test_ct_uses_the_soft_tissue_window_and_mr_the_percentile_range():
    values = np.arange(1000, dtype=float).reshape(10, 10, 10)
    assert intensity_window(values, "ct") == CT_WINDOW == (-160.0, 240.0)
    assert intensity_window(values, "mri") == pytest.approx(tuple(np.percentile(values, [0.5, 99.5])))


def test_preview_of_mr_with_an_absent_structure_renders_and_lists_it(reference_files, tmp_path):
    volume, _ = load(reference_files / "example_mr_sm.nii.gz")
    masks = {"liver": np.zeros(volume.shape, bool), "nothing": np.zeros(volume.shape, bool)}
    out = write_preview(volume, masks, tmp_path / "mr.png", modality="mri")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 800


def test_preview_with_an_unknown_modality_is_refused_before_writing(ct_case, tmp_path):
    volume, masks = ct_case
    with pytest.raises(ValueError, match="modality"):
        write_preview(volume, masks, tmp_path / "p.png", modality="xray")
    assert list(tmp_path.iterdir()) == []
