"""Issue 15 "Done when": the answer-first table of free-text phrasings (``tests/data/phrasings/*.tsv``).

Every row was written with its expected result decided from anatomy and ``vocabulary.json`` BEFORE any resolver
was run on it; never change an expectation to match the resolver's output unless the expectation is factually
wrong about the vocabulary (then say so in a ``#`` comment next to the row).

File format (UTF-8, tab-separated, ``#`` comment lines anywhere, first non-comment line is the header)::

    style   modality   prompt   expected

* ``style``: descriptive | untrained-modality | misspelling | word-order | finding | nonsense | group | exact
* ``modality``: ct | mri | pet (passed to :func:`satseg.vocabulary.resolve`)
* ``expected``: trained term names of that modality joined with `` | `` (sorted), or ``REFUSE`` (any refusal), or
  ``REFUSE:untrained-modality`` (a refusal whose message says which modalities the term was *trained* on: the
  word "trained" and a modality other than the requested one, outside quoted text such as the echoed prompt).
  The finding rows follow the lesion rule written at the top of ``findings.tsv``.

Each row is classified as

* **correct**: the expected term set without refusal, or a refusal where one is expected (for
  ``REFUSE:untrained-modality`` the message must say "trained" and name another modality, see above);
* **missed**: refused although terms were expected, or refused for another reason than the untrained modality;
* **wrong-silent**: resolved to another term set than expected, or resolved where a refusal was expected. A
  resolution that only carries a warning about the modality is NOT a refusal, so it is wrong-silent here;
* **crashed**: any exception other than :class:`satseg.errors.InputError` (never allowed).

Assertions: (1) the table has >= 600 rows and the per-style minimums of issue 15; (2) every expected term exists
in the vocabulary for the row's modality; (3) no crash, at most the allowed number of wrong-silent resolutions,
and accuracy >= the floor.

**Two levels.** Issue 15 is met only when the GOAL assertions pass, i.e. with ``SATSEG_TABLE_GOAL=1``:
accuracy >= ``ACCURACY_FLOOR`` (0.97) and zero wrong-silent resolutions. Without that variable the test guards
progress only: accuracy >= ``RATCHET`` and wrong-silent <= ``WRONG_SILENT_RATCHET``, the values the committed
resolver reached when the table was last extended. Whoever improves the resolver raises ``RATCHET`` (rounded down
to 0.01) and lowers ``WRONG_SILENT_RATCHET`` in the same commit; never the other way round. History: the resolver
of 815a958 (before issue 15) reached 0.281 with 98 wrong-silent (91 untrained-modality warnings) on the first 687
rows; 31f735c reached 1.000 on those 687 but 0.919 with 2 wrong-silent on the 136 rows of ``batch2_mixed.tsv``
written after it, and c6f3914/266d780 reached 0.823 with 0 wrong-silent on the 96 rows of ``batch3_mixed.tsv``
before it had seen them -- rows the resolver has not been tuned on are the honest measure of generality. The 116
rows of the named groups (``groups.tsv``, rewritten when curated groups landed) and ``batch4_mixed.tsv`` were written
before their mechanisms: the resolver of 5634bb5 reached 0.900 with 5 wrong-silent on the 1035 rows then (the group
rows 0.315: "liver segments" read as the liver, "liver lobes" as left + right lobe, "the four chambers of the
heart" as the heart).

See the report: ``pytest tests/test_vocabulary_table.py -s`` or ``python tests/test_vocabulary_table.py``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import satseg.vocabulary
from satseg.errors import InputError
from satseg.vocabulary import resolve

ACCURACY_FLOOR = 0.97  # issue 15 goal (with SATSEG_TABLE_GOAL=1), together with zero wrong-silent resolutions
RATCHET = 0.99  # accuracy the committed resolver reached on this table (0.998 at 281be46); only raise it
WRONG_SILENT_RATCHET = 0  # wrong-silent resolutions it made (0 at 281be46); only ever lower it

GOAL = os.environ.get("SATSEG_TABLE_GOAL", "").strip() not in ("", "0")

TABLE_DIR = Path(__file__).parent / "data" / "phrasings"
STYLES = ("descriptive", "untrained-modality", "misspelling", "word-order", "finding", "nonsense", "group", "exact")
MIN_ROWS = 600
MIN_PER_STYLE = {"descriptive": 200, "untrained-modality": 60, "misspelling": 40, "word-order": 40, "finding": 40,
                 "nonsense": 40, "group": 40}
REFUSE, UNTRAINED = "REFUSE", "REFUSE:untrained-modality"
MODALITY_WORD = re.compile(r"\b(ct|mri?|pet)\b", re.IGNORECASE)
SHOW = 30  # failures listed per class


@dataclass(frozen=True)
class Row:
    file: str
    line: int
    style: str
    modality: str
    prompt: str
    expected: str  # REFUSE, UNTRAINED, or "term | term"

    @property
    def terms(self) -> frozenset:
        return frozenset() if self.expected.startswith(REFUSE) else frozenset(self.expected.split(" | "))

    def __str__(self) -> str:
        return f"{self.file}:{self.line} [{self.modality}] {self.prompt!r} -> {self.expected}"


def load_table(directory: Path = TABLE_DIR) -> list[Row]:
    rows = []
    for path in sorted(directory.glob("*.tsv")):
        header = None
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            if header is None:
                header = fields
                assert header == ["style", "modality", "prompt", "expected"], f"{path.name}: header {header}"
                continue
            assert len(fields) == 4, f"{path.name}:{number}: {len(fields)} fields in {line!r}"
            rows.append(Row(path.name, number, *(f.strip() for f in fields)))
    return rows


def vocabulary_entries() -> list[dict]:
    path = Path(satseg.vocabulary.__file__).parent / "vocabulary.json"
    return json.loads(path.read_text(encoding="utf-8"))["entries"]


@dataclass(frozen=True)
class Outcome:
    row: Row
    verdict: str  # correct | missed | wrong-silent | crashed
    got: str  # what the resolver did, for the listing


def names_trained_modality(message: str, row: Row) -> bool:
    """The refusal says which modalities the term WAS trained on: "trained" and a modality other than the row's,
    outside the echoed prompt and other quoted text ("'x' is not a trained term ... 'x on MRI'" does not count)."""
    rest = re.sub(r"'[^']*'|\"[^\"]*\"", " ", message.replace(row.prompt, " "))
    named = {"mri" if m.lower().startswith("mr") else m.lower() for m in MODALITY_WORD.findall(rest)}
    return "trained" in rest.lower() and bool(named - {row.modality})


def classify(row: Row) -> Outcome:
    try:
        resolution = resolve(row.prompt, row.modality)
    except InputError as exc:  # PromptError and its subclasses: a refusal
        message = str(exc)
        if row.expected == REFUSE:
            return Outcome(row, "correct", "refused")
        if row.expected == UNTRAINED:
            return Outcome(row, "correct" if names_trained_modality(message, row) else "missed",
                           f"refused without the modality reason: {message}")
        return Outcome(row, "missed", f"refused: {message}")
    except Exception as exc:  # noqa: BLE001 - a crash on a user prompt is reported, not propagated
        return Outcome(row, "crashed", f"{type(exc).__name__}: {exc}")
    terms = frozenset(resolution.terms)
    warnings = tuple(getattr(resolution, "warnings", ()) or ())
    got = " | ".join(sorted(terms)) + (f"  (warnings: {'; '.join(warnings)})" if warnings else "")
    if row.expected.startswith(REFUSE) or terms != row.terms:
        return Outcome(row, "wrong-silent", got)
    return Outcome(row, "correct", got)


@dataclass
class Report:
    outcomes: list[Outcome]
    seconds: float

    def count(self, verdict: str, style: str | None = None) -> int:
        return sum(o.verdict == verdict and (style is None or o.row.style == style) for o in self.outcomes)

    @property
    def accuracy(self) -> float:
        return self.count("correct") / len(self.outcomes)

    def text(self) -> str:
        per_modality = collections.Counter(o.row.modality for o in self.outcomes)
        modalities = ", ".join(f"{m} {n}" for m, n in sorted(per_modality.items()))
        lines = [f"phrasing table: {len(self.outcomes)} rows ({modalities}) resolved in {self.seconds:.2f} s "
                 f"({'GOAL' if GOAL else 'ratchet'} mode)",
                 f"{'style':20} {'rows':>5} {'correct':>8} {'missed':>7} {'wrong':>6} {'crash':>6} {'accuracy':>9}"]
        for style in STYLES + (None,):
            rows = [o for o in self.outcomes if style is None or o.row.style == style]
            if not rows:
                continue
            correct = sum(o.verdict == "correct" for o in rows)
            lines.append(f"{style or 'OVERALL':20} {len(rows):5} {correct:8} {self.count('missed', style):7} "
                         f"{self.count('wrong-silent', style):6} {self.count('crashed', style):6} "
                         f"{correct / len(rows):9.3f}")
        for verdict in ("wrong-silent", "missed", "crashed"):
            failed = [o for o in self.outcomes if o.verdict == verdict]
            if failed:
                lines.append(f"-- {verdict}: {len(failed)} (first {min(SHOW, len(failed))})")
                lines += [f"   {o.row}\n      got: {o.got}" for o in failed[:SHOW]]
        return "\n".join(lines)


def run_table(rows: list[Row]) -> Report:
    start = time.perf_counter()
    outcomes = [classify(row) for row in rows]
    return Report(outcomes, time.perf_counter() - start)


@pytest.fixture(scope="module")
def table() -> list[Row]:
    return load_table()


@pytest.fixture(scope="module")
def report(table) -> Report:
    resolve("liver", "ct")  # load the vocabulary outside the timing
    return run_table(table)


def test_table_size_and_styles(table):
    counts = collections.Counter(row.style for row in table)
    assert set(counts) <= set(STYLES), f"unknown styles: {set(counts) - set(STYLES)}"
    assert len(table) >= MIN_ROWS, f"{len(table)} rows < {MIN_ROWS}"
    short = {s: (counts[s], n) for s, n in MIN_PER_STYLE.items() if counts[s] < n}
    assert not short, f"styles below their minimum (have, need): {short}"
    assert {row.modality for row in table} == {"ct", "mri", "pet"}
    keys = collections.Counter((row.modality, row.prompt.lower()) for row in table)
    assert not [k for k, n in keys.items() if n > 1], "duplicate rows"


def test_table_expectations_are_trained_terms(table):
    entries = vocabulary_entries()
    trained = collections.defaultdict(set)
    for entry in entries:
        trained[entry["modality"]].add(entry["name"])
    bad = []
    for row in table:
        if row.expected in (REFUSE, UNTRAINED):
            continue
        names = row.expected.split(" | ")
        if row.expected.startswith(REFUSE) or names != sorted(set(names)):
            bad.append(f"{row}: not REFUSE, REFUSE:untrained-modality or sorted distinct terms")
        bad += [f"{row}: {name!r} is not trained for {row.modality}" for name in names
                if name not in trained[row.modality]]
    assert not bad, "\n".join(bad)
    regions = {region for entry in entries for region in entry["regions"]}
    covered = {region for row in table for entry in entries
               if entry["modality"] == row.modality and entry["name"] in row.terms for region in entry["regions"]}
    assert covered == regions, f"regions without a row: {regions - covered}"


def test_table_accuracy(report):
    text = report.text()
    print(text)
    floor, allowed = (ACCURACY_FLOOR, 0) if GOAL else (RATCHET, WRONG_SILENT_RATCHET)
    assert report.count("crashed") == 0, text
    assert report.count("wrong-silent") <= allowed, (
        f"{report.count('wrong-silent')} wrong-silent resolutions > {allowed} allowed\n{text}")
    assert report.accuracy >= floor, f"accuracy {report.accuracy:.3f} < {floor}\n{text}"
    if not GOAL and (report.accuracy >= RATCHET + 0.01 or report.count("wrong-silent") < WRONG_SILENT_RATCHET):
        print(f"ratchet can move: RATCHET = {int(report.accuracy * 100) / 100:.2f}, "
              f"WRONG_SILENT_RATCHET = {report.count('wrong-silent')}")


if __name__ == "__main__":
    resolve("liver", "ct")
    print(run_table(load_table()).text())
