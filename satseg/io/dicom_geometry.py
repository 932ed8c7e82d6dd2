"""Where each slice of a DICOM series is (position, orientation, pixel spacing, rescale), from its tags or from an
enhanced image's functional groups, and the check that the slices make one evenly spaced stack.

Every malformed or missing tag is refused with a one-line :class:`InputError` naming the file, the tag and the
problem (see :mod:`satseg.io.dicom` for what is read and why).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io._common import MAX_TILT_DEG, _fmt, _one_line

# Slice positions count as evenly spaced when every gap is within this of the median gap (dcm2niix's tolerance for
# "interslice distance varies"); for slices thinner than twice this, half the spacing is used instead.
SLICE_GAP_TOL_MM = 0.2
# Two slices closer than this along the slice normal are at the same position.
SAME_POSITION_MM = 0.01
# A stack is sheared (gantry tilt) when a slice lies off the line through the first slice along the slice normal by
# more than this angle, seen from the first slice: where dcm2niix v1.0.20220720 reports a gantry tilt and writes a
# tilt-corrected copy (1 - cos(angle) beyond float32's epsilon: from 0.033° on, not at 0.032°). dcm2niix from
# v1.0.20240202 reports tilts from 0.81° only (1 - cos(angle) > 1e-4, against a NaN from rounding); at 0.8° a
# 400 mm stack stacked straight would put its last slice 5.6 mm off, at 0.0325° 0.23 mm (about SLICE_GAP_TOL_MM).
TILT_TOL_DEG = 0.0325
# ... and by more than this distance in the slice plane (rounding of the positions' decimal strings): a slice 1 mm
# from the first may be 0.01 mm aside (0.6°) without a tilt being claimed.
TILT_ROUNDING_MM = 0.01
NO_GEOMETRY = "no slice position/orientation: cannot place the voxels in space"


@dataclass
class _Slice:
    """One 2D image of a series, from a classic file or one frame of a multi-frame file, with its geometry read."""

    file: Path
    file_name: str  # for messages: the file's path in the series folder
    frame: int | None  # the frame's index in a multi-frame file; None for a classic single-frame file
    size: tuple[int, int]  # (Rows, Columns)
    position: np.ndarray  # ImagePositionPatient: the centre of the first voxel, mm (DICOM LPS)
    orientation: np.ndarray  # ImageOrientationPatient: row then column direction cosines, 6 numbers
    spacing: np.ndarray  # PixelSpacing: (between rows, between columns), mm
    rescale: tuple[float, float] | None  # (slope, intercept) of the stored values, None when not given

    @property
    def name(self) -> str:
        """The slice in messages: its file, and the frame number (1-based, as in DICOM) for a frame."""
        return self.file_name if self.frame is None else f"{self.file_name} frame {self.frame + 1}"


# --- geometry and rescale of each slice, from the headers ----------------------------------------------------------


def _slices_of(file: Path, header, folder: Path, where: str) -> list[_Slice]:
    """The slices of one file: itself for a classic image, one per frame for an enhanced multi-frame image."""
    name = _relative(file, folder)
    if "PerFrameFunctionalGroupsSequence" in header or "SharedFunctionalGroupsSequence" in header:
        return _frames_of(file, header, name, where)
    label = f"{where}: {name}"
    n_frames = _numbers(header, "NumberOfFrames", 1, label)
    if n_frames is not None and n_frames[0] != 1:
        # a multi-frame image without functional groups (e.g. secondary capture) says nowhere where its frames are
        raise InputError(f"{label}: {NO_GEOMETRY} (a multi-frame image without functional groups)")
    # Tags in the order they appear in a file, so that a damaged header is reported at its first damaged tag.
    position = _geometry(header, "ImagePositionPatient", 3, label)
    orientation = _orientation(header, label)
    size = _size(header, label)
    _pixel_format(header, label)
    return [_Slice(file=file, file_name=name, frame=None, size=size, position=position, orientation=orientation,
                   spacing=_spacing(header, label), rescale=_rescale(header, label))]


def _frames_of(file: Path, header, name: str, where: str) -> list[_Slice]:
    """One :class:`_Slice` per frame of an enhanced / legacy-converted multi-frame image.

    Each attribute comes from the frame's Per-frame Functional Groups item, else from the Shared Functional Groups
    (PS3.3 C.7.6.16): PlanePositionSequence, PlaneOrientationSequence, PixelMeasuresSequence and
    PixelValueTransformationSequence; the rescale falls back to the top-level RescaleSlope / RescaleIntercept that
    some writers use, and is absent (stored values kept) when neither says anything.
    """
    label = f"{where}: {name}"
    n_frames = _count(header, "NumberOfFrames", label) if "NumberOfFrames" in header else 1
    if _pixel_format(header, label)[0] != 1:
        raise InputError(f"{label}: colour multi-frame images are not supported")
    shared = _first_item(header, "SharedFunctionalGroupsSequence", label)
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n_frames:
        raise InputError(f"{label}: {len(per_frame)} per-frame functional groups for {n_frames} frames")
    size = _size(header, label)
    slices = []
    for index in range(n_frames):
        frame_label = f"{where}: {name} frame {index + 1}"
        own = per_frame[index] if per_frame else None
        position, orientation, measures, values = (
            _functional_group(sequence, own, shared, frame_label)
            for sequence in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence",
                             "PixelValueTransformationSequence")
        )
        if position is None or orientation is None:
            missing = "PlanePositionSequence" if position is None else "PlaneOrientationSequence"
            raise InputError(f"{frame_label}: {NO_GEOMETRY} ({missing} missing)")
        if measures is None:
            raise InputError(f"{frame_label}: no pixel spacing (PixelMeasuresSequence missing)")
        slices.append(_Slice(file=file, file_name=name, frame=index, size=size,
                             position=_geometry(position, "ImagePositionPatient", 3, frame_label),
                             orientation=_orientation(orientation, frame_label),
                             spacing=_spacing(measures, frame_label),
                             rescale=_rescale(header if values is None else values, frame_label)))
    return slices


def _functional_group(sequence: str, per_frame, shared, label: str):
    """The item of functional group ``sequence`` that applies to a frame: its per-frame one, else the shared one."""
    for groups in (per_frame, shared):
        if groups is not None and sequence in groups:
            return _first_item(groups, sequence, label)
    return None


def _geometry(item, keyword: str, count: int, label: str) -> np.ndarray:
    numbers = _numbers(item, keyword, count, label)
    if numbers is None:
        raise InputError(f"{label}: {NO_GEOMETRY} ({keyword} missing)")
    return numbers


def _orientation(item, label: str) -> np.ndarray:
    cosines = _geometry(item, "ImageOrientationPatient", 6, label)
    row, col = cosines[:3], cosines[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2
            or abs(float(row @ col)) > 1e-2):
        raise InputError(f"{label}: {NO_GEOMETRY} (ImageOrientationPatient {_fmt(cosines)} is not two orthogonal "
                         "unit vectors)")
    return cosines


def _spacing(item, label: str) -> np.ndarray:
    spacing = _numbers(item, "PixelSpacing", 2, label)
    if spacing is None:
        raise InputError(f"{label}: no pixel spacing (PixelSpacing missing)")
    if np.any(spacing <= 0):
        raise InputError(f"{label}: PixelSpacing {_fmt(spacing)} is not positive")
    return spacing


def _size(item, label: str) -> tuple[int, int]:
    return _count(item, "Rows", label), _count(item, "Columns", label)


def _pixel_format(item, label: str) -> tuple[int, int]:
    """(SamplesPerPixel, BitsAllocated), checked along with BitsStored and PixelRepresentation: the converters read
    the pixel data with them."""
    samples = _count(item, "SamplesPerPixel", label) if "SamplesPerPixel" in item else 1
    bits = _count(item, "BitsAllocated", label)
    if _count(item, "BitsStored", label) > bits:
        raise _malformed(label, "BitsStored", f"{int(item.BitsStored)} is more than BitsAllocated ({bits})")
    representation = _numbers(item, "PixelRepresentation", 1, label)
    if representation is not None and representation[0] not in (0, 1):
        raise _malformed(label, "PixelRepresentation", f"{representation[0]:g} is neither 0 nor 1")
    return samples, bits


def _rescale(item, label: str) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) of ``item``; None when it has neither; refused when only one is given or
    the slope is 0 (the stored values could not be converted)."""
    slope = _numbers(item, "RescaleSlope", 1, label)
    intercept = _numbers(item, "RescaleIntercept", 1, label)
    if slope is None and intercept is None:
        return None
    if slope is None or intercept is None:
        missing = "RescaleSlope" if slope is None else "RescaleIntercept"
        raise InputError(f"{label}: {missing} missing from the rescale: cannot convert the stored values")
    if slope[0] == 0:
        raise InputError(f"{label}: RescaleSlope is 0: cannot convert the stored values")
    return float(slope[0]), float(intercept[0])


def _count(item, keyword: str, label: str) -> int:
    numbers = _numbers(item, keyword, 1, label)
    if numbers is None:
        raise InputError(f"{label}: {keyword} missing")
    if numbers[0] < 1 or numbers[0] != int(numbers[0]):
        raise _malformed(label, keyword, f"{numbers[0]:g} is not a positive whole number")
    return int(numbers[0])


def _numbers(item, keyword: str, count: int, label: str) -> np.ndarray | None:
    """The ``count`` finite numbers of ``keyword`` in ``item`` (a data set or a sequence item); None when the tag is
    absent or empty. A value of the wrong VR, length or content raises a one-line :class:`InputError`."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.multival import MultiValue

    if keyword not in item:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about invalid values; they are reported below
            element = item[keyword]
            value = element.value
    except Exception as exc:  # noqa: BLE001 - pydicom's value conversion raises many types
        raise _malformed(label, keyword, _one_line(exc)) from exc
    expected_vr = dictionary_VR(tag_for_keyword(keyword))
    if element.VR not in expected_vr.split(" or "):
        raise _malformed(label, keyword, f"VR {element.VR} where the standard says {expected_vr}")
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if value is None or value == "" or not values:
        return None
    if len(values) != count:
        raise _malformed(label, keyword, f"{len(values)} values where {count} {'is' if count == 1 else 'are'} "
                                         "expected")
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        shown = ascii("\\".join(str(v) for v in values))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise _malformed(label, keyword, f"{shown} is not {'a number' if count == 1 else f'{count} numbers'}"
                         ) from None
    if not np.all(np.isfinite(numbers)):
        raise _malformed(label, keyword, f"{_fmt(numbers)} is not finite")
    return numbers


def _malformed(label: str, keyword: str, problem: str) -> InputError:
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    return InputError(f"{label}: malformed DICOM tag {keyword} {Tag(tag_for_keyword(keyword))}: {problem}")


def _first_item(item, keyword: str, label: str):
    sequence = item.get(keyword)
    if sequence is None:
        return None
    if len(sequence) == 0:
        raise _malformed(label, keyword, "an empty sequence")
    return sequence[0]


# --- the slices must make one evenly spaced stack -------------------------------------------------------------------


def _check_consistent(slices: list[_Slice], uid: str, where: str) -> None:
    """One series must share image size, orientation and pixel spacing; otherwise it is a mix that cannot be
    stacked."""
    kinds = {(s.size, tuple(np.round(s.orientation, 3)), tuple(np.round(s.spacing, 4))) for s in slices}
    if len(kinds) > 1:
        raise InputError(f"{where}: series {uid} mixes images of different size, orientation or pixel spacing "
                         f"({len(kinds)} kinds)")


def _sorted_evenly_spaced(slices: list[_Slice], where: str) -> list[_Slice]:
    """``slices`` sorted along the slice normal; refused when two share a position or the gaps along the normal are
    uneven (see the module doc). A gantry tilt is measured apart (:func:`measure_tilt`)."""
    orientation = slices[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    distance = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(distance, kind="stable")
    slices, distance = [slices[i] for i in order], distance[order]
    if len(slices) < 2:
        return slices
    gaps = np.diff(distance)
    if np.any(gaps < SAME_POSITION_MM):
        i = int(np.argmax(gaps < SAME_POSITION_MM))
        raise InputError(
            f"{where}: slice positions repeat: {slices[i].name} and {slices[i + 1].name} are at the same position "
            f"({_mm(distance[i])} mm along the slice normal): a 4D series (time points, echoes) or a duplicate "
            "file; give one volume per series"
        )
    spacing = float(np.median(gaps))
    tolerance = min(SLICE_GAP_TOL_MM, spacing / 2)
    uneven = np.abs(gaps - spacing) > tolerance
    if np.any(uneven):
        i = int(np.argmax(uneven))
        why = "a missing slice?" if gaps[i] > spacing else "an extra or misplaced slice?"
        raise InputError(
            f"{where}: slice positions are uneven: gap of {_mm(gaps[i])} mm between slices {i + 1} and {i + 2} of "
            f"{len(slices)} ({slices[i].name}, {slices[i + 1].name}) where the spacing is {_mm(spacing)} mm ({why})"
        )
    return slices


@dataclass(frozen=True)
class Tilt:
    """A gantry-tilted stack (:func:`measure_tilt`): its angle, and where each slice (in stack order) would be if the
    stack were straight: the first slice's position moved along the slice normal by the slice's distance."""

    degrees: float
    straight: np.ndarray  # (slices, 3) mm, DICOM LPS


def measure_tilt(slices: list[_Slice], uid: str, where: str) -> Tilt | None:
    """The gantry tilt of a stack sorted along the normal, or ``None`` when its positions step along the normal.

    A CT acquired with a gantry tilt has slices rotated about the left-right axis while the table moves along the
    body axis: ImagePositionPatient steps by ``gap / cos(tilt)`` along the body axis, not along the slice normal
    (row cosine × column cosine), so the stack's grid is sheared: slice k lies ``k × gap × tan(tilt)`` aside in its
    plane from where a straight stack would put it (10 mm by slice 20 of a 2 mm series at 15°). Such a stack is read
    on that sheared grid (:func:`satseg.io.dicom_pixels.shear_affine`). The angle is measured like dcm2niix's
    estimate (the step from the first slice to each slice against the normal); a stack counts as tilted where
    dcm2niix v1.0.20220720 reports a tilt (:data:`TILT_TOL_DEG`, :data:`TILT_ROUNDING_MM`). GantryDetectorTilt
    (0018,1120) is not read: the standard calls it nominal, "not intended for mathematical computations", and tools
    that resample a tilted series do not always reset it.

    Raises:
        InputError: the slices do not all lean by the same angle (each slice's offset in the plane is not its
            distance along the normal times one vector, within :data:`SLICE_GAP_TOL_MM`), or the tilt is over
            :data:`~satseg.io._common.MAX_TILT_DEG`.
    """
    if len(slices) < 2:
        return None
    orientation = slices[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    normal = normal / np.linalg.norm(normal)
    offsets = np.array([s.position - slices[0].position for s in slices])  # (slices, 3) mm, from the first slice
    along = offsets @ normal  # (slices,) mm along the slice normal
    aside = offsets - along[:, None] * normal  # (slices, 3) mm in the slice plane
    allowed = np.maximum(TILT_ROUNDING_MM, np.abs(along) * np.tan(np.radians(TILT_TOL_DEG)))
    if not np.any(np.linalg.norm(aside, axis=1) > allowed):
        return None
    lean = (along @ aside) / (along @ along)  # (3,) mm aside per mm along the normal, fitted over the stack
    off = np.linalg.norm(aside - along[:, None] * lean, axis=1)
    degrees = float(np.degrees(np.arctan(np.linalg.norm(lean))))
    series = f"series {uid}" if uid else "the series"
    if off.max() > SLICE_GAP_TOL_MM:
        k = int(np.argmax(off))
        raise InputError(
            f"{where}: {series} is sheared unevenly: its slices lean {degrees:.3g}° off the slice normal on average "
            f"but {slices[k].name} lies {_mm(off[k])} mm aside from that line (a mix of tilts, or a misplaced slice); "
            "one gantry tilt per series is needed"
        )
    if degrees > MAX_TILT_DEG:
        raise InputError(f"{where}: {series} leans {degrees:.3g}° off the slice normal, more than a gantry tilt (at "
                         f"most {MAX_TILT_DEG:g}°): its slice positions do not make a stack")
    return Tilt(degrees=degrees, straight=slices[0].position + along[:, None] * normal)


def _relative(file: Path, folder: Path) -> str:
    """``file``'s path inside the series folder (a zip member's name), for messages."""
    try:
        return file.relative_to(folder).as_posix()
    except ValueError:
        return file.name


def _mm(value: float) -> str:
    """A distance for messages: 2 decimals at most, at least one (4.0, 2.25, 0.6)."""
    text = f"{float(value):.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
