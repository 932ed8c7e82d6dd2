"""The way back: model-grid probabilities of the trained terms → each prompt's mask (and probability map) on
the scan's own grid, through the preprocessing record (:meth:`~satseg.geometry.GridRecord.to_input_grid`)."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def prompts_on_input_grid(term_probs: torch.Tensor, terms: list[str], prompt_terms: list, record,
                          threshold: float, with_maps: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(mask, probability map or None) on the input grid for each prompt, in the order of ``prompt_terms``.

    Args:
        term_probs: (T, H, W, D) float32 probabilities on the model grid, one per entry of ``terms`` (on the
            CPU, or on the GPU where they were summed).
        terms: the trained terms, in the order of ``term_probs``.
        prompt_terms: one per prompt: the trained terms it resolved to. A composite prompt ("kidneys") is the
            union of its terms: the voxel-wise maximum of their probabilities.
        record: the preprocessing record of the scan.
        threshold: a voxel is in the mask when its probability is above it.
        with_maps: also return the float32 probability maps (Fortran-ordered, like the masks).

    On the CPU the prompts are brought back on several threads (numpy's interpolation runs on one core and
    releases the GIL); on the GPU one after another.
    """
    from satseg.outputs.masks import parallel_workers

    index = {t: i for i, t in enumerate(terms)}

    def back(its_terms):
        prob = term_probs[[index[t] for t in its_terms]].amax(dim=0)
        if prob.device.type != "cpu":  # on the GPU: interpolated there, thresholded before the transfer
            return back_on_gpu(record, prob, threshold, with_maps)
        return back_on_cpu(record, prob.numpy(), threshold, with_maps)

    workers = 1 if term_probs.device.type != "cpu" else parallel_workers(len(prompt_terms))
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(back, prompt_terms))
    return [back(its_terms) for its_terms in prompt_terms]


def back_on_gpu(record, prob: torch.Tensor, threshold: float, want_map: bool):
    """(mask, probability map or None) on the input grid for a model-grid map on the GPU; the CPU's way
    (same values) if the GPU runs out of memory."""
    try:
        mask = record.to_input_grid(prob, order="linear", threshold=threshold)
        return mask, (record.to_input_grid(prob, order="linear") if want_map else None)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("GPU out of memory bringing masks back to the scan's grid: doing it on the CPU")
        return back_on_cpu(record, prob.cpu().numpy(), threshold, want_map)


def back_on_cpu(record, prob: np.ndarray, threshold: float, want_map: bool):
    """(mask, probability map or None) on the input grid for a model-grid map in memory; both
    Fortran-ordered (NIfTI's order: written without a transposing copy)."""
    if not want_map:  # thresholded as it is interpolated: no float32 map of the whole scan
        return record.to_input_grid(prob, order="linear", threshold=threshold), None
    on_input = record.to_input_grid(prob, order="linear")
    return (on_input > threshold).astype(np.uint8), on_input
