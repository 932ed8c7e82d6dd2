"""One scan standardised as SAT-DS does (steps 1-5 of :mod:`satseg.training.prepare`): read image and mask, the
inference code's model grid, the mask through the same record (nearest neighbour), raw labels → the dataset's SAT
terms, intensity normalisation. Also used by ``satseg train evaluate`` to rebuild native-grid ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from satseg.errors import InputError, SatsegError
from satseg.geometry import MODEL_SPACING_MM
from satseg.training.manifest import DatasetEntry


class PrepareFailed(SatsegError):
    """Raised for one scan; ``kind`` goes into the report."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# -- labels → terms --------------------------------------------------------------------------------------


def iter_term_masks(mask: np.ndarray, entry: DatasetEntry) -> Iterator[tuple[str, np.ndarray]]:
    """The dataset's term masks, one at a time, in ``entry.terms`` order, on whatever grid ``mask`` lives.

    Args:
        mask: ``label_values`` / ``binary``: (I, J, K) label map; ``channels``: (C, I, J, K).
        entry: the dataset's manifest entry (labels, merges).

    Yields:
        ``(term, bool (I, J, K))``; a merged term is the union of its raw labels' voxels.
    """
    raw = _raw_label_fn(mask, entry)
    for term, sources in entry.term_sources().items():
        union = None
        for name in sorted(sources):
            voxels = raw(name)
            union = voxels if union is None else (union | voxels)
        yield term, union


def term_masks(mask: np.ndarray, entry: DatasetEntry) -> np.ndarray:
    """:func:`iter_term_masks` stacked: (N, I, J, K) bool, N = len(entry.terms)."""
    return np.stack([m for _, m in iter_term_masks(mask, entry)])


def _raw_label_fn(mask: np.ndarray, entry: DatasetEntry) -> Callable[[str], np.ndarray]:
    labels = {lab.raw: lab for lab in entry.labels}
    if entry.mask_format == "label_values":
        return lambda name: mask == labels[name].value
    if entry.mask_format == "channels":
        if mask.ndim != 4:
            raise PrepareFailed("unreadable", f"expected a multi-channel (C, I, J, K) mask, got shape {mask.shape}")
        top = max(lab.channel for lab in entry.labels)
        if mask.shape[0] <= top:
            raise PrepareFailed("unreadable", f"mask has {mask.shape[0]} channels, the manifest needs {top + 1}")
        return lambda name: mask[labels[name].channel] > 0.5
    values = np.asarray(mask, dtype=np.float32)
    if entry.binarise == "minmax":  # rescale to 0..1 (on the grid given, as SAT-DS after its crop), keep > 0.5
        lo, hi = float(values.min()), float(values.max())
        binary = (values - lo) > 0.5 * (hi - lo) if hi > lo else np.zeros(values.shape, dtype=bool)
    else:
        binary = values > 0.5
    return lambda name: binary


# -- one scan --------------------------------------------------------------------------------------------


def read_mask(path: Path, image_shape: tuple[int, ...], mask_format: str) -> np.ndarray:
    """Read a mask as (I, J, K), or (C, I, J, K) for ``channels`` (SAT-DS stores channels first; channels last
    is accepted too). Its array must be on the image's voxel grid."""
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            array = np.asanyarray(nib.load(str(path)).dataobj)
        else:
            from satseg.io.readers import read_volume

            array = np.asarray(read_volume(path).array)
    except InputError as exc:
        raise PrepareFailed("unreadable", str(exc)) from None
    except Exception as exc:  # nibabel raises many types for damaged files
        raise PrepareFailed("unreadable", f"{path.name}: cannot read the mask ({_one_line(exc)})") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    shape = tuple(image_shape)
    if mask_format == "channels" and array.ndim == 4:
        if array.shape[1:] == shape:
            return array
        if array.shape[:3] == shape:
            return np.moveaxis(array, -1, 0)
    elif array.shape == shape:
        return array
    raise PrepareFailed("error", f"{path.name}: mask shape {array.shape} does not match image shape {shape}")


def standardise(image_path: Path, mask_path: Path, entry: DatasetEntry, modality: str | None = None,
                spacing_mm=MODEL_SPACING_MM):
    """One scan → (image float32 (H, W, D), masks bool (N, H, W, D), GridRecord, modality), on a grid of
    ``spacing_mm`` voxels (SAT: 1×1×3 mm).

    Raises:
        PrepareFailed: missing or unreadable files, or a mask that does not fit the image.
    """
    from satseg.geometry import to_model_grid
    from satseg.intensity import normalize
    from satseg.io.readers import read_volume
    from satseg.vocabulary import normalize_modality

    for path in (image_path, mask_path):
        if not path.exists():
            raise PrepareFailed("missing", f"{path}: no such file")
    try:
        volume = read_volume(image_path)
    except InputError as exc:
        raise PrepareFailed("unreadable", str(exc)) from None
    modality = normalize_modality(modality) if modality else entry.modality
    mask = read_mask(mask_path, volume.shape, entry.mask_format)
    raw, record = to_model_grid(volume, orientation=entry.orientation, spacing_mm=spacing_mm)
    del volume
    on_grid = record.from_input_grid(mask, order="nearest")
    del mask
    masks = term_masks(on_grid, entry)
    image = normalize(raw, modality)
    return image, masks, record, modality


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
