"""``satseg train fit``'s data: the sampler over a prepared cache, batches of patches, the loader that draws them.

The sampler's draws are a pure function of ``(seed, rank, draw index)`` (:mod:`satseg.training.sampler`): the loader
asks for draw indices ``start, start + 1, …``, so a resumed run continues the stream where the checkpoint left it.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np
import torch

from satseg.errors import InputError

log = logging.getLogger(__name__)

PAD_PROMPT = "none"  # upstream's text for padding prompts (masked out of the loss)


class Draws(torch.utils.data.Dataset):
    """The sampler's endless stream as a map-style dataset: item ``i`` is draw ``i``."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, index: int):
        return self.sampler.draw(index)


def collate(patches) -> dict:
    """Patches → image (B, 1, H, W, D), masks (B, N, H, W, D) float, terms [[N]], query_mask (B, N), modality."""
    n = max(1, max(len(p.terms) for p in patches))
    shape = patches[0].image.shape
    masks = torch.zeros((len(patches), n, *shape), dtype=torch.float32)
    query_mask = torch.zeros((len(patches), n), dtype=torch.float32)
    terms = []
    for i, p in enumerate(patches):
        k = len(p.terms)
        if k:
            masks[i, :k] = torch.from_numpy(np.ascontiguousarray(p.masks)).float()
        query_mask[i, :k] = 1.0
        terms.append(list(p.terms) + [PAD_PROMPT] * (n - k))
    image = torch.from_numpy(np.stack([p.image for p in patches]))[:, None]
    return {"image": image, "masks": masks, "terms": terms, "query_mask": query_mask,
            "modality": [p.modality for p in patches], "dataset": [p.dataset for p in patches]}


def loader(sampler, start_draw: int, per_gpu: int, workers: int, device: torch.device):
    """An iterator over batches (:func:`collate`) of ``per_gpu`` draws each, starting at draw ``start_draw``."""
    return iter(torch.utils.data.DataLoader(
        Draws(sampler), batch_size=per_gpu, sampler=itertools.count(start_draw), collate_fn=collate,
        num_workers=workers, generator=torch.Generator(), pin_memory=device.type == "cuda",
        persistent_workers=False))


def build_sampler(config: dict, cache: Path, seed: int, rank: int):
    from satseg.training.augment import Augmenter
    from satseg.training.cache import open_cache
    from satseg.training.sampler import SamplerSettings, SATSampler

    data = config["data"]
    wanted = data.get("datasets", "all")
    datasets = None if wanted in (None, "all") else list(wanted)
    samples = open_cache(cache, split="train", datasets=datasets)
    if not samples:
        present = sorted({s.dataset for s in open_cache(cache)})
        raise InputError(f"{cache} has no training scans of {wanted}; it holds: {', '.join(present) or 'nothing'}")
    defaults = SamplerSettings.from_mapping(config.get("sampler", {}))
    manifest = _manifest(data.get("manifest"))
    settings = {}
    for name in {s.dataset for s in samples}:
        entry = manifest.get(name)
        settings[name] = SamplerSettings.from_mapping(entry.sampler, defaults) if entry is not None else defaults
    augment = Augmenter(config.get("augmentation"))
    return SATSampler(samples, settings, data["crop_size"], int(data["max_queries"]),
                      allow_repeat=bool(data.get("allow_repeat", True)), seed=seed, rank=rank,
                      augment=augment if augment else None)


def _manifest(where) -> dict:
    """Dataset name → manifest entry (for its sampler block); empty when no manifest is readable."""
    from satseg.training.manifest import DEFAULT_DIR, load_manifest

    path = Path(where) if where else DEFAULT_DIR
    if not path.exists() and where and Path(where).parts[:1] == ("train",):
        path = DEFAULT_DIR.parents[1] / where
    try:
        manifest = load_manifest(path)
    except Exception as exc:  # a custom cache may come without a manifest: config defaults apply
        log.warning("no dataset manifest at %s (%s): using the config's sampler settings", path, exc)
        return {}
    return {entry.name: entry for entry in manifest}
