"""SAT's training sampler: which scan, which crop, which prompts (SAT_SPEC §7.3).

* A scan is drawn with weight ``1/sqrt(dataset size) × sampling_weight`` (× its repeat count when
  ``allow_repeat``: ``round(size_repeat × query_repeat)``, ``size_repeat = Π max(1, roi_extent/crop)``,
  ``query_repeat = max(1, n_terms/max_queries)``), like upstream's replicated ``random.choices`` list.
* The scan is zero-padded at the far end of each axis up to the crop size. With ``foreground_crop_prob`` the
  crop is centred on a random foreground voxel — of one random present term with ``label_based_crop_prob``,
  else of the union of all terms — and clamped to the scan (shifted at random with ``uncenter_prob`` while
  still containing that voxel); otherwise it is a uniform random crop.
* Prompts (``pos_label_first_prob``): every term whose bounding box overlaps the crop (a random subset when
  more than ``max_queries``), then negatives up to ``neg_label_ratio_threshold × #positives`` within the cap;
  a crop with no positive gets random terms. A term whose box overlaps the crop but whose mask is empty in it
  stays as an empty target (upstream's behaviour). Upstream also drops terms that fill the whole crop (a
  quirk of its false-positive filter, §7.3); satseg keeps them.

Every draw is a pure function of ``(seed, rank, draw index)``: the sampler has no hidden state beyond the
index of the next draw, so resuming, several data-loading workers and several ranks stay reproducible.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from satseg.training.cache import CachedSample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSettings:
    """Per-dataset sampling knobs (names and defaults as in SAT's ``dataset_config_72.json``)."""

    sampling_weight: float = 1.0
    pos_label_first_prob: float = 1.0
    foreground_crop_prob: float = 1.0
    label_based_crop_prob: float = 0.5
    uncenter_prob: float = 0.0
    neg_label_ratio_threshold: float = 0.5

    @classmethod
    def from_mapping(cls, values: Mapping, defaults: SamplerSettings | None = None) -> SamplerSettings:
        base = defaults or cls()
        return cls(**{f.name: float(values.get(f.name, getattr(base, f.name))) for f in fields(cls)})


@dataclass
class Patch:
    """One training example.

    Attributes:
        image: (H, W, D) float32 crop of the normalised scan (H, W, D = crop size).
        masks: (N, H, W, D) bool targets, one per prompt.
        terms: the N prompts (SAT terms), positives first.
        modality: ``"ct"``, ``"mri"`` or ``"pet"``.
        dataset, sample_id: where it came from.
        start: (3,) crop origin in the padded scan.
    """

    image: np.ndarray
    masks: np.ndarray
    terms: list[str]
    modality: str
    dataset: str
    sample_id: str
    start: tuple[int, int, int]


def union_box(sample: CachedSample) -> tuple[list[int], list[int]] | None:
    """Bounding box [start, stop) of all the sample's non-empty terms, or None when every mask is empty."""
    if not sample.boxes:
        return None
    starts = np.min([b[0] for b in sample.boxes.values()], axis=0)
    stops = np.max([b[1] for b in sample.boxes.values()], axis=0)
    return [int(s) for s in starts], [int(s) for s in stops]


def repeat_count(sample: CachedSample, crop_size: Sequence[int], max_queries: int) -> int:
    """How many copies of the sample upstream puts in its sampling list (``allow_repeat``)."""
    query_repeat = max(1.0, len(sample.terms) / max_queries)
    box = union_box(sample)
    size_repeat = 1.0
    if box is not None:
        for start, stop, crop in zip(*box, crop_size):
            size_repeat *= max(1.0, (stop - start) / crop)
    return round(size_repeat * query_repeat)


def sample_weights(samples: Sequence[CachedSample], settings: Mapping[str, SamplerSettings],
                   crop_size: Sequence[int], max_queries: int, allow_repeat: bool = True) -> np.ndarray:
    """Unnormalised draw weight per sample: ``1/sqrt(dataset size) × sampling_weight × repeats``."""
    sizes: dict[str, int] = {}
    for s in samples:
        sizes[s.dataset] = sizes.get(s.dataset, 0) + 1
    weights = np.empty(len(samples), dtype=np.float64)
    for i, s in enumerate(samples):
        repeats = repeat_count(s, crop_size, max_queries) if allow_repeat else 1
        weights[i] = settings[s.dataset].sampling_weight / math.sqrt(sizes[s.dataset]) * repeats
    return weights


def pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad the last three axes at their far end up to ``size`` (no-op when already as large)."""
    pad = [(0, 0)] * (array.ndim - 3) + [(0, max(0, c - s)) for s, c in zip(array.shape[-3:], size)]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def centred_start(voxel: Sequence[int], shape: Sequence[int], crop: Sequence[int], rng: np.random.Generator,
                  uncenter_prob: float = 0.0) -> tuple[int, int, int]:
    """Crop origin centred on ``voxel`` and clamped to the scan; shifted at random with ``uncenter_prob``."""
    start = [int(min(max(v - c // 2, 0), s - c)) for v, s, c in zip(voxel, shape, crop)]
    if uncenter_prob > 0 and rng.random() < uncenter_prob:
        for axis, (v, s, c) in enumerate(zip(voxel, shape, crop)):
            low = max(-start[axis], v - (start[axis] + c - 1))
            high = min(s - (start[axis] + c), v - start[axis])
            start[axis] += int(rng.integers(low, high + 1))
    return start[0], start[1], start[2]


class Foreground:
    """Flat indices of the True voxels of each mask channel, and of their union, found once per loaded scan."""

    def __init__(self, masks: np.ndarray):
        self.masks = masks
        self._flat: dict[int | None, np.ndarray] = {}

    def __call__(self, channel: int | None) -> np.ndarray:
        """Channel ``channel`` (None: any channel)."""
        if channel not in self._flat:
            region = self.masks.any(axis=0) if channel is None else self.masks[channel]
            self._flat[channel] = np.flatnonzero(region)
        return self._flat[channel]


def random_voxel(flat: np.ndarray, shape: Sequence[int], rng: np.random.Generator) -> tuple[int, int, int] | None:
    """A uniformly chosen voxel of the flat indices ``flat`` into ``shape``, or None when there is none."""
    if flat.size == 0:
        return None
    index = np.unravel_index(int(flat[rng.integers(flat.size)]), tuple(shape))
    return int(index[0]), int(index[1]), int(index[2])


def choose_crop(masks: np.ndarray, boxes: Sequence[bool], crop: Sequence[int], settings: SamplerSettings,
                rng: np.random.Generator, foreground: Foreground | None = None) -> tuple[int, int, int]:
    """Crop origin for padded (N, H, W, D) ``masks``; ``boxes[i]`` says whether term i is present at all;
    ``foreground``: the scan's :class:`Foreground` when it is kept between draws."""
    shape = masks.shape[1:]
    if all(s <= c for s, c in zip(shape, crop)):
        return 0, 0, 0
    present = [i for i, p in enumerate(boxes) if p]
    if present and rng.random() < settings.foreground_crop_prob:
        foreground = foreground or Foreground(masks)
        if rng.random() < settings.label_based_crop_prob:
            flat = foreground(present[int(rng.integers(len(present)))])
        else:
            flat = foreground(None)
        voxel = random_voxel(flat, shape, rng)
        if voxel is not None:
            return centred_start(voxel, shape, crop, rng, settings.uncenter_prob)
    return tuple(int(rng.integers(0, s - c + 1)) for s, c in zip(shape, crop))  # type: ignore[return-value]


def choose_prompts(is_positive: Sequence[bool], max_queries: int, neg_ratio: float,
                   rng: np.random.Generator, positives_first: bool = True) -> list[int]:
    """Indices of the terms to prompt: positives first, then negatives up to ``neg_ratio × #positives``."""
    everything = list(range(len(is_positive)))
    if not positives_first:
        return _subset(everything, max_queries, rng)
    positives = [i for i in everything if is_positive[i]]
    negatives = [i for i in everything if not is_positive[i]]
    if not positives:
        return _subset(everything, max_queries, rng)
    if len(positives) > max_queries:
        return _subset(positives, max_queries, rng)
    room = min(max_queries - len(positives), int(neg_ratio * len(positives)))
    return positives + (negatives if len(negatives) <= room else _subset(negatives, room, rng))


def _subset(items: list[int], k: int, rng: np.random.Generator) -> list[int]:
    k = min(k, len(items))
    return [items[int(i)] for i in rng.choice(len(items), size=k, replace=False)]


def boxes_overlap(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> bool:
    """Whether two [start, stop) boxes share a voxel."""
    return all(a0 < b1 and b0 < a1 for a0, a1, b0, b1 in zip(a[0], a[1], b[0], b[1]))


class SATSampler:
    """Draws training patches from prepared scans; ``draw(i)`` depends only on ``(seed, rank, i)``.

    Args:
        samples: the training scans (``open_cache(..., split="train")``).
        settings: dataset name → :class:`SamplerSettings`.
        crop_size: (H, W, D) patch size in voxels.
        max_queries: most prompts per patch.
        allow_repeat: weight large / many-label scans up as upstream does.
        seed, rank: the draw stream (each rank has its own).
        augment: optional ``(image, masks, rng) → (image, masks)`` applied to each patch.
        cached_scans: how many loaded scans to keep in memory (per process).
    """

    def __init__(self, samples: Sequence[CachedSample], settings: Mapping[str, SamplerSettings],
                 crop_size: Sequence[int], max_queries: int, *, allow_repeat: bool = True, seed: int = 0,
                 rank: int = 0, augment: Callable | None = None, cached_scans: int = 2):
        if not samples:
            raise ValueError("no training samples")
        self.samples = list(samples)
        self.settings = dict(settings)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.max_queries = int(max_queries)
        self.seed, self.rank = int(seed), int(rank)
        self.augment = augment
        weights = sample_weights(self.samples, self.settings, self.crop_size, self.max_queries, allow_repeat)
        self.probabilities = weights / weights.sum()
        self._cumulative = np.cumsum(self.probabilities)
        self._loaded: OrderedDict[int, tuple[np.ndarray, np.ndarray, Foreground]] = OrderedDict()
        self._cached_scans = max(1, cached_scans)

    def rng_for(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, int(index)])

    def _load(self, which: int) -> tuple[np.ndarray, np.ndarray, Foreground]:
        if which in self._loaded:
            self._loaded.move_to_end(which)
            return self._loaded[which]
        image, masks = self.samples[which].load()
        image, masks = pad_to(image, self.crop_size), pad_to(masks, self.crop_size)
        self._loaded[which] = (image, masks, Foreground(masks))
        while len(self._loaded) > self._cached_scans:
            self._loaded.popitem(last=False)
        return self._loaded[which]

    def draw(self, index: int) -> Patch:
        rng = self.rng_for(index)
        which = int(np.searchsorted(self._cumulative, rng.random() * self._cumulative[-1], side="right"))
        which = min(which, len(self.samples) - 1)
        sample = self.samples[which]
        settings = self.settings[sample.dataset]
        image, masks, foreground = self._load(which)
        present = [term in sample.boxes for term in sample.terms]
        start = choose_crop(masks, present, self.crop_size, settings, rng, foreground)
        crop_box = [list(start), [s + c for s, c in zip(start, self.crop_size)]]
        is_positive = [term in sample.boxes and boxes_overlap(sample.boxes[term], crop_box) for term in sample.terms]
        positives_first = rng.random() < settings.pos_label_first_prob
        chosen = choose_prompts(is_positive, self.max_queries, settings.neg_label_ratio_threshold, rng,
                                positives_first)
        window = tuple(slice(s, s + c) for s, c in zip(start, self.crop_size))
        patch_image = np.ascontiguousarray(image[window])
        patch_masks = np.ascontiguousarray(masks[(chosen, *window)])
        if self.augment is not None:
            patch_image, patch_masks = self.augment(patch_image, patch_masks, rng)
        return Patch(image=patch_image, masks=patch_masks, terms=[sample.terms[i] for i in chosen],
                     modality=sample.modality, dataset=sample.dataset, sample_id=sample.sample_id, start=start)
