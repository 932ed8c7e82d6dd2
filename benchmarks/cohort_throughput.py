"""Cohort throughput on the CPU: the pipelined cohort engine vs one stage after another (issue 16).

    python benchmarks/cohort_throughput.py                    # tiny: 20 cases, 2 A B pairs; nano: 20 cases, 1 pair
    python benchmarks/cohort_throughput.py --variant tiny --reps 4 --start-with pipelined --label quiet --append
    python benchmarks/cohort_throughput.py --reps 4 --quiet-wait 900 --label quiet   # each run waits for a quiet machine

Cases: 20 distinct NIfTI crops of TotalSegmentator's example scans (example_ct_sm, example_ct, example_mr_sm,
aorta_report/example_ct), 48–120 mm in-plane and 45–180 mm along the slices, some flipped or with two axes swapped:
one SAT-Nano 288×288×96 window each on the 1×1×3 mm grid (21–25 s in bf16 on the quiet 2-core CPU), 1–27 of the
tiny model's 64×64×32 windows. Listed round-robin over the sources, so a shorter nano cohort still mixes them.
Models: random weights of the real shapes, imported by name into a throw-away SATSEG_HOME (``satseg weights import``).

Modes, each run in a fresh process (its own peak RSS), alternated A B B A … against drift, after one warm-up case:
``sequential`` = ``CohortOptions(read_workers=0, write_threads=0)``; ``pipelined`` = ``CohortOptions(read_workers=1,
write_threads=1)``: a read-ahead process (reads, resamples, normalises; under ``SCHED_IDLE``) and a writer thread.

Per run: wall time of ``segment_files`` (model load included), cases/h, per-stage busy seconds summed over the cases
(report.json ``timings_s``; ``write`` = ``compute_statistics`` + ``write_segmentation``, timed by wrapping them),
CPU seconds of the process and of its children, peak RSS of the main process and of the worker (``/proc`` every
50 ms, and ``ru_maxrss``), load average before/after and, per case, the cores this run and the rest of the machine
used while it ran (``/proc/stat``): the summary compares the median seconds a case over quiet cases (load-matched)
besides the walls. A pair whose either run had the rest of the machine use more than :data:`LOADED` cores is loaded:
kept in the rows, left out of the pair ratios (mean and median of pipelined / sequential wall over quiet pairs).
``--quiet-wait S`` waits (at most S seconds) before each run until the rest of the machine has been idle for 5 s.
Outputs of all runs are hashed file by file (report.json excluded) and compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(os.environ.get("SATSEG_BENCH_DATA", "~/.cache/satseg-test-data")).expanduser()
REF = DATA / "totalseg/reference_files"
MPNET = DATA / "all-mpnet-base-v2"
PROMPTS = ["liver", "spleen", "left kidney"]
MODES = {"sequential": (0, 0), "pipelined": (1, 1)}
STAGES = ("read", "preprocess", "load_model", "text", "model", "to_input_grid", "write")

# (source, crop (i0, i1, j0, j1, k0, k1) in source voxels, transform); 48–120 mm in-plane, 45–180 mm along the
# slices: one SAT-Nano window each, 1 to 27 windows of the tiny model (64×64×32 on the 1×1×3 mm grid).
_SOURCES = {"ct_sm": ("example_ct_sm.nii.gz", "ct"), "ct": ("example_ct.nii.gz", "ct"),
            "mr_sm": ("example_mr_sm.nii.gz", "mri"), "aorta": ("aorta_report/example_ct.nii.gz", "ct")}
_CROPS = {  # 3 mm voxels
    "ct_sm": [((40, 72, 30, 62, 0, 30), None), ((50, 90, 35, 75, 0, 30), "flip_i"), ((30, 66, 20, 56, 5, 25), None),
              ((60, 100, 40, 70, 0, 20), "swap_ij"), ((20, 52, 40, 76, 0, 30), "flip_k")],
    "ct": [((40, 72, 30, 62, 20, 80), None), ((45, 85, 35, 75, 40, 100), "flip_k"), ((30, 62, 20, 52, 0, 40), None),
           ((50, 90, 40, 76, 60, 110), "swap_ij"), ((60, 80, 30, 70, 50, 80), "flip_i")],
    "mr_sm": [((40, 72, 30, 62, 0, 20), None), ((50, 90, 30, 70, 0, 20), "flip_j"), ((20, 56, 20, 50, 2, 18), None),
              ((60, 100, 40, 72, 0, 20), "swap_ij"), ((30, 50, 30, 66, 0, 15), "flip_i")],
    "aorta": [((80, 160, 60, 140, 40, 160), None), ((90, 170, 40, 120, 20, 100), "flip_i"),  # 1.5 mm voxels
              ((60, 124, 50, 114, 60, 150), None), ((100, 172, 60, 132, 80, 140), "swap_ij"),
              ((70, 110, 70, 150, 30, 120), "flip_k")],
}
_ORNT = {None: None, "flip_i": [[0, -1], [1, 1], [2, 1]], "flip_j": [[0, 1], [1, -1], [2, 1]],
         "flip_k": [[0, 1], [1, 1], [2, -1]], "swap_ij": [[1, 1], [0, 1], [2, 1]]}


def make_cases(folder: Path) -> list[dict]:
    """Write the 20 crops as ``folder/NN_source.nii.gz``; return ``[{name, path, modality, shape, mm}]`` in
    round-robin order over the sources."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for index in range(5):
        for source, (file, modality) in _SOURCES.items():
            (i0, i1, j0, j1, k0, k1), transform = _CROPS[source][index]
            image = nib.load(REF / file)
            crop = image.slicer[i0:i1, j0:j1, k0:k1]
            crop = nib.Nifti1Image(crop.get_fdata(dtype="float32").astype(image.get_data_dtype()), crop.affine,
                                   crop.header)
            if _ORNT[transform] is not None:
                crop = crop.as_reoriented(_ORNT[transform])
            name = f"{len(cases):02d}_{source}"
            path = folder / f"{name}.nii.gz"
            nib.save(crop, path)
            mm = [round(float(n * z), 1) for n, z in zip(crop.shape, crop.header.get_zooms()[:3])]
            cases.append({"name": name, "path": str(path), "modality": modality, "shape": list(crop.shape), "mm": mm,
                          "transform": transform or "none"})
    return cases


def make_home(home: Path, variants: list[str]) -> dict:
    """A SATSEG_HOME with ``bench-<variant>`` imported for each variant (random weights); return its environment."""
    import torch

    from satseg.model import build_sat, build_text_encoder
    from satseg.model.checkpoint import write_official_checkpoint

    env = dict(os.environ, SATSEG_HOME=str(home), HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"))
    for variant in variants:
        torch.manual_seed(0)
        files = home / "files"
        files.mkdir(parents=True, exist_ok=True)
        seg = write_official_checkpoint(build_sat(variant, deep_supervision=True), files / f"{variant}.pth", step=1)
        text = write_official_checkpoint(build_text_encoder(variant), files / f"{variant}_text.pth", text=True, step=1)
        subprocess.run([sys.executable, "-m", "satseg.cli.main", "weights", "import", "--name", f"bench-{variant}",
                        "--variant", variant, "--checkpoint", str(seg), "--text-checkpoint", str(text),
                        "--tokenizer", str(MPNET)], env=env, check=True, capture_output=True, text=True)
    return env


# -- one cohort run (in its own process) ----------------------------------------------------------------------


def _rss_of(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found + [g for c in found for g in _children(c)]


class RssSampler(threading.Thread):
    """Samples this process's and its descendants' RSS every ``interval`` s: overall peaks, and the peak of
    main + children since the last :meth:`cut` (one per case)."""

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.stop_event = interval, threading.Event()
        self.main_peak = self.child_peak = self.sum_peak = self.window_peak = 0
        self.child_pids: set[int] = set()

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_event.wait(self.interval):
            main = _rss_of(me)
            kids = {pid: _rss_of(pid) for pid in _children(me)}
            self.child_pids.update(kids)
            child = max(kids.values(), default=0)
            total = main + sum(kids.values())
            self.main_peak, self.child_peak = max(self.main_peak, main), max(self.child_peak, child)
            self.sum_peak, self.window_peak = max(self.sum_peak, total), max(self.window_peak, total)

    def cut(self) -> int:
        peak, self.window_peak = self.window_peak, 0
        return peak


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values[:8]) - idle, sum(values[:8])


def run_cohort(spec: dict) -> dict:
    """Run one cohort as ``spec`` says (variant, mode, cases, out_dir, precision); return its row."""
    import satseg  # noqa: F401  (first: its process settings apply before torch)
    import satseg.outputs.case as case_module
    import satseg.outputs.statistics as statistics_module
    from satseg.inference.cohort import Case
    from satseg.inference.engine import CohortOptions, Hooks, segment_files
    from satseg.inference.options import RuntimeOptions
    from satseg.outputs.case import OutputOptions

    write_s: list[float] = []

    def timed(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                write_s.append(time.perf_counter() - start)
        return wrapper

    case_module.write_segmentation = timed(case_module.write_segmentation)
    statistics_module.compute_statistics = timed(statistics_module.compute_statistics)

    sampler = RssSampler()
    per_case: list[dict] = []
    started = time.perf_counter()

    last = {}

    def cpu_now() -> dict:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = sum(_cpu_of(pid) for pid in _children(os.getpid()))
        return {"t": time.perf_counter(), "busy": _cpu_jiffies()[0] / os.sysconf("SC_CLK_TCK"),
                "own": me.ru_utime + me.ru_stime + kids}

    def on_outcome(outcome) -> None:
        now = cpu_now()
        span = max(now["t"] - last["t"], 1e-6)
        own = max(now["own"] - last["own"], 0.0)
        per_case.append({"case": outcome.case.name, "status": outcome.status, "detail": outcome.detail,
                         "settled_s": round(time.perf_counter() - started, 3), "peak_rss_gib": sampler.cut() / 2**30,
                         "own_cores": round(own / span, 2),
                         "others_cores": round(max(now["busy"] - last["busy"] - own, 0.0) / span, 2)})
        last.update(now)

    workers, threads = MODES[spec["mode"]]
    cases = [Case(path=Path(c["path"]), name=c["name"], modality=c["modality"]) for c in spec["cases"]]
    load_before, jiffies_before = os.getloadavg(), _cpu_jiffies()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    sampler.start()
    started = time.perf_counter()
    last.update(cpu_now())
    segment_files(cases, spec["out_dir"], PROMPTS, model=f"bench-{spec['variant']}",
                  runtime=RuntimeOptions(device="cpu", precision=spec["precision"]),
                  outputs=OutputOptions(report="report.json"),
                  cohort=CohortOptions(read_workers=workers, write_threads=threads), hooks=Hooks(outcome=on_outcome))
    wall = time.perf_counter() - started
    sampler.stop_event.set()
    sampler.join()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, total = (a - b for a, b in zip(_cpu_jiffies(), jiffies_before))
    hz = os.sysconf("SC_CLK_TCK")
    own_cpu = (me.ru_utime + me.ru_stime - self_before.ru_utime - self_before.ru_stime) + kids.ru_utime + kids.ru_stime
    stages = dict.fromkeys(STAGES, 0.0)
    for case, record in zip(cases, sorted(per_case, key=lambda p: p["case"])):
        report = json.loads((Path(spec["out_dir"]) / case.name / "report.json").read_text())
        record["timings_s"] = report["timings_s"]
        for stage, seconds in report["timings_s"].items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    stages["write"] = sum(write_s)
    quarter = max(1, len(per_case) // 4)
    return {
        "variant": spec["variant"], "mode": spec["mode"], "rep": spec["rep"], "precision": spec["precision"],
        "cases": len(cases), "prompts": len(PROMPTS), "read_workers": workers, "write_threads": threads,
        "done": sum(p["status"] == "done" for p in per_case), "wall_s": round(wall, 2),
        "cases_per_h": round(3600 * len(cases) / wall, 1),
        "wall_after_load_s": round(wall - stages["load_model"], 2),
        "stage_busy_s": {k: round(v, 2) for k, v in stages.items()},
        "model_busy_fraction": round(stages["model"] / wall, 3),
        "cpu_s": {"main": round(me.ru_utime + me.ru_stime - self_before.ru_utime - self_before.ru_stime, 1),
                  "children": round(kids.ru_utime + kids.ru_stime, 1)},
        "peak_rss_gib": {"main_sampled": round(sampler.main_peak / 2**30, 3),
                         "worker_sampled": round(sampler.child_peak / 2**30, 3),
                         "main_plus_children_sampled": round(sampler.sum_peak / 2**30, 3),
                         "main_maxrss": round(me.ru_maxrss / 2**20, 3),
                         "children_maxrss": round(kids.ru_maxrss / 2**20, 3),
                         "per_case_first_quarter": round(max(p["peak_rss_gib"] for p in per_case[:quarter]), 3),
                         "per_case_last_quarter": round(max(p["peak_rss_gib"] for p in per_case[-quarter:]), 3)},
        "child_processes_seen": len(sampler.child_pids),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "machine_busy_cores": round((os.cpu_count() or 1) * busy / total, 2) if total else None,
        "others_cpu_s": round(busy / hz - own_cpu, 1),
        "per_case": per_case,
    }


_VOLATILE = {"ino", "mtime_ns", "ctime_ns", "written_at"}


def _stable(value):
    """A completion record without what differs between two writes of the same bytes (inode, times) and without
    report.json's entry (its timings differ)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE and k != "report.json"}
    return [_stable(v) for v in value] if isinstance(value, list) else value


def hash_outputs(out_dir: Path) -> dict[str, str]:
    """relative path → sha256 of every file of the run's case folders: report.json excluded (it holds timings),
    the completion record compared without its volatile fields (:func:`_stable`)."""
    hashes = {}
    for path in sorted(out_dir.rglob("*")):
        if not path.is_file() or path.name == "report.json":
            continue
        data = path.read_bytes()
        if path.name == ".satseg-complete.json":
            data = json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
        hashes[str(path.relative_to(out_dir))] = hashlib.sha256(data).hexdigest()
    return hashes


# -- the driver ---------------------------------------------------------------------------------------------


def _run_child(spec: dict, env: dict, work: Path) -> dict:
    spec_path = work / f"spec_{spec['variant']}_{spec['mode']}_{spec['rep']}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"run {spec_path.name} failed:\n{done.stderr[-4000:]}")
    return json.loads(Path(str(spec_path) + ".out").read_text())


QUIET = 0.15
"""A case counts as quiet when the rest of the machine used under this many cores while it ran."""

LOADED = 0.1
"""A run is loaded when the rest of the machine used more than this many cores on average while it ran."""


def others_cores(row: dict) -> float:
    """Cores the rest of the machine used on average during the run of ``row``."""
    return row["others_cpu_s"] / row["wall_s"]


def wait_for_quiet(limit: float, window: float = 5.0, below: float = 0.05) -> float:
    """Wait until the whole machine used under ``below`` cores for ``window`` seconds (at most ``limit`` seconds);
    return the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        busy0, total0 = _cpu_jiffies()
        time.sleep(window)
        busy1, total1 = _cpu_jiffies()
        if (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1) < below:
            break
    return round(time.perf_counter() - start, 1)


def quiet_case_seconds(rows: list[dict]) -> list[float]:
    """Seconds between consecutive settled cases (the first case, which includes loading the model, left out)
    for the cases during which the rest of the machine was quiet (< :data:`QUIET` cores): load-matched."""
    seconds = []
    for row in rows:
        cases = row["per_case"]
        for before, case in zip(cases, cases[1:]):
            if case.get("others_cores") is not None and case["others_cores"] < QUIET:
                seconds.append(case["settled_s"] - before["settled_s"])
    return seconds


def reading_costs(cases: list[dict], spacing=(1.0, 1.0, 3.0)) -> list[dict]:
    """Per case, in this process (one at a time): seconds to read and validate it and to bring it to the model
    grid (resample + normalise): the work the read-ahead worker takes off the model's process. The engine's
    ``timings_s`` do not hold the second (it is done inside the read job, in both modes)."""
    from satseg.inference.options import PromptOptions, ScanOptions
    from satseg.inference.prepare import choose_orientation, on_model_grid, prepare_case

    out = []
    for case in cases:
        start = time.perf_counter()
        prepared = prepare_case(Path(case["path"]), PROMPTS, ScanOptions(modality=case["modality"]), PromptOptions())
        read = time.perf_counter() - start
        start = time.perf_counter()
        orientation = choose_orientation(prepared.volume, "auto")
        image, _ = on_model_grid(prepared.volume, prepared.modality, orientation, spacing)
        grid = time.perf_counter() - start
        out.append({"case": case["name"], "read_s": round(read, 4), "to_model_grid_s": round(grid, 4),
                    "model_grid_shape": list(image.shape)})
    return out


def summary(rows: list[dict]) -> list[dict]:
    """Per variant and label: mean wall of each mode and the ratio pipelined / sequential (also per repetition
    pair, in the order they ran)."""
    out = []
    for variant, label in dict.fromkeys((r["variant"], r.get("label", "")) for r in rows):
        mine = [r for r in rows if r["variant"] == variant and r.get("label", "") == label]
        walls = {m: [r["wall_s"] for r in mine if r["mode"] == m] for m in MODES}
        if not all(walls.values()):
            continue
        mean = {m: sum(w) / len(w) for m, w in walls.items()}
        quiet = {m: quiet_case_seconds([r for r in mine if r["mode"] == m]) for m in MODES}
        median = {m: statistics.median(q) if q else None for m, q in quiet.items()}
        pairs = {}
        for r in mine:
            pairs.setdefault(r["rep"], {})[r["mode"]] = r
        quiet_pairs = {rep: p for rep, p in pairs.items()
                       if len(p) == len(MODES) and all(others_cores(r) <= LOADED for r in p.values())}
        pair_ratios = [p["pipelined"]["wall_s"] / p["sequential"]["wall_s"] for p in quiet_pairs.values()]
        out.append({"variant": variant, "label": label, "cases": mine[0]["cases"], "reps": len(walls["pipelined"]),
                    "sequential_wall_s": walls["sequential"], "pipelined_wall_s": walls["pipelined"],
                    "ratio_pipelined_over_sequential": round(mean["pipelined"] / mean["sequential"], 3),
                    "ratio_per_rep": [round(p / s, 3) for s, p in zip(walls["sequential"], walls["pipelined"])],
                    "quiet_pairs": sorted(quiet_pairs),
                    "loaded_pairs": sorted(set(pairs) - set(quiet_pairs)),
                    "quiet_pair_ratio_mean": round(statistics.mean(pair_ratios), 3) if pair_ratios else None,
                    "quiet_pair_ratio_median": round(statistics.median(pair_ratios), 3) if pair_ratios else None,
                    "quiet_cases": {m: len(q) for m, q in quiet.items()},
                    "quiet_case_median_s": {m: round(v, 3) if v else None for m, v in median.items()},
                    "quiet_ratio": round(median["pipelined"] / median["sequential"], 3)
                    if all(median.values()) else None})
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| variant | mode | rep | cases | wall s | cases/h | read | preprocess | load | text | model | "
            "to_input_grid | write | model busy | CPU s main / children | peak RSS GiB main / worker | "
            "per-case peak GiB first ¼ / last ¼ | load before → after | others' cores |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s, p = r["stage_busy_s"], r["peak_rss_gib"]
        lines.append(f"| {r['variant']} | {r['mode']} | {r['rep']} | {r['cases']} | {r['wall_s']:.1f} | "
                     f"{r['cases_per_h']:.0f} | {s['read']:.1f} | {s['preprocess']:.1f} | {s['load_model']:.1f} | "
                     f"{s['text']:.1f} | {s['model']:.1f} | {s['to_input_grid']:.1f} | {s['write']:.1f} | "
                     f"{100 * r['model_busy_fraction']:.0f} % | {r['cpu_s']['main']:.0f} / {r['cpu_s']['children']:.0f}"
                     f" | {p['main_sampled']:.2f} / {p['worker_sampled']:.2f} | {p['per_case_first_quarter']:.2f} / "
                     f"{p['per_case_last_quarter']:.2f} | {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} | "
                     f"{others_cores(r):.2f} |")
    return "\n".join(lines)


def _save(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", nargs="+", default=["tiny", "nano"], choices=["tiny", "nano"])
    parser.add_argument("--cases", type=int, default=20, help="tiny's cohort size (≤ 20)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of the A B pair for tiny")
    parser.add_argument("--nano-cases", type=int, default=20, help="nano's cohort size (≤ 20; 21–50 s a case here)")
    parser.add_argument("--nano-reps", type=int, default=1)
    parser.add_argument("--nano-precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--json", default=str(Path(__file__).parent / "results/cohort_throughput_s9.json"))
    parser.add_argument("--start-with", choices=list(MODES), default="sequential", help="mode of the first run")
    parser.add_argument("--label", default="", help="a name for this invocation's rows (e.g. 'quiet')")
    parser.add_argument("--append", action="store_true", help="keep the rows already in --json and add these")
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="before each run, wait up to this many seconds for the machine to be idle for 5 s")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        Path(args.child + ".out").write_text(json.dumps(run_cohort(spec)))
        return

    import torch

    old = json.loads(Path(args.json).read_text()) if args.append and Path(args.json).exists() else {}
    rows, identical = list(old.get("rows", [])), dict(old.get("outputs", {}))
    with tempfile.TemporaryDirectory(prefix="satseg-cohort-bench-") as tmp:
        work = Path(tmp)
        cases = make_cases(work / "cases")
        reading = reading_costs(cases)
        env = make_home(work / "home", args.variant)
        for variant in args.variant:
            count, reps = (args.cases, args.reps) if variant == "tiny" else (args.nano_cases, args.nano_reps)
            precision = "fp32" if variant == "tiny" else args.nano_precision
            base = {"variant": variant, "precision": precision, "cases": cases[:count]}
            # warm-up: one case, so the text-embedding cache and the page cache are the same for every mode
            _run_child({**base, "mode": "sequential", "rep": 0, "cases": cases[:1], "out_dir": str(work / "warm")},
                       env, work)
            hashes = {}
            for rep in range(1, reps + 1):
                order = list(MODES) if args.start_with == "sequential" else list(MODES)[::-1]
                for mode in (order if rep % 2 else order[::-1]):
                    out_dir = work / f"out_{variant}_{mode}_{rep}"
                    waited = wait_for_quiet(args.quiet_wait) if args.quiet_wait else None
                    row = _run_child({**base, "mode": mode, "rep": rep, "out_dir": str(out_dir)}, env, work)
                    row["label"] = args.label
                    row["waited_for_quiet_s"] = waited
                    hashes[(mode, rep)] = hash_outputs(out_dir)
                    rows.append(row)
                    _save(args.json, {"cases": cases, "rows": rows, "summary": summary(rows), "complete": False})
                    print(markdown([row]).splitlines()[-1], flush=True)
            first = next(iter(hashes.values()))
            key = variant + (f"/{args.label}" if args.label else "")
            identical[key] = {"files_compared": len(first), "runs": len(hashes),
                              "byte_identical": all(h == first for h in hashes.values()),
                              "differing": sorted({k for h in hashes.values() for k in h if h.get(k) != first.get(k)})}
    result = {"machine": {"cpu_cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
              "prompts": PROMPTS, "cases": cases, "reading_in_one_process": reading, "outputs": identical,
              "summary": summary(rows), "rows": rows}
    _save(args.json, {**result, "complete": True})
    print(markdown([r for r in rows if r.get("label", "") == args.label]))
    print(json.dumps({"summary": result["summary"], "outputs": identical}, indent=1))


if __name__ == "__main__":
    main()
