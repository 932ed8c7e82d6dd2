"""cohort.csv: one row per case and structure, the same after a resume and when shards are collected."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline_helpers import run_cli


@pytest.fixture()
def cohort(tmp_path, small_scan, reference_files) -> Path:
    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(small_scan, folder / "a.nii.gz")
    image = nib.load(reference_files / "example_ct_sm.nii.gz")
    nib.save(image.slicer[30:75, 25:70, :], folder / "b.nii.gz")
    (folder / "c.nii.gz").write_bytes(b"this is not a scan")
    return folder


def read_table(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fobj:
        return list(csv.DictReader(fobj))


def batch(env, cohort: Path, out: Path, *extra: str):
    return run_cli("batch", str(cohort), "-p", "liver", "-p", "spleen", "-o", str(out), "--model", "tiny-test",
                   *extra, env=env)


def test_the_table_has_a_row_per_case_and_structure_matching_the_masks(env, cohort, tmp_path):
    out = tmp_path / "out"
    done = batch(env, cohort, out)
    assert done.returncode == 3, done.stderr
    rows = read_table(out / "cohort.csv")
    assert [(r["case"], r["structure"], r["status"]) for r in rows] == [
        ("a", "liver", "done"), ("a", "spleen", "done"), ("b", "liver", "done"), ("b", "spleen", "done"),
        ("c", "liver", "failed"), ("c", "spleen", "failed")]
    for row in rows[:4]:
        mask = nib.load(out / row["case"] / f"{row['structure']}.nii.gz")
        voxels = int(np.count_nonzero(np.asanyarray(mask.dataobj)))
        assert int(row["voxels"]) == voxels
        if voxels and row["reason"] == "":
            volume = voxels * abs(np.linalg.det(mask.affine[:3, :3]))
            assert float(row["volume_mm3"]) == pytest.approx(volume, rel=1e-5)
        elif voxels == 0:
            assert row["reason"] == "absent" and row["volume_mm3"] == ""
    assert "c.nii.gz" in rows[4]["reason"] and rows[4]["voxels"] == ""

    again = batch(env, cohort, out)  # a resume: the finished cases are read back, the table is the same
    assert again.stdout.count("skipped") == 2
    assert read_table(out / "cohort.csv") == rows


def test_shards_write_their_own_part_and_collect_gives_the_whole_table(env, cohort, tmp_path):
    whole = tmp_path / "whole"
    batch(env, cohort, whole)
    out = tmp_path / "sharded"
    for k in (1, 2):
        assert batch(env, cohort, out, "--shard", f"{k}/2").returncode in (0, 3)
    parts = sorted(p.name for p in out.glob("cohort*.csv"))
    assert parts == ["cohort.part-1-of-2.csv", "cohort.part-2-of-2.csv"]
    collected = run_cli("batch", "--collect", "-o", str(out), env=env)
    assert collected.returncode == 0, collected.stderr
    assert "2 case(s) done, 1 failed" in collected.stdout
    assert read_table(out / "cohort.csv") == read_table(whole / "cohort.csv")
    again = run_cli("batch", "--collect", "-o", str(out), env=env)  # reads its own cohort.csv as well as the parts
    assert again.returncode == 0 and "2 case(s) done, 1 failed" in again.stdout
    assert read_table(out / "cohort.csv") == read_table(whole / "cohort.csv")


def test_collect_refuses_inputs_and_a_missing_folder(env, tmp_path):
    assert run_cli("batch", "--collect", "-o", str(tmp_path / "nothing"), env=env).returncode == 2
    assert run_cli("batch", "x.nii.gz", "--collect", "-o", str(tmp_path), env=env).returncode == 2
