"""A cohort split by the launcher: torchrun's ranks and Slurm job arrays each take a disjoint share, together all."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_helpers import run_cli
from satseg.errors import InputError
from satseg.inference.cohort import environment_shards, expand_inputs, select_shard


def test_torchrun_and_slurm_variables_give_this_process_its_share():
    assert environment_shards({}) == []
    assert environment_shards({"RANK": "1", "WORLD_SIZE": "4"}) == [(2, 4, "rank 1 of 4")]
    assert environment_shards({"RANK": "0", "WORLD_SIZE": "1"}) == []  # one process: everything
    array = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "3",
             "SLURM_ARRAY_TASK_STEP": "2"}  # --array=3-7:2 -> tasks 3, 5, 7
    assert environment_shards(array) == [(3, 3, "Slurm array task 7")]
    both = dict(array, RANK="0", WORLD_SIZE="2")
    assert [s[:2] for s in environment_shards(both)] == [(3, 3), (1, 2)]  # the array's share, then the rank's
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, dict(array, SLURM_ARRAY_TASK_ID="4"),
                {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(InputError):
            environment_shards(bad)


def test_shares_of_shares_are_disjoint_and_cover_the_cohort(tmp_path):
    cases = expand_inputs([str(tmp_path / f"case{i:02d}.nii.gz") for i in range(23)])
    taken = []
    for task in (1, 2, 3):
        for rank in (0, 1):
            env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
                   "RANK": str(rank), "WORLD_SIZE": "2"}
            share = list(cases)
            for k, n, _ in environment_shards(env):
                share = select_shard(share, (k, n))
            taken += [c.name for c in share]
    assert sorted(taken) == sorted(c.name for c in cases)  # every case once


@pytest.fixture()
def six_cases(tmp_path, small_scan) -> Path:
    folder = tmp_path / "cohort"
    folder.mkdir()
    for i in range(6):
        shutil.copy(small_scan, folder / f"s{i}.nii.gz")
    return folder


def done_cases(stdout: str) -> list[str]:
    return re.findall(r"\] (s\d): done", stdout)


def test_torchrun_runs_each_case_exactly_once(env, six_cases, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "satseg.cli.main", "batch", str(six_cases), "-p", "liver", "-o", str(out), "--model", "tiny-test"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done_cases(done.stdout)) == [f"s{i}" for i in range(6)]
    assert all((out / f"s{i}" / "liver.nii.gz").is_file() for i in range(6))


def test_a_slurm_job_array_runs_each_case_exactly_once(env, six_cases, tmp_path):
    out = tmp_path / "out"
    finished = []
    for task in (10, 12, 14):  # sbatch --array=10-14:2
        task_env = dict(env, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="10",
                        SLURM_ARRAY_TASK_STEP="2")
        done = run_cli("batch", str(six_cases), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=task_env)
        assert done.returncode == 0, done.stderr
        finished += done_cases(done.stdout)
    assert sorted(finished) == [f"s{i}" for i in range(6)]


def test_two_runs_into_one_folder_at_once_leave_every_case_whole(env, six_cases, tmp_path):
    from satseg.outputs.case import COMPLETE_MARKER, is_complete

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "satseg.cli.main", "batch", str(six_cases), "-p", "liver", "-p", "spleen", "-o",
           str(out), "--model", "tiny-test"]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [run.communicate(timeout=900) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [r[1][-2000:] for r in results]
    for i in range(6):
        case = out / f"s{i}"
        assert (case / COMPLETE_MARKER).is_file() and is_complete(case)
        assert sorted(p.name for p in case.iterdir() if not p.name.startswith(".")) == ["liver.nii.gz",
                                                                                        "spleen.nii.gz"]
        assert not [p for p in case.iterdir() if p.name.startswith(".satseg-staging")]
