"""Text embeddings of trained terms, computed once per (weights, term, modality) and kept on disk.

Each disk entry records what it was computed from (the weights' identity, the tokenizer's full definition, the
term, the modality, dtype and shape); an entry that does not match all of it, or is not a finite float32
(query_dim,) vector, is recomputed and overwritten, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class TextEmbeddings:
    """The text side of a predictor: term → (query_dim,) float32 embedding.

    Args:
        text_encoder: a :class:`~satseg.model.text.TextEncoder` (kept on the CPU: text runs once per term).
        tokenizer: its :class:`~satseg.model.text.SATTokenizer`.
        query_dim: the model's query width (the shape every embedding must have).
        embedding_cache: folder of the disk cache (``None``: memory only).
        cache_key: identity of the weights (e.g. the checkpoints' sha256).
    """

    def __init__(self, text_encoder, tokenizer, query_dim: int, *, embedding_cache: Path | None = None,
                 cache_key: str = ""):
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.query_dim = int(query_dim)
        self.embedding_cache = Path(embedding_cache) if embedding_cache else None
        self.cache_key = cache_key
        self._embeddings: dict[tuple[str, str], torch.Tensor] = {}

    def embed(self, terms: list[str], modality: str) -> torch.Tensor:
        """Text embeddings (N, query_dim) for trained terms, computed once per (model, term, modality).

        With ``embedding_cache`` set, each embedding is also kept on disk as one file recording what it was
        computed from (:meth:`_cache_identity`, the term and the modality); an entry that does not match
        all of it, or is not a finite float32 (query_dim,) vector, is recomputed and overwritten.
        """
        if not terms:
            return torch.zeros((0, self.query_dim), dtype=torch.float32)
        missing = [t for t in dict.fromkeys(terms) if (t, modality) not in self._embeddings]
        identity = self._cache_identity() if missing and self.embedding_cache is not None else {}
        from_disk = {t: e for t in missing if (e := self._load_cached(t, modality, identity)) is not None}
        to_compute = [t for t in missing if t not in from_disk]
        if to_compute:
            with torch.no_grad():
                computed = self.text_encoder.encode(to_compute, modality, self.tokenizer).float().cpu()
            for term, row in zip(to_compute, computed):
                from_disk[term] = row
                self._store_cached(term, modality, identity, row)
        for term, row in from_disk.items():
            self._embeddings[(term, modality)] = row
        return torch.stack([self._embeddings[(t, modality)] for t in terms])

    def _cache_identity(self) -> dict:
        """What every disk-cached embedding of this predictor must have been computed with.

        ``text_encoder``: a digest of ``cache_key`` (from :meth:`from_pretrained`: the weights files' sha256 or
        file identity). ``tokenizer``: a digest of the tokenizer's full definition (vocabulary, normalisation,
        special ids, length limit). ``dtype`` and ``shape``: float32 (query_dim,), as :meth:`embed` returns.
        """
        import json

        inner = getattr(self.tokenizer, "tokenizer", self.tokenizer)  # the Hugging Face tokenizer of SATTokenizer
        backend = getattr(inner, "backend_tokenizer", None)
        if backend is not None:  # the tokenizers library's JSON: vocabulary, normaliser, pre-tokeniser, ...
            definition = json.loads(backend.to_str())
            for per_call in ("truncation", "padding"):  # set by each call of the tokenizer, not its definition
                definition.pop(per_call, None)
            definition = json.dumps(definition, sort_keys=True)
        elif hasattr(inner, "get_vocab"):
            definition = repr(sorted(inner.get_vocab().items()))
        else:
            definition = repr(inner)
        limits = [type(self.tokenizer).__name__, getattr(self.tokenizer, "max_tokens", None),
                  getattr(self.tokenizer, "cls_id", None), getattr(self.tokenizer, "sep_id", None)]
        tokenizer = hashlib.sha256(f"{limits!r}\0{definition}".encode()).hexdigest()
        return {"format": "satseg-text-embedding-1",
                "tokenizer": tokenizer,
                "text_encoder": hashlib.sha256(self.cache_key.encode()).hexdigest(),
                "dtype": "float32",
                "shape": [self.query_dim]}

    def _cache_file(self, term: str, modality: str, identity: dict) -> Path | None:
        if self.embedding_cache is None:
            return None
        key = repr(sorted({**identity, "term": term, "modality": modality}.items()))
        return self.embedding_cache / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.pt"

    def _load_cached(self, term: str, modality: str, identity: dict) -> torch.Tensor | None:
        """The cached embedding of (term, modality) if its entry matches ``identity`` in every field; else None."""
        path = self._cache_file(term, modality, identity)
        if path is None or not path.is_file():
            return None
        expected = {**identity, "term": term, "modality": modality}
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            why = self._stale_entry_reason(entry, expected)
        except Exception as exc:  # a damaged cache entry is recomputed, never trusted
            why = f"is unreadable ({type(exc).__name__})"
        if why:
            log.debug("text-embedding cache entry %s for %r (%s) %s: recomputing", path.name, term, modality, why)
            return None
        return entry["embedding"]

    @staticmethod
    def _stale_entry_reason(entry, expected: dict) -> str | None:
        """Why a loaded cache entry cannot be used for ``expected`` (None: it can)."""
        if not isinstance(entry, dict):  # earlier versions saved the bare tensor
            return "has the old format (a bare tensor)"
        differing = [key for key, value in expected.items() if entry.get(key) != value]
        if differing:
            return f"was computed for another {', '.join(differing)}"
        embedding = entry.get("embedding")
        if not isinstance(embedding, torch.Tensor) or embedding.dtype != torch.float32 \
                or list(embedding.shape) != expected["shape"]:
            return f"holds no float32 tensor of shape ({expected['shape'][0]},)"
        if not torch.isfinite(embedding).all():
            return "holds non-finite values"
        return None

    def _store_cached(self, term: str, modality: str, identity: dict, row: torch.Tensor) -> None:
        """Write (or overwrite) the entry of (term, modality): the tensor with what it was computed from."""
        path = self._cache_file(term, modality, identity)
        if path is None:
            return
        try:
            from satseg.io.atomic import atomic_path

            with atomic_path(path, suffix=".pt") as tmp:
                torch.save({**identity, "term": term, "modality": modality, "embedding": row.clone()}, tmp)
        except OSError as exc:  # read-only home, full disk: the cache is an optimisation only
            log.debug("text-embedding cache not written: %s", exc)
