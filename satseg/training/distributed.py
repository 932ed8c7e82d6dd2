"""One small module around ``torchrun``'s environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

Launched plainly, training runs as a single process; launched with ``torchrun --nproc_per_node=K`` (or over
nodes with ``--nnodes``/``--rdzv-endpoint``), :func:`init_from_env` joins the process group — NCCL on GPUs,
gloo on CPU — and every helper here becomes a collective. Nothing else in satseg reads these variables.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str = "cpu", backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (no-op for a single plain process).

    Args:
        device_type: ``"cuda"`` → NCCL by default, otherwise gloo.
        backend: force a backend (``"gloo"``, ``"nccl"``); NCCL is refused on CPU.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=int(os.environ["WORLD_SIZE"]))
    chosen = backend or ("nccl" if device_type == "cuda" else "gloo")
    if chosen == "nccl" and device_type != "cuda":
        chosen = "gloo"
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=chosen)
        log.info("rank %d/%d joined the %s process group", info.rank, info.world_size, chosen)
    return info


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a copy; the input is untouched)."""
    out = tensor.detach().clone()
    if is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (``[obj]`` in a single process)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
