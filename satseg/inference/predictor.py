"""Load a model once, segment many scans.

``Predictor.from_pretrained("sat-nano")`` resolves, verifies and loads the weights; ``segment(scan,
prompts)`` runs SAT's inference and returns masks on the scan's own grid. Data flows one way: read →
model grid (geometry, intensity) → sliding windows (backbone once per window, every prompt chunk decoded
against it) → Gaussian-averaged probabilities → back to the input grid → threshold.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from satseg.inference.input_grid import prompts_on_input_grid
from satseg.inference.options import PromptOptions, RuntimeOptions, ScanOptions
from satseg.inference.runtime import autocast_dtype, cast_conv_weights, pick_device, prepare_layout, restore_weights
from satseg.inference.sliding_window import WindowStats, sliding_window
from satseg.io.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """The result for one scan.

    Attributes:
        volume: the scan as read.
        prompts: the user's prompts, in order.
        names: output file stems, one per prompt (unique, snake_case).
        resolutions: how each prompt resolved to trained terms (dicts, JSON-ready).
        masks: name → uint8 (I, J, K) mask on the scan's grid.
        probabilities: name → float32 (I, J, K) probability map on the scan's grid, when asked for.
        modality: the modality the model was told.
        grid: what preprocessing did (``GridRecord.to_dict()``).
        timings: stage → seconds.
        warnings: everything the run warned about.
    """

    volume: Volume
    prompts: list[str]
    names: list[str]
    resolutions: list[dict]
    masks: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray] | None
    modality: str
    grid: dict
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model: str = ""

    def to_nifti(self) -> dict:
        """name → ``nibabel.Nifti1Image`` (uint8 mask with the scan's affine and header)."""
        from satseg.outputs.masks import INTENT_LABEL, nifti_like

        return {name: nifti_like(mask, self.volume, intent=INTENT_LABEL, description=f"satseg {name}")
                for name, mask in self.masks.items()}


class _Stopwatch:
    def __init__(self):
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


class Predictor:
    """A loaded SAT model (segmentation + text encoder + tokenizer) that segments many scans.

    Args:
        model: a :class:`~satseg.model.sat.SAT` in eval mode.
        text_encoder: the paired :class:`~satseg.model.text.TextEncoder`.
        tokenizer: a :class:`~satseg.model.text.SATTokenizer`.
        name: model name (used for the text-embedding cache key and reports).
        runtime: device / precision / batching. On CUDA with autocast the convolutions of ``model`` are
            stored in the autocast dtype (their float32 originals are kept on the CPU).
        embedding_cache: folder for cached text embeddings (``None``: no disk cache).
        cache_key: identity of the weights for the embedding cache (e.g. the checkpoint hash).
    """

    def __init__(self, model, text_encoder, tokenizer, *, name: str = "custom",
                 runtime: RuntimeOptions | None = None, embedding_cache: Path | None = None,
                 cache_key: str = ""):
        self.runtime = runtime or RuntimeOptions()
        if self.runtime.threads:
            torch.set_num_threads(self.runtime.threads)
        self.device = pick_device(self.runtime.device)
        self.autocast = autocast_dtype(self.device, self.runtime.precision)
        self.name = name
        self.model = model.eval().to(self.device)
        self.text_encoder = text_encoder.eval()  # text runs once per prompt: kept on the CPU
        self.tokenizer = tokenizer
        self.embedding_cache = Path(embedding_cache) if embedding_cache else None
        self.cache_key = cache_key
        self._embeddings: dict[tuple[str, str], torch.Tensor] = {}
        self.window = tuple(model.config.window)
        self.stride = tuple(model.config.stride)

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name: str = "sat-nano", runtime: RuntimeOptions | None = None,
                        *, download: bool = True) -> Predictor:
        """Resolve (download, verify) and load a named model from the weights manifest or the local registry."""
        from satseg import weights
        from satseg.model.build import build_sat, build_text_encoder
        from satseg.model.checkpoint import load_satseg_weights, load_segmentation_checkpoint, load_text_checkpoint
        from satseg.model.text import SATTokenizer

        files = weights.resolve_model(name, download=download)
        architecture = files.variant
        if files.format == "satseg-safetensors":  # a trained model may differ from its variant's preset
            from satseg.model.checkpoint import read_satseg_metadata

            architecture = weights.satseg_file_config(read_satseg_metadata(files.checkpoint))
        model = build_sat(architecture, device="meta")
        text = build_text_encoder(architecture, device="meta")
        if files.format == "satseg-safetensors":
            load_satseg_weights(model, text, files.checkpoint, assign=True)
        else:
            load_segmentation_checkpoint(model, files.checkpoint, assign=True)
            load_text_checkpoint(text, files.text_checkpoint, assign=True)
        tokenizer = SATTokenizer(files.tokenizer, max_tokens=model.config.text.max_tokens)
        # Cached text embeddings belong to these exact files: their sha256 when it is known (checked just
        # above), else the identity the sha256 cache trusts (inode, ctime, ...): a rewritten file is a new key.
        identity = ":".join([files.name] + [weights.cached_sha256(p) or weights.file_identity(p)
                                           for p in (files.checkpoint, files.text_checkpoint)])
        return cls(model, text, tokenizer, name=name, runtime=runtime,
                   embedding_cache=weights.satseg_home() / "cache" / "text-embeddings", cache_key=identity)

    # -- text ----------------------------------------------------------------------------------------

    def embed(self, terms: list[str], modality: str) -> torch.Tensor:
        """Text embeddings (N, query_dim) for trained terms, computed once per (model, term, modality).

        With ``embedding_cache`` set, each embedding is also kept on disk as one file recording what it was
        computed from (:meth:`_cache_identity`, the term and the modality); an entry that does not match
        all of it, or is not a finite float32 (query_dim,) vector, is recomputed and overwritten.
        """
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
                "shape": [int(self.model.config.query_dim)]}

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

    # -- image ---------------------------------------------------------------------------------------

    def probabilities(self, image: np.ndarray, queries: torch.Tensor, *, progress=None,
                      on_device: bool = False) -> torch.Tensor:
        """Sliding-window probabilities on the model grid.

        Args:
            image: (H, W, D) float32 normalised volume on the model grid.
            queries: (N, query_dim) text embeddings.
            on_device: leave them on the GPU when they were summed there.

        Returns:
            (N, H, W, D) float32 probabilities on the CPU (with ``on_device``: possibly on the GPU).
        """
        batch = self.runtime.window_batch or 1
        while True:
            try:
                return self._sliding_window(image, queries, batch, progress, on_device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if batch > 1:
                    batch //= 2
                    log.warning("GPU out of memory: retrying with %d window(s) per batch", batch)
                    continue
                if self.device.type != "cpu":
                    log.warning("GPU out of memory with one window per batch: falling back to the CPU (slow)")
                    self.device = torch.device("cpu")
                    self.autocast = None
                    self.model = self.model.to(self.device)
                    self._set_conv_dtype(None)
                    continue
                raise

    def _sliding_window(self, image: np.ndarray, queries: torch.Tensor, batch: int, progress,
                        on_device: bool = False) -> torch.Tensor:
        """One sliding-window pass (:func:`~satseg.inference.sliding_window.sliding_window`): identical windows
        run once, only boxes decoded."""
        compiled = bool(self.runtime.compile) and self.device.type == "cuda"
        if getattr(self, "_layout_for", None) != (self.device, self.autocast, compiled):
            self._set_conv_dtype(self.autocast if self.device.type == "cuda" else None)
            self.model = prepare_layout(self.model, self.device, self.autocast)
            self._layout_for = (self.device, self.autocast, compiled)
            self._encode = torch.compile(self.model.encode_image, dynamic=False) if compiled else None
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        self.window_stats = WindowStats()
        return sliding_window(self.model, volume, queries, device=self.device, autocast=self.autocast, batch=batch,
                              prompt_chunk=self.runtime.prompt_chunk, progress=progress, stats=self.window_stats,
                              keep_on_device=on_device, encode=self._encode)

    def _set_conv_dtype(self, dtype: torch.dtype | None) -> None:
        """Convolution weights stored in ``dtype`` (the CUDA autocast dtype: bit-identical results, no float32
        copies on the GPU; :func:`~satseg.inference.runtime.cast_conv_weights`), or float32 (``None``)."""
        if getattr(self, "_conv_dtype", None) == dtype:
            return
        if getattr(self, "_fp32_convs", None):
            restore_weights(self.model, self._fp32_convs)
        self._fp32_convs, self._conv_dtype = {}, None
        if dtype is None:
            return
        try:
            cast_conv_weights(self.model, dtype, self._fp32_convs)
        except BaseException:  # e.g. out of GPU memory part-way: back to float32 everywhere
            restore_weights(self.model, self._fp32_convs)
            self._fp32_convs = {}
            raise
        self._conv_dtype = dtype

    @contextlib.contextmanager
    def full_precision(self):
        """The model with all its weights in float32 inside the block (e.g. for a float32 reference pass)."""
        dtype = getattr(self, "_conv_dtype", None)
        self._set_conv_dtype(None)
        try:
            yield self.model
        finally:
            self._set_conv_dtype(dtype)
            self._layout_for = None  # weights were swapped: lay out (and compile) again before the next scan

    def _to_model_grid(self, volume: Volume, orientation: str):
        """:func:`~satseg.geometry.to_model_grid`, resampled on the GPU when the model runs there (scipy's
        values to float64 rounding); on the CPU if the GPU runs out of memory."""
        from satseg.geometry import to_model_grid

        spacing = self.model.config.spacing
        if self.device.type == "cuda":
            try:
                return to_model_grid(volume, orientation=orientation, spacing_mm=spacing, device=self.device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.warning("GPU out of memory resampling the scan: doing it on the CPU")
        return to_model_grid(volume, orientation=orientation, spacing_mm=spacing)

    # -- the whole job -------------------------------------------------------------------------------

    def segment(self, scan: Volume | str | Path, prompts: list[str], *, scan_options: ScanOptions | None = None,
                prompt_options: PromptOptions | None = None, probabilities: bool = False,
                progress=None) -> Segmentation:
        """Segment ``prompts`` in ``scan``; masks come back on the scan's own grid."""
        from satseg.inference.prepare import prepare_case

        case = prepare_case(scan, prompts, scan_options, prompt_options)
        return self.segment_prepared(case, probabilities=probabilities, progress=progress)

    def segment_prepared(self, case, *, probabilities: bool = False, progress=None) -> Segmentation:
        """:meth:`segment` for a :class:`~satseg.inference.prepare.PreparedCase` (validated, prompts resolved)."""
        from satseg.inference.prepare import choose_orientation
        from satseg.intensity import normalize

        volume, modality, resolutions, names = case.volume, case.modality, case.resolutions, case.names
        clock = _Stopwatch()
        clock.timings["read"] = case.read_s
        with clock("preprocess"):
            orientation = choose_orientation(volume, case.scan_options.orientation)
            raw, record = self._to_model_grid(volume, orientation)
            image = normalize(raw, modality)
            del raw
        terms = list(dict.fromkeys(t for r in resolutions for t in r["terms"]))
        with clock("text"):
            queries = self.embed(terms, modality)
        with clock("model"):
            term_probs = self.probabilities(image, queries, progress=progress, on_device=True)
            if term_probs.is_cuda:  # charge the queued GPU work to this stage
                torch.cuda.synchronize(term_probs.device)
        masks: dict[str, np.ndarray] = {}
        maps: dict[str, np.ndarray] | None = {} if probabilities else None
        threshold = case.prompt_options.threshold
        with clock("to_input_grid"):
            results = prompts_on_input_grid(term_probs, terms, resolutions, record, threshold, maps is not None)
            for name, (mask, on_input) in zip(names, results):
                masks[name] = mask
                if maps is not None:
                    maps[name] = on_input  # float32 from either way back
            del term_probs, results
        grid = record.to_dict()
        grid["orientation_choice"] = case.scan_options.orientation
        return Segmentation(volume=volume, prompts=list(case.prompts), names=names, resolutions=resolutions,
                            masks=masks, probabilities=maps, modality=modality, grid=grid, timings=clock.timings,
                            warnings=list(case.warnings), model=self.name)
