"""SAT: U-Net backbone → multi-scale image tokens → query decoder → per-prompt mask logits.

The backbone does not depend on the prompts, so inference splits into :meth:`SAT.encode_image` (once per
window) and :meth:`SAT.decode` (once per prompt chunk), like SAM's predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from satseg.model.config import SATConfig
from satseg.model.decoder import QueryDecoder
from satseg.model.posenc import sinusoidal_3d
from satseg.model.unet import PlainConvUNet


def _mlp(dim_in: int, hidden: int, dim_out: int, final_gelu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out)]
    if final_gelu:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


@dataclass
class ImageFeatures:
    """What the backbone computed for a batch of windows.

    Attributes:
        tokens: (T, B, query_dim) image tokens (sequence first), T = (H/32)(W/32)(D/32).
        pos: (T, 1, query_dim) positional encoding of the token grid.
        per_pixel: decoder outputs, highest resolution first: (B, features[0], H, W, D), then /2, /4, /8
            when deep supervision is on.
    """

    tokens: torch.Tensor
    pos: torch.Tensor
    per_pixel: list[torch.Tensor]


class SAT(nn.Module):
    """The SAT segmentation model (checkpoint-compatible with SAT-Nano / SAT-Pro)."""

    def __init__(self, config: SATConfig, deep_supervision: bool = False):
        super().__init__()
        self.config = config
        self.deep_supervision = deep_supervision
        f = config.features
        self.backbone = PlainConvUNet(config.in_channels, f, config.encoder_convs, config.decoder_convs)
        self.projection_layer = _mlp(config.token_channels, config.projection_hidden, config.query_dim,
                                     final_gelu=True)
        self.transformer_decoder = QueryDecoder(config.query_dim, config.decoder_layers, config.decoder_heads,
                                                config.decoder_ffn, config.decoder_dropout)
        self.mask_embed_proj = _mlp(config.query_dim, config.mask_hidden, f[0], final_gelu=True)
        if deep_supervision:
            self.mid_mask_embed_proj = nn.ModuleList(
                _mlp(config.query_dim, hidden, width, final_gelu=True)
                for hidden, width in zip(config.mid_mask_hidden, f[1:4])
            )
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    # -- image side ---------------------------------------------------------------------------------

    def positional_encoding(self, grid: tuple[int, int, int], device, dtype) -> torch.Tensor:
        key = (grid, str(device), dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sinusoidal_3d(grid, self.config.query_dim).to(device=device, dtype=dtype)[:, None]
        return self._pos_cache[key]

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        """image: (B, 3, H, W, D), H, W, D divisible by 32 (288×288×96 for the released models)."""
        # Without autograd the full-resolution skip is stored with room for the decoder's last concatenation.
        skips, room = self.backbone.encoder.forward_with_room(image, concat_room=not torch.is_grad_enabled())
        room = [room] if room is not None else None  # the decoder takes it out of the list: no reference stays here
        bottom = skips[-1]
        grid = tuple(bottom.shape[2:])
        pooled = [F.avg_pool3d(s, kernel_size=2 ** (5 - i), stride=2 ** (5 - i)) for i, s in enumerate(skips[:-1])]
        multiscale = torch.cat([*pooled, bottom], dim=1)  # (B, C_tok, h, w, d)
        del pooled, bottom
        tokens = self.projection_layer(multiscale.permute(0, 2, 3, 4, 1))  # (B, h, w, d, dim)
        tokens = tokens.flatten(1, 3).transpose(0, 1)  # (T, B, dim), token order (h w d)
        pos = self.positional_encoding(grid, tokens.device, tokens.dtype)
        # The tokens are made: the decoder may now free each skip as soon as it has used it.
        outs = self.backbone.decoder(skips, all_scales=self.deep_supervision, consume=True, room=room)
        return ImageFeatures(tokens=tokens, pos=pos, per_pixel=outs)

    # -- prompt side --------------------------------------------------------------------------------

    def decode(self, features: ImageFeatures, queries: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """queries: (N, dim) text embeddings (shared by all B windows) or (B, N, dim).

        Returns:
            logits (B, N, H, W, D); with deep supervision a list [full, /2, /4, /8].
        """
        batch = features.tokens.shape[1]
        if queries.dim() == 2:
            queries = queries.unsqueeze(0).expand(batch, -1, -1)
        decoded = self.transformer_decoder(queries.transpose(0, 1), features.tokens, features.pos)
        decoded = decoded.transpose(0, 1)  # (B, N, dim)
        full = torch.einsum("bchwd,bnc->bnhwd", features.per_pixel[0], self.mask_embed_proj(decoded))
        if not self.deep_supervision:
            return full
        mids = [torch.einsum("bchwd,bnc->bnhwd", pix, head(decoded))
                for pix, head in zip(features.per_pixel[1:], self.mid_mask_embed_proj)]
        return [full, *mids]

    def forward(self, image: torch.Tensor, queries: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """image (B, 3, H, W, D), queries (N, dim) or (B, N, dim) → logits (B, N, H, W, D)."""
        return self.decode(self.encode_image(image), queries)
