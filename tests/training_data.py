"""A tiny real training dataset for tests: TotalSegmentator's sdist example CTs with their label maps.

    data = build_example_dataset(tmp_path / "data", reference_files)
    # data.root/images/<key>.nii.gz, data.root/labels/<key>.nii.gz, data.manifest (entry JSON in the schema of
    # train/datasets/*.json), data.scans (SAT-DS-style jsonl, paths relative to data.root)
    satseg train prepare --manifest data.manifest --scans data.scans --root data.root --out CACHE

Scans (``EXAMPLE_SCANS``): ``ct_sm`` = example_ct_sm + example_seg (122×101×30, 3 mm), ``ct`` = example_ct +
example_seg_fast_force_split (122×101×112, 3 mm). Each scan is its own patient (the key); ``test`` lists the
test patients. Labels are TotalSegmentator ``total`` ids mapped to SAT terms (``TOTALSEG_TERMS``), plus the
merge ``kidney = left kidney ∪ right kidney``. The labels are TotalSegmentator's predictions, not manual ground
truth. ``crop_margin`` crops each scan to the box of the mapped labels (plus a margin in voxels), keeping
the geometry (the affine moves with the crop): smaller model grids, faster tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

EXAMPLE_SCANS = {
    "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
}
# TotalSegmentator `total` id → (its class name, the SAT term)
TOTALSEG_TERMS = {
    1: ("spleen", "spleen"),
    2: ("kidney_right", "right kidney"),
    3: ("kidney_left", "left kidney"),
    4: ("gallbladder", "gallbladder"),
    5: ("liver", "liver"),
    6: ("stomach", "stomach"),
    7: ("pancreas", "pancreas"),
}
KIDNEY_MERGE = ("kidney", ("left kidney", "right kidney"))
DEFAULT_IDS = (1, 2, 3, 5)


@dataclass
class ExampleDataset:
    name: str
    root: Path
    manifest: Path
    scans: Path
    entry: dict
    lines: list[dict]

    @property
    def patients(self) -> list[str]:
        return [line["patient_id"] for line in self.lines]


def example_entry(name: str, ids=DEFAULT_IDS, *, patients=("ct_sm", "ct"), test=("ct",),
                  mask_format: str = "label_values", merge_kidneys: bool = True) -> dict:
    """A manifest entry (the schema of ``train/datasets/*.json``) for the example scans."""
    labels = []
    for channel, label_id in enumerate(ids):
        raw, term = TOTALSEG_TERMS[label_id]
        where = {"label_values": {"value": label_id}, "channels": {"channel": channel}}.get(mask_format, {})
        labels.append({"raw": raw, **where, "term": term})
    merges = []
    terms = [lab["term"] for lab in labels]
    if merge_kidneys and set(KIDNEY_MERGE[1]) <= set(terms):
        merges.append({"term": KIDNEY_MERGE[0], "from": list(KIDNEY_MERGE[1])})
        terms.append(KIDNEY_MERGE[0])
    test = sorted(set(test))
    return {
        "name": name,
        "modality": "ct",
        "modality_fields": {"CT": len(patients)},
        "region": "abdomen",
        "regions": ["abdomen"],
        "source": {"url": "https://github.com/wasserth/TotalSegmentator",
                   "licence": "Apache-2.0 (TotalSegmentator 2.18.0 sdist, tests/reference_files)"},
        "orientation": "RAS",
        "scans": len(patients),
        "mask": {"format": mask_format, **({"binarise": "gt_half"} if mask_format == "binary" else {})},
        "labels": labels,
        "merges": merges,
        "terms": terms,
        "split": {"source": "tests/training_data.py", "sha256": "0" * 64,
                  "rule": "test patients as listed; every other patient of the dataset is a training patient",
                  "train_patients": len(set(patients) - set(test)), "test_patients": len(test), "test": test},
        "sampler": {"sampling_weight": 1.0, "pos_label_first_prob": 1.0, "foreground_crop_prob": 1.0,
                    "label_based_crop_prob": 0.5, "uncenter_prob": 0.0, "neg_label_ratio_threshold": 0.5},
        "notes": ["built by tests/training_data.py from TotalSegmentator's example scans"],
    }


def build_example_dataset(folder: Path, reference_files: Path, *, name: str = "TotalSegExample",
                          scans=("ct_sm", "ct"), test=("ct",), ids=DEFAULT_IDS, mask_format: str = "label_values",
                          crop_margin: int | None = None) -> ExampleDataset:
    """Write images, masks, ``<name>.json`` and ``scans.jsonl`` under ``folder``; see the module doc.

    ``mask_format="channels"`` writes each mask as a (C, I, J, K) NIfTI in label order, as SAT-DS's
    processor does for TotalSegmentator; ``"binary"`` (one id only) writes a 0/1 mask.
    """
    if mask_format == "binary" and len(ids) != 1:
        raise ValueError("a binary mask holds one label: pass one id")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    lines = []
    for key in scans:
        image_name, seg_name = EXAMPLE_SCANS[key]
        image = nib.load(str(reference_files / image_name))
        seg = nib.load(str(reference_files / seg_name))
        image_data = np.asarray(image.dataobj)
        seg_data = np.asarray(seg.dataobj).astype(np.uint8)
        affine = image.affine.copy()
        if crop_margin is not None:
            box = _label_box(np.isin(seg_data, ids), crop_margin)
            image_data, seg_data = image_data[box], seg_data[box]
            affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in box], dtype=float)
        if mask_format == "channels":
            seg_data = np.stack([(seg_data == i).astype(np.uint8) for i in ids])
        elif mask_format == "binary":
            seg_data = np.isin(seg_data, ids).astype(np.uint8)
        _save(image_data, affine, image.header, folder / "images" / f"{key}.nii.gz")
        _save(seg_data, affine, None, folder / "labels" / f"{key}.nii.gz")
        lines.append({"image": f"images/{key}.nii.gz", "mask": f"labels/{key}.nii.gz", "label": [],
                      "modality": "CT", "dataset": name, "official_split": "unknown", "patient_id": key})
    entry = example_entry(name, ids, patients=scans, test=[t for t in test if t in scans], mask_format=mask_format)
    manifest = folder / f"{name}.json"
    manifest.write_text(json.dumps(entry, indent=2))
    scans_path = folder / "scans.jsonl"
    write_scans(scans_path, lines)
    return ExampleDataset(name=name, root=folder, manifest=manifest, scans=scans_path, entry=entry, lines=lines)


def write_scans(path: Path, lines: list[dict]) -> Path:
    """Write a SAT-DS-style jsonl."""
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return Path(path)


def _label_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(box)


def _save(data: np.ndarray, affine: np.ndarray, header, path: Path) -> None:
    img = nib.Nifti1Image(data, affine, header)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
