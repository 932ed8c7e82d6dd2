"""One label image for all prompts, with its legend beside it and inside it.

Values are ``1..N`` in prompt order (0 is background), so the same prompt list gives the same values for
every case of a cohort. The image is uint8, or uint16 beyond 255 structures.

Overlaps are resolved, never summed (a sum would invent labels): a voxel claimed by several structures
goes to

* the structure with the highest probability there, when probability maps are given;
* otherwise the structure with fewer voxels in the whole scan: the more specific one ("liver tumour"
  inside "liver", "left kidney" inside "kidneys") keeps its voxels, the larger one keeps the rest;
* ties go to the prompt listed first.

The legend says which rule was used and, per pair of overlapping structures, how many voxels both
claimed and where they went.

The legend is stored twice, as the same JSON: a sidecar ``<stem>.json`` next to ``<stem>.nii.gz`` for
people and scripts, and a NIfTI header extension so it travels with the image. The extension uses code
6 (``NIFTI_ECODE_COMMENT``), the registered code for free text: tools that list extensions show it as
readable text, and it cannot be mistaken for a structured format it is not (code 44 is the NIfTI-MRS
header, code 0 means "ignore this"). It is recognised by its ``"format": "satseg-legend/1"`` member.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from satseg.io.atomic import atomic_path
from satseg.io.volume import Volume
from satseg.outputs.masks import INTENT_LABEL, nifti_like, write_nifti
from satseg.outputs.report import dumps, to_jsonable

log = logging.getLogger(__name__)

LEGEND_FORMAT = "satseg-legend/1"
LEGEND_ECODE = 6  # NIFTI_ECODE_COMMENT
RULE_PROBABILITY = "highest probability, ties to the earlier prompt"
RULE_SMALLER = "smaller structure, ties to the earlier prompt"


def legend_sidecar_path(path: str | os.PathLike) -> Path:
    """``out/labels.nii.gz`` → ``out/labels.json``."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def resolve_labels(
    masks: dict[str, np.ndarray], probabilities: dict[str, np.ndarray] | None = None
) -> tuple[np.ndarray, list[dict]]:
    """Merge binary masks into one label array by the overlap rule of this module.

    Args:
        masks: name → mask of shape (I, J, K) (bool or 0/1), in prompt order.
        probabilities: name → probability map of shape (I, J, K), for every name in ``masks``.

    Returns:
        ``(labels, overlaps)``: labels of shape (I, J, K), uint8 or uint16, value ``n`` for the n-th
        name; one record per overlapping pair ``{"structures": [a, b], "voxels": both claimed,
        "assigned": {a: won by a, b: won by b}}`` (with three or more claimants a third may win).
    """
    names = list(masks)
    if not names:
        raise ValueError("no masks to merge")
    if len(names) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(names)} structures do not fit a uint16 label image")
    arrays = [np.asarray(masks[n]) != 0 for n in names]
    shape = arrays[0].shape
    for name, array in zip(names, arrays):
        if array.shape != shape:
            raise ValueError(f"mask {name!r} has shape {array.shape}, expected {shape}")
    if probabilities is not None:
        missing = [n for n in names if n not in probabilities]
        if missing:
            raise ValueError(f"no probability map for {missing}")

    dtype = np.uint8 if len(names) <= np.iinfo(np.uint8).max else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    count = np.zeros(shape, dtype=np.uint16)
    for array in arrays:
        count += array
    sizes = [int(a.sum()) for a in arrays]
    if probabilities is None:
        priority = sorted(range(len(names)), key=lambda i: (sizes[i], i))  # most specific first
    else:
        priority = list(range(len(names)))
    for i in reversed(priority):  # paint the lowest priority first, so the highest ends on top
        labels[arrays[i]] = i + 1

    contested = np.flatnonzero(count >= 2)
    if contested.size == 0:
        return labels, []
    claims = np.stack([a.reshape(-1)[contested] for a in arrays])  # (N, contested)
    flat = labels.reshape(-1)
    if probabilities is not None:
        scores = np.full(claims.shape, -np.inf)
        for i, name in enumerate(names):
            prob = np.asarray(probabilities[name], dtype=np.float64)
            if prob.shape != shape:
                raise ValueError(f"probability map {name!r} has shape {prob.shape}, expected {shape}")
            values = prob.reshape(-1)[contested]
            scores[i] = np.where(claims[i], values, -np.inf)
        if np.isnan(scores).any():
            raise ValueError("probability maps contain NaN where structures overlap")
        flat[contested] = (np.argmax(scores, axis=0) + 1).astype(dtype)  # argmax: first of equals
    winners = flat[contested]

    pair_counts = claims.astype(np.int64) @ claims.T.astype(np.int64)
    overlaps = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if pair_counts[i, j] == 0:
                continue
            both = claims[i] & claims[j]
            overlaps.append(
                {
                    "structures": [names[i], names[j]],
                    "voxels": int(pair_counts[i, j]),
                    "assigned": {
                        names[i]: int(np.count_nonzero(winners[both] == i + 1)),
                        names[j]: int(np.count_nonzero(winners[both] == j + 1)),
                    },
                }
            )
    return labels, overlaps


def write_multilabel(
    masks: dict[str, np.ndarray],
    like: Volume,
    path: str | os.PathLike,
    *,
    probabilities: dict[str, np.ndarray] | None = None,
    prompts: dict[str, str] | None = None,
    terms: dict[str, list[str]] | None = None,
) -> dict:
    """Write all masks as one label image on the input grid, with its legend; return the legend.

    Args:
        masks: output name → mask of shape ``like.shape`` (bool or 0/1), in prompt order; label
            values follow this order.
        like: the input scan whose shape, affine and header the file gets.
        path: target ``.nii.gz``; the sidecar is ``<stem>.json`` beside it. Both are replaced
            atomically (each file is whole, old or new).
        probabilities: name → probability map of shape ``like.shape``; switches the overlap rule from
            "smaller structure" to "highest probability".
        prompts: name → the prompt as typed (default: the name).
        terms: name → the trained terms the prompt resolved to, when known.

    Returns:
        the legend: ``{"format", "background": 0, "overlap_rule", "labels": {"1": {"name", "prompt",
        "terms"?, "voxels"}, ...}, "overlaps": [...]}``, exactly what the sidecar holds.
    """
    labels, overlaps = resolve_labels(masks, probabilities)
    entries = {}
    for value, name in enumerate(masks, start=1):
        entry: dict = {"name": name, "prompt": (prompts or {}).get(name, name)}
        if terms and name in terms:
            entry["terms"] = list(terms[name])
        entry["voxels"] = int(np.count_nonzero(labels == value))
        entries[str(value)] = entry
    legend = to_jsonable(
        {
            "format": LEGEND_FORMAT,
            "background": 0,
            "overlap_rule": RULE_SMALLER if probabilities is None else RULE_PROBABILITY,
            "labels": entries,
            "overlaps": overlaps,
        }
    )
    for pair in overlaps:
        log.info("%s and %s overlap in %d voxels (%s)", *pair["structures"], pair["voxels"], legend["overlap_rule"])

    image = nifti_like(labels, like, intent=INTENT_LABEL, description="satseg labels")
    image.header["cal_min"], image.header["cal_max"] = 0, len(entries)
    compact = json.dumps(legend, separators=(",", ":"), allow_nan=False).encode("utf-8")
    image.header.extensions.append(nib.nifti1.Nifti1Extension(LEGEND_ECODE, compact))

    path = Path(path)
    sidecar = legend_sidecar_path(path)
    with atomic_path(path) as image_tmp, atomic_path(sidecar) as sidecar_tmp:
        write_nifti(image, image_tmp, gz=path.name.endswith(".gz"))
        sidecar_tmp.write_text(dumps(legend), encoding="utf-8")
    return legend


def read_legend(path: str | os.PathLike, *, source: str = "header") -> dict:
    """The legend of a label image written by :func:`write_multilabel`.

    Args:
        path: the label image (``.nii.gz``).
        source: ``"header"`` to read the NIfTI extension, ``"sidecar"`` to read ``<stem>.json``.
    """
    path = Path(path)
    if source == "sidecar":
        return json.loads(legend_sidecar_path(path).read_text(encoding="utf-8"))
    if source != "header":
        raise ValueError(f"source must be 'header' or 'sidecar', not {source!r}")
    for extension in nib.load(path).header.extensions:
        if extension.get_code() != LEGEND_ECODE:
            continue
        raw = extension.get_content().rstrip(b"\x00")
        try:
            content = json.loads(raw)
        except ValueError:
            continue
        if isinstance(content, dict) and content.get("format") == LEGEND_FORMAT:
            return content
    raise ValueError(f"{path} has no satseg legend in its header")
