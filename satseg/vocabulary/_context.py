"""The words around a structure name that are not the structure: imaging, task, region context and filler.

A prompt such as "Pancreas in contrast-enhanced abdominal CT" is read as words, each labelled from a small
lexicon (:mod:`satseg.vocabulary._lexicon`; multi-word entries first, longest first):

- ``modality``: imaging modality and sequence words (``ct``, ``t2-weighted``, ``flair``, ``contrast-enhanced``,
  ``pet/ct``); those that name a modality are kept so that a contradiction with ``--modality`` can be refused;
- ``imaging``: ``scan``, ``image``, ``series``, ``axial`` …;
- ``task``: ``segment``, ``delineation``, ``contour``, ``boundaries``, ``mask``, ``segmentation target``,
  ``visualized``, ``identified`` …;
- ``filler``: articles, possessives, ``please``, ``entire`` …;
- ``preposition``: set aside only where it introduces or follows words that are set aside ("on CT");
- ``region``: body-region words (``abdominal``, ``chest``, ``head and neck``, ``whole-body``), set aside only in
  the second pass and only as a phrase introduced by a preposition ("in the abdomen", "of the thoracic cavity")
  or directly before imaging words ("abdominal CT") — never in front of a structure ("thoracic aorta" keeps
  "thoracic", and is refused when no such term is trained).

:func:`set_aside` returns the words kept (as text for the resolver) and what was set aside, per pass. Nothing
here decides what a structure is; the resolver must still match every kept word.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from satseg.vocabulary._lexicon import (
    CONTENT,
    FILLER,
    IMAGING,
    LEXICON,
    LONGEST,
    LONGEST_NAME,
    MODALITY,
    PREPOSITION,
    REGION,
    SEPARATOR,
    SEQUENCE_BEFORE,
    SEQUENCE_NEIGHBOURS,
    SET_ASIDE,
)
from satseg.vocabulary._text import canonical, light, sides_out_of_parens

_BOUNDARY_WORDS = frozenset({"and", "or", "plus"})
_LEVEL = re.compile(r"^[ctls]\d{1,2}$")
_TOKEN = re.compile(r"[a-z0-9]+|[,;+&/:()]")
_BREAKS = frozenset(":()")  # end a phrase for the context rules; never part of the kept text
_COMPOUNDS = [(re.compile(p), r) for p, r in (
    (r"\bpet\s*[/-]?\s*ct\b", "petct"), (r"\bpet\s*[/-]?\s*mri?\b", "petmr"), (r"\bt2\s*\*", "t2 star"),
    (r"\b(\w+)'s\b", r"\1"), (r"\b\d(?:\.\d)?\s*t\b", "fieldstrength"), (r"(?<=[a-z]{3})\s*/\s*(?=[a-z]{3})", " / "),
    (r"\b\d+(?:\.\d+)?\s*(?:mm|cm)\b", "lesionsize"), (r"\s+-\s+", " : "),  # "a 2 cm mass"; "MRI brain - hippocampus"
)]


@dataclass
class Word:
    text: str  # as typed (lower case), or the correction
    canon: str  # canonical form used for labels
    label: str = CONTENT
    names: str | None = None  # modality this word names ("ct", "mri", "pet", "pet+ct"), if any
    where: bool = False  # a set-aside region word that says where the structure is (not the scan)


def words_of(text: str, names: Callable[[str], bool] = lambda phrase: False) -> list[Word]:
    """The prompt as labelled words and separators (``,`` ``;`` ``+`` ``&`` ``/``); ``names(phrase)`` says
    whether a phrase of two or more words is a trained name (those words are never context)."""
    s = light(sides_out_of_parens(text))
    for pattern, replacement in _COMPOUNDS:
        s = pattern.sub(replacement, s)
    out = [Word(t, t if not t.isalpha() else canonical(t)) for t in _TOKEN.findall(s)]
    label(out, names)
    return out


def label(words: list[Word], names: Callable[[str], bool] = lambda phrase: False) -> None:
    """Label each word in place: trained names of 2+ words first ("mediastinal tissue"), unless they are a
    region phrase ("thoracic cavity"), then the lexicon (longest phrase first)."""
    protected = [False] * len(words)
    for i in range(len(words)):
        for n in range(min(LONGEST_NAME, len(words) - i), 1, -1):
            span = words[i:i + n]
            if any(w.text in ",;+&/:()" for w in span) or _is_glue(span[0]) or _is_glue(span[-1]):
                continue
            region = LEXICON.get(tuple(w.canon for w in span), (None,))[0] == REGION or all(
                LEXICON.get((w.canon,), (None,))[0] in (REGION, FILLER) for w in span)
            if not region and names(" ".join(w.text for w in span)):
                protected[i:i + n] = [True] * n
                break
    i = 0
    while i < len(words):
        if words[i].text in ",;+&/:()":
            words[i].label = SEPARATOR
            i += 1
            continue
        if protected[i]:
            words[i].label, words[i].names = CONTENT, None
            i += 1
            continue
        for n in range(min(LONGEST, len(words) - i), 0, -1):
            if any(protected[i:i + n]):
                continue
            found = LEXICON.get(tuple(w.canon for w in words[i:i + n]))
            if found is not None:
                for w in words[i:i + n]:
                    w.label, w.names = found
                i += n
                break
        else:
            words[i].label = CONTENT
            i += 1
    for i, w in enumerate(words):  # "the CT volume" is the image; "liver volume" asks for a measurement
        after_imaging = i > 0 and words[i - 1].label in (MODALITY, IMAGING)
        after_article = i > 1 and words[i - 1].label == FILLER and words[i - 2].label == PREPOSITION  # "in this"
        if w.canon == "volume" and w.label == CONTENT and (after_imaging or after_article):
            w.label = IMAGING
    for i, w in enumerate(words):  # "lung window", "soft tissue window": a display setting, not a structure
        if w.canon in ("window", "level", "setting") and w.label == IMAGING:
            k = i - 1
            while k >= 0 and i - k <= 2 and words[k].label == CONTENT and words[k].text.isalpha():
                words[k].label = IMAGING
                k -= 1
    for i, w in enumerate(words):  # "segment 4" (of the liver) is a structure, not the task
        if w.canon == "segment" and i + 1 < len(words) and words[i + 1].canon.isdigit():
            w.label, w.names = CONTENT, None
    for i, w in enumerate(words):  # "t1"/"t2": a sequence only next to a sequence word
        if w.canon in ("t1", "t2") and w.label == CONTENT:
            after = words[i + 1].canon if i + 1 < len(words) else ""
            before = words[i - 1].canon if i > 0 else ""
            before_sequence = before in SEQUENCE_BEFORE or (i > 0 and words[i - 1].label in (MODALITY, IMAGING))
            after_sequence = after in SEQUENCE_NEIGHBOURS or (
                i + 1 < len(words) and words[i + 1].label in (MODALITY, IMAGING))
            k = i - 1  # "Brain MRI, T1: left thalamus": the nearest word before is an MRI word
            while k >= 0 and words[k].label == SEPARATOR:
                k -= 1
            after_mri = k >= 0 and words[k].names == "mri" and (i + 1 == len(words) or words[i + 1].label == SEPARATOR)
            if after_sequence or after_mri or (before_sequence and i == len(words) - 1):
                w.label, w.names = MODALITY, "mri"


def _is_glue(word: Word) -> bool:
    """An article or preposition: a trained name neither starts nor ends with one."""
    return LEXICON.get((word.canon,), (None,))[0] in (FILLER, PREPOSITION)


def _is_boundary(word: Word) -> bool:
    return word.label == SEPARATOR or (word.label == CONTENT and word.canon in _BOUNDARY_WORDS)


def set_aside(words: list[Word], regions: bool) -> tuple[str, list[tuple[str, str]]]:
    """(text of the kept words, [(label, words set aside)]) for one pass; ``regions`` also sets aside region
    phrases introduced by a preposition or followed by imaging words."""
    drop = [w.label in SET_ASIDE or w.text in _BREAKS for w in words]
    before = list(drop)
    _set_aside_regions(words, drop, prepositional=regions)
    if not any(w.label in (CONTENT, REGION) and not d for w, d in zip(words, drop)):
        # Nothing would be left: the first region phrase is the structure ("brain MRI", "the brain in whole-body CT").
        first = next((i for i, (d, b) in enumerate(zip(drop, before)) if d and not b), len(words))
        for i in range(first, len(words)):
            if before[i] or not drop[i] or _is_boundary(words[i]) or (i > first and words[i].label == PREPOSITION):
                break
            drop[i] = words[i].label in (PREPOSITION, FILLER)
    _drop_dangling_prepositions(words, drop)
    _structure_regions(words, drop)
    content = [i for i, (w, d) in enumerate(zip(words, drop)) if not d and w.label in (CONTENT, REGION)
               and not _is_boundary(w)]
    kept = " ".join(w.text if not d else "," for i, (w, d) in enumerate(zip(words, drop))  # "liver - tumor":
                    if not d or (w.text in _BREAKS and content and content[0] < i < content[-1]))  # two names
    aside, run = [], []
    for w, d in zip(words, drop):
        if d:
            run.append(w)
        elif run:
            aside.append(run)
            run = []
    if run:
        aside.append(run)
    return kept, [group for r in aside for group in _groups(r)]


def _structure_regions(words: list[Word], drop: list[bool]) -> None:
    """Mark set-aside region words that say where the structure is ("esophagus in the neck"), not which scan it
    is ("abdominal CT", "CT abdomen and pelvis", a heading "Abdomen:"): ``Word.where`` is True for those."""
    n = len(words)
    heading = next((i for i, w in enumerate(words) if w.text == ":"), -1)
    if heading > 0 and not all(w.label in (REGION, FILLER, MODALITY, IMAGING) for w in words[:heading]):
        heading = -1

    def reaches_scan(i: int, step: int) -> bool:
        k = i + step
        while 0 <= k < n:
            w = words[k]
            if w.label in (MODALITY, IMAGING):
                return True
            if step < 0 and w.canon == "of" and k > 0 and words[k - 1].label in (MODALITY, IMAGING):
                return True  # "MRI of the abdomen", "CT of the spine": the scan
            between = _is_boundary(w) and 0 <= k + step < n and words[k + step].label == REGION
            if w.label not in (REGION, FILLER) and not between:
                return False
            k += step
        return False

    for i, w in enumerate(words):
        w.where = (drop[i] and w.label == REGION and i > heading
                   and not reaches_scan(i, 1) and not reaches_scan(i, -1))


def structure_regions(words: list[Word]) -> list[list[str]]:
    """Runs of region words marked by :func:`set_aside` as saying where the structure is (canonical words)."""
    runs, run = [], []
    for w in words:
        if getattr(w, "where", False):
            run.append(w.canon)
        elif run and w.label not in (FILLER,):
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    return runs


def _set_aside_regions(words: list[Word], drop: list[bool], prepositional: bool) -> None:
    """Region words right before or after imaging words ("abdominal CT", "brain MRI", "CT abdomen and pelvis"),
    always; with ``prepositional`` also a preposition, then region words ("in the abdomen", "of the thoracic
    cavity"), or any words ending in imaging words ("on prostate MRI"), up to the phrase's end or words already
    set aside."""
    n = len(words)

    def ends_here(j: int) -> bool:
        return j == n or _is_boundary(words[j]) or drop[j] or words[j].label == PREPOSITION

    for i, w in enumerate(words):
        if w.label != PREPOSITION or not prepositional:
            continue
        j = i + 1
        while j < n and words[j].label in (REGION, FILLER):
            j += 1
        if any(words[k].label == REGION for k in range(i + 1, j)) and ends_here(j):
            drop[i:j] = [True] * (j - i)
            continue
        j = i + 1  # "on prostate MRI", "on CT pulmonary angiography": words ending in imaging words
        while j < n and words[j].label in (REGION, CONTENT, FILLER, MODALITY, IMAGING) and not _is_boundary(words[j]):
            # "at the L3 level": a vertebra level is a structure, never context
            if words[j].label == CONTENT and _LEVEL.match(words[j].canon):
                break
            j += 1
        if j > i + 1 and words[j - 1].label in (MODALITY, IMAGING) and ends_here(j):
            drop[i:j] = [True] * (j - i)
    i = 0
    while i < n:
        j = i
        while j < n and words[j].label == REGION:
            j += 1
        if j > i and j < n and words[j].label in (MODALITY, IMAGING):
            drop[i:j] = [True] * (j - i)
        i = max(j, i + 1)
    j = 0  # "Abdomen: liver", "Head and neck - parotid": a region heading
    while j < n and words[j].label in (REGION, FILLER, MODALITY, IMAGING):
        j += 1
    if 0 < j < n and words[j].text == ":" and any(words[k].label == REGION for k in range(j)):
        drop[:j] = [True] * j
    for i, w in enumerate(words):  # "CT abdomen and pelvis", "MRI brain": region words after imaging words
        if w.label not in (MODALITY, IMAGING) or i + 1 >= n or words[i + 1].label != REGION:
            continue
        j = i + 1
        while j < n and (words[j].label in (REGION, IMAGING, MODALITY) or (
                _is_boundary(words[j]) and j + 1 < n and words[j + 1].label == REGION)):
            j += 1
        if ends_here(j):
            drop[i + 1:j] = [True] * (j - i - 1)


def _groups(run: list[Word]) -> list[tuple[str, str]]:
    """A set-aside run as (label, words) groups; prepositions and fillers go with the words after them."""
    groups: list[list] = []
    pending: list[Word] = []
    for w in (w for w in run if w.text not in _BREAKS and w.label != SEPARATOR):
        if w.label in (PREPOSITION, FILLER):
            pending.append(w)
            continue
        label = w.label if w.label != CONTENT else IMAGING  # "on prostate MRI": words naming the scan
        if groups and groups[-1][0] == label and not pending:
            groups[-1][1].append(w)
        else:
            groups.append([label, pending + [w]])
        pending = []
    if pending:
        if groups:
            groups[-1][1].extend(pending)
        else:
            groups.append([pending[0].label, pending])
    return [(label, " ".join(w.text for w in ws)) for label, ws in groups if ws]


def _drop_dangling_prepositions(words: list[Word], drop: list[bool]) -> None:
    """A preposition with only set-aside words between it and the phrase's start or end goes too."""
    n = len(words)
    for i, w in enumerate(words):
        if w.label != PREPOSITION or drop[i]:
            continue
        j = i + 1
        while j < n and not _is_boundary(words[j]) and (drop[j] or words[j].label == PREPOSITION):
            j += 1
        after_empty = j == n or _is_boundary(words[j])
        k = i - 1
        while k >= 0 and not _is_boundary(words[k]) and (drop[k] or words[k].label == PREPOSITION):
            k -= 1
        before_empty = k < 0 or _is_boundary(words[k])
        if after_empty or before_empty:
            drop[i] = True
            for m in range(i + 1, j):
                drop[m] = True


def named_modalities(words: list[Word]) -> list[tuple[str, str]]:
    """(word, modality) for each word that names an imaging modality."""
    return [(w.text, w.names) for w in words if w.label == MODALITY and w.names]
