"""Build ``train/datasets/<NAME>.json`` (one file per SAT-DS dataset) from the reference data + the table below.

Usage::

    python train/build_manifest.py [--reference /work/shared/reference] [--out train/datasets]

Inputs (verbatim upstream data, see ``shared/reference/sat/README.md``):

- ``sat-ds/jsonl/<NAME>.jsonl`` — label list (the order SAT-DS's loader outputs channels in), modality fields,
  patient ids;
- ``sat-ds/split_json/<NAME>.json`` — the paper's patient-level split;
- ``sat-ds/terminology_list.json`` — the terms SAT was trained with per dataset;
- ``sat/dataset_config_72.json`` — sampler settings per dataset.

The table ``DATASETS`` below is hand-written from SAT-DS ``loader.py`` / ``processor.py`` (snapshot 492df0e, read
for facts, no code copied): how raw mask values or channels become SAT terms and which terms are unions of others.
Everything the build can check against the reference files, it checks, and it stops on any disagreement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
UPSTREAM = "zhaoziheng/SAT-DS@492df0e"

MSD = ("http://medicaldecathlon.com/", "CC BY-SA 4.0 (Medical Segmentation Decathlon)")
TOTALSEG = ("https://zenodo.org/record/6802614", "CC BY 4.0 (TotalSegmentator v1 dataset, Zenodo)")
AMOS = ("https://zenodo.org/records/7262581", "CC BY 4.0 (AMOS 2022, Zenodo)")
BRATS = "Synapse registration; BraTS 2023 data use terms (CC BY 4.0 for challenge data, check per cohort)"
GC = "grand-challenge registration; challenge data agreement (research use, check the site)"
TCIA = "TCIA data usage policy (collection licence, CC BY 3.0/4.0; check the collection page)"
BRATS_SEQ = "4 MRI sequences per patient (t1n, t1c, t2w, t2f) as separate samples, one shared mask"


def ri(*idx: int) -> list[int]:
    """Raw-label indices (0-based positions in the dataset's raw label list) as merge members."""
    return list(idx)


# name: url, licence, region, mask format, raw count n (first n labels of the jsonl list are raw mask labels;
# the rest are unions), optional value map, explicit unions (term -> members), in-place widenings
# (raw term -> members added to it), extra raw labels that yield no term, orientation, notes.
# Members are terms, or raw indices (int). Unions not listed are "left X ∪ right X" (checked to exist).
DATASETS: dict[str, dict] = {
    "ACDC": dict(url="https://humanheart-project.creatis.insa-lyon.fr/database/", licence="free for research after registration (CREATIS, ACDC challenge terms)",
                 region="thorax", fmt="label_values", n=3, values=[3, 1, 2],
                 notes=["Mask values: 1 right ventricle cavity, 2 myocardium, 3 left ventricle cavity (ACDC convention)."]),
    "AMOS22_CT": dict(url=AMOS[0], licence=AMOS[1], region="abdomen", fmt="label_values", n=14),
    "AMOS22_MRI": dict(url=AMOS[0], licence=AMOS[1], region="abdomen", fmt="label_values", n=14),
    "ATLAS": dict(url="https://atlas-challenge.u-bourgogne.fr", licence="ATLAS 2023 challenge data terms (CC BY-NC-SA 4.0 per organisers; check the site)",
                  region="abdomen", fmt="label_values", n=2, widen={"liver": ["liver tumor"]}),
    "ATLASR2": dict(url="http://fcon_1000.projects.nitrc.org/indi/retro/atlas.html", licence="INDI/ICPSR data use agreement (ATLAS R2.0)",
                    region="brain", fmt="label_values", n=1,
                    notes=["Split lists 33 patient ids (site folders) for 655 scans."]),
    "AbdomenCT1K": dict(url="https://github.com/JunMa11/AbdomenCT-1K", licence="CC BY-NC-SA (AbdomenCT-1K; constituent datasets keep their own licences)",
                        region="abdomen", fmt="label_values", n=4),
    "BTCV": dict(url="https://www.synapse.org/#!Synapse:syn3193805/wiki/217789", licence="Synapse registration; MICCAI 2015 BTCV challenge terms",
                 region="abdomen", fmt="label_values", n=13),
    "BTCV_Cervix": dict(url="https://www.synapse.org/Synapse:syn3378972", licence="Synapse registration; MICCAI 2015 BTCV challenge terms",
                        region="pelvis", fmt="label_values", n=4, orientation="LPS"),
    **{f"BraTS2023_{c}": dict(url=f"https://www.synapse.org/#!Synapse:{syn}", licence=BRATS, region="brain", fmt="label_values", n=3,
                              unions={"brain tumor": ri(0, 1, 2)}, notes=[BRATS_SEQ])
       for c, syn in [("GLI", "syn51514105"), ("MEN", "syn51514106"), ("MET", "syn51514107"), ("PED", "syn51514108"), ("SSA", "syn51514109")]},
    "BrainPTM": dict(url="https://brainptm-2021.grand-challenge.org/", licence=GC, region="brain", fmt="channels", n=5,
                     notes=["Tract masks are separate channels (they overlap)."]),
    "Brain_Atlas": dict(url="http://brain-development.org/", licence="CC BY-NC 3.0 (Hammers adult brain atlas, brain-development.org)",
                        region="brain", fmt="label_values", n=95,
                        unions={"lateral ventricle": ri(44, 45, 46, 47),
                                "insula": ri(19, 20, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94),
                                "parietal lobe": ri(31, 32, 59, 60, 61, 62, 83, 84),
                                "frontal lobe": ri(27, 28, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 67, 68, 69, 70, 71, 72, 75, 76, 79, 80),
                                "basal ganglia": ri(33, 34, 35, 36, 37, 38, 41, 42),
                                "cingulate gyrus": ri(23, 24, 25, 26, 77, 78),
                                "brainstem": ri(18, 73, 74),
                                "temporal lobe": ri(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 29, 30, 81, 82),
                                "thalamus": ri(39, 40), "cerebellum": ri(16, 17), "occipital lobe": ri(21, 22, 63, 64, 65, 66),
                                "hippocampus": ri(0, 1), "amygdala": ri(2, 3)}),
    "CHAOS_CT": dict(url="https://chaos.grand-challenge.org/", licence="CC BY-SA 4.0 (CHAOS, Zenodo 3431873)", region="abdomen",
                     fmt="binary", binarise="minmax", n=1, notes=["Liver masks are stored as 0/255 images; SAT-DS rescales to 0..1 and thresholds at 0.5."]),
    "CHAOS_MRI": dict(url="https://chaos.grand-challenge.org/", licence="CC BY-SA 4.0 (CHAOS, Zenodo 3431873)", region="abdomen",
                      fmt="channels", n=4, notes=["T1 (in/opposed phase) and T2-SPIR scans are separate samples; SAT-DS processor.py re-encodes the grey-level masks as channels.",
                                                   "The split file lists each training patient id 3 times (48 entries, 16 unique)."]),
    "CMRxMotion": dict(url="https://www.synapse.org/#!Synapse:syn28503327/files/", licence="Synapse registration; CMRxMotion challenge terms",
                       region="thorax", fmt="label_values", n=3),
    "COVID19": dict(url="https://github.com/JunMa11/COVID-19-CT-Seg-Benchmark", licence="CC BY-NC-SA (COVID-19-CT-Seg, Zenodo 3757476)", region="thorax",
                    fmt="label_values", n=3, unions={"lung": ["left lung", "right lung", "covid-19 infection"]},
                    notes=["The jsonl has the 10 coronacases scans; the split file also lists 10 radiopaedia ids that are not in it (paper counts 20 scans)."]),
    "CTPelvic1K": dict(url="https://zenodo.org/record/4588403", licence="CC BY-NC-SA 4.0 (CTPelvic1K, Zenodo; sub-datasets keep their own licences)",
                       region="pelvis", fmt="label_values", n=4),
    "CT_ORG": dict(url="https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=61080890", licence=TCIA, region="whole body",
                   fmt="label_values", n=6),
    "Couinaud_Liver": dict(url="https://github.com/GLCUnet/dataset", licence="research use (annotations on MSD Task08 scans, CC BY-SA 4.0); check the repository",
                           region="abdomen", fmt="label_values", n=8,
                           unions={"left lobe of liver": ri(1, 2, 3), "right lobe of liver": ri(4, 5, 6, 7)},
                           notes=["The split file lists 303 MSD hepatic-vessel ids; 161 have Couinaud annotations (the jsonl)."]),
    "CrossMoDA2021": dict(url="https://crossmoda.grand-challenge.org/Data/", licence="CC BY 4.0 (crossMoDA, TCIA Vestibular-Schwannoma-SEG)",
                          region="head and neck", fmt="label_values", n=2),
    "DAP_Atlas": dict(url="https://github.com/alexanderjaus/AtlasDataset", licence="CC BY 4.0 (annotations; CT from AutoPET/TCIA)", region="whole body",
                      fmt="label_values", n=143, values=[i + 1 if i < 9 else i + 2 for i in range(143)],
                      ignored=[{"raw": "rectum", "value": 10}],
                      notes=["Mask value 10 (rectum) is skipped by SAT-DS; raw labels after it are shifted by one value."]),
    "FLARE22": dict(url="https://flare22.grand-challenge.org/", licence=GC, region="abdomen", fmt="label_values", n=13),
    "FUMPE": dict(url="https://www.kaggle.com/datasets/andrewmvd/pulmonary-embolism-in-ct-images", licence="CC BY 4.0 (FUMPE, figshare)",
                  region="thorax", fmt="label_values", n=1),
    "FeTA2022": dict(url="https://feta.grand-challenge.org/data-download/", licence="FeTA data use agreement (CC BY-NC-SA 4.0, Synapse)",
                     region="brain", fmt="label_values", n=7),
    "HAN_Seg": dict(url="https://zenodo.org/record/7442914", licence="CC BY-NC-ND 4.0 (HaN-Seg, Zenodo)", region="head and neck",
                    fmt="channels", n=30,
                    unions={"left eyeball": ["left anterior eyeball", "left posterior eyeball"],
                            "right eyeball": ["right anterior eyeball", "right posterior eyeball"],
                            "eyeball": ["left anterior eyeball", "right anterior eyeball", "left posterior eyeball", "right posterior eyeball"]}),
    "Hecktor2022": dict(url="https://hecktor.grand-challenge.org/Data/", licence="HECKTOR 2022 data use agreement (research use)", region="head and neck",
                        fmt="label_values", n=2, notes=["PET (PT, SUV-scaled) image; the paired CT is not used."]),
    "ISLES2022": dict(url="http://www.isles-challenge.org/", licence="CC BY 4.0 (ISLES 2022)", region="brain", fmt="binary", binarise="minmax", n=1,
                      notes=["ADC and DWI of each patient are separate samples with one shared mask."]),
    "Instance22": dict(url="https://instance.grand-challenge.org/Dataset/", licence=GC, region="brain", fmt="label_values", n=1),
    "KiPA22": dict(url="https://kipa22.grand-challenge.org/dataset/", licence=GC, region="abdomen", fmt="label_values", n=4,
                   widen={"kidney": ["kidney tumor"]}),
    "KiTS23": dict(url="https://github.com/neheller/kits23", licence="CC BY-NC-SA 4.0 (KiTS23)", region="abdomen", fmt="label_values", n=3,
                   widen={"kidney": ["kidney tumor", "kidney cyst"]}),
    "LAScarQS22_Task1": dict(url="https://zmiclab.github.io/projects/lascarqs22/data.html", licence="LAScarQS 2022 data agreement (research use)",
                             region="thorax", fmt="label_values", n=2, widen={"left heart atrium": ["left heart atrium scar"]}),
    "LAScarQS22_Task2": dict(url="https://zmiclab.github.io/projects/lascarqs22/data.html", licence="LAScarQS 2022 data agreement (research use)",
                             region="thorax", fmt="label_values", n=1),
    "LNDb": dict(url="https://zenodo.org/record/7153205", licence="CC BY-NC-ND 4.0 (LNDb, Zenodo)", region="thorax", fmt="label_values", n=1),
    "LUNA16": dict(url="https://luna16.grand-challenge.org/", licence="CC BY 4.0 (LUNA16; LIDC-IDRI scans under TCIA terms)", region="thorax",
                   fmt="label_values", n=3, values=[3, 4, 5], notes=["Lung-segmentation masks: 3 left lung, 4 right lung, 5 trachea."]),
    "MM_WHS_CT": dict(url="https://zmiclab.github.io/zxh/0/mmwhs/", licence="MM-WHS data agreement (research use, registration)", region="thorax",
                      fmt="label_values", n=7, values=[205, 420, 500, 550, 600, 820, 850],
                      notes=["The split file lists image and label file names as patient ids (40 entries for 20 cases)."]),
    "MM_WHS_MRI": dict(url="https://zmiclab.github.io/zxh/0/mmwhs/", licence="MM-WHS data agreement (research use, registration)", region="thorax",
                       fmt="label_values", n=7, values=[205, 420, 500, 550, 600, 820, 850],
                       notes=["The split file lists image and label file names as patient ids (40 entries for 20 cases)."]),
    "MRSpineSeg": dict(url="https://www.cg.informatik.uni-siegen.de/en/spine-segmentation-and-analysis", licence="research use (MRSpineSeg challenge; check the site)",
                       region="spine", fmt="label_values", n=19, orientation="ASR",
                       unions={"lumbar vertebrae": ri(1, 2, 3, 4, 5), "thoracic vertebrae": ri(6, 7, 8, 9),
                               "intervertebral discs": ri(10, 11, 12, 13, 14, 15, 16, 17, 18), "vertebrae": ri(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)},
                       notes=["Sagittal T2 acquisitions; 'vertebrae' includes the sacrum as in SAT-DS."]),
    "MSD_Cardiac": dict(url=MSD[0], licence=MSD[1], region="thorax", fmt="binary", binarise="minmax", n=1),
    "MSD_Colon": dict(url=MSD[0], licence=MSD[1], region="abdomen", fmt="binary", binarise="minmax", n=1),
    "MSD_HepaticVessel": dict(url=MSD[0], licence=MSD[1], region="abdomen", fmt="label_values", n=2),
    "MSD_Hippocampus": dict(url=MSD[0], licence=MSD[1], region="brain", fmt="label_values", n=2,
                            unions={"hippocampus": ["anterior hippocampus", "posterior hippocampus"]}),
    "MSD_Liver": dict(url=MSD[0], licence=MSD[1], region="abdomen", fmt="label_values", n=2, widen={"liver": ["liver tumor"]}),
    "MSD_Lung": dict(url=MSD[0], licence=MSD[1], region="thorax", fmt="label_values", n=1),
    "MSD_Pancreas": dict(url=MSD[0], licence=MSD[1], region="abdomen", fmt="label_values", n=2, widen={"pancreas": ["pancreas tumor"]}),
    "MSD_Prostate": dict(url=MSD[0], licence=MSD[1], region="pelvis", fmt="label_values", n=2,
                         unions={"prostate": ["transition zone of prostate", "peripheral zone of prostate"]},
                         notes=["4-D image: channel 0 T2 and channel 1 ADC are separate samples (jsonl image path suffix /T2, /ADC).",
                                "prostate_28.nii.gz is in both train and test of the split file; satseg keeps it in test."]),
    "MSD_Spleen": dict(url=MSD[0], licence=MSD[1], region="abdomen", fmt="binary", binarise="minmax", n=1),
    "MyoPS2020": dict(url="https://zmiclab.github.io/zxh/0/myops20/", licence="MyoPS 2020 data agreement (research use, registration)", region="thorax",
                      fmt="label_values", n=5, widen={"myocardium": ["myocardial scar", "myocardial edema"]},
                      notes=["Multi-sequence CMR (bSSFP, LGE, T2) as separate samples; SAT-DS processor re-encodes the mask values 1..5."]),
    "NSCLC": dict(url="https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=68551327", licence=TCIA, region="thorax",
                  fmt="channels", n=2, notes=["SAT-DS processor.py concatenates the two RTSTRUCT-derived masks into channels (concat_label.nii.gz)."]),
    "PARSE2022": dict(url="https://parse2022.grand-challenge.org/Dataset/", licence=GC, region="thorax", fmt="label_values", n=1),
    "PDDCA": dict(url="https://www.imagenglab.com/newsite/pddca/", licence="PDDCA terms (research use; check the site)", region="head and neck",
                  fmt="label_values", n=9),
    "PROMISE12": dict(url="https://promise12.grand-challenge.org/Details/", licence=GC, region="pelvis", fmt="binary", binarise="gt_half", n=1),
    "Pancreas_CT": dict(url="https://wiki.cancerimagingarchive.net/display/public/pancreas-ct", licence=TCIA, region="abdomen",
                        fmt="label_values", n=1),
    "SEGA": dict(url="https://multicenteraorta.grand-challenge.org/data/", licence="CC BY 4.0 (SEG.A. 2023, figshare)", region="abdomen",
                 fmt="label_values", n=1),
    "SKI10": dict(url="https://ambellan.de/sharing/QjrntLwah", licence="SKI10 challenge terms (research use)", region="lower limb",
                  fmt="label_values", n=4),
    "SLIVER07": dict(url="https://sliver07.grand-challenge.org/", licence=GC, region="abdomen", fmt="binary", binarise="gt_half", n=1),
    "SegRap2023_Task1": dict(
        url="https://segrap2023.grand-challenge.org/", licence="SegRap2023 data agreement (CC BY-NC 4.0; check the site)", region="head and neck",
        fmt="label_values", n=45, raw_override="SEGRAP", notes=[
            "Mask values 1..54 include 9 overlap classes (e.g. 'left temporal lobe hippocampus overlap') that are not terms; "
            "SAT-DS adds each overlap to the structures it belongs to (the in-place merges below).",
            "SAT-DS loader.py (492df0e) indexes the 54-name processor list while the reference jsonl carries the 61 output terms; "
            "this manifest follows the loader's merge arithmetic on the 54 mask values."]),
    "SegRap2023_Task2": dict(url="https://segrap2023.grand-challenge.org/", licence="SegRap2023 data agreement (CC BY-NC 4.0; check the site)",
                             region="head and neck", fmt="label_values", n=2),
    "SegTHOR": dict(url="https://competitions.codalab.org/competitions/21145", licence="SegTHOR challenge terms (research use)", region="thorax",
                    fmt="label_values", n=4),
    "ToothFairy": dict(url="https://ditto.ing.unimore.it/toothfairy/", licence="CC BY-SA 4.0 (ToothFairy, registration)", region="head and neck",
                       fmt="label_values", n=1, orientation="IPL", notes=["Cone-beam CT."]),
    "TotalSegmentator_Cardiac": dict(url=TOTALSEG[0], licence=TOTALSEG[1], region="whole body", fmt="channels", n=13),
    "TotalSegmentator_Muscles": dict(url=TOTALSEG[0], licence=TOTALSEG[1], region="whole body", fmt="channels", n=21),
    "TotalSegmentator_Organs": dict(url=TOTALSEG[0], licence=TOTALSEG[1], region="whole body", fmt="channels", n=20),
    "TotalSegmentator_Ribs": dict(url=TOTALSEG[0], licence=TOTALSEG[1], region="whole body", fmt="channels", n=24,
                                  unions={"right rib": [f"right rib {k}" for k in range(1, 13)],
                                          "left rib": [f"left rib {k}" for k in range(1, 13)],
                                          "rib": ["left rib", "right rib"]}),
    "TotalSegmentator_Vertebrae": dict(url=TOTALSEG[0], licence=TOTALSEG[1], region="whole body", fmt="channels", n=25,
                                       unions={"cervical vertebrae": ri(*range(1, 8)), "lumbar vertebrae": ri(*range(8, 13)),
                                               "thoracic vertebrae": ri(*range(13, 25)), "vertebrae": ri(*range(0, 25))},
                                       notes=["'vertebrae' includes the sacrum as in SAT-DS."]),
    "TotalSegmentator_v2": dict(url="https://zenodo.org/records/10047292", licence="CC BY 4.0 (TotalSegmentator v2 dataset, Zenodo)",
                                region="whole body", fmt="channels", n=20,
                                notes=["Classes added in TotalSegmentator v2; split file TotalSegmentator.json (shared by all TotalSegmentator subsets)."]),
    "VerSe": dict(url="https://github.com/anjany/verse", licence="CC BY-SA 4.0 (VerSe 2019/2020)", region="spine", fmt="label_values", n=25,
                  orientation="ASR", ignored=[{"raw": "cervical vertebrae", "value": 26}],
                  unions={"cervical vertebrae": ri(*range(0, 7)), "thoracic vertebrae": ri(*range(7, 19)),
                          "lumbar vertebrae": ri(*range(19, 25)), "vertebrae": ri(*range(0, 25))},
                  notes=["The reference jsonl lists 'cervical vertebrae' twice: once at mask value 26 (VerSe's sacrum value) and once as the C1-C7 union; "
                         "SAT-DS loader.py also adds value 26 to 'thoracic vertebrae' and 'vertebrae'. satseg drops value 26 and keeps one 'cervical vertebrae'."]),
    "WMH_Segmentation_Challenge": dict(url="https://wmh.isi.uu.nl/", licence="CC BY-NC 4.0 (WMH challenge, DataverseNL)", region="brain",
                                       fmt="binary", binarise="gt_half", n=1,
                                       notes=["SAT-DS thresholds the mask at 0.5, so value 2 ('other pathology') is counted as white matter hyperintensities."]),
    "WORD": dict(url="https://github.com/HiLab-git/WORD", licence="GPL-3.0 per repository; research use only (WORD terms)", region="abdomen",
                 fmt="label_values", n=16, unions={"head of femur": ["head of left femur", "head of right femur"]}),
    "autoPET": dict(url="https://wiki.cancerimagingarchive.net/pages/viewpage.action?pageId=93258287", licence=TCIA + " — FDG-PET-CT-Lesions",
                    region="whole body", fmt="label_values", n=1, notes=["PET as SUV; the paired CT is not used."]),
}

# SegRap2023 Task001 mask values 1..54 (SAT-DS loader.py docstring order) and SAT-DS's in-place merges, in order.
SEGRAP_RAW = [
    "brain", "brainstem", "optic chiasm", "left temporal lobe", "right temporal lobe",
    "left temporal lobe hippocampus overlap", "right temporal lobe hippocampus overlap", "left hippocampus", "right hippocampus",
    "left eyeball", "right eyeball", "left lens", "right lens", "left optic nerve", "right optic nerve", "left middle ear", "right middle ear",
    "left internal auditory canal", "right internal auditory canal", "left middle ear tympanic cavity overlap",
    "right middle ear tympanic cavity overlap", "left tympanic cavity", "right tympanic cavity",
    "left middle ear vestibule semicircular canal overlap", "right middle ear vestibule semicircular canal overlap",
    "left vestibule semicircular canal", "right vestibule semicircular canal", "left cochlea", "right cochlea",
    "left middle ear eustachian tube bone overlap", "right middle ear eustachian tube bone overlap", "left eustachian tube bone",
    "right eustachian tube bone", "pituitary gland", "oral cavity", "left mandible", "right mandible", "left submandibular gland",
    "right submandibular gland", "left parotid gland", "right parotid gland", "left mastoid process", "right mastoid process",
    "left temporomandibular joint", "right temporomandibular joint", "spinal cord", "esophagus", "larynx", "larynx glottis",
    "larynx supraglottis", "larynx pharynx constrictor muscle overlap", "pharynx constrictor muscle", "thyroid", "trachea",
]
SEGRAP_WIDEN = [  # (term, raw members by 0-based index)
    ("brain", [1, 2, 3, 4, 5, 6, 7, 8]), ("left temporal lobe", [5]), ("right temporal lobe", [6]),
    ("left hippocampus", [5]), ("right hippocampus", [6]), ("left eyeball", [11]), ("right eyeball", [12]),
    ("left middle ear", [17, 19, 23, 27, 29]), ("right middle ear", [18, 20, 24, 28, 30]),
    ("left tympanic cavity", [19]), ("right tympanic cavity", [20]), ("left vestibule semicircular canal", [23]),
    ("right vestibule semicircular canal", [24]), ("left eustachian tube bone", [29]), ("right eustachian tube bone", [30]),
    ("larynx", [48, 49, 50]), ("pharynx constrictor muscle", [50]),
]

SAMPLER_KEYS = ("sampling_weight", "pos_label_first_prob", "foreground_crop_prob", "label_based_crop_prob",
                "uncenter_prob", "neg_label_ratio_threshold")
MODALITY_CODES = {"CT": "ct", "MRI": "mri", "PET": "pet"}


class BuildError(Exception):
    pass


def _read_jsonl(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _split_file(name: str) -> str:
    # TotalSegmentator_v2 uses the split shared by all TotalSegmentator subsets (spec 7.1).
    return "TotalSegmentator.json" if name == "TotalSegmentator_v2" else f"{name}.json"


def _raw_labels(name: str, spec: dict, label_list: list[str]) -> list[dict]:
    """Raw mask labels: name in source casing, where they live in the mask, and the term they become."""
    if spec.get("raw_override") == "SEGRAP":
        kept = [raw for raw in SEGRAP_RAW if "overlap" not in raw]
        if [t.lower() for t in label_list[: len(kept)]] != kept:
            raise BuildError(f"{name}: jsonl labels do not start with the non-overlap SegRap classes")
        return [{"raw": raw, "value": i + 1, "term": None if "overlap" in raw else raw} for i, raw in enumerate(SEGRAP_RAW)]
    n = spec["n"]
    values = spec.get("values") or list(range(1, n + 1))
    if len(values) != n:
        raise BuildError(f"{name}: {len(values)} mask values for {n} raw labels")
    labels = []
    for i, raw in enumerate(label_list[:n]):
        entry = {"raw": raw}
        if spec["fmt"] == "channels":
            entry["channel"] = i
        elif spec["fmt"] == "label_values":
            entry["value"] = values[i]
        entry["term"] = raw.lower()
        labels.append(entry)
    for extra in spec.get("ignored", []):
        labels.append({**extra, "term": None})
    return labels


def _member(ref, labels: list[dict]) -> str:
    if isinstance(ref, int):
        label = labels[ref]
        return label["term"] if label["term"] is not None else label["raw"]
    return ref


def _merges(name: str, spec: dict, labels: list[dict], label_list: list[str]) -> list[dict]:
    raw_terms = {label["term"] for label in labels if label["term"]}
    merges: list[dict] = []
    if spec.get("raw_override") == "SEGRAP":
        for term, idx in SEGRAP_WIDEN:
            merges.append({"term": term, "from": [term] + [_member(i, labels) for i in idx]})
        appended = [t.lower() for t in label_list[45:]]
    else:
        for term, members in spec.get("widen", {}).items():
            merges.append({"term": term, "from": [term] + list(members)})
        appended = [t.lower() for t in label_list[spec["n"]:]]
    unions = {k.lower(): v for k, v in spec.get("unions", {}).items()}
    for term in dict.fromkeys(appended):  # ordered, duplicates (VerSe) once
        if term in raw_terms:
            continue  # VerSe: the jsonl repeats a term; nothing to merge
        if term in unions:
            members = [_member(m, labels) for m in unions[term]]
        else:
            members = [f"left {term}", f"right {term}"]
        merges.append({"term": term, "from": members})
    return merges


def _check_merges(name: str, labels: list[dict], merges: list[dict]) -> list[str]:
    """Resolve merges in order like manifest.py does; return the final term list."""
    known = {label["term"] for label in labels if label["term"]}
    raw_only = {label["raw"] for label in labels if label["term"] is None}
    terms = [label["term"] for label in labels if label["term"]]
    for merge in merges:
        for member in merge["from"]:
            if member not in known and member not in raw_only:
                raise BuildError(f"{name}: merge {merge['term']!r} uses unknown member {member!r}")
        if merge["term"] not in known:
            known.add(merge["term"])
            terms.append(merge["term"])
    return terms


def build_entry(name: str, spec: dict, ref: Path, vocabulary: dict, sampler: dict) -> dict:
    sat_ds = ref / "sat" / "sat-ds"
    rows = _read_jsonl(sat_ds / "jsonl" / f"{name}.jsonl")
    label_lists = {tuple(r["label"]) for r in rows}
    if len(label_lists) != 1:
        raise BuildError(f"{name}: {len(label_lists)} different label lists in the jsonl")
    label_list = list(label_lists.pop())
    modality_fields = Counter(r["modality"] for r in rows)
    codes = {MODALITY_CODES[field.split()[0]] for field in modality_fields}
    if len(codes) != 1:
        raise BuildError(f"{name}: mixed modalities {sorted(modality_fields)}")
    modality = codes.pop()

    labels = _raw_labels(name, spec, label_list)
    merges = _merges(name, spec, labels, label_list)
    terms = _check_merges(name, labels, merges)
    jsonl_terms = list(dict.fromkeys(t.lower() for t in label_list))
    if terms != jsonl_terms:
        raise BuildError(f"{name}: built terms differ from the jsonl order:\n{terms}\n{jsonl_terms}")

    trained = vocabulary["dataset_based"][name]
    trained_terms = {t.split("_", 1)[1] for t in trained}
    trained_modalities = {t.split("_", 1)[0] for t in trained}
    notes = list(spec.get("notes", []))
    if set(terms) != trained_terms or trained_modalities != {modality}:
        notes.append(f"Terminology mismatch: only in manifest {sorted(set(terms) - trained_terms)}, "
                     f"only in terminology_list {sorted(trained_terms - set(terms))}, modalities {sorted(trained_modalities)}.")
    regions = sorted(region for region, members in vocabulary["region_based"].items()
                     if any(f"{modality}_{t}" in members for t in terms))

    split_name = _split_file(name)
    split_path = sat_ds / "split_json" / split_name
    split = json.loads(split_path.read_text())
    test = sorted(set(split["test"]))
    train_unique = set(split["train"]) - set(test)

    mask = {"format": spec["fmt"]}
    if spec["fmt"] == "binary":
        mask["binarise"] = spec["binarise"]
    entry = {
        "name": name,
        "modality": modality,
        "modality_fields": dict(sorted(modality_fields.items())),
        "region": spec["region"],
        "regions": regions,
        "source": {"url": spec["url"], "licence": spec["licence"]},
        "orientation": spec.get("orientation", "RAS"),
        "scans": len(rows),
        "mask": mask,
        "labels": labels,
        "merges": merges,
        "terms": terms,
        "split": {
            "source": f"{UPSTREAM}:data/split_json/{split_name}",
            "sha256": hashlib.sha256(split_path.read_bytes()).hexdigest(),
            "rule": "test patients as listed; every other patient of the dataset is a training patient",
            "train_patients": len(train_unique),
            "test_patients": len(test),
            "test": test,
        },
        "sampler": {key: sampler[name][key] for key in SAMPLER_KEYS},
        "notes": notes,
    }
    return entry


def format_entry(entry: dict) -> str:
    """JSON with one label / merge per line and test ids eight per line, so a reviewer can read the diff."""
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    for i, (key, value) in enumerate(entry.items()):
        comma = "," if i < len(entry) - 1 else ""
        if key in ("labels", "merges", "notes") and value:
            items = [f"    {dump(item)}" for item in value]
            lines.append(f'  "{key}": [\n' + ",\n".join(items) + f"\n  ]{comma}")
        elif key == "split":
            parts = [f'    "{k}": {dump(v)}' for k, v in value.items() if k != "test"]
            chunks = [", ".join(dump(t) for t in value["test"][j:j + 8]) for j in range(0, len(value["test"]), 8)]
            parts.append('    "test": [\n' + ",\n".join(f"      {c}" for c in chunks) + "\n    ]")
            lines.append('  "split": {\n' + ",\n".join(parts) + f"\n  }}{comma}")
        else:
            lines.append(f'  "{key}": {dump(value)}{comma}')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != entry:
        raise BuildError(f"{entry['name']}: formatting changed the data")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=HERE.parent.parent / "shared" / "reference")
    parser.add_argument("--out", type=Path, default=HERE / "datasets")
    args = parser.parse_args(argv)
    ref = args.reference
    vocabulary = json.loads((ref / "sat" / "sat-ds" / "terminology_list.json").read_text())
    sampler = json.loads((ref / "sat" / "sat" / "dataset_config_72.json").read_text())
    jsonl_names = sorted(p.stem for p in (ref / "sat" / "sat-ds" / "jsonl").glob("*.jsonl"))
    if sorted(DATASETS) != jsonl_names:
        raise BuildError(f"table and jsonl files differ: {sorted(set(DATASETS) ^ set(jsonl_names))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in jsonl_names:
        entry = build_entry(name, DATASETS[name], ref, vocabulary, sampler)
        (args.out / f"{name}.json").write_text(format_entry(entry))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BuildError as exc:
        sys.exit(f"build_manifest: {exc}")
