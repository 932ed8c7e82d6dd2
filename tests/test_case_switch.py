"""A result folder switches from an earlier result to a new one all or nothing, as every later run sees it.

Kills are real: a process running the CLI is sent SIGKILL by an audit hook just before its N-th rename into the
case folder (the journal's own rename is the first), so the test does not race a sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import pytest

from pipeline_helpers import run_cli
from satseg.outputs.case import (
    COMPLETE_MARKER, JOURNAL, STAGING_PREFIX, _new_staging, clean_stale_staging, is_complete, recover_folder,
)

PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "aorta"]
MASKS = ["aorta.nii.gz", "left_kidney.nii.gz", "liver.nii.gz", "right_kidney.nii.gz", "spleen.nii.gz"]

_KILL_AT_RENAME = textwrap.dedent(
    """
    import os, signal, sys

    target, kill_at = os.path.realpath(sys.argv[1]), int(sys.argv[2])
    interrupt = os.environ.get("SATSEG_TEST_INTERRUPT") == "1"  # Ctrl-C there instead of SIGKILL
    seen = [0]

    def hook(event, args):
        if event == "os.rename" and os.path.dirname(os.path.realpath(os.fsdecode(args[1]))) == target:
            seen[0] += 1
            if seen[0] == kill_at:
                if interrupt:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    from satseg.cli.main import main
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.fixture(scope="module")
def scans(tmp_path_factory, reference_files) -> tuple[Path, Path]:
    """Two different real CT pieces, both called ``scan.nii.gz`` (so both are case ``scan``)."""
    image = nib.load(reference_files / "example_ct_sm.nii.gz")
    root = tmp_path_factory.mktemp("scans")
    (root / "a").mkdir()
    (root / "b").mkdir()
    nib.save(image.slicer[40:80, 30:70, :], root / "a" / "scan.nii.gz")
    nib.save(image.slicer[30:75, 25:70, :], root / "b" / "scan.nii.gz")
    return root / "a" / "scan.nii.gz", root / "b" / "scan.nii.gz"


def batch_args(scan: Path, out: Path) -> list[str]:
    args = ["batch", str(scan), "-o", str(out), "--model", "tiny-test", "--statistics"]
    for prompt in PROMPTS:
        args += ["-p", prompt]
    return args


def run_killed(env, case_dir: Path, kill_at: int, args: list[str], interrupt: bool = False
               ) -> subprocess.CompletedProcess:
    env = dict(env, SATSEG_TEST_INTERRUPT="1" if interrupt else "0")
    return subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, str(case_dir), str(kill_at), *args], env=env,
                          capture_output=True, text=True, timeout=600)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(env, scans, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """What a clean run writes for each scan."""
    results = {}
    for label, scan in zip("ab", scans):
        out = tmp_path_factory.mktemp(f"clean-{label}")
        done = run_cli(*batch_args(scan, out), env=env)
        assert done.returncode == 0, done.stderr
        results[label] = contents(out / "scan")
    assert sorted(results["a"]) == sorted(MASKS + ["statistics.json"])
    assert all(results["a"][name] != results["b"][name] for name in MASKS)  # the two scans give other masks
    return results


def test_a_kill_in_the_middle_of_the_switch_is_finished_by_the_next_run_never_skipped_as_a_mix(
    env, scans, reference, tmp_path
):
    out = tmp_path / "out"
    case = out / "scan"
    shutil.copytree(scans[0].parent, tmp_path / "cohort")
    scan = tmp_path / "cohort" / "scan.nii.gz"
    assert run_cli(*batch_args(scan, out), env=env).returncode == 0
    assert contents(case) == reference["a"]

    shutil.copy(scans[1], scan)  # the case's scan is replaced; its next run is killed after the first file moved
    killed = run_killed(env, case, 3, batch_args(scan, out))
    assert killed.returncode == -9, killed.stderr
    assert (case / JOURNAL).exists()
    mixed = contents(case)
    assert any(mixed[n] == reference["b"][n] for n in MASKS) and any(mixed[n] == reference["a"][n] for n in MASKS)
    assert not (case / COMPLETE_MARKER).exists()
    assert not is_complete(case)  # whatever a later run asks, a folder with a journal is not done

    rerun = run_cli(*batch_args(scan, out), env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert contents(case) == reference["b"]
    assert not (case / JOURNAL).exists()
    assert not [p for p in case.iterdir() if p.name.startswith(STAGING_PREFIX)]
    marker = json.loads((case / COMPLETE_MARKER).read_text())
    assert marker["request"]["input"]["path"] == str(scan.resolve())


def test_a_kill_before_the_switch_leaves_the_earlier_result_whole(env, scans, reference, tmp_path):
    out = tmp_path / "out"
    case = out / "scan"
    shutil.copytree(scans[0].parent, tmp_path / "cohort")
    scan = tmp_path / "cohort" / "scan.nii.gz"
    assert run_cli(*batch_args(scan, out), env=env).returncode == 0
    shutil.copy(scans[1], scan)

    killed = run_killed(env, case, 1, batch_args(scan, out))  # dies as it would write the journal
    assert killed.returncode == -9, killed.stderr
    assert contents(case) == reference["a"]
    assert not (case / JOURNAL).exists()
    assert [p.name for p in case.iterdir() if p.name.startswith(STAGING_PREFIX)]  # the dead run's staging

    rerun = run_cli(*batch_args(scan, out), env=env)
    assert rerun.returncode == 0 and "skipped" not in rerun.stdout  # the scan changed: not done
    assert contents(case) == reference["b"]
    assert not [p for p in case.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_an_interrupted_switch_is_rolled_forward_before_the_skip_check(env, scans, reference, tmp_path):
    out = tmp_path / "out"
    case = out / "scan"
    killed = run_killed(env, case, 4, batch_args(scans[1], out))
    assert killed.returncode == -9
    assert recover_folder(case)
    assert contents(case) == reference["b"]
    again = run_cli(*batch_args(scans[1], out), env=env)
    assert again.returncode == 0 and "skipped" in again.stdout


def test_batch_redoes_a_finished_case_whose_files_were_changed_or_removed(env, scans, reference, tmp_path):
    out = tmp_path / "out"
    case = out / "scan"
    assert run_cli(*batch_args(scans[0], out), env=env).returncode == 0
    assert "skipped" in run_cli(*batch_args(scans[0], out), env=env).stdout

    (case / "spleen.nii.gz").write_bytes(reference["b"]["spleen.nii.gz"])  # another scan's mask dropped in
    redo = run_cli(*batch_args(scans[0], out), env=env)
    assert redo.returncode == 0 and "skipped" not in redo.stdout
    assert contents(case) == reference["a"]

    (case / "liver.nii.gz").unlink()
    redo = run_cli(*batch_args(scans[0], out), env=env)
    assert "skipped" not in redo.stdout and contents(case) == reference["a"]


def test_batch_redoes_a_case_when_the_outputs_asked_for_change(env, scans, tmp_path):
    out = tmp_path / "out"
    assert run_cli(*batch_args(scans[0], out), env=env).returncode == 0
    more = run_cli(*batch_args(scans[0], out), "--ml", env=env)
    assert more.returncode == 0 and "skipped" not in more.stdout
    assert (out / "scan" / "segmentation.nii.gz").exists()


def test_an_interrupt_in_the_middle_of_the_switch_keeps_what_the_next_run_needs_to_finish_it(
    env, scans, reference, tmp_path
):
    out = tmp_path / "out"
    case = out / "scan"
    assert run_cli(*batch_args(scans[0], out), env=env).returncode == 0
    stopped = run_killed(env, case, 3, batch_args(scans[1], out), interrupt=True)  # Ctrl-C, cleanup code runs
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr
    journal = json.loads((case / JOURNAL).read_text())
    assert (case / journal["staging"]).is_dir()  # not cleaned up: the journal needs it
    assert recover_folder(case)
    assert contents(case) == reference["b"] and is_complete(case)


def test_a_new_scan_retires_the_earlier_scans_other_outputs(env, scans, tmp_path):
    out = tmp_path / "out"
    case = out / "scan"

    def run(scan, *prompts, extra=()):
        args = ["batch", str(scan), "-o", str(out), "--model", "tiny-test", *extra]
        for prompt in prompts:
            args += ["-p", prompt]
        done = run_cli(*args, env=env)
        assert done.returncode == 0, done.stderr

    run(scans[0], "liver", "spleen", extra=("--statistics",))
    run(scans[0], "aorta")  # the same scan, read the same way: what it made before stays
    assert sorted(contents(case)) == ["aorta.nii.gz", "liver.nii.gz", "spleen.nii.gz", "statistics.json"]
    run(scans[1], "liver")  # another scan: nothing of the first one stays beside it, kept files included
    assert sorted(contents(case)) == ["liver.nii.gz"]
    run(scans[1], "spleen", extra=("--modality", "mri"))  # the same file read as another modality is another result
    assert sorted(contents(case)) == ["spleen.nii.gz"]


def test_a_planted_journal_cannot_touch_anything_outside_the_folder(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (victim / "del.txt").write_text("keep me")
    (victim / "keep.txt").write_text("keep me too")
    (out / "link").symlink_to(victim)
    staging = f"{STAGING_PREFIX}1-1-abcd-elsewhere"
    (out / staging).mkdir()
    for journal in (
        {"staging": staging, "files": {}, "retire": ["link/del.txt", "../victim/del.txt", str(victim / "del.txt")],
         "report": None, "marker": {}},
        {"staging": staging, "files": {}, "retire": [],
         "report": {"staged": "../../victim/keep.txt", "target": str(tmp_path / "stolen.txt")}, "marker": {}},
        {"staging": staging, "files": {}, "retire": [],
         "report": {"staged": ".report.json", "target": str(tmp_path / "stolen.txt")}, "marker": {}},
        {"staging": "../victim", "files": {"x": {"size": 1, "sha256": "0" * 64}}, "retire": [], "marker": {}},
        {"staging": staging, "files": ["not", "a", "dict"], "marker": {}},
    ):
        (out / JOURNAL).write_text(json.dumps(journal))
        assert recover_folder(out)
        assert not (out / JOURNAL).exists()
    assert sorted(p.name for p in victim.iterdir()) == ["del.txt", "keep.txt"]
    assert not (tmp_path / "stolen.txt").exists()


def test_a_finished_file_rewritten_with_its_size_and_mtime_restored_is_not_trusted(env, scans, reference, tmp_path):
    out = tmp_path / "out"
    case = out / "scan"
    assert run_cli(*batch_args(scans[0], out), env=env).returncode == 0
    marker = json.loads((case / COMPLETE_MARKER).read_text())
    request = marker["request"]
    assert is_complete(case, request)
    target = case / "liver.nii.gz"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-9] ^= 0xFF  # one byte of the gzip trailer: same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    assert not is_complete(case, request)


# --- staging folders --------------------------------------------------------------------------------------

_HOLD_STAGING = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from satseg.outputs.case import _new_staging

    print(_new_staging(Path(sys.argv[1])).name, flush=True)
    sys.stdin.read()  # alive until the test closes stdin
    """
)


def test_a_staging_folder_is_claimed_in_one_mkdir_with_its_owner_in_the_name(tmp_path):
    renames = []

    def hook(event, args):
        if event == "os.rename":
            renames.append(args)

    sys.addaudithook(hook)  # stays for the session; only records
    staging = _new_staging(tmp_path)
    assert staging.is_dir() and staging.name.startswith(f"{STAGING_PREFIX}{os.getpid()}-")
    assert renames == []


def test_a_live_runs_staging_folder_survives_another_run_and_a_dead_ones_is_removed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_STAGING, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name = holder.stdout.readline().strip()
        assert name.startswith(f"{STAGING_PREFIX}{holder.pid}-")
        clean_stale_staging(tmp_path)
        assert (tmp_path / name).is_dir()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    clean_stale_staging(tmp_path)
    assert not (tmp_path / name).exists()


def test_a_staging_folder_whose_pid_now_belongs_to_a_newer_process_is_removed(tmp_path):
    live = _new_staging(tmp_path)
    pid, start, token, host = live.name[len(STAGING_PREFIX):].split("-", 3)
    parent = os.getppid()  # running, but not the process that made this folder (its start time differs)
    reused = tmp_path / f"{STAGING_PREFIX}{parent}-{int(start) + 12345}-{token}-{host}"
    reused.mkdir()
    clean_stale_staging(tmp_path)
    assert live.is_dir() and not reused.exists()


def test_a_failed_run_creates_no_output_folder(env, tmp_path):
    out = tmp_path / "new" / "out"
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a scan")
    done = run_cli(str(bad), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert done.returncode == 2
    assert not (tmp_path / "new").exists()
    done = run_cli("batch", str(bad), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert done.returncode == 3
    assert sorted(p.name for p in out.iterdir()) == ["cohort.csv"]  # the failure, recorded; no case folder
