"""DICOM series (a folder, a ``.zip`` of one, or one DICOM file of the series) → :class:`Volume`.

Series choice: ``series=UID`` reads that series; otherwise the series with the most image files, and when several
series tie for the most the choice is ambiguous and an :class:`InputError` lists their UIDs.

What is read, like dcm2niix reads it (or refused, with a one-line reason naming the file, where dcm2niix would only
warn):

- Geometry: every slice must say where it is (ImagePositionPatient, ImageOrientationPatient, PixelSpacing); a slice
  without position or orientation is refused ("cannot place the voxels in space"), never stacked at a guessed place.
- Malformed tags (a value of the wrong length or VR, text where a number belongs, a truncated file) are refused
  naming the file, the tag and the problem.
- Slice positions, projected on the slice normal, must be evenly spaced: a gap that differs from the series' spacing
  (the median gap) by more than 0.2 mm (dcm2niix's tolerance; half the spacing for slices thinner than 0.4 mm) is
  refused with the gap it found, e.g. a missing slice. dcm2niix writes such a series with a warning (and an
  equidistant ``_Eq`` copy); a NIfTI grid has one slice spacing, so reading it would put every slice past the gap
  at the wrong place, and resampling would invent a slice. Two slices at the same position (a 4D series or a
  duplicate file) are refused too.
- Enhanced and legacy-converted multi-frame images: each frame is read with the position, orientation, pixel spacing
  and rescale (PixelValueTransformationSequence) of its Per-frame Functional Groups, or of the Shared ones, and the
  frames are converted exactly like the slices of a classic series (the same voxels and affine as the classic
  series they were made from).
- Stored values are converted with RescaleSlope / RescaleIntercept per slice or frame (Hounsfield units for CT).
- The NIfTI header carries the affine as qform and sform with code 1 (scanner), as dcm2niix writes it; masks
  written on this grid copy it.

Conversion: dicom2nifti (voxel order and affine as its LAS-reoriented NIfTI, the same as
``dicom2nifti.convert_directory``), then SimpleITK's GDCM series reader if dicom2nifti cannot convert a classic
series. JPEG 2000 and other compressed transfer syntaxes decode through pydicom's pylibjpeg plugins.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io.volume import Volume

log = logging.getLogger(__name__)

MODALITIES = {"CT": "ct", "MR": "mri", "PT": "pet"}
# Slice positions count as evenly spaced when every gap is within this of the median gap (dcm2niix's tolerance for
# "interslice distance varies"); for slices thinner than twice this, half the spacing is used instead.
SLICE_GAP_TOL_MM = 0.2
# Two slices closer than this along the slice normal are at the same position.
SAME_POSITION_MM = 0.01
SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: the qform and sform code dcm2niix writes for DICOM
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


def read_dicom(path: Path, *, series: str | None = None, volume: int | None = None) -> Volume:
    """Read one series from a DICOM folder, a ``.zip`` or one DICOM file of the series (see module doc)."""
    path = Path(path)
    if volume not in (None, 0):
        raise InputError(f"{path.name}: --volume applies to 4D NIfTI/NRRD/MetaImage scans, not DICOM series")
    if path.is_dir():
        return _read_folder(path, series, source=path)
    if path.name.lower().endswith(".zip") and not zipfile.is_zipfile(path):
        raise InputError(f"{path.name}: not a readable .zip archive")
    if not zipfile.is_zipfile(path):  # one file of the series: read the series it belongs to
        return _read_folder(path.parent, series or _series_uid_of(path), source=path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path.name}: not a readable .zip archive ({exc})") from exc
    with archive, tempfile.TemporaryDirectory(prefix="satseg-dicom-") as tmp:
        try:
            archive.extractall(tmp)  # member names are sanitised by zipfile (no absolute paths, no '..')
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{path.name}: cannot extract the archive ({exc})") from exc
        return _read_folder(Path(tmp), series, source=path)


def _read_folder(folder: Path, series: str | None, source: Path) -> Volume:
    where = source.name
    groups = _scan_series(folder, where)
    if not groups:
        raise InputError(f"{where}: no DICOM images found")
    uid = _choose_series(groups, series, where)
    headers = groups[uid]
    # Geometry first, from the headers: a series that cannot be stacked is refused before any pixel is decoded.
    slices = [s for file, header in headers for s in _slices_of(file, header, folder, where)]
    _check_consistent(slices, uid, where)
    slices = _sorted_evenly_spaced(slices, where)
    datasets = _load_datasets(slices, where)
    multiframe = any(s.frame is not None for s in slices)
    first = headers[0][1]
    errors = []
    vol = None
    try:
        vol = _convert_dicom2nifti(datasets)
        converter = "dicom2nifti"
    except Exception as exc:  # noqa: BLE001 - dicom2nifti raises many types; SimpleITK gets a try next
        errors.append(f"dicom2nifti: {_one_line(exc)}")
        log.info("dicom2nifti could not convert series %s (%s); trying SimpleITK", uid, exc)
    if vol is None:
        if multiframe:  # GDCM's reader would not apply the functional groups' rescale: no second opinion
            raise InputError(f"{where}: cannot convert DICOM series {uid} ({errors[0]})")
        try:
            vol = _convert_sitk(folder, uid, [str(s.file) for s in slices])
            converter = "SimpleITK"
        except Exception as exc:  # noqa: BLE001
            errors.append(f"SimpleITK: {_one_line(exc)}")
            raise InputError(f"{where}: cannot convert DICOM series {uid} ({'; '.join(errors)})") from exc
    vol.header = _scanner_header(vol)
    vol.source = source
    vol.modality = MODALITIES.get(str(first.get("Modality", "")).upper())
    vol.meta.update(
        format="dicom", converter=converter, series_uid=uid, n_files=len(headers),
        dicom_modality=str(first.get("Modality", "")), series_description=str(first.get("SeriesDescription", "")),
    )
    if multiframe:
        vol.meta["n_frames"] = len(slices)
    return vol


def _scan_series(folder: Path, where: str) -> dict[str, list]:
    """{SeriesInstanceUID: [(file, header), ...]} for every DICOM image file under ``folder``.

    Files that are not DICOM (no 'DICM' marker) are skipped; a DICOM file whose header cannot be parsed is left out
    with a warning naming it (a slice missing inside the series is then refused by the even-spacing check)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list] = defaultdict(list)
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            file = Path(root) / name
            if not file.is_file():  # a FIFO or device would block or never end; a dangling link is nothing
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # invalid values are reported by the checks below
                    ds = pydicom.dcmread(file, stop_before_pixels=True)
            except InvalidDicomError:
                continue
            except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on damaged files
                # Left out with a warning: if it was a slice inside the series, the even-spacing check refuses the
                # series (naming the gap); a file of another series, or of none, does not stop the read.
                log.warning("%s: %s is a DICOM file whose header cannot be read; left out (%s)", where,
                            _relative(file, folder), _one_line(exc))
                continue
            if "SeriesInstanceUID" in ds and ("Rows" in ds or _is_image_storage(ds)):
                groups[str(ds.SeriesInstanceUID)].append((file, ds))
    return dict(groups)


def _is_image_storage(ds) -> bool:
    """Whether the file says it is an image (its SOP class is an '... Image Storage'), even if its header is damaged
    so far that Rows went missing."""
    from pydicom.uid import UID

    sop = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    sop = sop or ds.get("SOPClassUID")
    return bool(sop) and "Image Storage" in UID(str(sop)).name


def _choose_series(groups: dict[str, list], series: str | None, where: str) -> str:
    def describe(uid: str) -> str:
        ds = groups[uid][0][1]
        return f"{uid or '<empty UID>'} ({ds.get('Modality', '?')}, {len(groups[uid])} files)"

    if series is not None:
        if series not in groups:
            raise InputError(f"{where}: no series {series}; available: {', '.join(describe(u) for u in groups)}")
        return series
    sizes = {uid: len(items) for uid, items in groups.items()}
    largest = max(sizes.values())
    best = [uid for uid, n in sizes.items() if n == largest]
    if len(best) > 1:
        raise InputError(
            f"{where}: {len(groups)} series, {len(best)} of them equally large; pick one with --series UID: "
            + ", ".join(describe(u) for u in best)
        )
    if len(groups) > 1:
        log.warning("%s: %d series found; reading the largest, %s (choose with --series)", where, len(groups),
                    describe(best[0]))
    return best[0]


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
    """``slices`` sorted along the slice normal; refused when two share a position or the gaps are uneven (see the
    module doc)."""
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


# --- pixel data and conversion --------------------------------------------------------------------------------------


def _load_datasets(slices: list[_Slice], where: str) -> list:
    """One single-frame pydicom data set per slice, in ``slices`` order, ready for the converter: the file's own
    data set for a classic image, a classic data set made from the frame for a multi-frame image."""
    loaded: dict[Path, object] = {}
    frames: dict[Path, np.ndarray] = {}
    datasets = []
    for number, s in enumerate(slices, start=1):
        if s.file not in loaded:
            loaded[s.file] = _read_pixels(s.file, s.file_name, where)
        ds = loaded[s.file]
        if s.frame is None:
            datasets.append(ds)
            continue
        if s.file not in frames:
            frames[s.file] = _decoded_frames(ds, s, where)
        datasets.append(_frame_dataset(ds, frames[s.file][s.frame], s, number))
    return datasets


def _read_pixels(file: Path, name: str, where: str):
    """The whole data set of ``file``; refused when its pixel data is missing or shorter than its header says."""
    import pydicom

    label = f"{where}: {name}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(file)
        except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on damaged files
            raise InputError(f"{label}: not a readable DICOM file ({_one_line(exc)})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        said = f" ({_one_line(caught[0].message)})" if caught else ""
        raise InputError(f"{label}: no pixel data: the file is truncated or damaged{said}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if "PixelData" in ds and syntax is not None and not syntax.is_compressed:
        frames = _count(ds, "NumberOfFrames", label) if "NumberOfFrames" in ds else 1
        samples, bits = _pixel_format(ds, label)
        rows, columns = _size(ds, label)
        expected = (rows * columns * samples * frames * bits + 7) // 8
        stored = len(ds.PixelData)
        if stored < expected:
            raise InputError(f"{label}: pixel data has {stored} bytes where {expected} are expected: the file is "
                             "truncated")
    return ds


def _decoded_frames(ds, s: _Slice, where: str) -> np.ndarray:
    """All frames of a multi-frame data set, shape (frames, rows, columns)."""
    label = f"{where}: {s.file_name}"
    try:
        frames = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types
        raise InputError(f"{label}: cannot decode the pixel data ({_one_line(exc)})") from exc
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = frames.reshape((n_frames, *frames.shape[-2:])) if frames.ndim == 2 else frames
    if frames.shape != (n_frames, *s.size) or frames.dtype.kind not in "iu":
        raise InputError(f"{label}: decoded pixel data of shape {frames.shape} ({frames.dtype}) does not match "
                         f"{n_frames} frames of {s.size[0]}×{s.size[1]} whole numbers")
    return frames


def _frame_dataset(source, pixels: np.ndarray, s: _Slice, number: int):
    """A classic single-frame data set holding one frame (decoded, little endian) and its geometry and rescale."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("Modality", "SeriesInstanceUID", "SeriesDescription", "PhotometricInterpretation"):
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = s.size
    pixels = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<"))
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8  # decoded values: every bit is stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.InstanceNumber = number  # the converter groups slices by instance number: keep the position order
    ds.ImagePositionPatient = [float(v) for v in s.position]
    ds.ImageOrientationPatient = [float(v) for v in s.orientation]
    ds.PixelSpacing = [float(v) for v in s.spacing]
    if s.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = s.rescale
    ds.PixelData = pixels.tobytes()
    return ds


def _convert_dicom2nifti(datasets: list) -> Volume:
    from dicom2nifti import convert_dicom

    with tempfile.TemporaryDirectory(prefix="satseg-d2n-") as tmp:
        result = convert_dicom.dicom_array_to_nifti(datasets, os.path.join(tmp, "series.nii"), reorient_nifti=True)
        img = result["NII"]
        data = _compact(np.array(img.dataobj))
        header = img.header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(None, None)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"converted series has shape {data.shape}")
    return Volume(array=data, affine=np.asarray(img.affine, dtype=np.float64), header=header, meta={})


def _convert_sitk(folder: Path, uid: str, files: list[str]) -> Volume:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(logging.getLogger("satseg").isEnabledFor(logging.DEBUG))

    from satseg.io.readers import itk_to_volume

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder), uid, False, True)
    reader.SetFileNames(list(names) or files)
    image = reader.Execute()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"series is {image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components")
    return itk_to_volume(sitk.GetArrayFromImage(image).transpose(2, 1, 0), image)


def _scanner_header(vol: Volume):
    """The converted volume's NIfTI header (a fresh one for SimpleITK's) with the affine as qform and sform, both
    with code 1 (scanner), as dcm2niix writes them."""
    import nibabel as nib

    header = vol.header if isinstance(vol.header, nib.Nifti1Header) else nib.Nifti1Header()
    if vol.header is None:
        header.set_xyzt_units("mm")
    header.set_data_shape(vol.array.shape)
    header.set_data_dtype(vol.array.dtype)
    header.set_qform(vol.affine, code=SCANNER)
    header.set_sform(vol.affine, code=SCANNER)
    return header


def _compact(data: np.ndarray) -> np.ndarray:
    """dicom2nifti returns float64; integral values that fit int16 are stored as int16 (a quarter of the memory)."""
    if data.dtype.kind == "f" and data.size:
        lo, hi = np.nanmin(data), np.nanmax(data)
        if -32768 <= lo and hi <= 32767 and np.array_equal(data, np.round(data)):
            return data.astype(np.int16)
        return data.astype(np.float32)
    return data


def _series_uid_of(file: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(file, stop_before_pixels=True).SeriesInstanceUID)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{file.name}: not a readable DICOM image ({_one_line(exc)})") from exc


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


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _one_line(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
