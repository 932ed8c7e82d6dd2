"""The fixed 3D sinusoidal positional encoding that SAT adds to the image tokens' keys.

Not stored in checkpoints: recomputed here with the same float32 operations as the
``positional_encodings`` 6.0.1 ``PositionalEncoding3D`` that upstream evaluates, so the values are
bit-identical. For ``channels`` = 768: 256 channels per axis, 128 frequencies
``1 / 10000^(2k/256)``; per axis ``[sin(p f_0), cos(p f_0), sin(p f_1), cos(p f_1), ...]`` (interleaved);
channels [0:256] encode the H position, [256:512] W, [512:768] D; integer positions 0…n-1.
"""

from __future__ import annotations

import math

import torch


def sinusoidal_3d(grid: tuple[int, int, int], channels: int) -> torch.Tensor:
    """Positional encoding of a (h, w, d) token grid.

    Returns:
        (h·w·d, channels) float32, rows ordered H-major then W then D (the token order of SAT).
    """
    per_axis = int(math.ceil(channels / 6) * 2)
    if per_axis % 2:
        per_axis += 1
    inv_freq = 1.0 / (10000 ** (torch.arange(0, per_axis, 2).float() / per_axis))
    h, w, d = grid

    def axis_embedding(n: int) -> torch.Tensor:
        angles = torch.einsum("i,j->ij", torch.arange(n).type(inv_freq.type()), inv_freq)
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2, -1)  # (n, per_axis)

    emb = torch.zeros((h, w, d, per_axis * 3), dtype=torch.float32)
    emb[..., :per_axis] = axis_embedding(h)[:, None, None, :]
    emb[..., per_axis: 2 * per_axis] = axis_embedding(w)[None, :, None, :]
    emb[..., 2 * per_axis:] = axis_embedding(d)[None, None, :, :]
    return emb[..., :channels].reshape(h * w * d, channels)
