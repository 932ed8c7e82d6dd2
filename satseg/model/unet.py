"""The visual backbone: a 6-stage plain-convolution 3D U-Net (nnU-Net's PlainConvUNet layout).

Module names mirror the released SAT checkpoints (``encoder.stages.{s}.0.convs.{i}.conv``, ...), so the
official state dicts load by name once the ``module.`` prefix and the duplicated ``all_modules`` aliases
are dropped (see :mod:`satseg.model.checkpoint`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Tensors larger than this (elements) get their InstanceNorm statistics channel group by channel group, so the
#: float32 copy a bf16/fp16 activation needs for them stays small.
_STATS_CHUNK = 2**26


def instance_norm_leaky_relu(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                             slope: float = 0.01) -> torch.Tensor:
    """``LeakyReLU(InstanceNorm3d(y))`` (affine, biased variance) in two passes over ``y``.

    The same function as ``nn.InstanceNorm3d(affine=True)`` followed by ``nn.LeakyReLU``, computed differently:
    the per-(sample, channel) mean and variance in float32 (``var_mean``), then one float32 multiply-add written
    in ``y``'s own dtype, and the activation in place. On a GPU, ``nn.InstanceNorm3d`` runs through the
    batch-norm kernels on a reshaped tensor and, under autocast, on a float32 copy, which dominated the GPU
    backbone's time (benchmarks/RESULTS.md §5). Values agree to float32 rounding
    (tests/test_model_architecture.py).

    Without autograd (inference) the result is written over ``y``, which must not be used afterwards.

    Args:
        y: (B, C, ...) activations.
        weight, bias: (C,) affine parameters of the norm.
        eps: the norm's epsilon.
        slope: negative slope of the LeakyReLU.
    """
    dims = tuple(range(2, y.dim()))
    stats = torch.promote_types(y.dtype, torch.float32)  # float32, or float64 for float64 activations
    if y.dtype == stats or y.numel() <= _STATS_CHUNK:
        var, mean = torch.var_mean(y.to(stats), dim=dims, keepdim=True, unbiased=False)
    else:
        step = max(1, _STATS_CHUNK // (y.numel() // y.shape[1]))
        parts = [torch.var_mean(y[:, c:c + step].to(stats), dim=dims, keepdim=True, unbiased=False)
                 for c in range(0, y.shape[1], step)]
        var, mean = torch.cat([v for v, _ in parts], dim=1), torch.cat([m for _, m in parts], dim=1)
    shape = (1, -1) + (1,) * len(dims)
    scale = weight.to(stats).view(shape) * torch.rsqrt(var + eps)
    shift = bias.to(stats).view(shape) - mean * scale
    if torch.is_grad_enabled() and (y.requires_grad or weight.requires_grad or bias.requires_grad):
        out = torch.addcmul(shift, y, scale).to(y.dtype)  # training: autograd needs y, and out= has no gradient
    else:  # inference: written over y itself (no second full-size tensor), computed in float32 inside the
        out = torch.addcmul(shift, y, scale, out=y)  # kernel and rounded once to y's dtype
    return F.leaky_relu_(out, slope)


class ConvNormAct(nn.Module):
    """3×3×3 conv (bias) → InstanceNorm3d (affine, eps 1e-5) → LeakyReLU(0.01).

    On CUDA the norm and activation run as :func:`instance_norm_leaky_relu` (same function, faster there);
    elsewhere through the modules themselves.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)
        self.norm = nn.InstanceNorm3d(out_channels, eps=1e-5, affine=True, track_running_stats=False)
        self.act = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.conv(x))

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Norm and activation of the convolution's output ``y``."""
        if y.is_cuda:
            return instance_norm_leaky_relu(y, self.norm.weight, self.norm.bias, self.norm.eps,
                                            self.act.negative_slope)
        return self.act(self.norm(y))


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
        return self.forward_with_room(x, concat_room=False)[0]

    def forward_with_room(self, x: torch.Tensor, concat_room: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """:meth:`forward`, and with ``concat_room`` the full-resolution skip stored in the second half of a
        tensor with twice its channels (the skip is a view of it), returned as well: the decoder's last
        concatenation then fills the first half in place instead of allocating both again (same values, one
        full-resolution tensor less at the memory peak; :meth:`Decoder.forward`'s ``room``)."""
        skips, room = [], None
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if s == 0 and concat_room:
                room = _room_for(x)
                room[:, x.shape[1]:] = x
                skips.append(room[:, x.shape[1]:])  # the next stage reads the dense x, then x is freed
            else:
                skips.append(x)
        return skips, room


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

    def forward(self, skips: list[torch.Tensor], all_scales: bool, consume: bool = False,
                room: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Decoder outputs, highest resolution first: [full, /2, /4, /8, /16] (or [full] only).

        ``consume=True`` drops each skip from the list once it is used, and no intermediate tensor is kept
        longer than needed: the same values, with a far lower memory peak at full resolution. ``room``: a
        one-element list holding :meth:`Encoder.forward_with_room`'s tensor, emptied here (so that the caller
        holds no reference to it and it is freed once read).
        """
        x = skips[-1]
        if consume:
            skips[-1] = None
        outs = []
        for s, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            skip = skips[-(s + 2)]
            if consume:
                skips[-(s + 2)] = None
            if room and s == len(self.stages) - 1:  # room[0][:, C:] is this skip (Encoder.forward_with_room)
                low, x = x, room.pop()
                x[:, : skip.shape[1]] = up(low)
                del low
            else:
                x = torch.cat((up(x), skip), dim=1)
            del skip
            if consume:  # the concatenation is freed as soon as the stage's first convolution has read it
                holder = [x]
                del x
                x = _run_freeing_input(stage, holder)
            else:
                x = stage(x)
            if all_scales or s == len(self.stages) - 1:
                outs.append(x)
        return outs[::-1]


def _room_for(x: torch.Tensor) -> torch.Tensor:
    """An empty (B, 2C, ...) tensor for ``x`` (B, C, ...), in ``x``'s layout: a channels_last_3d one stays
    channels_last_3d, so cuDNN convolves the concatenation without converting it first."""
    layout = torch.contiguous_format
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        layout = torch.channels_last_3d
    return torch.empty((x.shape[0], 2 * x.shape[1], *x.shape[2:]), dtype=x.dtype, device=x.device,
                       memory_format=layout)


def _run_freeing_input(stage: StackedConvs, holder: list[torch.Tensor]) -> torch.Tensor:
    """``stage(holder[0])``, with the input released (popped from ``holder``, its only reference) once the
    first convolution has consumed it, not when the whole stage returns."""
    first, *rest = stage.convs
    x = first.finish(first.conv(holder.pop()))
    for block in rest:
        x = block(x)
    return x


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
