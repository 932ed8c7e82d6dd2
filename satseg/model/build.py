"""Builders: one small function per part, taking a variant name or a :class:`SATConfig`."""

from __future__ import annotations

import torch

from satseg.model.config import SATConfig, get_config
from satseg.model.sat import SAT
from satseg.model.text import TextEncoder


def build_sat(variant: str | SATConfig = "nano", *, deep_supervision: bool = False,
              device: str | torch.device | None = None) -> SAT:
    """The segmentation model. ``device="meta"`` builds it without allocating weights."""
    config = get_config(variant)
    with torch.device(device or "cpu"):
        model = SAT(config, deep_supervision=deep_supervision)
    return model


def build_text_encoder(variant: str | SATConfig = "nano", *, device: str | torch.device | None = None) -> TextEncoder:
    """The text encoder paired with ``variant`` (same architecture for nano and pro)."""
    config = get_config(variant)
    with torch.device(device or "cpu"):
        model = TextEncoder(config.text, query_dim=config.query_dim)
    return model


def count_parameters(module: torch.nn.Module) -> int:
    """Unique parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())
