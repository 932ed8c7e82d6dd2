"""The DICOM series a scan was read from, frame by frame, and where each frame's pixels are in the scan's voxels.

A DICOM-SEG or RTSTRUCT is written per source frame (a classic single-frame instance, or one frame of an enhanced /
legacy-converted multi-frame instance). For every frame this module computes, from its ImagePositionPatient,
ImageOrientationPatient and PixelSpacing (DICOM LPS mm), where its pixel (row, column) lies in the scan's voxel
index space (I, J, K) through the scan's RAS affine, and requires that to be an exact integer map: one row step and
one column step are each one voxel step along a scan axis (±), and the frame's first pixel is on a voxel centre. So
any slice order, LPS/RAS storage, oblique orientation and multi-frame layout is placed right by construction, and a
grid that does not match (another series, a resampled scan, a gantry tilt the reader did not account for) is refused
with one line instead of being written misplaced.

Tolerances: the row/column steps within :data:`STEP_TOL` voxel (over 512 pixels that is still under 0.5 voxel), the
first pixel within :data:`IN_PLANE_TOL` voxel in the plane; along the slice axis a frame may be off its grid position
by what the reader accepts as even spacing (:data:`satseg.io.dicom_geometry.SLICE_GAP_TOL_MM`, at most 0.45 voxel):
the reader stacked such a slice at that grid position, so the masks of that voxel slab are its masks.
"""

from __future__ import annotations

import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io.dicom_geometry import SLICE_GAP_TOL_MM, _Slice, _slices_of
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

STEP_TOL = 1e-3  # voxel, per pixel step
IN_PLANE_TOL = 1e-2  # voxel, the frame's first pixel in the plane
MAX_SLICE_OFF = 0.45  # voxel, along the slice axis at most (a slice the reader accepted)
_RAS = np.diag([-1.0, -1.0, 1.0])  # LPS ↔ RAS


@dataclass(frozen=True)
class SourceFrame:
    """One 2D frame of the source series and the voxel slab of the scan it covers.

    Pixel (r, c) of the frame is voxel ``origin + r * row_step + c * col_step`` of the scan, where ``row_step`` and
    ``col_step`` are ± unit vectors along two different scan axes (``row_step``: one row down, i.e. along the
    column direction cosine).
    """

    instance: int  # index into SourceSeries.datasets
    frame: int | None  # 0-based frame of a multi-frame instance; None for a single-frame instance
    position: np.ndarray  # ImagePositionPatient, LPS mm (3,)
    orientation: np.ndarray  # ImageOrientationPatient: row then column cosines (6,)
    spacing: np.ndarray  # PixelSpacing: (between rows, between columns) mm
    size: tuple[int, int]  # (Rows, Columns)
    origin: tuple[int, int, int]  # scan voxel of pixel (0, 0)
    row_step: tuple[int, int, int]
    col_step: tuple[int, int, int]

    def slab(self, array: np.ndarray) -> np.ndarray:
        """The frame's pixels taken from ``array`` (shape (I, J, K), the scan's grid): a (Rows, Columns) view."""
        index: list = [None, None, None]
        row_axis, col_axis = _axis(self.row_step), _axis(self.col_step)
        slice_axis = 3 - row_axis - col_axis
        index[slice_axis] = self.origin[slice_axis]
        for axis, step, n in ((row_axis, self.row_step, self.size[0]), (col_axis, self.col_step, self.size[1])):
            start, sign = self.origin[axis], step[axis]
            stop = start + sign * n
            index[axis] = slice(start, None if stop < 0 else stop, sign)
        view = array[tuple(index)]
        return view if row_axis < col_axis else view.T

    def patient_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Pixel coordinates (fractional allowed) → patient coordinates (LPS mm), shape (n, 3)."""
        row_cos, col_cos = self.orientation[:3], self.orientation[3:]
        return (self.position[None, :] + np.outer(np.asarray(cols, float) * self.spacing[1], row_cos)
                + np.outer(np.asarray(rows, float) * self.spacing[0], col_cos))


@dataclass
class SourceSeries:
    """The source series' instances (headers only, no pixel data) and its frames mapped onto the scan."""

    datasets: list  # pydicom Datasets read with stop_before_pixels, one per instance (file)
    frames: list[SourceFrame]  # every frame of every instance, in instance then frame order
    series_uid: str

    @property
    def multiframe(self) -> bool:
        return any(f.frame is not None for f in self.frames)


def source_series(volume: Volume, source: str | Path | None = None) -> SourceSeries:
    """The DICOM series ``volume`` was read from, with each frame mapped onto ``volume``'s grid.

    Args:
        volume: a scan read by :func:`satseg.io.read_volume` from DICOM (``meta["format"] == "dicom"``).
        source: the folder / ``.zip`` / file to read the series from, when not ``volume.source`` (e.g. a
            temporary download).

    Raises:
        InputError: the scan did not come from DICOM, the series cannot be found, or a frame does not map onto
            the scan's voxels exactly.
    """
    if volume.meta.get("format") != "dicom" and source is None:
        raise InputError(f"{volume.name}: DICOM outputs need a scan read from DICOM (this one is "
                         f"{volume.meta.get('format') or 'not DICOM'}); give the DICOM series, or --reference-series")
    path = Path(source if source is not None else volume.source or "")
    return _read_series(path, volume.meta.get("series_uid"), volume)


def check_reference_series(volume: Volume, folder: str | Path, *, series: str | None = None) -> SourceSeries:
    """``--reference-series``: the series a NIfTI (or any non-DICOM) scan was made from, checked to be its grid.

    The scan's grid must be the series' voxels in some axis order: the same number of frames and pixels, every
    frame on a voxel slab of the scan (same spacing, orientation and position within the tolerances above).

    Args:
        volume: the scan (shape (I, J, K), RAS affine), e.g. a NIfTI made from the series.
        folder: the series (a folder, ``.zip`` or one file of it).
        series: SeriesInstanceUID when the folder holds several series (else the largest).

    Raises:
        InputError: the series cannot be read, or one line naming what differs (size, spacing, orientation,
            position).
    """
    return _read_series(Path(folder), series, volume, reference=True)


def _read_series(path: Path, series_uid: str | None, volume: Volume, reference: bool = False) -> SourceSeries:
    if not path.exists():
        raise InputError(f"{path}: the DICOM series is no longer there (no such file or folder)")
    if path.is_dir():
        return _from_folder(path, series_uid, volume, path.name, reference)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="satseg-source-") as tmp:
            archive.extractall(tmp)
            return _from_folder(Path(tmp), series_uid, volume, path.name, reference)
    if series_uid is None:
        import pydicom

        series_uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))
    return _from_folder(path.parent, series_uid, volume, path.name, reference)


def _from_folder(folder: Path, series_uid: str | None, volume: Volume, where: str, reference: bool) -> SourceSeries:
    from satseg.io.dicom import _choose_series, _scan_series

    groups = _scan_series(folder, where)
    if not groups:
        raise InputError(f"{where}: no DICOM images found")
    uid = _choose_series(groups, series_uid, where)
    headers = groups[uid]
    datasets, frames = [], []
    for number, (file, header) in enumerate(headers):
        datasets.append(header)
        for s in _slices_of(file, header, folder, where):
            frames.append(_map_frame(s, number, volume, where, uid))
    _check_coverage(frames, volume, where, uid, reference)
    log.debug("%s: %d frames of series %s mapped onto the scan", where, len(frames), uid)
    return SourceSeries(datasets=datasets, frames=frames, series_uid=uid)


def _map_frame(s: _Slice, instance: int, volume: Volume, where: str, uid: str) -> SourceFrame:
    """Where frame ``s``'s pixels lie in ``volume``'s voxels; refused unless an exact integer map."""
    to_index = np.linalg.inv(np.asarray(volume.affine, float))
    row_cos, col_cos = s.orientation[:3], s.orientation[3:]

    def index_of(lps: np.ndarray) -> np.ndarray:
        return to_index[:3, :3] @ (_RAS @ lps) + to_index[:3, 3]

    first = index_of(s.position)
    row_step = to_index[:3, :3] @ (_RAS @ (col_cos * s.spacing[0]))  # one row down
    col_step = to_index[:3, :3] @ (_RAS @ (row_cos * s.spacing[1]))  # one column right
    label = f"{where}: series {uid}: {s.name}"
    steps = []
    for step, what in ((row_step, "row"), (col_step, "column")):
        unit = np.rint(step)
        if np.abs(step - unit).max() > STEP_TOL or np.abs(unit).sum() != 1:
            raise InputError(f"{label}: its {what} direction and pixel spacing "
                             f"({_mm(s.spacing[0 if what == 'row' else 1])} mm) are not a voxel step of the scan "
                             f"(voxel size {_mm_list(volume.spacing_mm)} mm, one step is {_fmt(step)} voxels): the "
                             "scan's grid is not this series'")
        steps.append(tuple(int(v) for v in unit))
    if _axis(steps[0]) == _axis(steps[1]):
        raise InputError(f"{label}: rows and columns run along the same scan axis: not this series' grid")
    slice_axis = 3 - _axis(steps[0]) - _axis(steps[1])
    origin = np.rint(first)
    off = np.abs(first - origin)
    # the far corner too: small step errors add up over a frame's width
    corner = first + (s.size[0] - 1) * row_step + (s.size[1] - 1) * col_step
    corner_off = np.abs(corner - (origin + (s.size[0] - 1) * np.array(steps[0]) + (s.size[1] - 1) * np.array(steps[1])))
    off = np.maximum(off, corner_off)
    in_plane = max(off[_axis(steps[0])], off[_axis(steps[1])])
    slice_limit = min(MAX_SLICE_OFF, SLICE_GAP_TOL_MM / volume.spacing_mm[slice_axis])
    if in_plane > IN_PLANE_TOL or off[slice_axis] > slice_limit:
        tilt = "; a gantry-tilted series (sheared slice positions)?" if in_plane > IN_PLANE_TOL else ""
        raise InputError(f"{label}: its first pixel lies {float(max(off)):.2f} voxel off the scan's grid (at voxel "
                         f"{_fmt(first)}): the scan's grid is not this series'{tilt}")
    return SourceFrame(instance=instance, frame=s.frame, position=s.position, orientation=s.orientation,
                       spacing=s.spacing, size=s.size, origin=tuple(int(v) for v in origin),
                       row_step=steps[0], col_step=steps[1])


def _check_coverage(frames: list[SourceFrame], volume: Volume, where: str, uid: str, reference: bool) -> None:
    """Every frame inside the scan, and the frames together are the scan: one frame per slab along one axis."""
    shape = volume.shape
    axes = {3 - _axis(f.row_step) - _axis(f.col_step) for f in frames}
    n_pixels = frames[0].size
    what = "the reference series" if reference else "the source series"
    if len(axes) != 1:
        raise InputError(f"{where}: series {uid}: its frames lie along different scan axes: not one stack")
    slice_axis = axes.pop()
    in_plane = tuple(shape[a] for a in range(3) if a != slice_axis)
    row_axis = _axis(frames[0].row_step)
    frame_plane = n_pixels if row_axis < _axis(frames[0].col_step) else n_pixels[::-1]
    if len(frames) != shape[slice_axis] or frame_plane != in_plane:
        raise InputError(f"{where}: {what} {uid} has {len(frames)} frames of {n_pixels[0]}×{n_pixels[1]} pixels; "
                         f"the scan is {shape[0]}×{shape[1]}×{shape[2]} voxels: not the same grid")
    positions = sorted(f.origin[slice_axis] for f in frames)
    if positions != list(range(shape[slice_axis])):
        raise InputError(f"{where}: {what} {uid}: its frames do not cover the scan's slices 0..{shape[slice_axis] - 1} "
                         "once each (shifted or repeated positions): not the same grid")
    for f in frames:
        for axis, step, n in ((_axis(f.row_step), f.row_step, f.size[0]), (_axis(f.col_step), f.col_step, f.size[1])):
            end = f.origin[axis] + step[axis] * (n - 1)
            if min(f.origin[axis], end) < 0 or max(f.origin[axis], end) >= shape[axis]:
                raise InputError(f"{where}: {what} {uid}: a frame reaches outside the scan (voxels "
                                 f"{f.origin[axis]}..{end} along axis {axis} of {shape[axis]}): not the same grid")


def _axis(step) -> int:
    return int(np.flatnonzero(np.asarray(step))[0])


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


def _mm(value: float) -> str:
    return f"{float(value):.4g}"


def _mm_list(values) -> str:
    return "×".join(_mm(v) for v in values)

