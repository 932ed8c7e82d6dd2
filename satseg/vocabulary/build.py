"""Build ``vocabulary.json`` from SAT's terminology list, SAT's knowledge file and TotalSegmentator's class map.

    python -m satseg.vocabulary.build --reference ../shared/reference \\
        --totalseg-map ~/.cache/satseg-test-data/totalseg/map_to_binary.py

Inputs: ``sat-ds/terminology_list.json`` (the 498 trained ``modality_name`` entries with regions, datasets and
lesion flags), ``sat-pretrain/supplementary_lab2def_gpt.json`` (only the names found in its ``synonyms`` lists are
kept, never its definitions), TotalSegmentator's ``map_to_binary.py`` (read with :mod:`ast`, never executed;
``class_map["total"]`` and ``class_map["total_mr"]``) and the hand-written ``curated.json`` beside this file
(synonyms, abbreviations, word forms, and the named groups with the source of each group's membership).
The output is sorted and has no time stamps, so the same inputs give byte-identical files.

Synonyms from the knowledge file are noisy: the same name is listed under several concepts, and broader words
("chest", "canal") appear as synonyms of one organ. An alias that points at two different structures, or a
one-word alias that also names another structure, is written as *ambiguous* and refused at resolution time.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import re
import sys
from collections import defaultdict
from pathlib import Path

from satseg.vocabulary._text import LATERALITY, phrase_key

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
OUTPUT = HERE / "vocabulary.json"
CURATED = HERE / "curated.json"
TERMINOLOGY = "sat-ds/terminology_list.json"
KNOWLEDGE = "sat-pretrain/supplementary_lab2def_gpt.json"
TOTALSEG_TASKS = ("total", "total_mr")
FORMAT_VERSION = 1

# Precedence of alias sources when two sources give the same key the same target.
_METHOD_RANK = {"abbreviation": 0, "totalsegmentator": 1, "synonym": 2}

_LEVEL_NAME = re.compile(r"^(cervical|thoracic|lumbar|sacral) vertebrae (\d+) \(([ctls]\d+)\)$")
_DISC_NAME = re.compile(r"^intervertebral disc between .+? \(([ctls]\d+)\) and (?:.+? \(([ctls]\d+)\)|sacrum)$")
_REGION_WORDS = frozenset({
    "abdomen", "abdominal", "abdominal cavity", "chest", "thorax", "thoracic", "pelvis", "pelvic", "body",
    "entire body", "head", "neck", "head and neck", "anatomical", "echocardiographic", "lesion", "low limb leg",
})

# Knowledge-file synonyms are phrases such as "CT scan of the whole body depicting the left femur"; these
# patterns cut them down to the structure name ("left femur").
_LEAD = [re.compile(p) for p in (
    r"^.*? (?:depicting|highlighting|showing|visualizing|displaying|revealing) (?:the )?",
    r"^(?:ct|mr|mri|pet|cta|mra)[\w -]*? of (?:the )?",
    r"^(?:[\w-]+ )?(?:visuali[sz]ation|presence|segmentation|delineation|detection|identification|localization|"
    r"assessment|evaluation|analysis|characterization|demarcation|mapping|boundaries|evidence|definition) of (?:the )?",
)]
_CUT = re.compile(
    r" (?:in|observed|detected|visuali[sz]ed|identified|segmentation|segmented|delineation|delineated|mapped|mapping|"
    r"characterized|characterization|documented|localized|localization|demonstrating|assessed|assessment|via|on|"
    r"within|quantified|detection|identification|visualization|outlining|demarcation|anatomical|anatomic|"
    r"morphological|structural|spatial|volumetric|3d|features|manifestation|boundary|definition|extent|volume|"
    r"content|ultrastructure|throughout|as|analysis|evaluation|endocardial|osseous|tissue|architecture|anatomy|"
    r"morphology|parenchyma|lumen|structures?|chamber|field|diaphysis|shaft|body|boundar(?:y|ies)|depicted|imaged)\b.*$")
# A one-word knowledge-file synonym with an adjective ending is a word form of its organ ("hepatic" → liver).
_ADJECTIVE = re.compile(r"^[a-z]{4,}(?:al|ic|ar|ary|eal|ine|ous|iac)$")
_CONTEXT = re.compile(r"\b(?:ct|mr|mri|imaging|scans?|images?|t1|t2|microscopy|ultrasound|tomograph\w*|resonance|"
                      r"echocardiograph\w*|fdg|uptake|segment(?:ed)?)\b")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_reference_file(reference: Path, relative: str) -> Path:
    """``relative`` under ``reference`` or ``reference/sat`` (accepts the shared folder or its ``sat/``)."""
    for base in (reference, reference / "sat"):
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"{relative} not found under {reference}")


def read_totalseg_class_map(path: Path) -> dict[str, dict[int, str]]:
    """``class_map`` of TotalSegmentator's ``map_to_binary.py``, parsed as a literal (the file is not run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"no class_map assignment in {path}")


def synonym_core(text: str) -> str | None:
    """The structure name inside a knowledge-file synonym phrase, or None when none can be cut out."""
    text = " ".join(text.lower().split())
    for pattern in _LEAD:
        text = pattern.sub("", text)
    text = _CUT.sub("", text).strip()
    text = re.sub(r"^the ", "", text)
    if not text or _CONTEXT.search(text) or len(text.split()) > 6 or text in _REGION_WORDS:
        return None
    return text


class _Tables:
    """Term keys and aliases collected so far, with the lookup the build uses to place TS names and concepts."""

    def __init__(self, names: list[str]):
        self.term_by_key: dict[str, str] = {}
        for name in names:
            key = phrase_key(name)
            if key in self.term_by_key:
                raise ValueError(f"terms {self.term_by_key[key]!r} and {name!r} share the key {key!r}")
            self.term_by_key[key] = name
        self.candidates: dict[str, set[tuple[str, str, str]]] = defaultdict(set)  # key → {(term, method, source)}

    def add(self, phrase: str, term: str, method: str, source: str) -> None:
        key = phrase_key(phrase)
        if key and key not in self.term_by_key:
            self.candidates[key].add((term, method, source))

    def lookup(self, phrase: str) -> str | None:
        """Term for a phrase by key, alias, or laterality + alias ("left shoulder blade")."""
        key = phrase_key(phrase)
        if key in self.term_by_key:
            return self.term_by_key[key]
        targets = {c[0] for c in self.candidates.get(key, ())}
        if len(targets) == 1:
            return targets.pop()
        side, _, rest = key.partition(" ")
        if side in LATERALITY and rest:
            base = self.lookup(rest)
            if base is not None and phrase_key(f"{side} {base}") in self.term_by_key:
                return self.term_by_key[phrase_key(f"{side} {base}")]
        return None


def _entries(terminology: dict) -> list[dict]:
    regions: dict[str, list[str]] = defaultdict(list)
    for region, items in terminology["region_based"].items():
        for item in items:
            regions[item].append(region)
    datasets: dict[str, list[str]] = defaultdict(list)
    for dataset, items in terminology["dataset_based"].items():
        for item in items:
            datasets[item].append(dataset)
    abnormal = set(terminology["abnormal"])
    out = []
    for entry in terminology["all"]:
        modality, name = entry.split("_", 1)
        out.append({"entry": entry, "name": name, "modality": modality, "regions": sorted(regions[entry]),
                    "datasets": sorted(datasets[entry]), "abnormal": entry in abnormal})
    return sorted(out, key=lambda e: (e["name"], e["modality"]))


def _level_aliases(tables: _Tables, names: list[str]) -> list[list[str]]:
    """Aliases for vertebra levels ("l1", "vertebra l1", "lumbar 1") and lumbar discs ("l4-l5 disc")."""
    levels = []
    for name in names:
        match = _LEVEL_NAME.match(name)
        if match:
            region, number, abbr = match.groups()
            levels.append([abbr, name])
            for phrase in (abbr, f"vertebra {abbr}", f"{abbr} vertebra", f"{abbr} vertebral body"):
                tables.add(phrase, name, "abbreviation", "vertebra level")
            for phrase in (f"{region} vertebra {number}", f"{region} {number}", f"{region} vertebra {abbr}"):
                tables.add(phrase, name, "synonym", "vertebra level")
        match = _DISC_NAME.match(name)
        if match:
            upper, lower = match.group(1), match.group(2) or "s1"
            lower_number = lower[1:]
            for pair in (f"{upper} {lower}", f"{upper} {lower_number}") + ((f"{upper} sacrum",) if lower == "s1" else ()):
                for phrase in (f"{pair} disc", f"{pair} intervertebral disc", f"disc {pair}",
                               f"intervertebral disc {pair}", f"{pair} ivd"):
                    tables.add(phrase, name, "abbreviation", "intervertebral disc level")
            for phrase in (f"disc between {upper} and {lower}", f"intervertebral disc between {upper} and {lower}"):
                tables.add(phrase, name, "abbreviation", "intervertebral disc level")
    order = {"c": 0, "t": 1, "l": 2, "s": 3}
    return sorted(levels, key=lambda lv: (order[lv[0][0]], int(lv[0][1:])))


def _totalsegmentator(tables: _Tables, class_map: dict, modalities: dict[str, set[str]]) -> dict:
    section: dict = {"without_sat_term": {}, "not_trained_for_mri": []}
    for task in TOTALSEG_TASKS:
        mapping = {}
        for ts_name in class_map[task].values():
            term = tables.lookup(ts_name.replace("_", " "))
            mapping[ts_name] = term
            if term is not None:
                tables.add(ts_name.lower(), term, "totalsegmentator", f"TotalSegmentator {task}")
                if task == "total_mr" and "mri" not in modalities[term]:
                    section["not_trained_for_mri"].append(ts_name)
        section[task] = dict(sorted(mapping.items()))
        section["without_sat_term"][task] = sorted(n for n, t in mapping.items() if t is None)
    section["not_trained_for_mri"].sort()
    return section


def _knowledge_synonyms(tables: _Tables, knowledge: dict) -> list[str]:
    """Add the names found in the knowledge file's synonym lists; return the concepts no SAT term matches."""
    unmapped = []
    for concept in sorted(knowledge):
        phrases = knowledge[concept].get("synonyms") or []
        target = tables.lookup(concept)
        if target is None:
            target = tables.lookup(synonym_core(concept) or "")
        if target is None:
            if phrases:
                unmapped.append(concept)
            continue
        if synonym_core(concept) == concept:
            tables.add(concept, target, "synonym", "SAT knowledge file")
        for phrase in phrases:
            core = synonym_core(phrase)
            if core is not None:
                tables.add(core, target, "synonym", "SAT knowledge file")
    return unmapped


def _word_collisions(tables: _Tables, key: str, target: str) -> list[str]:
    """Other structures a one-word alias also names ("canal" → internal auditory canal, besides spinal canal)."""
    target_key = phrase_key(target)
    others = set()
    for term_key, name in tables.term_by_key.items():
        words = term_key.split()
        base = " ".join(words[1:]) if words[0] in LATERALITY else term_key
        if key in base.split() and target_key not in base and base not in target_key:
            others.add(tables.term_by_key.get(base, base))
    return sorted(others)


def _knowledge_words(knowledge: dict, tables: _Tables) -> list[str]:
    """Words of 4+ letters in the knowledge file (names, definitions, relations, synonyms) that no term or alias
    uses: real words, so a prompt word among them is never "corrected" into a term ("cerebrum" is not a typo of
    "cerebral"). Only the sorted word list is kept, never the prose."""
    texts: list[str] = []
    for concept, record in knowledge.items():
        texts += [concept, record.get("cleaned_definition") or ""]
        texts += [part for relation in record.get("relations") or [] for part in relation]
        texts += record.get("synonyms") or []
    used = {w for key in (*tables.term_by_key, *tables.candidates) for w in key.split()}
    words = {w for text in texts if isinstance(text, str) for w in re.findall(r"[a-z]{4,}", text.lower())}
    return sorted(words - used)


def _word_forms(tables: _Tables, curated: dict[str, str]) -> dict[str, str]:
    """Adjective → organ noun: the knowledge file's one-word adjective synonyms of a term ("hepatic" → liver),
    then the curated table, which wins where both name a word."""
    forms: dict[str, str] = {}
    for key, found in tables.candidates.items():
        targets = {term for term, _, _ in found}
        if (_ADJECTIVE.match(key) and len(targets) == 1 and all(src == "SAT knowledge file" for _, _, src in found)
                and len(phrase_key(next(iter(targets))).split()) <= 2):
            forms[key] = phrase_key(next(iter(targets)))
    forms.update({phrase_key(w): phrase_key(n) for w, n in curated.items()})
    return forms


def _groups(curated: dict, tables: _Tables, modalities: dict[str, set[str]]) -> tuple[dict, dict]:
    """({group name: {"members", "missing", "refused", "source"}}, {name key: group name}) from curated.json
    "groups"; every member must be a trained term and no name may be a term's own name."""
    groups: dict[str, dict] = {}
    keys: dict[str, str] = {}
    for name, group in sorted(curated.items()):
        unknown = [m for m in group["members"] if m not in modalities]
        if unknown or not group.get("source"):
            raise ValueError(f"curated group {name!r}: members {unknown} are no trained terms, or no source")
        groups[name] = {"members": list(group["members"]), "missing": list(group.get("missing", [])),
                        "refused": group.get("refused", ""), "source": group["source"]}
        for phrase in [name, *group.get("names", [])]:
            key = phrase_key(phrase)
            if key in tables.term_by_key or keys.get(key, name) != name:
                raise ValueError(f"curated group name {phrase!r} is already a term or another group")
            keys[key] = name
    return groups, dict(sorted(keys.items()))


def _resolvable(tables: _Tables, phrase: str) -> bool:
    key = phrase_key(phrase)
    return (key in tables.term_by_key or tables.lookup(phrase) is not None
            or all(f"{side} {key}" in tables.term_by_key for side in LATERALITY))


def build(reference: Path, totalseg_map: Path) -> dict:
    """The vocabulary document (see module docstring) from the source files."""
    terminology_path = find_reference_file(reference, TERMINOLOGY)
    knowledge_path = find_reference_file(reference, KNOWLEDGE)
    terminology = json.loads(terminology_path.read_text(encoding="utf-8"))
    knowledge = json.loads(knowledge_path.read_text(encoding="utf-8"))
    curated = json.loads(CURATED.read_text(encoding="utf-8"))

    entries = _entries(terminology)
    modalities: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        modalities[entry["name"]].add(entry["modality"])
    names = sorted(modalities)
    tables = _Tables(names)

    for section, method in (("abbreviations", "abbreviation"), ("synonyms", "synonym")):
        for phrase, term in curated[section].items():
            if term not in modalities:
                raise ValueError(f"curated {section} entry {phrase!r} points at unknown term {term!r}")
            tables.add(phrase, term, method, "satseg curated")
    levels = _level_aliases(tables, names)
    for name in names:  # "transition zone of prostate" is also "prostate transition zone"
        head, of, tail = name.partition(" of ")
        if of and " of " not in tail:
            tables.add(f"{tail} {head}", name, "synonym", "word order")
    totalseg = _totalsegmentator(tables, read_totalseg_class_map(totalseg_map), modalities)
    unmapped = _knowledge_synonyms(tables, knowledge)

    aliases, ambiguous = {}, {}
    for key, found in sorted(tables.candidates.items()):
        targets = sorted({term for term, _, _ in found})
        if len(targets) > 1:
            ambiguous[key] = targets
            continue
        from_knowledge_only = all(source == "SAT knowledge file" for _, _, source in found)
        if from_knowledge_only and len(key.split()) == 1 and _word_collisions(tables, key, targets[0]):
            ambiguous[key] = sorted({targets[0], *_word_collisions(tables, key, targets[0])})
            continue
        term, method, source = min(found, key=lambda f: (_METHOD_RANK[f[1]], f[2] != "satseg curated", f[2]))
        aliases[key] = {"term": term, "method": method, "source": source}
    not_synonyms = {phrase_key(f"{side} {phrase}").strip() for phrase in curated.get("not_synonyms", [])
                    for side in ("", *LATERALITY)}
    for key in not_synonyms:  # a part or a regional piece of a term is not the term ("humeral head")
        aliases.pop(key, None)
        ambiguous.pop(key, None)
    for phrase, options in curated["ambiguous"].items():
        for option in options:
            if not _resolvable(tables, option):
                raise ValueError(f"curated ambiguous option {option!r} of {phrase!r} does not resolve")
        key = phrase_key(phrase)
        aliases.pop(key, None)
        ambiguous[key] = sorted(set(options) | set(ambiguous.get(key, [])))

    term_words = {w for key in tables.term_by_key for w in key.split()}
    for word, noun in curated["adjectives"].items():
        if not set(phrase_key(noun).split()) <= term_words:
            raise ValueError(f"curated adjective {word!r} points at {noun!r}, a word no term uses")
    word_forms = _word_forms(tables, curated["adjectives"])
    for word, noun in word_forms.items():  # "splenic" alone is the spleen, though "splenic vein" names a vein
        target = tables.lookup(noun)
        if target is not None and word not in curated["ambiguous"]:
            ambiguous.pop(word, None)
            aliases[word] = {"term": target, "method": "synonym", "source": "word form"}
    groups, group_keys = _groups(curated.get("groups", {}), tables, modalities)
    for key in group_keys:  # a group name is no alias: "liver lobes" must not become left + right lobe
        aliases.pop(key, None)
        ambiguous.pop(key, None)
    return {
        "format_version": FORMAT_VERSION,
        "sources": {
            "terminology_list.json": sha256(terminology_path),
            "supplementary_lab2def_gpt.json": sha256(knowledge_path),
            "map_to_binary.py": sha256(totalseg_map),
            "curated.json": sha256(CURATED),
        },
        "entries": entries,
        "aliases": dict(sorted(aliases.items())),
        "ambiguous": dict(sorted(ambiguous.items())),
        "adjectives": dict(sorted(word_forms.items())),
        "vertebra_levels": levels,
        "groups": groups,
        "group_keys": group_keys,
        "totalsegmentator": totalseg,
        "knowledge_concepts_without_sat_term": unmapped,
        "knowledge_words": sorted(set(_knowledge_words(knowledge, tables)) | set(curated.get("real_words", []))),
    }


def render(document: dict) -> str:
    return json.dumps(document, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m satseg.vocabulary.build", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="folder with sat-ds/terminology_list.json and sat-pretrain/ (or its parent)")
    parser.add_argument("--totalseg-map", type=Path, required=True, help="TotalSegmentator's map_to_binary.py")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write (default: {OUTPUT})")
    args = parser.parse_args(argv)
    document = build(args.reference, args.totalseg_map)
    from satseg.io.atomic import write_text_atomic  # lazily: satseg.io also brings the scan readers

    write_text_atomic(args.output, render(document))
    summary = (f"{len(document['entries'])} entries, {len(document['aliases'])} aliases, "
               f"{len(document['ambiguous'])} ambiguous → {args.output}")
    sys.stderr.write(summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
