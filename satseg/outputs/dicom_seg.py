"""DICOM Segmentation (SEG) of satseg's masks, written with highdicom beside the series it was made from.

One BINARY segment per prompt with a non-empty mask (empty ones are left out and reported), one frame per source
frame that holds any segment, each frame derived from and placed like its source frame: the masks are taken from the
scan's grid frame by frame through :mod:`satseg.io.dicom_source`'s exact pixel → voxel map, so any slice order,
LPS/RAS storage, oblique orientation and multi-frame (enhanced / legacy-converted) source is right by construction.

Per segment: SegmentLabel = the user's prompt (cut to 64 characters, the LO limit), SegmentDescription = the trained
terms joined, SegmentedPropertyCategory/Type (+ laterality modifier, anatomic region) from
:func:`satseg.vocabulary.codes.segment_code`, algorithm AUTOMATIC identified as satseg + the model, and a colour
from a fixed palette by segment number (RecommendedDisplayCIELabValue). The object references the source series
and every source instance (ReferencedSeriesSequence; per frame DerivationImage / SourceImage), with the source's
patient, study and Frame of Reference. Apart from UIDs and dates a second run writes the same file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io.atomic import atomic_path
from satseg.io.dicom_source import SourceSeries, source_series
from satseg.io.volume import Volume
from satseg.vocabulary.codes import LOCAL_SCHEME, segment_code

log = logging.getLogger(__name__)

SERIES_NUMBER = 9701  # satseg's DICOM-SEG series (RTSTRUCT: 9702); fixed so that a rerun writes the same header
# 20 distinct colours (RGB), assigned by segment number; the same prompt order gives the same colours
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
LO_MAX = 64  # characters of a LO value (SegmentLabel, AlgorithmName, ...)


@dataclass(frozen=True)
class SegmentSpec:
    """One output to write: ``name`` keys the masks dict, ``prompt`` is what the user typed, ``terms`` the trained
    terms it resolved to (one, or several for a union)."""

    name: str
    prompt: str
    terms: list[str] = field(default_factory=list)


def write_dicom_seg(path: str | os.PathLike, masks: dict[str, np.ndarray], volume: Volume,
                    segments: list[SegmentSpec], *, model_name: str, software_version: str,
                    source: SourceSeries | str | os.PathLike | None = None) -> dict:
    """Write the masks as one DICOM-SEG file (replaced atomically).

    Args:
        path: the ``.dcm`` file to write.
        masks: output name → uint8/bool mask of shape ``volume.shape`` (I, J, K), on the scan's grid.
        volume: the scan the masks were made on (read from DICOM, or a NIfTI with ``source`` from
            :func:`satseg.io.dicom_source.check_reference_series`).
        segments: the outputs in output order (segment numbers follow it, counting only non-empty ones).
        model_name, software_version: identify the algorithm (``satseg <version>``, model ``<model_name>``).
        source: the source series when not ``volume.source`` (a :class:`SourceSeries` or its folder / zip).

    Returns:
        ``{"path": str | None, "segments": [{"number", "name", "prompt", "label", "type"}], "empty": [names],
        "frames": n}``; ``path`` is None and nothing is written when every mask is empty.

    Raises:
        InputError: no DICOM source, a source that does not match the scan's grid, or a source without the UIDs a
            SEG must reference.
    """
    import highdicom as hd

    series = source if isinstance(source, SourceSeries) else source_series(volume, source)
    require_uids(series)
    written = [s for s in segments if np.any(masks[s.name])]
    empty = [s.name for s in segments if s not in written]
    summary = {"path": None, "segments": [], "empty": empty, "frames": 0}
    if not written:
        log.warning("every mask is empty: no DICOM-SEG written (a SEG needs at least one segment)")
        return summary
    images, frames = _source_images(series)
    pixels = np.zeros((len(frames), *frames[0].size, len(written)), dtype=np.uint8)
    for i, frame in enumerate(frames):
        for j, spec in enumerate(written):
            pixels[i, :, :, j] = frame.slab(masks[spec.name])
    descriptions = []
    for number, spec in enumerate(written, start=1):
        code = segment_code(spec.terms, spec.prompt) if spec.terms else segment_code_of_prompt(spec.prompt)
        descriptions.append(_description(number, spec, code, model_name, software_version))
        summary["segments"].append({"number": number, "name": spec.name, "prompt": spec.prompt,
                                    "label": spec.prompt[:LO_MAX], "type": code["type"]})
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="satseg",
        manufacturer_model_name=_lo(f"satseg {model_name}"), software_versions=_lo(software_version),
        device_serial_number="0", content_label="SATSEG", content_description=_lo(f"satseg {model_name}"),
        content_creator_name="satseg^", series_description=_lo(f"satseg segmentation ({model_name})"),
    )
    if any(_uses_local_codes(d) for d in descriptions):
        seg.CodingSchemeIdentificationSequence = [_local_scheme()]
    summary["frames"] = int(seg.NumberOfFrames)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    summary["path"] = str(Path(path))
    return summary


def segment_code_of_prompt(prompt: str) -> dict:
    """Codes for an output without trained terms (not expected from the CLI): the prompt's local code."""
    from satseg.vocabulary.build_codes import CATEGORY, local_code

    value, meaning = CATEGORY["structure"]
    return {"category": {"scheme": "SCT", "value": value, "meaning": meaning},
            "type": local_code(prompt, prefix="P"), "modifier": None, "region": None, "source": "local"}


def require_uids(series: SourceSeries) -> None:
    """The UIDs a SEG / RTSTRUCT must reference, present in every source instance; an empty SOP Class / Instance
    UID is taken from the file meta (Media Storage SOP Class / Instance UID) where that has it."""
    for ds in series.datasets:
        meta = getattr(ds, "file_meta", None)
        for keyword, fallback in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(keyword, "") or "") and meta is not None and str(meta.get(fallback, "") or ""):
                setattr(ds, keyword, meta[fallback].value)
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
                               "FrameOfReferenceUID") if not str(ds.get(k, "") or "")]
        if missing:
            raise InputError(f"the source series has no {', '.join(missing)} (an anonymised copy?): a DICOM-SEG or "
                             "RTSTRUCT must reference them; give the series with its UIDs")


def _source_images(series: SourceSeries) -> tuple[list, list]:
    """(source data sets, frames in the order highdicom pairs them with the SEG's pixel array)."""
    if not series.multiframe:
        return series.datasets, series.frames
    if len(series.datasets) > 1:
        raise InputError(f"series {series.series_uid}: {len(series.datasets)} multi-frame instances; a DICOM-SEG is "
                         "written for a single multi-frame image or a series of single-frame images")
    return series.datasets, sorted(series.frames, key=lambda f: f.frame)


def _description(number: int, spec: SegmentSpec, code: dict, model_name: str, software_version: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=_lo(f"satseg {model_name}"), family=codes.cid7162.ArtificialIntelligence,
        version=_lo(f"{model_name} (satseg {software_version})"))
    region = [_concept(code["region"])] if code.get("region") else None
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=spec.prompt[:LO_MAX],
        segmented_property_category=_concept(code["category"]),
        segmented_property_type=_concept(code["type"]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        anatomic_regions=region, display_color=hd.color.CIELabColor.from_rgb(*PALETTE[(number - 1) % len(PALETTE)]),
        tracking_id=spec.prompt[:LO_MAX],
        tracking_uid=hd.UID(),
    )
    if spec.terms:
        description.SegmentDescription = ", ".join(spec.terms)[:1024]
    if code.get("modifier"):
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _concept(code["modifier"])]
    return description


def _concept(code: dict):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code["value"], scheme_designator=code["scheme"], meaning=code["meaning"][:LO_MAX])


def _uses_local_codes(description) -> bool:
    return any(item.CodingSchemeDesignator == LOCAL_SCHEME for item in description.SegmentedPropertyTypeCodeSequence)


def _local_scheme():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "satseg local anatomy codes"
    item.CodingSchemeResponsibleOrganization = "satseg (satseg/vocabulary/build_codes.py)"
    return item


def _lo(text: str) -> str:
    return text[:LO_MAX]
