"""A PNG to check a result at a glance: axial, coronal and sagittal slices with the masks on top.

Display conventions, whatever the voxel order of the file (the scan is reoriented to RAS for display
only, with nibabel's orientation tools; nothing is resampled):

* radiological: axial and coronal views show the patient's right on the image's left, as if facing the
  patient; axial has anterior at the top, coronal and sagittal have superior at the top; sagittal has
  anterior on the left. Letters at the image edges (R/L, A/P, S/I) say so on the picture itself.
* pixels keep their physical aspect ratio (from the voxel spacing).
* the slices cross the centroid of all structures together (the scan's centre when all are empty).
* CT uses a soft-tissue window (width 400, level 40 HU); MR and PET the 0.5–99.5 percentile range.

Rendering uses matplotlib's Agg canvas directly: no display, no pyplot state, safe in threads and on
headless servers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from satseg.io.atomic import atomic_path
from satseg.io.volume import Volume

CT_WINDOW = (40.0 - 200.0, 40.0 + 200.0)  # level 40 HU, width 400 HU
PERCENTILES = (0.5, 99.5)
OVERLAY_ALPHA = 0.45

# view name → (RAS axis the slice is taken across, edge letters top, bottom, left, right)
_VIEWS = {
    "axial": (2, ("A", "P", "R", "L")),
    "coronal": (1, ("S", "I", "R", "L")),
    "sagittal": (0, ("S", "I", "A", "P")),
}


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorder and flip the axes of ``array`` (I, J, K) so they run R, A, S; return it and its spacing."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _flip) in enumerate(ornt):
        ras_spacing[int(target_axis)] = float(spacing[source_axis])
    return nio.apply_orientation(array, ornt), tuple(ras_spacing)  # type: ignore[return-value]


def display_slice(ras: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice of a RAS array as an image (rows top→bottom, columns left→right) in display orientation.

    For every view the in-plane axes run (first, second) = (R, A), (R, S) or (A, S); transposing puts the
    second axis on the rows, and reversing both puts A/S at the top and R/A on the left.
    """
    plane = np.take(ras, index, axis=axis)
    return plane.T[::-1, ::-1]


def intensity_window(array: np.ndarray, modality: str | None) -> tuple[float, float]:
    """Display range: the CT window for ``"ct"``, else the percentile range of the finite values."""
    if modality == "ct":
        return CT_WINDOW
    values = np.asarray(array, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, PERCENTILES)
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct colours, the same for the same ``n`` (tab10, tab20, then evenly spaced hues)."""
    from matplotlib import colormaps

    if n <= 20:
        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        return [tuple(cmap(i)[:3]) for i in range(n)]
    return [tuple(colormaps["hsv"](i / n)[:3]) for i in range(n)]


def write_preview(
    volume: Volume, masks: dict[str, np.ndarray], path: str | os.PathLike, *, modality: str | None = "ct"
) -> Path:
    """Render the three views with the masks overlaid and a legend, and write the PNG atomically.

    Args:
        volume: the input scan, array of shape (I, J, K).
        masks: output name → mask of shape (I, J, K); order sets colours and legend order.
        path: target ``.png``.
        modality: ``"ct"`` for the HU window; ``"mri"``, ``"mr"``, ``"pet"`` or ``None`` for percentiles.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if modality not in ("ct", "mri", "mr", "pet", None):
        raise ValueError(f"unknown modality {modality!r} (ct, mri, pet)")
    for name, mask in masks.items():
        if np.shape(mask) != volume.shape:
            raise ValueError(f"mask {name!r} has shape {np.shape(mask)}, expected {volume.shape}")
    image, spacing = to_ras(np.asarray(volume.array, dtype=np.float32), volume.affine)
    ras_masks = {name: to_ras(np.asarray(m) != 0, volume.affine)[0] for name, m in masks.items()}
    present = [m for m in ras_masks.values() if m.any()]
    if present:
        union = np.logical_or.reduce(present)
        centre = np.rint(np.argwhere(union).mean(axis=0)).astype(int)
    else:
        centre = np.array(image.shape) // 2
    vmin, vmax = intensity_window(volume.array, modality)
    colours = _colours(len(masks))

    fig = Figure(figsize=(13.5, 5.6), dpi=100, facecolor="black")
    axes = fig.subplots(1, 3)
    for ax, (view, (axis, letters)) in zip(axes, _VIEWS.items()):
        plane = display_slice(image, axis, int(centre[axis]))
        row_mm, col_mm = [spacing[a] for a in (0, 1, 2) if a != axis][::-1]
        height, width = plane.shape[0] * row_mm, plane.shape[1] * col_mm
        extent = (0.0, width, height, 0.0)
        ax.imshow(plane, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        for colour, mask in zip(colours, ras_masks.values()):
            region = display_slice(mask, axis, int(centre[axis]))
            if not region.any():
                continue
            rgba = np.zeros(region.shape + (4,), dtype=np.float32)
            rgba[region] = (*colour, OVERLAY_ALPHA)
            ax.imshow(rgba, extent=extent, interpolation="nearest")
            ys = (np.arange(region.shape[0]) + 0.5) * row_mm
            xs = (np.arange(region.shape[1]) + 0.5) * col_mm
            ax.contour(xs, ys, region.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{view} (slice {int(centre[axis])})", color="white", fontsize=10)
        top, bottom, left, right = letters
        style = {"color": "yellow", "fontsize": 11, "fontweight": "bold"}
        ax.text(0.5, 0.99, top, transform=ax.transAxes, ha="center", va="top", **style)
        ax.text(0.5, 0.01, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
        ax.text(0.01, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
        ax.text(0.99, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)

    handles = [
        Patch(facecolor=colour, label=name if ras_masks[name].any() else f"{name} (absent)")
        for colour, name in zip(colours, ras_masks)
    ]
    if handles:
        columns = min(len(handles), 6)
        fig.legend(handles=handles, loc="lower center", ncol=columns, frameon=False, labelcolor="white")
        rows = -(-len(handles) // columns)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.04 + 0.05 * rows, wspace=0.03)
    fig.suptitle(f"{volume.name}  window {vmin:g}..{vmax:g}", color="white", fontsize=11)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return path
