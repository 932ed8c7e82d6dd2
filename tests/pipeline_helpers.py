"""Shared set-up for pipeline tests: a tiny SAT model registered under a name, as a user would import it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

from satseg.model import build_sat, build_text_encoder
from satseg.model.checkpoint import write_official_checkpoint


def make_tiny_official(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny model in the released SAT file layout (random weights)."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seg = write_official_checkpoint(build_sat("tiny", deep_supervision=True), folder / "tiny.pth", step=1)
    text = write_official_checkpoint(build_text_encoder("tiny"), folder / "tiny_text_encoder.pth", text=True, step=1)
    return seg, text


PROGRESS_LINE = re.compile(r"^satseg: (reading |loading model |segmenting |writing to |fetching series |storing |\S.*: (\d+ window|window \d))")
"""The stage lines the CLI prints on stderr while it works (not errors)."""


def error_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines that are not stage lines."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def run_cli(*args: str, env: dict | None = None, stdin: str | None = None, timeout: int = 600):
    """Run ``python -m satseg.cli.main ARGS`` in a subprocess; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "satseg.cli.main", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=timeout)


def tiny_model_env(home: Path, mpnet_dir: Path) -> dict:
    """Environment with a SATSEG_HOME where a tiny model is imported as 'tiny-test' (the air-gapped path)."""
    import os

    seg, text = make_tiny_official(home / "files")
    env = dict(os.environ, SATSEG_HOME=str(home), HF_HUB_OFFLINE="1", HF_HOME=str(home / "hf"))
    done = run_cli("weights", "import", "--name", "tiny-test", "--variant", "tiny", "--checkpoint", str(seg),
                   "--text-checkpoint", str(text), "--tokenizer", str(mpnet_dir), env=env)
    assert done.returncode == 0, done.stderr
    return env
