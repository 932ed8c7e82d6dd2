"""Patch augmentation as in SAT's training (SAT_SPEC §7.3), written on torch tensors (no MONAI).

Transforms run in upstream's order, each with its own probability; parameters follow MONAI's definitions:

* ``RandZoom`` (image ``area``, masks ``nearest``): one isotropic factor in [min_zoom, max_zoom]; the result is
  centre-cropped or edge-padded back to the patch size (MONAI's ``keep_size``).
* ``RandGaussianNoise``: add N(mean, σ) with σ drawn from [0, std].
* ``RandGaussianSharpen``: ``b = G_σ1 * x``, ``out = b + α (b − G_σ2 * b)`` with σ1 ∈ [0.5, 1] and σ2 ∈ [0.5, σ1]
  per axis, α ∈ [10, 30] (MONAI defaults; erf-integrated Gaussian kernels truncated at 4σ, edge padding).
* ``RandScaleIntensity``: ``x · (1 + f)``, f ∈ factors.
* ``RandAdjustContrastInvert`` then ``RandAdjustContrast``: ``((x − min)/range)^γ · range + min``, γ ∈ gamma;
  ``retain_stats`` restores the patch's mean and standard deviation; ``invert_image`` negates before and after.

Randomness comes only from the ``numpy.random.Generator`` passed in (the sampler's per-draw generator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from satseg.errors import InputError

ORDER = ("RandZoom", "RandGaussianNoise", "RandGaussianSharpen", "RandScaleIntensity",
         "RandAdjustContrastInvert", "RandAdjustContrast")


def zoom(image: torch.Tensor, masks: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom (H, W, D) image (area) and (N, H, W, D) bool masks (nearest) by ``factor``, keeping the size."""
    size = tuple(image.shape)
    target = [max(1, round(s * factor)) for s in size]
    zoomed = F.interpolate(image[None, None].float(), size=target, mode="area")[0, 0]
    out_masks = masks
    if masks.shape[0]:
        out_masks = F.interpolate(masks[None].float(), size=target, mode="nearest")[0]
        out_masks = _fit_centre(out_masks, size) > 0.5
    return _fit_centre(zoomed[None], size)[0], out_masks


def _fit_centre(data: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Centre-crop or edge-pad the last three axes of (C, H, W, D) ``data`` to ``size``."""
    slices, pads = [], []
    for have, want in zip(data.shape[1:], size):
        if have >= want:
            start = (have - want) // 2
            slices.append(slice(start, start + want))
            pads.append((0, 0))
        else:
            slices.append(slice(None))
            pads.append(((want - have) // 2, want - have - (want - have) // 2))
    data = data[(slice(None), *slices)]
    if any(p != (0, 0) for p in pads):
        flat = [p for pair in reversed(pads) for p in pair]  # F.pad: last axis first
        data = F.pad(data[None], flat, mode="replicate")[0]
    return data


def gaussian_kernel(sigma: float, truncated: float = 4.0) -> torch.Tensor:
    """1D Gaussian kernel integrated over each voxel (erf), radius ``int(truncated·σ + 0.5)``, sums to 1."""
    radius = max(1, int(truncated * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    scale = sigma * math.sqrt(2.0)
    kernel = 0.5 * (torch.erf((x + 0.5) / scale) - torch.erf((x - 0.5) / scale))
    return (kernel / kernel.sum()).float()


def gaussian_blur(image: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of a (H, W, D) tensor with per-axis ``sigmas`` (edge padding)."""
    data = image[None, None].float()
    for axis, sigma in enumerate(sigmas):
        kernel = gaussian_kernel(sigma)
        radius = kernel.numel() // 2
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        data = F.conv3d(F.pad(data, pad, mode="replicate"), kernel.reshape(shape))
    return data[0, 0]


def sharpen(image: torch.Tensor, sigma1: tuple[float, float, float], sigma2: tuple[float, float, float],
            alpha: float) -> torch.Tensor:
    """Unsharp masking of a (H, W, D) tensor as MONAI's GaussianSharpen."""
    blurred = gaussian_blur(image, sigma1)
    return blurred + alpha * (blurred - gaussian_blur(blurred, sigma2))


def adjust_contrast(image: torch.Tensor, gamma: float, *, retain_stats: bool = False,
                    invert_image: bool = False) -> torch.Tensor:
    """Gamma contrast change of a (H, W, D) tensor on its own [min, max] range."""
    if invert_image:
        image = -image
    mean, std = image.mean(), image.std()
    low = image.min()
    span = image.max() - low
    out = ((image - low) / (span + 1e-7)).pow(gamma) * span + low
    if retain_stats:
        out = (out - out.mean()) / (out.std() + 1e-8) * std + mean
    return -out if invert_image else out


class Augmenter:
    """The configured transforms; ``augmenter(image, masks, rng)`` → augmented copies.

    Args:
        config: transform name → parameters (``prob`` and the transform's own keys), as in the YAML configs.
    """

    def __init__(self, config: Mapping[str, Mapping] | None):
        config = dict(config or {})
        unknown = sorted(set(config) - set(ORDER))
        if unknown:
            raise InputError(f"unknown augmentation {', '.join(unknown)}; known: {', '.join(ORDER)}")
        self.config = {name: dict(config[name]) for name in ORDER if name in config}

    def __bool__(self) -> bool:
        return bool(self.config)

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
        """image (H, W, D) float32, masks (N, H, W, D) bool → the same shapes, augmented."""
        if not self.config:
            return image, masks
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        m = torch.from_numpy(np.ascontiguousarray(masks, dtype=bool))
        for name, p in self.config.items():
            if rng.random() >= float(p.get("prob", 0.0)):
                continue
            if name == "RandZoom":
                x, m = zoom(x, m, float(rng.uniform(p.get("min_zoom", 0.9), p.get("max_zoom", 1.1))))
            elif name == "RandGaussianNoise":
                std = float(rng.uniform(0.0, p.get("std", 0.1)))
                noise = rng.normal(float(p.get("mean", 0.0)), std, size=tuple(x.shape)).astype(np.float32)
                x = x + torch.from_numpy(noise)
            elif name == "RandGaussianSharpen":
                sigma1 = tuple(float(rng.uniform(0.5, 1.0)) for _ in range(3))
                sigma2 = tuple(float(rng.uniform(0.5, s)) for s in sigma1)
                x = sharpen(x, sigma1, sigma2, float(rng.uniform(10.0, 30.0)))
            elif name == "RandScaleIntensity":
                low, high = p.get("factors", (-0.1, 0.1))
                x = x * (1.0 + float(rng.uniform(low, high)))
            else:  # RandAdjustContrast / RandAdjustContrastInvert
                low, high = p.get("gamma", (0.7, 1.5))
                x = adjust_contrast(x, float(rng.uniform(low, high)), retain_stats=bool(p.get("retain_stats")),
                                    invert_image=bool(p.get("invert_image")))
        return x.numpy().astype(np.float32, copy=False), m.numpy()
