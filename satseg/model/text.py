"""The text side: SAT's tokenisation + an MPNet tower + projection + modality embedding.

A prompt becomes a query vector ``projection(meanpool(MPNet(tokens))) + modality_embed[modality]``.
Tokenisation follows upstream SAT exactly: the literal strings ``[CLS]`` and ``[SEP]`` around the
tokenizer's word pieces (looked up in the MPNet vocabulary, not MPNet's own ``<s>``/``</s>``), prompts
lower-cased, the batch padded with id 0, attention mask = ids > 0, at most 256 ids (a longer prompt keeps
its first 256 ids with the last one set to ``[SEP]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from satseg.errors import InputError
from satseg.model.config import MODALITY_CODES, TextConfig


class SATTokenizer:
    """Wraps a local Hugging Face tokenizer folder (BioLORD-2023-C's, or all-mpnet-base-v2's: the same)."""

    def __init__(self, tokenizer_dir: str | Path, max_tokens: int = 256):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.max_tokens = max_tokens
        self.cls_id, self.sep_id = self.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in (self.cls_id, self.sep_id):
            raise InputError(f"tokenizer in {tokenizer_dir} has no [CLS]/[SEP] tokens; use the MPNet "
                             "(BioLORD-2023-C / all-mpnet-base-v2) tokenizer")

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → (input_ids (N, L) int64, attention_mask (N, L) int64), L ≤ max_tokens."""
        rows = []
        for text in prompts:
            pieces = self.tokenizer.tokenize(text.lower())
            rows.append([self.cls_id, *self.tokenizer.convert_tokens_to_ids(pieces), self.sep_id])
        length = min(max(len(r) for r in rows), self.max_tokens)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > length:
                row = row[:length]
                row[-1] = self.sep_id
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, (ids > 0).long()


def _mpnet(config: TextConfig) -> nn.Module:
    from transformers import MPNetConfig, MPNetModel

    cfg = MPNetConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=config.intermediate,
        hidden_act="gelu",
        max_position_embeddings=config.max_positions,
        relative_attention_num_buckets=config.relative_attention_buckets,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    return MPNetModel(cfg, add_pooling_layer=True)


class TextEncoder(nn.Module):
    """Prompts (+ modality) → query embeddings (N, query_dim) for the SAT decoder.

    Module names: ``mpnet`` (official checkpoints: ``text_tower.biolord``), ``projection_layer``,
    ``modality_embed``.
    """

    def __init__(self, config: TextConfig, query_dim: int = 768):
        super().__init__()
        self.config = config
        self.mpnet = _mpnet(config)
        self.projection_layer = nn.Sequential(
            nn.Linear(config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, query_dim)
        )
        self.modality_embed = nn.Embedding(config.n_modalities, query_dim)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Attention-masked mean of the last hidden states: (N, L) ids → (N, hidden)."""
        hidden = self.mpnet(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: (N, L); modality: (N,) codes → queries (N, query_dim)."""
        return self.projection_layer(self.pooled(input_ids, attention_mask)) + self.modality_embed(modality)

    @torch.no_grad()
    def encode(self, prompts: list[str], modality: str, tokenizer: SATTokenizer) -> torch.Tensor:
        """Convenience: prompt strings → (N, query_dim) on this module's device."""
        code = modality_code(modality)
        device = next(self.parameters()).device
        ids, mask = tokenizer(prompts)
        codes = torch.full((len(prompts),), code, dtype=torch.long, device=device)
        return self(ids.to(device), mask.to(device), codes)


def init_fresh_modality_embedding(text: TextEncoder, std: float = 0.02) -> None:
    """A modality embedding that no checkpoint provides starts at N(0, std²), not torch's N(0, 1).

    Queries are ``projection(text) + modality_embed``: with N(0, 1) rows (norm ≈ 8 at width 64, ≈ 28 at 768)
    the freshly initialised projection's output (norm ≈ 1) is a few percent of every query, so all prompts of a
    modality start as nearly one query and training learns organ-vs-background but not which organ
    (benchmarks/RESULTS.md, "Design notes from the code"). Small rows keep the prompts apart.
    """
    with torch.no_grad():
        text.modality_embed.weight.normal_(0.0, std)


def modality_code(modality: str) -> int:
    try:
        return MODALITY_CODES[modality]
    except KeyError:
        raise InputError(f"unknown modality {modality!r}; use one of: ct, mri, pet") from None
