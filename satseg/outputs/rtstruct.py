"""RT Structure Set of satseg's masks, for treatment planning systems, written with pydicom.

One ROI per prompt with a non-empty mask (empty ones are left out and reported); per source frame (slice) and per
connected outline one CLOSED_PLANAR contour in patient coordinates (DICOM LPS mm), in that frame's own plane (its
ImagePositionPatient / ImageOrientationPatient / PixelSpacing: oblique series are contoured in their slices, not in
axial planes), referencing that frame's image. The mask of each frame is taken from the scan's grid through
:mod:`satseg.io.dicom_source`'s exact pixel → voxel map.

Contours: the marching-squares iso-line at 0.5 of the frame's mask (contourpy, matplotlib's own contour engine: no
new dependency), so the outline passes between pixel centres and never through one: a pixel belongs to the ROI
exactly when its centre is inside an odd number of the slice's contours. Holes and islands inside holes are
separate contours; planning systems combine nested contours by XOR (even-odd), as this requires. Collinear points
are dropped (the outline is unchanged).

ROI names (ROIName): the DICOM LO value allows 64 characters, but planning systems are stricter: Eclipse's
structure ID takes 16 characters, and AAPM TG-263 asks for at most 16 characters of letters, digits and ``_`` (no
spaces) for names to survive every system. So the prompt becomes a TG-263-style name: words joined by ``_``, first
letter capitalised, a leading side as suffix (``left kidney`` → ``Kidney_L``), cut to 16 characters and made unique
(``_2``, ``_3`` ...). The full prompt is kept in ROIDescription and the trained terms' SNOMED CT code in the RT ROI
Identification Code Sequence.

Why not rt_utils: it pulls OpenCV (a large binary wheel) for its contour tracer, its contours run through pixel
centres (a rasteriser then decides boundary pixels either way), and it has assumed axial slices (mishandling other
orientations); the writer here is plain pydicom plus contourpy, which satseg already has through matplotlib.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

from satseg.io.atomic import atomic_path
from satseg.io.dicom_source import SourceFrame, SourceSeries, source_series
from satseg.io.volume import Volume
from satseg.outputs.dicom_seg import LO_MAX, PALETTE, SegmentSpec, require_uids, segment_code_of_prompt
from satseg.vocabulary.codes import segment_code

log = logging.getLogger(__name__)

RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # the Referenced SOP Class of RTReferencedStudySequence (PS3.3)
SERIES_NUMBER = 9702
ROI_NAME_MAX = 16  # Eclipse structure IDs and AAPM TG-263


def write_rtstruct(path: str | os.PathLike, masks: dict[str, np.ndarray], volume: Volume,
                   segments: list[SegmentSpec], *, model_name: str, software_version: str,
                   source: SourceSeries | str | os.PathLike | None = None) -> dict:
    """Write the masks as one RT Structure Set file (replaced atomically).

    Args:
        path: the ``.dcm`` file to write.
        masks: output name → uint8/bool mask of shape ``volume.shape`` (I, J, K), on the scan's grid.
        volume: the scan the masks were made on (read from DICOM, or with ``source`` given).
        segments: the outputs in output order (ROI numbers follow it, counting only non-empty ones).
        model_name, software_version: recorded as the generating algorithm and the software version.
        source: the source series when not ``volume.source`` (a :class:`SourceSeries` or its folder / zip).

    Returns:
        ``{"path": str | None, "rois": [{"number", "name", "prompt", "roi_name", "contours"}], "empty": [names]}``;
        ``path`` is None and nothing is written when every mask is empty.

    Raises:
        InputError: no DICOM source, a source that does not match the scan's grid, or one without its UIDs.
    """
    series = source if isinstance(source, SourceSeries) else source_series(volume, source)
    require_uids(series)
    written = [s for s in segments if np.any(masks[s.name])]
    summary = {"path": None, "rois": [], "empty": [s.name for s in segments if s not in written]}
    if not written:
        log.warning("every mask is empty: no RTSTRUCT written (a structure set of no ROI is of no use)")
        return summary
    first = series.datasets[0]
    ds = _header(first, model_name, software_version)
    names = roi_names([s.prompt for s in written])
    ds.ReferencedFrameOfReferenceSequence = [_referenced_frame_of_reference(series)]
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = [], [], []
    for number, (spec, name) in enumerate(zip(written, names), start=1):
        code = segment_code(spec.terms, spec.prompt) if spec.terms else segment_code_of_prompt(spec.prompt)
        contours = [c for frame in series.frames for c in _frame_contours(series, frame, masks[spec.name])]
        ds.StructureSetROISequence.append(_roi(number, name, spec, first, model_name))
        ds.ROIContourSequence.append(_roi_contours(number, contours))
        ds.RTROIObservationsSequence.append(_observation(number, name, code))
        summary["rois"].append({"number": number, "name": spec.name, "prompt": spec.prompt, "roi_name": name,
                                "contours": len(contours)})
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    summary["path"] = str(Path(path))
    return summary


def roi_names(prompts: list[str]) -> list[str]:
    """TG-263-style ROI names for the prompts: ≤ 16 characters of ``A-Za-z0-9_``, side as ``_L`` / ``_R``
    suffix, unique (see the module doc)."""
    names: list[str] = []
    for prompt in prompts:
        text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
        words = re.findall(r"[A-Za-z0-9]+", text)
        suffix = ""
        if len(words) > 1 and words[0].lower() in ("left", "right"):
            suffix, words = ("_L" if words[0].lower() == "left" else "_R"), words[1:]
        base = "_".join(words) or "ROI"
        base = base[0].upper() + base[1:]
        name = base[: ROI_NAME_MAX - len(suffix)].rstrip("_") + suffix
        candidate, n = name, 1
        while candidate.lower() in (x.lower() for x in names):
            n += 1
            candidate = name[: ROI_NAME_MAX - len(str(n)) - 1].rstrip("_") + f"_{n}"
        names.append(candidate)
    return names


def frame_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask (Rows, Columns), each an (n, 2) array of (row, column) pixel coordinates
    (fractional, between pixel centres), the closing point not repeated; holes are outlines of their own."""
    import contourpy

    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    lines = contourpy.contour_generator(z=padded, name="serial", line_type="Separate").lines(0.5)
    outlines = []
    for line in lines:
        points = line[:-1] if len(line) > 1 and np.array_equal(line[0], line[-1]) else line
        points = _drop_collinear(points[:, ::-1] - 1.0)  # (x, y) = (column, row) in the padded array
        if len(points) >= 3:
            outlines.append(points)
    return outlines


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - points[:, 1]) - \
        (points[:, 1] - before[:, 1]) * (after[:, 0] - points[:, 0])
    return points[np.abs(cross) > 1e-9]


def _frame_contours(series: SourceSeries, frame: SourceFrame, mask: np.ndarray) -> list:
    from pydicom.dataset import Dataset

    slab = frame.slab(mask)
    if not slab.any():
        return []
    contours = []
    for outline in frame_outlines(slab):
        points = frame.patient_points(outline[:, 0], outline[:, 1])
        item = Dataset()
        item.ContourImageSequence = [_image_reference(series, frame)]
        item.ContourGeometricType = "CLOSED_PLANAR"
        item.NumberOfContourPoints = len(points)
        item.ContourData = [_ds(v) for v in points.ravel()]
        contours.append(item)
    return contours


def _image_reference(series: SourceSeries, frame: SourceFrame):
    from pydicom.dataset import Dataset

    source = series.datasets[frame.instance]
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame.frame is not None:
        item.ReferencedFrameNumber = frame.frame + 1
    return item


def _referenced_frame_of_reference(series: SourceSeries):
    from pydicom.dataset import Dataset

    first = series.datasets[0]
    referenced_series = Dataset()
    referenced_series.SeriesInstanceUID = first.SeriesInstanceUID
    referenced_series.ContourImageSequence = [_image_reference(series, f) for f in series.frames]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [referenced_series]
    item = Dataset()
    item.FrameOfReferenceUID = first.FrameOfReferenceUID
    item.RTReferencedStudySequence = [study]
    return item


def _roi(number: int, name: str, spec: SegmentSpec, first, model_name: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
    item.ROIName = name
    item.ROIDescription = spec.prompt + (f" ({', '.join(spec.terms)})" if spec.terms else "")
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"satseg {model_name}"[:LO_MAX]
    return item


def _roi_contours(number: int, contours: list):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedROINumber = number
    item.ROIDisplayColor = list(PALETTE[(number - 1) % len(PALETTE)])
    for index, contour in enumerate(contours, start=1):
        contour.ContourNumber = index
    item.ContourSequence = contours
    return item


def _observation(number: int, name: str, code: dict):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.ROIObservationLabel = name
    abnormal = code["category"]["value"] == "49755003"  # a lesion: whether it is a GTV is the planner's call
    item.RTROIInterpretedType = "" if abnormal else "ORGAN"
    item.ROIInterpreter = ""
    identification = Dataset()
    identification.CodeValue = code["type"]["value"]
    identification.CodingSchemeDesignator = code["type"]["scheme"]
    identification.CodeMeaning = code["type"]["meaning"][:LO_MAX]
    item.RTROIIdentificationCodeSequence = [identification]
    return item


def _header(first, model_name: str, software_version: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription"):
        setattr(ds, keyword, first.get(keyword, "") or "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = f"satseg structures ({model_name})"[:LO_MAX]
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    ds.Manufacturer = "satseg"
    ds.ManufacturerModelName = f"satseg {model_name}"[:LO_MAX]
    ds.SoftwareVersions = software_version[:LO_MAX]
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "SATSEG"
    ds.StructureSetName = f"satseg {model_name}"[:LO_MAX]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    return ds


def _ds(value: float) -> str:
    """A coordinate as a DS value (≤ 16 characters): 1e-4 mm steps, far below any pixel."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
