"""AdamW with SAT's schedule: linear warmup from 0 to the peak, then cosine to 0 (SAT_SPEC §7.5).

The learning rate is a pure function of the optimizer step, so the schedule's only state is the step it was
last set for; resuming sets it again from the step in the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def warmup_cosine_lr(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based), as upstream's ``cosine_lr``.

    ``step ≤ warmup``: ``peak · step / warmup``; after: ``peak · ½ (1 + cos(π e / E))`` with
    ``e = step − warmup``, ``E = total − warmup`` (E + 1 on the very last step, so it does not reach 0).
    """
    if warmup_steps > 0 and step <= warmup_steps:
        return peak_lr * step / warmup_steps
    elapsed = step - warmup_steps
    span = max(1, total_steps - warmup_steps)
    if elapsed >= span:
        elapsed, span = span, span + 1
    return 0.5 * (1.0 + math.cos(math.pi * elapsed / span)) * peak_lr


class WarmupCosine:
    """Sets every param group's ``lr`` for the coming step: ``schedule.set(step)`` → lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup_steps: int, total_steps: int):
        self.optimizer = optimizer
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.step = 0

    def lr_at(self, step: int) -> float:
        return warmup_cosine_lr(step, self.peak_lr, self.warmup_steps, self.total_steps)

    def set(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step = step
        return lr

    def state_dict(self) -> dict:
        return {"step": self.step, "peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping) -> None:
        self.step = int(state["step"])


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: Mapping) -> torch.optim.AdamW:
    """AdamW over ``params`` from the config's ``optim`` block (one group, weight decay on every tensor, as upstream)."""
    name = str(optim.get("name", "adamw")).lower()
    if name != "adamw":
        from satseg.errors import InputError

        raise InputError(f"optim.name {name!r} is not supported; SAT trains with adamw")
    betas = tuple(float(b) for b in optim.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(list(params), lr=float(optim.get("lr", 1e-4)), betas=betas,  # type: ignore[arg-type]
                             eps=float(optim.get("eps", 1e-8)), weight_decay=float(optim.get("weight_decay", 0.01)))
