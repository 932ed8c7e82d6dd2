"""The query decoder: text queries cross-attend to the image tokens (no self-attention between prompts).

A DETR-style pre-norm stack. Because queries never attend to each other, every prompt is decoded
independently: chunking prompts does not change results.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionLayer(nn.Module):
    """Pre-norm layer: q += MHA(norm2(q), memory + pos, memory); q += FFN(norm3(q)).

    ``norm1`` exists in the released checkpoints (it belonged to the removed self-attention) and is
    kept so they load strictly; it is not used.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """queries (N, B, dim), memory (T, B, dim), pos (T, 1|B, dim) → (N, B, dim)."""
        q = self.norm2(queries)
        # need_weights=True takes the same (unfused) attention path as upstream SAT: bit-identical logits.
        attended = self.multihead_attn(query=q, key=memory + pos, value=memory, need_weights=True)[0]
        queries = queries + self.dropout2(attended)
        q = self.norm3(queries)
        return queries + self.dropout3(self.linear2(self.dropout(torch.relu(self.linear1(q)))))


class QueryDecoder(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """queries (N, B, dim), memory (T, B, dim), pos (T, 1, dim) → (N, B, dim)."""
        for layer in self.layers:
            queries = layer(queries, memory, pos)
        return self.norm(queries)
