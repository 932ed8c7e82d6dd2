"""The cohort engine (``satseg.segment_files``): every way of running a cohort writes the bytes of one-case runs.

Five real scans of different kinds (CT pieces in RAS and LPS, an MR, a flipped copy) with a tiny random model;
the reference is ``satseg SCAN -p ... -o DIR`` run once per scan. Then the same cohort through ``satseg batch``
one stage after another, pipelined (read-ahead process + writer thread), on one CPU thread, sharded 1/2 + 2/2,
killed after its first case and resumed, and through the Python API.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline_helpers import run_cli

PROMPTS = ["-p", "liver", "-p", "spleen", "-p", "kidneys"]


@pytest.fixture(scope="module")
def five_scans(tmp_path_factory, reference_files) -> Path:
    """Five small real scans, different grids and orientations (a few windows each for the tiny model)."""
    folder = tmp_path_factory.mktemp("five")
    ct = nib.load(reference_files / "example_ct_sm.nii.gz")
    nib.save(ct.slicer[40:80, 30:70, :], folder / "ct_a.nii.gz")
    nib.save(ct.slicer[60:110, 20:60, 5:25], folder / "ct_b.nii.gz")
    nib.save(ct.slicer[::-1, 30:70, :], folder / "ct_flipped.nii.gz")
    mr = nib.load(reference_files / "example_mr_sm.nii.gz")  # LPS
    nib.save(mr.slicer[30:80, 20:70, :], folder / "mr.nii.gz")
    big = nib.load(reference_files / "aorta_report" / "example_ct.nii.gz")  # LPS, 1.5 mm
    nib.save(big.slicer[60:140, 40:110, 80:110], folder / "chest.nii.gz")
    return folder


def masks_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


@pytest.fixture(scope="module")
def one_case_runs(env, five_scans, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The reference: each scan on its own through ``satseg SCAN`` (MR told it is MR)."""
    out = tmp_path_factory.mktemp("one-case")
    reference = {}
    for scan in sorted(five_scans.glob("*.nii.gz")):
        name = scan.name[: -len(".nii.gz")]
        modality = ["--modality", "mri"] if name == "mr" else []
        done = run_cli(str(scan), *PROMPTS, "-o", str(out / name), "--model", "tiny-test", *modality, env=env)
        assert done.returncode == 0, done.stderr
        reference[name] = masks_of(out / name)
        assert len(reference[name]) == 3
    # The scans really differ (the comparison below could not pass by accident on copies).
    assert len({m["liver.nii.gz"] for m in reference.values()}) == 5
    return reference


def jobs_file(folder: Path, tmp_path: Path) -> Path:
    import json

    lines = []
    for scan in sorted(folder.glob("*.nii.gz")):
        job = {"image": str(scan), "prompts": ["liver", "spleen", "kidneys"]}
        if scan.name.startswith("mr"):
            job["modality"] = "mri"
        lines.append(json.dumps(job))
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same_as_reference(out: Path, reference: dict) -> None:
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(reference)
    for name, files in reference.items():
        assert masks_of(out / name) == files, name


@pytest.mark.parametrize("mode", [["--read-workers", "0"], ["--read-workers", "1"],
                                  pytest.param(["--read-workers", "2"], marks=pytest.mark.slow),
                                  ["--read-workers", "1", "--threads", "1"]],
                         ids=["sequential", "pipelined", "two-readers", "one-cpu-thread"])
def test_batch_writes_the_bytes_of_one_case_runs(env, five_scans, one_case_runs, tmp_path, mode):
    out = tmp_path / "out"
    done = run_cli("batch", "--jobs", str(jobs_file(five_scans, tmp_path)), "-o", str(out), "--model", "tiny-test",
                   *mode, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": done") == 5
    assert_same_as_reference(out, one_case_runs)


def test_sharded_runs_write_the_bytes_of_one_case_runs(env, five_scans, one_case_runs, tmp_path):
    out = tmp_path / "out"
    jobs = jobs_file(five_scans, tmp_path)
    counts = []
    for shard in ("1/2", "2/2"):
        done = run_cli("batch", "--jobs", str(jobs), "-o", str(out), "--model", "tiny-test", "--shard", shard, env=env)
        assert done.returncode == 0, done.stderr
        counts.append(done.stdout.count(": done"))
    assert sorted(counts) == [2, 3]
    assert_same_as_reference(out, one_case_runs)


def test_killed_and_resumed_run_writes_the_bytes_of_one_case_runs(env, five_scans, one_case_runs, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "satseg.cli.main", "batch", "--jobs", str(jobs_file(five_scans, tmp_path)),
           "-o", str(out), "--model", "tiny-test", "--read-workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/.satseg-complete.json")):
        time.sleep(0.02)
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # the read-ahead worker too
    proc.wait()
    finished = [p.parent.name for p in out.glob("*/.satseg-complete.json")]
    assert 1 <= len(finished) < 5, finished  # really killed mid-cohort
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count(": skipped") == len(finished)
    assert_same_as_reference(out, one_case_runs)


def test_python_api_segment_files_pipelined(env, five_scans, one_case_runs, tmp_path, monkeypatch):
    import satseg
    from satseg.inference.cohort import read_jobs
    from satseg.inference.engine import CohortOptions, Hooks

    for key in ("SATSEG_HOME", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.setenv(key, env[key])
    seen = []
    outcomes = satseg.segment_files(read_jobs(jobs_file(five_scans, tmp_path)), tmp_path / "out", model="tiny-test",
                                    cohort=CohortOptions(read_workers=1, write_threads=2),
                                    hooks=Hooks(outcome=lambda o: seen.append((o.case.name, o.status))))
    assert sorted(seen) == sorted((name, "done") for name in one_case_runs)
    assert [o.status for o in outcomes] == ["done"] * 5
    assert_same_as_reference(tmp_path / "out", one_case_runs)
    table = (tmp_path / "out" / "cohort.csv").read_text().splitlines()
    assert len(table) == 1 + 5 * 3


def test_a_failed_read_fails_only_its_case_and_a_model_error_stops_at_once(env, five_scans, tmp_path, monkeypatch):
    import satseg
    from satseg.errors import SatsegError
    from satseg.inference.engine import CohortOptions

    for key in ("SATSEG_HOME", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.setenv(key, env[key])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    scans = [five_scans / "ct_a.nii.gz", broken, five_scans / "ct_b.nii.gz"]
    outcomes = satseg.segment_files(scans, tmp_path / "out", ["liver"], model="tiny-test",
                                    cohort=CohortOptions(read_workers=1))
    assert {o.case.name: o.status for o in outcomes} == {"ct_a": "done", "broken": "failed", "ct_b": "done"}
    # Truncated weights: the first case that needs the model stops the cohort, nothing is written.
    home = Path(env["SATSEG_HOME"])
    damaged = tmp_path / "home"
    shutil.copytree(home, damaged)
    for registry in damaged.rglob("*.json"):  # the registry names its files by absolute path
        registry.write_text(registry.read_text().replace(str(home), str(damaged)))
    truncated = list(damaged.rglob("*.pth"))
    assert truncated
    for weights in truncated:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    monkeypatch.setenv("SATSEG_HOME", str(damaged))
    with pytest.raises(SatsegError):
        satseg.segment_files(scans, tmp_path / "out2", ["liver"], model="tiny-test",
                             cohort=CohortOptions(read_workers=1))
    assert not (tmp_path / "out2").exists() or not [p for p in (tmp_path / "out2").rglob("*.nii.gz")]


def test_predictor_set_scan_then_predict_many_times_equals_segment(env, five_scans, monkeypatch):
    from satseg import Predictor

    for key in ("SATSEG_HOME", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.setenv(key, env[key])
    predictor = Predictor.from_pretrained("tiny-test")
    scan = five_scans / "ct_b.nii.gz"
    # The references: one pass per prompt set (the decoder's sums may round differently for another grouping of
    # prompts, so each predict is compared with segment() of the same prompts).
    liver = predictor.segment(scan, ["liver"], probabilities=True)
    others = predictor.segment(scan, ["spleen", "left kidney"], probabilities=True)
    state = predictor.set_scan(scan)
    assert len(state.features) > 0  # the backbone ran once, its features kept
    computed = predictor.window_stats.computed
    calls = []
    encode = predictor.model.encode_image
    monkeypatch.setattr(predictor.model, "encode_image", lambda *a, **k: calls.append(1) or encode(*a, **k))
    first = predictor.predict(["liver"], probabilities=True)
    second = predictor.predict(["spleen", "left kidney"], probabilities=True)
    assert len(state.features) == computed and calls == []  # every window's features kept, the backbone not rerun
    for got, want in ((first, liver), (second, others)):
        assert list(got.masks) == list(want.masks)
        for name in want.masks:
            np.testing.assert_array_equal(got.masks[name], want.masks[name])
            np.testing.assert_array_equal(got.probabilities[name], want.probabilities[name])
    assert first.orientation == liver.orientation == "RAS"
    assert first.prompts[0].terms == ("liver",)
    # With no room for features, predict runs the backbone itself: the same values.
    predictor.set_scan(scan, feature_budget=0)
    third = predictor.predict(["liver"], probabilities=True)
    np.testing.assert_array_equal(third.probabilities["liver"], liver.probabilities["liver"])
    # A budget for part of the windows: those kept are used, the rest run again, the same values.
    predictor.set_scan(scan, feature_budget=state.features.used // 2)
    assert 0 < len(predictor.scan.features) < computed
    calls.clear()
    fourth = predictor.predict(["spleen", "left kidney"], probabilities=True)
    assert len(calls) == computed - len(predictor.scan.features)  # only the windows that did not fit
    np.testing.assert_array_equal(fourth.probabilities["spleen"], others.probabilities["spleen"])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_read_ahead_worker_runs_only_on_idle_cycles():
    """The read-ahead worker runs under SCHED_IDLE (the model's threads preempt it at once); this process does not."""
    from satseg.inference.read_ahead import ReadAhead

    policy_here = os.sched_getscheduler(0)
    with ReadAhead(workers=1, ahead=1) as reads:
        assert reads._pool.submit(os.sched_getscheduler, 0).result(timeout=60) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == policy_here != os.SCHED_IDLE


def test_read_ahead_finished_early_still_answers_and_leaves_no_worker(five_scans):
    """``finish()`` (no more jobs) while reads are in flight: every answer still comes, and no worker outlives the
    block."""
    import multiprocessing

    from satseg.inference.options import PromptOptions, ScanOptions
    from satseg.inference.read_ahead import ReadAhead, ReadJob, read_case

    jobs = [ReadJob(path=scan, prompts=("liver",), scan_options=ScanOptions(), prompt_options=PromptOptions(),
                    spacing=(1.0, 1.0, 3.0)) for scan in sorted(five_scans.glob("ct_*.nii.gz"))]
    with ReadAhead(workers=1, ahead=len(jobs)) as reads:
        for index, job in enumerate(jobs):
            reads.submit(index, job)
        reads.finish()
        answers = [reads.next() for _ in jobs]
    assert [key for key, _ in answers] == list(range(len(jobs)))
    for (_, answer), job in zip(answers, jobs):
        assert answer.error is None
        np.testing.assert_array_equal(answer.case.model_grid[0], read_case(job).case.model_grid[0])
    assert multiprocessing.active_children() == []
