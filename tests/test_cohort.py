"""Cohorts: continue on error, skip finished cases, disjoint shards, and survive being killed."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_helpers import run_cli
from satseg.inference.cohort import expand_inputs, parse_shard, read_jobs, select_shard
from satseg.errors import InputError


@pytest.fixture()
def cohort(tmp_path, small_scan):
    folder = tmp_path / "cohort"
    folder.mkdir()
    shutil.copy(small_scan, folder / "a.nii.gz")
    shutil.copy(small_scan, folder / "b.nii.gz")
    (folder / "c.nii.gz").write_bytes(b"this is not a scan")
    return folder


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def case_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_one_broken_case_fails_the_others_finish_exit_code_3(env, cohort, tmp_path):
    out = tmp_path / "out"
    done = run_cli("batch", str(cohort), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert done.returncode == 3, done.stderr
    assert case_folders(out) == ["a", "b"] and visible(out) == ["a", "b", "cohort.csv"]
    assert visible(out / "a") == ["liver.nii.gz"]
    assert "c: failed" in done.stderr
    assert "2 done, 0 skipped, 1 failed" in done.stderr
    again = run_cli("batch", str(cohort), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert again.returncode == 3
    assert again.stdout.count("skipped") == 2
    assert "2 done" not in again.stderr and "0 done, 2 skipped, 1 failed" in again.stderr


def test_changed_prompts_are_not_skipped(env, cohort, tmp_path):
    out = tmp_path / "out"
    (cohort / "c.nii.gz").unlink()
    assert run_cli("batch", str(cohort), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env).returncode == 0
    done = run_cli("batch", str(cohort), "-p", "spleen", "-o", str(out), "--model", "tiny-test", env=env)
    assert done.returncode == 0 and "skipped" not in done.stdout
    overwrite = run_cli("batch", str(cohort), "-p", "spleen", "-o", str(out), "--model", "tiny-test", "--overwrite",
                        env=env)
    assert overwrite.returncode == 0 and overwrite.stdout.count("done") == 2


def test_paths_from_stdin_and_list_files(env, cohort, tmp_path):
    out = tmp_path / "out"
    listing = f"{cohort / 'a.nii.gz'}\n\n# comment\n{cohort / 'b.nii.gz'}\n"
    done = run_cli("batch", "-", "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env, stdin=listing)
    assert done.returncode == 0, done.stderr
    assert case_folders(out) == ["a", "b"]
    cases = expand_inputs([str(cohort)])
    assert [c.name for c in cases] == ["a", "b", "c"]
    (tmp_path / "list.txt").write_text("cohort/a.nii.gz\n")
    assert [c.path for c in expand_inputs([str(tmp_path / "list.txt")])] == [tmp_path / "cohort" / "a.nii.gz"]


def test_jobs_file_gives_per_case_prompts(env, cohort, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(cohort / "a.nii.gz"), "prompts": ["liver", "spleen"]}) + "\n"
                    + json.dumps({"image": "cohort/b.nii.gz", "label": ["left kidney"], "case": "bee"}) + "\n")
    out = tmp_path / "out"
    done = run_cli("batch", "--jobs", str(jobs), "-o", str(out), "--model", "tiny-test", env=env)
    assert done.returncode == 0, done.stderr
    assert visible(out / "a") == ["liver.nii.gz", "spleen.nii.gz"]
    assert visible(out / "bee") == ["left_kidney.nii.gz"]
    assert [c.name for c in read_jobs(jobs)] == ["a", "bee"]


def test_shards_are_disjoint_and_cover_the_cohort(tmp_path):
    paths = [str(tmp_path / f"case{i:02d}.nii.gz") for i in range(11)]
    cases = expand_inputs(paths)
    shards = [select_shard(cases, parse_shard(f"{k}/3")) for k in (1, 2, 3)]
    names = [sorted(c.name for c in s) for s in shards]
    assert sum(len(n) for n in names) == 11
    assert set().union(*map(set, names)) == {c.name for c in cases}
    assert all(not set(a) & set(b) for i, a in enumerate(names) for b in names[i + 1:])
    for bad in ("0/3", "4/3", "1/0", "x"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_shards_split_a_real_cohort_run(env, cohort, tmp_path):
    (cohort / "c.nii.gz").unlink()
    out = tmp_path / "out"
    one = run_cli("batch", str(cohort), "-p", "liver", "-o", str(out), "--model", "tiny-test", "--shard", "1/2",
                  env=env)
    two = run_cli("batch", str(cohort), "-p", "liver", "-o", str(out), "--model", "tiny-test", "--shard", "2/2",
                  env=env)
    assert one.returncode == 0 and two.returncode == 0
    assert one.stdout.count("done") == 1 and two.stdout.count("done") == 1
    assert case_folders(out) == ["a", "b"]


def test_killed_cohort_leaves_no_partial_output_and_rerun_completes(env, small_scan, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        shutil.copy(small_scan, folder / f"s{i}.nii.gz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "satseg.cli.main", "batch", str(folder), "-p", "liver", "-p", "spleen",
           "-o", str(out), "--model", "tiny-test", "--statistics"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "s0" / ".satseg-complete.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for case in out.iterdir():
        if case.name.startswith("."):
            continue
        files = visible(case)
        complete = (case / ".satseg-complete.json").exists()
        assert complete or files == [], (case.name, files)
        if complete:
            assert files == ["liver.nii.gz", "spleen.nii.gz", "statistics.json"]
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    for i in range(6):
        assert visible(out / f"s{i}") == ["liver.nii.gz", "spleen.nii.gz", "statistics.json"]
        assert not [p for p in (out / f"s{i}").iterdir() if p.name.startswith(".satseg-staging")]
