"""The sliding-window loop the :class:`~satseg.inference.predictor.Predictor` runs, doing no work whose result
is known.

Three savings, each giving the same numbers as upstream's plain loop (fp32: identical up to float rounding
order; ``tests/test_equivalence.py`` compares against that loop, kept in ``tests/reference_sliding_window.py``):

* **Identical windows run once.** The network sees only the zero-padded window (its positional encoding
  is the same for every window), so two windows whose padded content is bit-for-bit equal give the same
  logits. Windows are grouped by an exact content hash, the group is confirmed with ``torch.equal``
  (a hash collision cannot merge different windows), the model runs once per group and the probabilities
  are added for every box of the group. Constant windows (air clipped to -500 HU outside the body) are
  the case this catches.
* **Decode only the box.** Voxels of the zero padding beyond a box are thrown away by the aggregation;
  the per-voxel dot product of the mask head is independent per voxel, so it is computed only inside the
  box (a 30-slice scan in a 96-slice window decodes a third of the window).
* **One weight map**, shared by all prompts (:class:`ProbabilityAccumulator`), not one per prompt as upstream.

The layout of windows and weights is :func:`~satseg.inference.runtime.window_layout`'s; on a GPU the float32
sums stay on the device when they fit (:func:`accumulation_place`), else on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence

import torch

from satseg.inference.runtime import window_layout
from satseg.inference.sliding_window.accumulate import ProbabilityAccumulator, accumulation_place
from satseg.inference.sliding_window.positions import Box, box_extent, extract_windows, window_slices

log = logging.getLogger(__name__)


@dataclasses.dataclass
class WindowStats:
    """What the loop did: windows planned, model passes run (``computed < planned`` when windows repeat)."""

    planned: int = 0
    computed: int = 0
    backbone_s: float = 0.0
    decode_s: float = 0.0


class FeatureCache:
    """Backbone features of one scan's windows, kept for later prompts up to a byte budget.

    :meth:`~satseg.inference.predictor.Predictor.set_scan` makes one; every later
    :meth:`~satseg.inference.predictor.Predictor.predict` on the scan decodes against the features kept here and
    runs the backbone again only for the windows that did not fit. Features are the very tensors the first pass
    decoded, so the probabilities are bit-identical either way.
    """

    def __init__(self, budget_bytes: int):
        self.budget = max(0, int(budget_bytes))
        self.used = 0
        self._entries: dict[tuple, object] = {}

    @staticmethod
    def key(boxes: Sequence[Box]) -> tuple:
        return tuple((s.start, s.stop) for box in boxes for s in box)

    def get(self, boxes: Sequence[Box]):
        return self._entries.get(self.key(boxes))

    def put(self, boxes: Sequence[Box], features) -> bool:
        """Keep ``features`` of the windows ``boxes`` if they fit in what is left of the budget."""
        size = features.tokens.numel() * features.tokens.element_size() + sum(
            t.numel() * t.element_size() for t in features.per_pixel)
        if self.key(boxes) in self._entries or self.used + size > self.budget:
            return False
        self._entries[self.key(boxes)] = features
        self.used += size
        return True

    def __len__(self) -> int:
        return len(self._entries)


def group_identical_windows(volume: torch.Tensor, boxes: Sequence[Box], window: Sequence[int]) -> list[list[Box]]:
    """Boxes grouped by the exact content of their zero-padded window, in order of first appearance.

    Args:
        volume: (H, W, D) image.
        boxes: the windows' boxes.
        window: (h, w, d) window size the boxes are padded to.

    Returns:
        groups of boxes; every box of a group gives a bit-identical (1, *window) patch.
    """
    by_digest: dict[bytes, list[list[Box]]] = {}
    groups: list[list[Box]] = []
    for box in boxes:
        patch = extract_windows(volume, [box], window)
        # A fingerprint of a sparse lattice of voxels (~1/300 of the window) picks the candidates; torch.equal
        # below decides. Hashing every byte is too slow per window (benchmarks/RESULTS.md, "Design notes from the
        # code").
        sample = patch[..., ::7, ::7, ::6].contiguous()
        digest = hashlib.blake2b(sample.cpu().numpy().tobytes(), digest_size=20).digest()
        for group in by_digest.setdefault(digest, []):
            if torch.equal(extract_windows(volume, [group[0]], window), patch):
                group.append(box)
                break
        else:
            group = [box]
            by_digest[digest].append(group)
            groups.append(group)
    return groups


def sliding_window(model, image: torch.Tensor, queries: torch.Tensor, *, device: torch.device,
                   autocast: torch.dtype | None, batch: int, prompt_chunk: int,
                   progress: Callable[[int, int], None] | None = None,
                   memoise: bool = True, stats: WindowStats | None = None,
                   accumulate: tuple[torch.device | str, torch.dtype] | None = None,
                   keep_on_device: bool = False, encode: Callable | None = None,
                   features: FeatureCache | None = None) -> torch.Tensor:
    """SAT's sliding-window probabilities, skipping only provably redundant work.

    Args:
        model: a :class:`~satseg.model.sat.SAT` on ``device``, eval mode.
        image: (H, W, D) float32 normalised volume on the model grid (CPU).
        queries: (N, query_dim) text embeddings.
        device: where the model runs.
        autocast: autocast dtype (``None``: fp32).
        batch: windows per forward pass.
        prompt_chunk: prompts decoded together.
        progress: ``progress(windows_done, windows_total)``.
        memoise: run identical windows once (off: every window through the model).
        stats: filled with window counts and stage times when given.
        accumulate: (device, dtype) of the sums; default :func:`accumulation_place`.
        keep_on_device: when the sums are on the GPU, return the probabilities there (divided in place, no
            copy) instead of on the CPU.
        encode: the image side to run (default ``model.encode_image``; e.g. a compiled version of it).
        features: backbone features kept from an earlier pass over the same image (:class:`FeatureCache`): used
            where present, and filled while its budget lasts.

    Returns:
        (N, H, W, D) float32 probabilities on the CPU (or where the sums are, with ``keep_on_device``).
    """
    window = tuple(model.config.window)
    stride = tuple(model.config.stride)
    volume = image.to(torch.float32).contiguous()
    boxes = window_slices(tuple(volume.shape), window, stride)
    groups = group_identical_windows(volume, boxes, window) if memoise else [[box] for box in boxes]
    n = int(queries.shape[0])
    stats = stats if stats is not None else WindowStats()
    stats.planned, stats.computed = len(boxes), len(groups)
    if len(groups) < len(boxes):
        log.info("%d windows, %d with distinct content: the model runs %d times", len(boxes), len(groups), len(groups))
    if n == 0:  # no prompt: the backbone alone, to fill ``features`` (Predictor.set_scan)
        _encode_only(model, volume, groups, window, device, autocast, batch, encode, features, stats, progress)
        return torch.empty((0, *volume.shape), dtype=torch.float32)
    acc_device, acc_dtype = accumulate or accumulation_place(device, n, volume.shape)
    acc_device = torch.device(acc_device)
    accumulator = ProbabilityAccumulator(tuple(volume.shape), n, boxes, window=window, device=acc_device,
                                         dtype=acc_dtype)
    layout = window_layout(device, autocast)
    encode = encode or model.encode_image
    queries = queries.to(device)
    chunk = max(1, int(prompt_chunk))
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    done = 0
    spare = None  # float32 room for the probabilities, reused by every chunk on the CPU
    with torch.inference_mode(), cast:
        for first in range(0, len(groups), batch):
            members = groups[first:first + batch]
            leaders = [group[0] for group in members]
            start_time = time.perf_counter()
            computed = features.get(leaders) if features is not None else None
            if computed is None:
                patches = extract_windows(volume, leaders, window).to(device)
                patches = patches.expand(-1, 3, -1, -1, -1).contiguous(memory_format=layout)
                computed = crop_per_pixel(encode(patches), [box for group in members for box in group])
                del patches
                if features is not None:
                    features.put(leaders, computed)
            _sync(device)
            stats.backbone_s += time.perf_counter() - start_time
            start_time = time.perf_counter()
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                logits = model.decode(computed, queries[start:stop].to(computed.tokens.dtype))
                if isinstance(logits, list):  # a model built with deep supervision: the full-resolution head
                    logits = logits[0]
                probs, spare = _probabilities(logits, spare)
                for group, window_probs in zip(members, probs):
                    for i, box in enumerate(group):  # the last box may weight the probabilities in place
                        accumulator.add(box, window_probs, prompts=slice(start, stop), scratch=i == len(group) - 1)
                del logits, probs
            del computed
            _sync(device)
            stats.decode_s += time.perf_counter() - start_time
            done += sum(len(group) for group in members)
            if progress is not None:
                progress(done, len(boxes))
    if acc_device.type == "cpu" or keep_on_device:
        return accumulator.finalize()
    # On the GPU: bring one prompt at a time to the CPU (no second (N, H, W, D) copy on the device).
    out = torch.empty((n, *volume.shape), dtype=torch.float32)
    for prompt in range(n):
        out[prompt] = accumulator.probabilities(slice(prompt, prompt + 1))[0].cpu()
    return out


def _encode_only(model, volume, groups, window, device, autocast, batch, encode, features, stats, progress) -> None:
    """The backbone over every distinct window, its cropped features kept in ``features`` while the budget lasts
    (what :func:`sliding_window` would compute first, in the same batches)."""
    layout = window_layout(device, autocast)
    encode = encode or model.encode_image
    cast = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    done, total = 0, sum(len(group) for group in groups)
    with torch.inference_mode(), cast:
        for first in range(0, len(groups), batch):
            members = groups[first:first + batch]
            leaders = [group[0] for group in members]
            start_time = time.perf_counter()
            if features is not None and features.get(leaders) is None:
                patches = extract_windows(volume, leaders, window).to(device)
                patches = patches.expand(-1, 3, -1, -1, -1).contiguous(memory_format=layout)
                computed = crop_per_pixel(encode(patches), [box for group in members for box in group])
                if not features.put(leaders, computed):
                    break  # the budget is spent: later windows run with their prompts
                del patches, computed
            _sync(device)
            stats.backbone_s += time.perf_counter() - start_time
            done += sum(len(group) for group in members)
            if progress is not None:
                progress(done, total)


def _probabilities(logits: torch.Tensor, spare: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float32 sigmoid of the loop's own ``logits``, in place when they are float32. Reduced-precision logits on
    the CPU are converted into ``spare``, a buffer kept across chunks (returned, grown when needed): a fresh
    float32 tensor there pays its page faults on every chunk (benchmarks/RESULTS.md §4f). Same values either
    way."""
    if logits.dtype == torch.float32:
        return logits.sigmoid_(), spare
    if logits.device.type != "cpu":
        return logits.float().sigmoid_(), spare
    if spare is None or spare.numel() < logits.numel():
        spare = torch.empty(logits.numel(), dtype=torch.float32)
    return spare[: logits.numel()].view(logits.shape).copy_(logits).sigmoid_(), spare


def crop_per_pixel(features, boxes: Sequence[Box]):
    """``features`` with the full-resolution per-pixel embedding cut to the largest box extent of ``boxes``.

    The mask head is a per-voxel dot product, so the logits inside the boxes are unchanged; the padding
    beyond them, which the aggregation discards, is not computed.
    """
    extent = [max(box_extent(box)[axis] for box in boxes) for axis in range(3)]
    full = features.per_pixel[0]
    if list(full.shape[2:]) == extent:
        return features
    cropped = full[:, :, : extent[0], : extent[1], : extent[2]]
    if cropped.device.type == "cpu":
        # The CPU's einsum copies a strided operand on every call (every prompt chunk): copied once here
        # (benchmarks/RESULTS.md §4f).
        cropped = cropped.contiguous()
    return dataclasses.replace(features, per_pixel=[cropped, *features.per_pixel[1:]])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
