"""SAT's segmentation loss: soft Dice + BCE per prompt, deep supervision (SAT_SPEC §7.4).

Per prompt: ``dice = 1 − (2 Σ p y + s) / (Σ p² + Σ y² + s)`` on sigmoid probabilities and BCE-with-logits averaged
over voxels; both are averaged over the real prompts (``query_mask``; padding prompts do not count) and summed
with weights ``dice_weight`` / ``bce_weight``. With deep supervision the outputs at full, /2, /4, /8 resolution
are weighted ∝ 1, 1/2, 1/4, 1/8 (normalised to sum 1); targets are downsampled with nearest interpolation.
The loss is computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def deep_supervision_weights(n: int) -> list[float]:
    """Weights ∝ 1, 1/2, 1/4, … for ``n`` outputs, normalised to sum 1."""
    raw = [1.0 / 2 ** i for i in range(n)]
    return [w / sum(raw) for w in raw]


def dice_per_prompt(probabilities: torch.Tensor, target: torch.Tensor, smooth: float = 1e-7) -> torch.Tensor:
    """Soft Dice loss per prompt: (B, N, H, W, D) probabilities and targets → (B, N)."""
    p = probabilities.flatten(2)
    y = target.flatten(2)
    return 1.0 - (2.0 * (p * y).sum(-1) + smooth) / ((p * p).sum(-1) + (y * y).sum(-1) + smooth)


def bce_per_prompt(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over voxels: (B, N, H, W, D) → (B, N)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(-1)


def embedding_floor_penalty(pre_activations: Sequence[torch.Tensor], query_mask: torch.Tensor,
                            floor: float) -> torch.Tensor:
    """Mean squared shortfall below ``floor`` of the mask heads' last pre-activations (before the final GELU),
    over the real prompts, summed over heads: each (B, N, C), ``query_mask`` (B, N).

    A training-only term (satseg; upstream has none). A channel driven to GELU's minimum (pre-activation
    -0.75, output -0.17) has zero gradient and stays there; held above ``floor`` it keeps a gradient (why it
    exists: benchmarks/RESULTS.md, "Design notes from the code").
    """
    valid = query_mask.float()
    count = valid.sum().clamp(min=1.0)
    total = torch.zeros((), device=query_mask.device)
    for pre in pre_activations:
        shortfall = torch.relu(floor - pre.float()).pow(2).mean(-1)
        total = total + (shortfall * valid).sum() / count
    return total


@dataclass
class LossParts:
    """``total`` (differentiable scalar) = dice_weight · dice + bce_weight · bce, summed over scales."""

    total: torch.Tensor
    dice: torch.Tensor
    bce: torch.Tensor


class SegmentationLoss:
    """Dice + BCE with deep supervision and a prompt mask.

    Args:
        dice_weight, bce_weight: weights of the two terms (1:1 in SAT).
        smooth: Dice smoothing constant.
        scale_weights: weights of the outputs at full, /2, /4, /8 (normalised again over the outputs present).
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1e-7,
                 scale_weights: Sequence[float] | None = None):
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.smooth = float(smooth)
        self.scale_weights = list(scale_weights) if scale_weights else None

    def weights_for(self, n: int) -> list[float]:
        if self.scale_weights is None:
            return deep_supervision_weights(n)
        if len(self.scale_weights) < n:
            raise ValueError(f"{n} outputs but only {len(self.scale_weights)} deep-supervision weights")
        chosen = self.scale_weights[:n]
        return [w / sum(chosen) for w in chosen]

    def __call__(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                 query_mask: torch.Tensor) -> LossParts:
        """logits: (B, N, H, W, D) or a list of them (full resolution first); target: (B, N, H, W, D) {0, 1};
        query_mask: (B, N), 1 for real prompts and 0 for padding."""
        outputs = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        target = target.float()
        valid = query_mask.float()
        count = valid.sum().clamp(min=1.0)
        dice_total = torch.zeros((), device=target.device)
        bce_total = torch.zeros((), device=target.device)
        for out, weight in zip(outputs, self.weights_for(len(outputs))):
            out = out.float()
            scaled = target if out.shape[2:] == target.shape[2:] else F.interpolate(target, size=out.shape[2:],
                                                                                   mode="nearest")
            dice = (dice_per_prompt(torch.sigmoid(out), scaled, self.smooth) * valid).sum() / count
            bce = (bce_per_prompt(out, scaled) * valid).sum() / count
            dice_total = dice_total + weight * dice
            bce_total = bce_total + weight * bce
        return LossParts(total=self.dice_weight * dice_total + self.bce_weight * bce_total,
                         dice=dice_total, bce=bce_total)
