"""``satseg train fit``'s logging: ``RUN/metrics.jsonl`` (one JSON line per optimizer step: step, loss, dice_loss, bce,
lr, time, elapsed), console lines, optional TensorBoard, and the progress bar on a terminal. Rank 0 only."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from satseg.errors import InputError

log = logging.getLogger("satseg.training.fit")  # the fit command's messages, whichever module logs them


class MetricsLog:
    """``metrics.jsonl`` (rank 0), trimmed to the resumed step, plus console and optional TensorBoard."""

    def __init__(self, run_dir: Path, step: int, active: bool, tensorboard: bool):
        self.active = active
        self.writer = None
        if not active:
            return
        self.path = run_dir / "metrics.jsonl"
        if self.path.is_file():  # a killed run may have logged steps past its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)

    def write(self, row: dict, console: bool) -> None:
        if not self.active:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if console:
            log.info("step %d  loss %.4f  dice %.4f  bce %.4f  lr %.3g  %.2fs/step", row["step"], row["loss"],
                     row["dice_loss"], row["bce"], row["lr"], row["time"])
        if self.writer is not None:
            for key in ("loss", "dice_loss", "bce", "lr"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def progress(show: bool, start: int, stop: int):
    if not show:
        yield lambda row: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("fit"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("fit", total=stop, completed=start, status="")
        yield lambda row: bar.update(task, advance=1, status=f"loss {row['loss']:.4f} lr {row['lr']:.2e}")
