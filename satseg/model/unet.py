"""The visual backbone: a 6-stage plain-convolution 3D U-Net (nnU-Net's PlainConvUNet layout).

Module names mirror the released SAT checkpoints (``encoder.stages.{s}.0.convs.{i}.conv``, ...), so the
official state dicts load by name once the ``module.`` prefix and the duplicated ``all_modules`` aliases
are dropped (see :mod:`satseg.model.checkpoint`).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNormAct(nn.Module):
    """3×3×3 conv (bias) → InstanceNorm3d (affine, eps 1e-5) → LeakyReLU(0.01)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True, track_running_stats=False)
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class StackedConvs(nn.Module):
    """``n`` ConvNormAct blocks; the first one may downsample with stride 2."""

    def __init__(self, n: int, in_channels: int, out_channels: int, first_stride: int = 1):
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvNormAct(in_channels if i == 0 else out_channels, out_channels, first_stride if i == 0 else 1)
              for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, features: tuple[int, ...], n_convs: int):
        super().__init__()
        stages = []
        for s, width in enumerate(features):
            # Each stage is wrapped in a Sequential, as in the released checkpoints ("stages.{s}.0.convs").
            stages.append(nn.Sequential(StackedConvs(n_convs, in_channels, width, first_stride=1 if s == 0 else 2)))
            in_channels = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W, D) → skips: 6 tensors at full, /2, /4, /8, /16, /32 resolution."""
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    def __init__(self, features: tuple[int, ...], n_convs: int):
        super().__init__()
        n = len(features)
        self.transpconvs = nn.ModuleList(
            nn.ConvTranspose3d(features[n - 1 - s], features[n - 2 - s], kernel_size=2, stride=2, bias=True)
            for s in range(n - 1)
        )
        self.stages = nn.ModuleList(
            StackedConvs(n_convs, 2 * features[n - 2 - s], features[n - 2 - s]) for s in range(n - 1)
        )

    def forward(self, skips: list[torch.Tensor], all_scales: bool, consume: bool = False) -> list[torch.Tensor]:
        """Decoder outputs, highest resolution first: [full, /2, /4, /8, /16] (or [full] only).

        ``consume=True`` drops each skip from the list once it is used, and no intermediate tensor is kept
        longer than needed: the same values, with a far lower memory peak at full resolution.
        """
        x = skips[-1]
        if consume:
            skips[-1] = None
        outs = []
        for s, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            skip = skips[-(s + 2)]
            if consume:
                skips[-(s + 2)] = None
            x = torch.cat((up(x), skip), dim=1)
            del skip
            x = stage(x)
            if all_scales or s == len(self.stages) - 1:
                outs.append(x)
        return outs[::-1]


class PlainConvUNet(nn.Module):
    """The SAT backbone. ``forward`` returns ``(skips, outs)`` like the upstream vendored copy."""

    def __init__(self, in_channels: int, features: tuple[int, ...], encoder_convs: int, decoder_convs: int):
        super().__init__()
        self.encoder = Encoder(in_channels, features, encoder_convs)
        self.decoder = Decoder(features, decoder_convs)

    def forward(self, x: torch.Tensor, all_scales: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """x: (B, C, H, W, D) with H, W, D divisible by 32.

        Returns:
            skips: 6 encoder outputs (B, features[s], H/2^s, W/2^s, D/2^s).
            outs: decoder outputs, highest resolution first; ``[full]`` unless ``all_scales``.
        """
        skips = self.encoder(x)
        return skips, self.decoder(skips, all_scales)
