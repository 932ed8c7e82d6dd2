"""What the command line answers to mistakes, hostile names and odd cohort files: one line (or Typer's usage
box), the documented exit code, and nothing written anywhere else than ``-o``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline_helpers import PROGRESS_LINE, error_lines, run_cli
from satseg.cli.main import main
from satseg.errors import InputError
from satseg.inference.cohort import case_name, expand_inputs, read_jobs
from satseg.outputs.names import safe_folder_name


# --- usage errors: exit 2, no traceback ---------------------------------------------------------------------

USAGE_ERRORS = {
    "unknown option": ["--bogus"],
    "unknown option of segment": ["scan.nii.gz", "-p", "liver", "-o", "out", "--bogus"],
    "unknown option of batch": ["batch", "scan.nii.gz", "-p", "liver", "-o", "out", "--bogus"],
    "unknown sub-command": ["weights", "bogus"],
    "missing scan": ["-p", "liver", "-o", "out"],
    "missing -o": ["scan.nii.gz", "-p", "liver"],
    "window batch 0": ["scan.nii.gz", "-p", "liver", "-o", "out", "--window-batch", "0"],
    "prompt chunk not a number": ["scan.nii.gz", "-p", "liver", "-o", "out", "--prompt-chunk", "many"],
    "bad shard": ["batch", "scan.nii.gz", "-p", "liver", "-o", "out", "--shard", "5/4"],
    "unknown model": ["scan.nii.gz", "-p", "liver", "-o", "out", "--model", "no-such-model"],
    "unknown precision": ["scan.nii.gz", "-p", "liver", "-o", "out", "--precision", "fp8"],
    "unknown device": ["scan.nii.gz", "-p", "liver", "-o", "out", "--device", "tpu"],
    "scan that does not exist": ["no-such-scan.nii.gz", "-p", "liver", "-o", "out"],
}


@pytest.mark.parametrize("kind", list(USAGE_ERRORS))
def test_every_usage_error_exits_2_without_a_traceback(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(USAGE_ERRORS[kind])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.strip()
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_named_before_the_scan_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["missing.nii.gz", "-p", "liver", "-o", "out", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "missing.nii.gz" not in err


def test_usage_errors_exit_2_from_the_installed_command(tmp_path):
    done = run_cli("--bogus")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--bogus" in done.stderr
    done = run_cli("scan.nii.gz", "-p", "liver", "-o", str(tmp_path / "o"), "--window-batch", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert main(["--version"]) == 0
    assert main(["batch", "--help"]) == 0
    from satseg.cli.segment import PROBABILITIES

    assert "probabilities/<name>.nii.gz" in PROBABILITIES.help  # the pattern that is really written


# --- odd cohort inputs ------------------------------------------------------------------------------------


def test_a_job_with_an_empty_prompt_list_and_no_p_is_a_usage_error_naming_the_line(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": "a.nii.gz", "prompts": ["liver"]}) + "\n"
                    + json.dumps({"image": "b.nii.gz", "prompts": []}) + "\n")
    assert main(["batch", "--jobs", str(jobs), "-o", str(tmp_path / "out")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{jobs}:2" in lines[0] and "no prompts" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["jobs", "list"])
def test_a_cohort_file_that_is_not_utf8_is_a_usage_error_naming_the_line(kind, tmp_path, capsys):
    good = json.dumps({"image": "a.nii.gz", "prompts": ["liver"]}) if kind == "jobs" else "a.nii.gz"
    path = tmp_path / ("jobs.jsonl" if kind == "jobs" else "list.txt")
    path.write_bytes(good.encode() + b"\n" + "patient_é.nii.gz".encode("latin-1") + b"\n")
    args = ["batch", "--jobs", str(path)] if kind == "jobs" else ["batch", str(path)]
    assert main([*args, "-p", "liver", "-o", str(tmp_path / "out")]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{path}:2" in lines[0] and "UTF-8" in lines[0]


def test_paths_on_standard_input_that_are_not_utf8_are_refused_with_the_line(tmp_path):
    class Stdin:
        buffer = type("B", (), {"read": staticmethod(lambda: b"a.nii.gz\nb\xff.nii.gz\n")})()

    with pytest.raises(InputError, match="standard input:2: not UTF-8"):
        expand_inputs(["-"], stdin=Stdin())


# --- names never escape -o ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "..", ".", "/tmp/satseg-escape", "a/b", "a\\b", ".hidden", "x\ny"])
def test_a_jobs_case_name_that_is_not_a_plain_folder_name_is_refused(name, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": "a.nii.gz", "prompts": ["liver"]}) + "\n"
                    + json.dumps({"image": "a.nii.gz", "case": name}) + "\n")
    with pytest.raises(InputError, match=f"{jobs}:2: \"case\" must be a plain folder name"):
        read_jobs(jobs)


@pytest.mark.parametrize("file", ["...nii.gz", "..nii.gz", ".nii.gz", "....nii"])
def test_case_names_from_scan_files_are_single_harmless_components(file, tmp_path):
    name = case_name(tmp_path / file)
    assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".")
    assert (tmp_path / "out" / name).resolve().parent == (tmp_path / "out").resolve()


def test_safe_folder_names_keep_ordinary_names():
    for ordinary in ("patient_001", "Müller Hans", "case-7.2", "中文"):
        assert safe_folder_name(ordinary) == ordinary


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_nothing_is_ever_created_outside_the_output_folder(env, small_scan, tmp_path):
    work = tmp_path / "work"
    (work / "scans").mkdir(parents=True)
    for file in ("...nii.gz", "..nii.gz", "normal.nii.gz"):
        shutil.copy(small_scan, work / "scans" / file)
    jobs = work / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps({"image": f"scans/{f}", "prompts": ["liver", "../../escape", "/abs"]})
                              for f in ("...nii.gz", "..nii.gz", "normal.nii.gz")) + "\n")
    out = work / "a" / "out"
    before = _tree(tmp_path)

    done = run_cli("batch", "--jobs", str(jobs), "-o", str(out), "--model", "tiny-test", "--free-text", env=env)
    assert done.returncode == 0, done.stderr
    folder = run_cli("batch", str(work / "scans"), "-p", "liver", "-o", str(out), "--model", "tiny-test", env=env)
    assert folder.returncode == 0, folder.stderr
    single = run_cli(str(work / "scans" / "...nii.gz"), "-p", "../../x", "-o", str(out / "single"),
                     "--model", "tiny-test", "--report", "run.json", "--free-text", env=env)
    assert single.returncode == 0, single.stderr

    created = _tree(tmp_path) - before
    outside = [p for p in created if not (tmp_path / p).resolve().is_relative_to(out.resolve())
               and (tmp_path / p).resolve() != out.resolve()
               and not out.resolve().is_relative_to((tmp_path / p).resolve())]
    assert outside == []
    cases = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert all(name not in (".", "..") for name in cases) and "normal" in cases
    for case in out.iterdir():
        assert case.resolve().parent == out.resolve()


# --- messages that reach the user --------------------------------------------------------------------------


def test_batch_prints_each_cases_warnings_and_counts_them_in_the_summary(env, small_scan, tmp_path):
    # the piece of CT holds no air: "modality unknown ... segmenting as CT", the warning a cohort must not lose
    done = run_cli("batch", str(small_scan), "-p", "liver", "-o", str(tmp_path / "out"), "--model", "tiny-test",
                   env=env)
    assert done.returncode == 0, done.stderr
    console = " ".join(done.stderr.split())
    assert "small: modality unknown" in console and "small: small:" not in console
    assert "1 warning(s)" in done.stdout
    assert "1 with warnings" in console
    report = run_cli("batch", str(small_scan), "-p", "liver", "-o", str(tmp_path / "out2"), "--model", "tiny-test",
                     "--modality", "ct", env=env)
    assert report.returncode == 0 and "warning" not in report.stdout and "with warnings" not in report.stderr


def test_stage_lines_reach_a_log_file_when_stderr_is_not_a_terminal(env, small_scan, tmp_path):
    done = run_cli(str(small_scan), "-p", "liver", "-o", str(tmp_path / "out"), "--model", "tiny-test", env=env)
    assert done.returncode == 0, done.stderr
    stages = [line for line in done.stderr.splitlines() if PROGRESS_LINE.match(line)]
    assert [s.split()[1] for s in stages] == ["reading", "loading", "segmenting", "small:", "writing"]
    quiet = run_cli("-q", str(small_scan), "-p", "liver", "-o", str(tmp_path / "out2"), "--model", "tiny-test",
                    env=env)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_weights_verify_fails_when_a_models_files_are_missing(env, tmp_path):
    text = Path(env["SATSEG_HOME"]) / "files" / "tiny_text_encoder.pth"  # where tiny_model_env made it
    assert text.is_file()
    assert run_cli("weights", "verify", "tiny-test", env=env).returncode == 0
    moved = text.with_suffix(".moved")
    os.replace(text, moved)
    try:
        named = run_cli("weights", "verify", "tiny-test", env=env)
        everything = run_cli("weights", "verify", env=env)
    finally:
        os.replace(moved, text)
    assert named.returncode == 1 and "missing" in named.stderr
    assert everything.returncode == 1 and "tiny-test" in everything.stderr
    assert "not downloaded" in everything.stdout  # hub models never fetched are listed, not failures


def test_a_full_disk_names_the_output_folder(env, small_scan, tmp_path):
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from satseg.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    import subprocess
    import sys

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", script, str(small_scan), "-p", "liver", "-p", "spleen", "-o", str(out),
                           "--model", "tiny-test", "--probabilities"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("satseg: error:")]
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_names_that_differ_only_in_case_get_separate_folders(tmp_path):
    for folder, name in (("a", "Case.nii.gz"), ("b", "case.nii.gz"), ("c", "CASE.nii.gz")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    cases = expand_inputs([str(tmp_path / "a" / "Case.nii.gz"), str(tmp_path / "b" / "case.nii.gz"),
                           str(tmp_path / "c" / "CASE.nii.gz")])
    folded = [c.name.casefold() for c in cases]
    assert len(set(folded)) == 3


def test_a_summary_cell_that_looks_like_markup_is_printed_as_text(env, small_scan, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(small_scan.parent / "missing[/b].nii.gz"), "prompts": ["liver"],
                                "case": "a[b]c"}) + "\n")
    done = run_cli("batch", "--jobs", str(jobs), "-o", str(tmp_path / "out"), "--model", "tiny-test", env=env)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "a[b]c" in done.stderr


def test_a_jobs_prompt_that_cannot_be_read_stops_the_cohort_before_any_case_runs(env, small_scan, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(small_scan), "prompts": ["liver"]}) + "\n"
                    + json.dumps({"image": str(small_scan), "prompts": ["liver"], "modality": "pet",
                                  "case": "b"}) + "\n"
                    + json.dumps({"image": str(small_scan), "prompts": ["no such organ"], "case": "c"}) + "\n")
    done = run_cli("batch", "--jobs", str(jobs), "-o", str(tmp_path / "out"), "--model", "tiny-test", env=env)
    assert done.returncode == 2, done.stderr
    assert f"{jobs}:2" in done.stderr and "trained" in done.stderr  # liver is not a PET term
    assert not (tmp_path / "out").exists()


def test_a_term_not_trained_for_the_modality_is_refused_unless_allowed_and_the_warning_is_kept(
    env, small_scan, tmp_path
):
    refused = run_cli(str(small_scan), "-p", "left lung", "--modality", "mri", "-o", str(tmp_path / "no"),
                      "--model", "tiny-test", env=env)
    assert refused.returncode == 2 and "trained" in refused.stderr and "ct" in refused.stderr.lower()
    assert not (tmp_path / "no").exists()

    allowed = run_cli(str(small_scan), "-p", "left lung", "--modality", "mri", "-o", str(tmp_path / "yes"),
                      "--model", "tiny-test", "--allow-untrained-modality", "--report", "run.json", env=env)
    assert allowed.returncode == 0, allowed.stderr
    report = json.loads((tmp_path / "yes" / "run.json").read_text())
    assert any("trained" in w for w in report["warnings"])

    batch = run_cli("batch", str(small_scan), "-p", "left lung", "--modality", "mri", "-o", str(tmp_path / "b"),
                    "--model", "tiny-test", "--allow-untrained-modality", env=env)
    assert batch.returncode == 0 and "warning(s)" in batch.stdout and "with warnings" in batch.stderr
    refused = run_cli("batch", str(small_scan), "-p", "left lung", "--modality", "mri", "-o", str(tmp_path / "c"),
                      "--model", "tiny-test", env=env)
    assert refused.returncode == 2 and not (tmp_path / "c").exists()
