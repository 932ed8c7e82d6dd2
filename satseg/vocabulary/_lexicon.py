"""The context lexicon: imaging, task, filler, preposition and body-region words, with the modality each
imaging word names and the SAT body regions each region word names. Data only; :mod:`satseg.vocabulary._context`
labels a prompt's words with it.
"""

from __future__ import annotations

from satseg.vocabulary._text import canonical

MODALITY, IMAGING, TASK, FILLER, PREPOSITION, REGION, SEPARATOR, CONTENT = (
    "modality", "imaging", "task", "filler", "preposition", "region", "separator", "content")
SET_ASIDE = frozenset({MODALITY, IMAGING, TASK, FILLER})

# phrase (canonical words) → modality it names ("" for sequence/contrast words that name none).
_MODALITY_PHRASES = {
    "ct": "ct", "cta": "ct", "cect": "ct", "ncct": "ct", "hrct": "ct", "cbct": "ct", "ctpa": "ct", "mdct": "ct",
    "computed tomography": "ct", "computerized tomography": "ct", "computerised tomography": "ct", "cat": "ct",
    "mri": "mri", "mr": "mri", "mra": "mri", "cmr": "mri", "magnetic resonance": "mri", "t1w": "mri",
    "t2w": "mri", "t1c": "mri", "t1ce": "mri", "t1gd": "mri", "t1wi": "mri", "t2wi": "mri", "flair": "mri",
    "dwi": "mri", "adc": "mri", "swi": "mri", "dixon": "mri", "stir": "mri", "mprage": "mri", "cine": "mri",
    "lge": "mri", "late gadolinium enhancement": "mri", "gadolinium": "mri", "gd": "mri", "bssfp": "mri",
    "ssfp": "mri", "diffusion weighted": "mri", "diffusion": "mri", "proton density": "mri", "t2 star": "mri",
    "pet": "pet", "petct": "pet+ct", "petmr": "pet+mri", "fdg": "pet", "psma": "pet", "suv": "pet",
    "positron emission tomography": "pet", "dotatate": "pet",
    "contrast": "", "post": "", "pre": "", "contrast enhanced": "", "enhanced": "", "non contrast": "",
    "noncontrast": "",
    "unenhanced": "", "nonenhanced": "", "non enhanced": "", "post contrast": "", "pre contrast": "",
    "postcontrast": "", "precontrast": "", "iv contrast": "", "intravenous contrast": "", "ce": "",
    "arterial phase": "", "venous phase": "", "portal venous phase": "", "portal phase": "", "delayed phase": "",
    "nephrographic phase": "", "portal venous": "", "hepatobiliary phase": "", "phase": "", "native": "",
    "low dose": "", "dual energy": "", "multiphase": "",
    "weighted": "", "fat suppressed": "", "fat saturated": "", "fat sat": "", "avid": "",
    "angiography": "", "angiogram": "", "venography": "", "urography": "", "enterography": "", "colonography": "",
    "perfusion": "", "dti": "mri", "tractography": "mri", "mpmri": "mri", "bpmri": "mri", "multiparametric": "",
    "biparametric": "", "dess": "mri", "vibe": "mri", "haste": "mri", "trufi": "mri", "fiesta": "mri",
    "bravo": "mri", "spgr": "mri", "gre": "mri", "tse": "mri", "fse": "mri", "mdixon": "mri", "lava": "mri",
    "thrive": "mri", "dce": "mri", "pdfs": "mri", "mrcp": "mri", "mrv": "mri", "mrangiography": "mri",
    "ctangiography": "ct", "urogram": "",
    "t1 weighted": "mri", "t2 weighted": "mri",
}
# "t1"/"t2" are also vertebrae: a sequence only next to one of these words.
SEQUENCE_NEIGHBOURS = frozenset({"weighted", "w", "mri", "mr", "sequence", "image", "imaging", "scan", "contrast",
                                  "post", "pre", "fs", "fat", "map", "signal", "hyperintense", "hypointense"})
SEQUENCE_BEFORE = frozenset({"on", "in", "using", "from", "with"})
_IMAGING = ("scan", "image", "imaging", "study", "series", "sequence", "slice", "view", "acquisition", "exam",
            "examination", "dataset", "data", "modality", "cross sectional", "axial", "coronal",
            "sagittal", "3d", "3 d", "three dimensional", "volumetric", "tomogram", "film", "picture", "protocol",
            "tomography", "tomographic", "scanner", "reconstruction", "window", "short axis", "long axis",
            "four chamber", "4 chamber", "two chamber", "2 chamber", "three chamber", "3 chamber", "plane",
            "thin slice", "thick slice", "kernel", "level", "setting", "fieldstrength", "inspiration", "expiration",
            "inspiratory", "expiratory", "breath hold", "volumetry", "volumetric analysis", "voxel", "pixel")
_TASK = (
    "segment", "segmentation", "segmented", "segmenting", "delineate", "delineation", "delineated", "delineating",
    "contour", "contouring", "contoured", "outline", "outlining", "outlined", "boundary", "border", "margin",
    "mask", "label", "labeling", "labelling", "labeled", "labelled", "annotation", "annotate", "annotated",
    "target", "segmentation target", "roi", "voi", "region of interest", "volume of interest",
    "structure of interest", "organ at risk", "oar", "based", "guided", "planning", "radiotherapy",
    "extract", "extraction", "identify", "identification", "identified",
    "locate", "localize", "localise", "localization", "localisation", "localized", "detect", "detection",
    "detected", "find", "show", "showing", "shown", "highlight", "highlighting", "mark", "visualize",
    "visualise", "visualization", "visualisation", "visualized", "visualised", "depict", "depicted", "depicting",
    "seen", "visible", "demonstrated", "captured", "imaged", "appearing", "observed", "as seen", "as shown",
    "as visualized", "as depicted", "please", "i want", "i need", "i would like", "give me", "get", "generate",
    "create", "produce", "draw", "auto", "automatic", "automated", "autosegment", "auto segment", "want", "need",
    "obtain", "compute", "quantify", "can you", "could you", "would you", "for me", "task", "prompt", "class",
    "structure", "anatomy", "anatomical", "anatomic", "located", "situated", "lying", "delimit", "predict",
    "prediction", "map", "mapping", "evaluate", "evaluation", "assess", "assessment", "of interest",
    "trauma", "staging", "restaging", "follow up", "followup", "screening", "baseline", "preoperative",
    "postoperative", "emergency", "routine", "surveillance", "workup", "work up", "where", "what", "how",
    "diagnostic", "clinical", "research", "provide", "return", "output", "perform", "run", "do", "make", "needed",
    "required", "request", "requested", "presence", "reveal", "revealing", "revealed", "characterize",
    "characterized", "characterization", "characterise", "characterised", "mapped", "documented", "document",
    "morphology", "morphological", "architecture", "structural", "analysis", "analyze", "analyse", "visualizing",
    "visualising", "demonstrating", "demonstrate", "displaying", "display", "displayed", "highlighted", "evidence",
    "radiologic", "radiological", "radiographic", "assessed", "quantified", "quantification", "outlines", "depicts",
    "shows", "features", "extent", "tissue", "parenchyma", "parenchymal", "measured", "measurement", "detailed",
    "appearance", "image based", "based", "examined", "belong", "belonging", "belongs to", "belonging to",
)
_FILLER = ("the", "a", "an", "this", "that", "these", "those", "it", "its", "their", "his", "her", "my", "our",
           "your", "patient", "patient s", "s", "subject", "some", "any", "all", "entire", "whole", "complete",
           "full", "only", "just", "here", "there", "is", "are", "be", "which", "normal", "overall", "each",
           "every", "respective", "corresponding", "given", "me", "us", "we", "you", "i", "lesionsize")
_PREPOSITIONS = ("in", "on", "of", "from", "within", "at", "using", "with", "for", "by", "via", "into", "across",
                 "inside", "throughout", "over", "as", "to", "through")
_REGIONS = ("abdomen", "abdominal", "abdominopelvic", "chest", "thorax", "thoracic", "pelvis", "pelvic", "head",
            "neck", "head and neck", "brain", "cranial", "intracranial", "whole body", "body", "torso", "limb",
            "extremity", "lower limb", "upper limb", "leg", "arm", "cardiac", "spine", "spinal", "lumbar",
            "cervical", "mediastinum", "mediastinal", "retroperitoneum", "retroperitoneal", "upper abdomen",
            "lower abdomen", "region", "area", "cavity", "compartment", "thoracic cavity", "abdominal cavity",
            "pelvic cavity", "neuro", "musculoskeletal", "msk", "cardiothoracic", "thoracoabdominal", "shoulder",
            "knee", "elbow", "wrist", "ankle", "foot", "hand", "face", "thigh", "forearm", "upper arm", "calf",
            "orbit", "orbital", "skull base", "sinonasal", "hepatobiliary")

# Region word → SAT body regions it names (words absent here, "region", "area", "body", narrow nothing).
_AB, _TH, _PE, _HN, _BR, _SP, _LL, _UL = ("abdomen", "thorax", "pelvis", "head and neck", "brain", "spine",
                                          "lower limb", "upper limb")
REGION_OF = {
    "abdomen": {_AB}, "abdominal": {_AB}, "retroperitoneum": {_AB}, "retroperitoneal": {_AB},
    "hepatobiliary": {_AB}, "abdominopelvic": {_AB, _PE}, "thoracoabdominal": {_TH, _AB},
    "chest": {_TH}, "thorax": {_TH}, "thoracic": {_TH, _SP}, "mediastinum": {_TH}, "mediastinal": {_TH},
    "cardiac": {_TH}, "cardiothoracic": {_TH}, "pelvis": {_PE}, "pelvic": {_PE},
    "head": {_HN, _BR}, "neck": {_HN}, "face": {_HN}, "orbit": {_HN}, "orbital": {_HN}, "sinonasal": {_HN},
    "skull": {_HN}, "brain": {_BR}, "cranial": {_BR}, "intracranial": {_BR}, "neuro": {_BR},
    "spine": {_SP}, "spinal": {_SP}, "lumbar": {_SP}, "cervical": {_SP, _HN},
    "leg": {_LL}, "thigh": {_LL}, "knee": {_LL}, "calf": {_LL}, "foot": {_LL}, "ankle": {_LL},
    "arm": {_UL}, "hand": {_UL}, "forearm": {_UL}, "wrist": {_UL}, "elbow": {_UL}, "shoulder": {_UL},
    "limb": {_LL, _UL}, "extremity": {_LL, _UL},
}
# Neighbouring regions a structure may be named in without contradiction ("sacrum in the pelvis", "iliac artery
# in the pelvis", "scapula of the chest").
REGION_NEIGHBOURS = {_AB: {_PE, _SP}, _PE: {_AB, _SP, _LL}, _TH: {_SP, _UL}, _HN: {_BR, _SP},
                     _BR: {_HN}, _SP: set(), _LL: {_PE}, _UL: {_TH}}
# Region word → the adjective regional terms are named with ("esophagus in the neck" → "cervical esophagus").
REGION_ADJECTIVE = {"neck": "cervical", "abdomen": "abdominal", "chest": "thoracic", "thorax": "thoracic",
                    "pelvis": "pelvic", "head": "head and neck", "brain": "cerebral", "spine": "spinal"}

LEXICON: dict[tuple[str, ...], tuple[str, str | None]] = {}
for _phrase, _named in _MODALITY_PHRASES.items():
    LEXICON[tuple(_phrase.split())] = (MODALITY, _named)
for _label, _phrases in ((IMAGING, _IMAGING), (TASK, _TASK), (FILLER, _FILLER), (PREPOSITION, _PREPOSITIONS),
                         (REGION, _REGIONS)):
    for _phrase in _phrases:
        LEXICON.setdefault(tuple(canonical(w) for w in _phrase.split()), (_label, None))
LONGEST = max(len(k) for k in LEXICON)
LONGEST_NAME = 6
WORDS = frozenset(w for k in LEXICON for w in k) | {"t1", "t2"}
