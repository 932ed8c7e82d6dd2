"""Interpolation kernels of the model-grid geometry (:mod:`satseg.geometry`): trilinear resampling of a scan (scipy on
the CPU, or axis by axis in float64 on a torch device), separable linear interpolation of maps back to a scan's grid
(numpy or torch, one implementation), and the array helpers they share.

Two twins stay apart on purpose: :func:`_resample` (scipy's ``affine_transform``, MONAI's values) and
:func:`_resample_torch` (the same trilinear interpolation in float64, one axis at a time) differ by up to one unit in
the last place of the float32 result, because scipy sums the eight corner weights in another order; sharing one
would change the CPU path's values, which the parity tests pin to MONAI's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_ORDERS = {"linear": 1, "nearest": 0}


def orient_view(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Flip and transpose the last three axes of ``array`` (…, I, J, K) by a nibabel orientation transform.

    Returns a view (no copy): writing into it writes into ``array``.
    """
    lead = array.ndim - 3
    view = array
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            view = np.flip(view, axis=lead + axis)
    order = [lead + int(a) for a in np.argsort(ornt[:, 0])]
    return view.transpose(*range(lead), *order)



def _resample(oriented: np.ndarray, record, order: int, dtype, start, out_shape) -> np.ndarray:
    """Sample an oriented (I, J, K) array at resampled indices ``start + (0..out_shape)``; border padding."""
    if not record.interpolated:
        region = tuple(slice(a, a + n) for a, n in zip(start, out_shape))
        return np.asarray(oriented[region], dtype=dtype)
    matrix = record.index_matrix
    offset = record.index_offset + matrix @ np.asarray(start, dtype=float)
    # scipy walks the output in C order: give it the input axes from largest to smallest stride (NIfTI data is
    # usually Fortran-ordered, which is much slower otherwise) and put the axes back afterwards (a view).
    perm = np.argsort([-abs(s) for s in oriented.strides], kind="stable")
    sampled = ndimage.affine_transform(
        oriented.transpose(perm), _diagonal_or_full(matrix[np.ix_(perm, perm)]), offset=offset[perm],
        output_shape=tuple(int(out_shape[p]) for p in perm), order=order, mode="nearest", output=dtype,
    )
    return sampled.transpose(np.argsort(perm))


_TORCH_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64", "float32", "float64")}


def _torch_resamplable(array: np.ndarray, record) -> bool:
    return array.dtype in _TORCH_DTYPES and _diagonal_or_full(record.index_matrix).ndim == 1


def _resample_torch(array: np.ndarray, ornt: np.ndarray, record, out_shape, device) -> np.ndarray:
    """:func:`_resample` (linear, border padding, axis-aligned) of the whole grid on a torch ``device``.

    The scan goes to the device in its own memory order; orientation (flips, transposition) and the
    interpolation happen there in float64, one axis at a time. Output coordinates are formed as scipy's
    ``zoom_shift`` forms them, ``(k + offset / zoom) * zoom``, clamped to the grid (mode "nearest").
    """
    import torch

    data = np.asarray(array)
    forward = min(data.strides, default=0) >= 0  # torch takes no negative strides (even on length-1 axes)
    if forward and data.flags.c_contiguous:
        tensor = torch.from_numpy(data).to(device)
    elif forward and data.flags.f_contiguous:  # NIfTI's usual order: move it as it lies, transpose on the device
        tensor = torch.from_numpy(data.T).to(device).permute(2, 1, 0)
    else:
        tensor = torch.from_numpy(np.array(data, order="C", copy=True)).to(device)
    tensor = tensor.to(torch.float64)
    flips = [axis for axis, flip in enumerate(ornt[:, 1]) if flip == -1]
    if flips:
        tensor = tensor.flip(flips)
    tensor = tensor.permute(*[int(a) for a in np.argsort(ornt[:, 0])])
    zoom = np.diag(record.index_matrix).astype(np.float64)
    offset = np.asarray(record.index_offset, dtype=np.float64)
    # shrink the axis that shrinks most first: the intermediate tensors stay small
    for axis in sorted(range(3), key=lambda a: out_shape[a] / tensor.shape[a]):
        length = tensor.shape[axis]
        coords = (np.arange(out_shape[axis], dtype=np.float64) + offset[axis] / zoom[axis]) * zoom[axis]
        coords = np.clip(coords, 0.0, length - 1.0)
        if length == 1:
            tensor = tensor.index_select(axis, torch.zeros(out_shape[axis], dtype=torch.int64, device=tensor.device))
            continue
        first = np.clip(np.floor(coords).astype(np.int64), 0, length - 2)
        weight = coords - first
        shape = [1, 1, 1]
        shape[axis] = len(coords)
        w1 = torch.from_numpy(weight.reshape(shape)).to(tensor.device)
        index = torch.from_numpy(first).to(tensor.device)
        low = tensor.index_select(axis, index)
        high = tensor.index_select(axis, index + 1)
        tensor = low * (1.0 - w1) + high * w1
    return tensor.to(torch.float32).cpu().numpy()


def _axis_positions(matrix: np.ndarray, offset: np.ndarray, extent) -> list[np.ndarray]:
    """Per-axis sampling positions of an axis-aligned map (diagonal ``matrix``) over ``extent`` output voxels."""
    return [offset[a] + matrix[a] * np.arange(extent[a]) for a in range(3)]


def _separable_linear(data, positions: list[np.ndarray], layout: tuple[int, int, int] = (0, 1, 2)):
    """Linear interpolation of (N, A, B, C) ``data`` at the outer product of per-axis ``positions``; 0 outside.

    Same values as ``scipy.ndimage.affine_transform(order=1, mode="constant")`` with a diagonal matrix, in float32.
    ``data`` may be a torch tensor: the same float32 operations, in the same order, run on its device.
    ``layout``: the order of the spatial axes in the (C-contiguous) result, e.g. ``(2, 1, 0)`` for a result whose
    ``[:, a, b, c]`` view, ``out.transpose(0, 3, 2, 1)``, is Fortran-ordered; the values do not depend on it.
    """
    tensor = _is_tensor(data)
    if tensor:
        import torch

        out = data.to(torch.float32)
    else:
        out = data.astype(np.float32, copy=False)
    out = out.permute(0, *(a + 1 for a in layout)) if tensor else out.transpose(0, *(a + 1 for a in layout))
    # expand the axis that grows least first, so the intermediate arrays stay small (the same order whatever
    # the layout: the float32 rounding depends on it)
    for axis in sorted(range(3), key=lambda a: len(positions[a]) / data.shape[a + 1]):
        dim = layout.index(axis) + 1
        length = out.shape[dim]
        pos = positions[axis]
        inside = (pos >= 0) & (pos <= length - 1)
        first = np.clip(np.floor(pos).astype(np.intp), 0, length - 2)
        weight = (pos - first).astype(np.float32)
        shape = [1, 1, 1, 1]
        shape[dim] = len(pos)
        w1 = np.where(inside, weight, 0).astype(np.float32).reshape(shape)
        w0 = np.where(inside, 1 - weight, 0).astype(np.float32).reshape(shape)
        if tensor:
            index = torch.from_numpy(first.astype(np.int64)).to(out.device)
            w0, w1 = torch.from_numpy(w0).to(out.device), torch.from_numpy(w1).to(out.device)
            low, high = out.index_select(dim, index), out.index_select(dim, index + 1)
        else:
            low, high = np.take(out, first, axis=dim), np.take(out, first + 1, axis=dim)
        low *= w0
        high *= w1
        low += high
        out = low
    return out


def _is_tensor(data) -> bool:
    return type(data).__module__.startswith("torch") and hasattr(data, "device")


def _diagonal_or_full(matrix: np.ndarray) -> np.ndarray:
    """scipy takes a 1-D matrix as a (faster) pure scaling; use it when the off-diagonal part is round-off."""
    off = matrix - np.diag(np.diag(matrix))
    return np.diag(matrix).copy() if np.abs(off).max() <= 1e-12 * np.abs(matrix).max() else matrix



def _spline_order(order: str) -> int:
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {order!r}")
    return _ORDERS[order]


def _as_channels(data: np.ndarray, shape: tuple[int, ...], what: str) -> tuple[np.ndarray, bool]:
    data = np.asarray(data)
    if data.shape == tuple(shape):
        return data[None], True
    if data.ndim == 4 and data.shape[1:] == tuple(shape):
        return data, False
    raise ValueError(f"expected an array of shape {tuple(shape)} or (N, *{tuple(shape)}) on the {what}, "
                     f"got {data.shape}")


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    return array[(slice(None),) * axis + (index,)]
