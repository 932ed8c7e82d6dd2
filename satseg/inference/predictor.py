"""Load a model once, segment many scans — and ask many questions of one scan.

``Predictor.from_pretrained("sat-nano")`` resolves, verifies and loads the weights. ``set_scan(scan)`` does the
prompt-independent work once (read, model grid, intensity normalisation, the backbone over every window, kept up
to a memory budget); ``predict(prompts)`` decodes any prompts against it and brings the masks back to the scan's
own grid, as often as asked. ``segment(scan, prompts)`` is the two together. Data flows one way: read → model grid
(geometry, intensity) → sliding windows (backbone once per window, every prompt chunk decoded against it) →
Gaussian-averaged probabilities → back to the input grid → threshold.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import torch

from satseg.inference.embeddings import TextEmbeddings
from satseg.inference.input_grid import prompts_on_input_grid
from satseg.inference.options import PromptOptions, RuntimeOptions, ScanOptions
from satseg.inference.prompts import Prompt, resolve_prompts, unique_terms
from satseg.inference.results import ScanState, Segmentation
from satseg.inference.runtime import (
    DeviceState, autocast_dtype, cast_conv_weights, default_feature_budget, pick_device, prepare_layout, restore_weights,
)
from satseg.inference.sliding_window import FeatureCache, WindowStats, sliding_window
from satseg.io.volume import Volume

__all__ = ["Predictor", "ScanState", "Segmentation"]

log = logging.getLogger(__name__)


class _Stopwatch:
    def __init__(self, timings: dict[str, float] | None = None):
        self.timings: dict[str, float] = timings if timings is not None else {}

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
        device = pick_device(self.runtime.device)
        self.state = DeviceState(device=device, autocast=autocast_dtype(device, self.runtime.precision))
        self.name = name
        self.model = model.eval().to(device)
        self.text = TextEmbeddings(text_encoder, tokenizer, model.config.query_dim, embedding_cache=embedding_cache,
                                   cache_key=cache_key)
        self.window = tuple(model.config.window)
        self.stride = tuple(model.config.stride)
        self.window_stats = WindowStats()
        self.scan: ScanState | None = None

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def autocast(self) -> torch.dtype | None:
        return self.state.autocast

    @property
    def text_encoder(self):
        return self.text.text_encoder

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def embed(self, terms: list[str], modality: str) -> torch.Tensor:
        """(N, query_dim) float32 text embeddings of trained terms (:class:`~satseg.inference.embeddings.TextEmbeddings`)."""
        return self.text.embed(terms, modality)

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name: str = "sat-nano", runtime: RuntimeOptions | None = None,
                        *, download: bool = True) -> Predictor:
        """Resolve (download, verify) and load a named model from the weights manifest or the local registry."""
        from satseg import weights
        from satseg.model.factory import load_model

        loaded = load_model(name, download=download)  # resolved, verified, strictly loaded: the one factory
        return cls(loaded.model, loaded.text_encoder, loaded.tokenizer, name=name, runtime=runtime,
                   embedding_cache=weights.satseg_home() / "cache" / "text-embeddings", cache_key=loaded.cache_key)

    # -- image ---------------------------------------------------------------------------------------

    def probabilities(self, image: np.ndarray, queries: torch.Tensor, *, progress=None,
                      on_device: bool = False, features: FeatureCache | None = None) -> torch.Tensor:
        """Sliding-window probabilities on the model grid.

        Args:
            image: (H, W, D) float32 normalised volume on the model grid.
            queries: (N, query_dim) text embeddings.
            on_device: leave them on the GPU when they were summed there.
            features: backbone features of ``image``'s windows kept from an earlier pass (used and filled).

        Returns:
            (N, H, W, D) float32 probabilities on the CPU (with ``on_device``: possibly on the GPU).
        """
        batch = self.runtime.window_batch or 1
        while True:
            try:
                return self._sliding_window(image, queries, batch, progress, on_device, features)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if features is not None:
                    features = FeatureCache(0)  # what it kept is on the full GPU: keep nothing more
                if batch > 1:
                    batch //= 2
                    log.warning("GPU out of memory: retrying with %d window(s) per batch", batch)
                    continue
                if self.device.type != "cpu":
                    log.warning("GPU out of memory with one window per batch: falling back to the CPU (slow)")
                    self.state.device, self.state.autocast = torch.device("cpu"), None
                    self.model = self.model.to(self.device)
                    self._set_conv_dtype(None)
                    continue
                raise

    def _sliding_window(self, image: np.ndarray, queries: torch.Tensor, batch: int, progress,
                        on_device: bool = False, features: FeatureCache | None = None) -> torch.Tensor:
        """One sliding-window pass (:func:`~satseg.inference.sliding_window.sliding_window`): identical windows
        run once, only boxes decoded."""
        state = self.state
        compiled = bool(self.runtime.compile) and state.device.type == "cuda"
        if state.layout_for != (state.device, state.autocast, compiled):
            self._set_conv_dtype(state.autocast if state.device.type == "cuda" else None)
            self.model = prepare_layout(self.model, state.device, state.autocast)
            state.layout_for = (state.device, state.autocast, compiled)
            state.encode = torch.compile(self.model.encode_image, dynamic=False) if compiled else None
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        self.window_stats = WindowStats()
        return sliding_window(self.model, volume, queries, device=state.device, autocast=state.autocast, batch=batch,
                              prompt_chunk=self.runtime.prompt_chunk, progress=progress, stats=self.window_stats,
                              keep_on_device=on_device, encode=state.encode, features=features)

    def _set_conv_dtype(self, dtype: torch.dtype | None) -> None:
        """Convolution weights stored in ``dtype`` (the CUDA autocast dtype: bit-identical results, no float32
        copies on the GPU; :func:`~satseg.inference.runtime.cast_conv_weights`), or float32 (``None``)."""
        state = self.state
        if state.conv_dtype == dtype:
            return
        if state.fp32_convs:
            restore_weights(self.model, state.fp32_convs)
        state.fp32_convs, state.conv_dtype = {}, None
        if dtype is None:
            return
        try:
            cast_conv_weights(self.model, dtype, state.fp32_convs)
        except BaseException:  # e.g. out of GPU memory part-way: back to float32 everywhere
            restore_weights(self.model, state.fp32_convs)
            state.fp32_convs = {}
            raise
        state.conv_dtype = dtype

    @contextlib.contextmanager
    def full_precision(self):
        """The model with all its weights in float32 inside the block (e.g. for a float32 reference pass)."""
        dtype = self.state.conv_dtype
        self._set_conv_dtype(None)
        try:
            yield self.model
        finally:
            self._set_conv_dtype(dtype)
            self.state.layout_for = None  # weights were swapped: lay out (and compile) again before the next scan
            if self.scan is not None:  # features computed with the other weights are not this model's any more
                self.scan.features = FeatureCache(self.scan.features.budget)

    def to_model_grid(self, volume: Volume, modality: str, orientation: str) -> tuple[np.ndarray, object]:
        """``(image, record)``: the scan on the model grid (:func:`~satseg.geometry.to_model_grid`), intensities
        normalised for ``modality``. Resampled on the GPU when the model runs there (scipy's values to float64
        rounding), on the CPU (:func:`~satseg.inference.prepare.on_model_grid`) otherwise or if the GPU runs out of
        memory."""
        from satseg.inference.prepare import on_model_grid

        spacing = self.model.config.spacing
        if self.device.type == "cuda":
            from satseg.geometry import to_model_grid
            from satseg.intensity import normalize

            try:
                raw, record = to_model_grid(volume, orientation=orientation, spacing_mm=spacing, device=self.device)
                return normalize(raw, modality), record
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.warning("GPU out of memory resampling the scan: doing it on the CPU")
        return on_model_grid(volume, modality, orientation, spacing)

    # -- the scan, then the prompts ----------------------------------------------------------------------

    def set_scan(self, scan, *, scan_options: ScanOptions | None = None, feature_budget: int | None = None,
                 progress=None) -> ScanState:
        """Do the prompt-independent work on ``scan`` once: read and validate it (a path, a
        :class:`~satseg.io.volume.Volume`, a nibabel image or a :class:`~satseg.inference.prepare.PreparedCase`),
        bring it to the model grid, normalise it, and run the backbone over every window, keeping the features up
        to ``feature_budget`` bytes (default :func:`default_feature_budget`; 0 keeps none and runs nothing yet).
        Every later :meth:`predict` decodes against it, giving exactly what :meth:`segment` gives for the same
        prompts (another grouping of prompts may round the decoder's sums differently, in the last float bit)."""
        from satseg.inference.prepare import PreparedCase, choose_orientation, prepare_scan

        clock = _Stopwatch()
        if isinstance(scan, PreparedCase):
            volume, modality, warnings = scan.volume, scan.modality, list(scan.warnings)
            clock.timings["read"] = scan.read_s
            requested = scan.scan_options.orientation
            ready = scan.model_grid
        else:
            scan_options = scan_options or ScanOptions()
            with clock("read"):
                volume, modality, warnings = prepare_scan(scan, scan_options)
            requested, ready = scan_options.orientation, None
        with clock("preprocess"):
            orientation = choose_orientation(volume, requested)
            image, record = ready if ready is not None else self.to_model_grid(volume, modality, orientation)
        if ready is not None:  # done by a read-ahead worker: its own time, not the moment of handing it over
            clock.timings["preprocess"] = scan.grid_s
        budget = default_feature_budget() if feature_budget is None else feature_budget
        self.scan = ScanState(volume=volume, modality=modality, orientation=orientation, image=image, record=record,
                              features=FeatureCache(budget), warnings=warnings, timings=clock.timings)
        if budget > 0:
            with clock("backbone"):  # the features alone: decoding no prompt
                self.probabilities(image, self.embed([], modality), progress=progress, features=self.scan.features)
        return self.scan

    def predict(self, prompts: list[str] | list[Prompt], *, prompt_options: PromptOptions | None = None,
                probabilities: bool = False, progress=None) -> Segmentation:
        """Segment ``prompts`` in the scan of the last :meth:`set_scan`: masks on the scan's own grid.

        ``prompts``: texts (resolved here for the scan's modality) or :class:`~satseg.inference.prompts.Prompt`
        records already resolved."""
        if self.scan is None:
            from satseg.errors import InputError

            raise InputError("no scan set: call set_scan(scan) before predict(prompts)")
        scan = self.scan
        options = prompt_options or PromptOptions()
        clock = _Stopwatch(dict(scan.timings))
        warnings = list(scan.warnings)
        if prompts and all(isinstance(p, Prompt) for p in prompts):
            resolved = list(prompts)
        else:
            resolved = resolve_prompts(list(prompts or []), scan.modality, options)
            warnings += [w for p in resolved for w in p.warnings]
        terms = unique_terms(resolved)
        with clock("text"):
            queries = self.embed(terms, scan.modality)
        with clock("model"):
            term_probs = self.probabilities(scan.image, queries, progress=progress, on_device=True,
                                            features=scan.features)
            if term_probs.is_cuda:  # charge the queued GPU work to this stage
                torch.cuda.synchronize(term_probs.device)
        with clock("to_input_grid"):
            results = prompts_on_input_grid(term_probs, terms, [p.terms for p in resolved], scan.record,
                                            options.threshold, probabilities)
            masks = {p.output_name: mask for p, (mask, _) in zip(resolved, results)}
            maps = {p.output_name: on_input for p, (_, on_input) in zip(resolved, results)} if probabilities else None
            del term_probs, results
        return Segmentation(volume=scan.volume, prompts=resolved, masks=masks, probabilities=maps,
                            modality=scan.modality, grid=scan.record, orientation=scan.orientation,
                            timings=clock.timings, warnings=warnings, model=self.name)

    def segment(self, scan, prompts: list[str], *, scan_options: ScanOptions | None = None,
                prompt_options: PromptOptions | None = None, probabilities: bool = False,
                progress=None) -> Segmentation:
        """Segment ``prompts`` in ``scan`` (:meth:`set_scan` then :meth:`predict`, the prompts checked before the
        scan is read); masks come back on the scan's own grid."""
        from satseg.inference.prepare import prepare_case

        case = prepare_case(scan, prompts, scan_options, prompt_options)
        return self.segment_prepared(case, probabilities=probabilities, progress=progress)

    def segment_prepared(self, case, *, probabilities: bool = False, progress=None) -> Segmentation:
        """:meth:`segment` for a :class:`~satseg.inference.prepare.PreparedCase` (validated, prompts resolved).

        One pass: the backbone runs inside the prompts' sliding window, nothing is kept for later prompts."""
        self.set_scan(case, feature_budget=0)
        result = self.predict(case.prompts, prompt_options=case.prompt_options, probabilities=probabilities,
                              progress=progress)
        self.scan = None  # the scan's arrays are the caller's now, not held by the predictor
        return result
