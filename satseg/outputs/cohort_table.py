"""``cohort.csv``: one row per case and structure, for a study's spreadsheet or dataframe.

The table is rebuilt from what each case folder's completion record says (see :mod:`satseg.outputs.case`), so it
is right after a resume (finished cases are read, not remembered) and across shards: each share of a cohort writes
its own ``cohort.part-K-of-N.csv``, and ``satseg batch --collect OUT_DIR`` merges every case folder and the failures
the parts list into ``cohort.csv``. Written atomically.

Columns: ``case, structure, prompt, status`` (``done`` | ``failed``), ``reason`` (why a number is empty:
``absent``, ``touches the scan border``, or the error of a failed case), ``voxels, volume_mm3, volume_mm3_in_scan,
intensity_mean, intensity_std``, and the bounding box in RAS mm as ``bbox_min_mm`` / ``bbox_max_mm`` (``x y z``).
Units and conventions are those of ``statistics.json`` (:mod:`satseg.outputs.statistics`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from satseg.io.atomic import write_text_atomic

COLUMNS = ("case", "structure", "prompt", "status", "reason", "voxels", "volume_mm3", "volume_mm3_in_scan",
           "intensity_mean", "intensity_std", "bbox_min_mm", "bbox_max_mm")
TABLE = "cohort.csv"
PART_GLOB = "cohort.part-*.csv"


def structure_summary(statistics: dict, prompts: dict[str, str]) -> dict[str, dict]:
    """The per-structure numbers a completion record keeps for the table (name → row fields)."""
    summary = {}
    for name, stats in statistics.items():
        intensity = stats.get("intensity") or {}
        bbox = stats.get("bbox_mm") or {}
        summary[name] = {
            "prompt": prompts.get(name, name), "reason": stats.get("reason"), "voxels": stats.get("voxels"),
            "volume_mm3": stats.get("volume_mm3"), "volume_mm3_in_scan": stats.get("volume_mm3_in_scan"),
            "intensity_mean": intensity.get("mean"), "intensity_std": intensity.get("std"),
            "bbox_min_mm": bbox.get("min"), "bbox_max_mm": bbox.get("max"),
        }
    return summary


def done_rows(case: str, marker: dict) -> list[dict]:
    """Rows of a finished case from its completion record (a record without numbers gives one row per output)."""
    structures = marker.get("structures")
    if not isinstance(structures, dict):
        prompts = (marker.get("request") or {}).get("prompts") or []
        return [{"case": case, "structure": "", "prompt": p, "status": "done", "reason": "no statistics recorded"}
                for p in prompts]
    return [dict(fields, case=case, structure=name, status="done") for name, fields in structures.items()]


def failed_rows(case: str, names: list[str], prompts: list[str], error: str) -> list[dict]:
    return [{"case": case, "structure": name, "prompt": prompt, "status": "failed", "reason": error}
            for name, prompt in zip(names, prompts)] or [
        {"case": case, "structure": "", "prompt": "", "status": "failed", "reason": error}]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_table(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (sorted by case, structures in prompt order) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in sorted(rows, key=lambda row: row["case"]):  # a stable sort: structures stay in prompt order
        writer.writerow([_cell(row.get(column)) for column in COLUMNS])
    write_text_atomic(path, buffer.getvalue())
    return Path(path)


def part_name(shares: list[tuple[int, int]]) -> str:
    """``cohort.csv`` for a whole cohort, ``cohort.part-2-of-4.csv`` for a share (``-1-of-3-2-of-2`` nested)."""
    if not shares:
        return TABLE
    return "cohort.part-" + "-".join(f"{k}-of-{n}" for k, n in shares) + ".csv"


def collect(out_dir: Path) -> tuple[Path, int, int]:
    """Merge a cohort's results into ``out_dir/cohort.csv`` → (path, cases done, cases failed).

    Every case folder with a finished result gives its rows; a case that the part tables list as failed and that
    has no finished result since gives its failure rows.
    """
    from satseg.outputs.case import finished_record

    out_dir = Path(out_dir)
    rows, done = [], set()
    for folder in sorted(p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        marker = finished_record(folder)
        if marker is not None:
            rows += done_rows(folder.name, marker)
            done.add(folder.name)
    failed: dict[str, list[dict]] = {}
    for part in sorted(out_dir.glob(PART_GLOB)) + ([out_dir / TABLE] if (out_dir / TABLE).is_file() else []):
        listed: dict[str, list[dict]] = {}
        with open(part, newline="", encoding="utf-8") as fobj:
            for row in csv.DictReader(fobj):
                if row.get("status") == "failed" and row.get("case") not in done:
                    listed.setdefault(row["case"], []).append({k: row.get(k) or None for k in COLUMNS})
        for case, case_rows in listed.items():
            failed.setdefault(case, case_rows)  # one table's rows per case (an earlier cohort.csv repeats them)
    for case_rows in failed.values():
        rows += case_rows
    return write_table(out_dir / TABLE, rows), len(done), len(failed)
