"""The record of what :func:`~satseg.geometry.to_model_grid` did to a scan, and its exact inverse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from satseg.geometry.resample import (_as_channels, _axis_positions, _diagonal_or_full, _is_tensor, _resample,
                                      _separable_linear, _spline_order, _take, orient_view)

_CHUNK_VOXELS = 64e6  # channels interpolated together in to_input_grid, in voxels of output
_ARRAYS = ("input_affine", "ornt", "oriented_affine", "resampled_affine", "index_matrix", "index_offset")


@dataclass(frozen=True)
class GridRecord:
    """What :func:`to_model_grid` did to a scan, enough to undo it exactly.

    Index maps: an index ``o`` on the oriented grid and an index ``q`` on the resampled grid satisfy
    ``o = index_matrix @ q + index_offset``; the model grid is ``resampled[crop_start:crop_stop]``.

    Attributes:
        input_shape: the scan's array shape (I, J, K).
        input_affine: the scan's 4×4 voxel → RAS mm affine.
        input_axcodes: orientation of the scan's axes, e.g. ``"LPS"``.
        orientation: target orientation code, e.g. ``"RAS"``.
        ornt: (3, 2) nibabel orientation transform input → oriented (axis, flip).
        oriented_shape, oriented_affine: grid after reorientation.
        spacing_mm: voxel size of the resampled grid (the target, or the input's where within 1e-3 mm of it).
        resampled_shape, resampled_affine: grid after resampling.
        index_matrix: (3, 3) resampled index → oriented index (diagonal unless the affine is oblique-noisy).
        index_offset: (3,) translation of that map (zero for MONAI's corner-aligned grid).
        interpolated: False when the spacing step left the data untouched (identity transform).
        crop_start, crop_stop: foreground box on the resampled grid (stop exclusive).
    """

    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    input_axcodes: str
    orientation: str
    ornt: np.ndarray
    oriented_shape: tuple[int, int, int]
    oriented_affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray
    index_matrix: np.ndarray
    index_offset: np.ndarray
    interpolated: bool
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (H, W, D) of the model grid."""
        return tuple(int(b - a) for a, b in zip(self.crop_start, self.crop_stop))  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4×4 voxel → RAS mm affine of the model grid (the resampled affine shifted to the crop start)."""
        affine = self.resampled_affine.copy()
        affine[:3, 3] += self.resampled_affine[:3, :3] @ np.asarray(self.crop_start, dtype=float)
        return affine

    def to_input_grid(self, data, *, order: str = "linear", threshold: float | None = None) -> np.ndarray:
        """Bring maps on the model grid back onto the scan's grid (its voxel order and shape).

        Args:
            data: (H, W, D) or (N, H, W, D) array on the model grid (``self.shape``): a numpy array, or a torch
                tensor, which is interpolated where it lives (e.g. on the GPU; same float32 arithmetic, same
                values) when the map is axis-aligned and ``order`` is linear, else on the CPU.
            order: ``"linear"`` (probabilities; float32 result) or ``"nearest"`` (labels; dtype kept).
            threshold: if given, the result is the uint8 mask ``value > threshold`` (thresholded before it
                leaves the GPU: a quarter of the transfer).

        Returns:
            (I, J, K) or (N, I, J, K) array on the input grid; 0 wherever the point falls outside the crop box.
        """
        spline_order = _spline_order(order)
        if threshold is not None and not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
        if _is_tensor(data):
            if spline_order == 1 and _diagonal_or_full(np.linalg.inv(self.index_matrix)).ndim == 1:
                return self._to_input_grid_torch(data, threshold)
            data = data.detach().cpu().numpy()
        data, squeeze = _as_channels(data, self.shape, "model grid")
        value_dtype = np.float32 if spline_order == 1 else data.dtype
        out_dtype = np.uint8 if threshold is not None else value_dtype
        # Fortran-ordered per map, like the GPU's: NIfTI's on-disk order, so nibabel writes it without a
        # transposing copy (benchmarks/RESULTS.md, "Design notes from the code").
        result = np.zeros((data.shape[0], *self.input_shape[::-1]), dtype=out_dtype).transpose(0, 3, 2, 1)
        oriented = orient_view(result, self.ornt)
        plan = self._inverse_plan()
        if plan is None:
            return result[0] if squeeze else result
        region, matrix, offset, extent = plan
        padded = self._pad_for_inverse(data)

        def store(target, values):
            if threshold is None:
                target[...] = values
            else:
                np.greater(values, threshold, out=target)  # thresholded in one pass, bool stored as 0/1

        if spline_order == 1 and matrix.ndim == 1:  # axis-aligned: separable, cheaper than scipy's general path
            positions = _axis_positions(matrix, offset, extent)
            # Interpolate in the target's memory order (the input's first axis fastest): a streaming copy.
            layout = tuple(int(a) for a in np.argsort(-self.ornt[:, 0]))
            step = max(1, int(_CHUNK_VOXELS // np.prod(extent)))  # bounds the temporaries to a few 100 MB
            for n in range(0, data.shape[0], step):
                target = oriented[(slice(n, n + step), *region)].transpose(0, *(a + 1 for a in layout))
                store(target, _separable_linear(padded[n: n + step], positions, layout=layout))
            return result[0] if squeeze else result
        for n in range(data.shape[0]):
            store(oriented[(n, *region)], ndimage.affine_transform(
                padded[n], matrix, offset=offset, output_shape=tuple(extent),
                order=spline_order, mode="constant", cval=0.0, output=value_dtype,
            ))
        return result[0] if squeeze else result

    def _to_input_grid_torch(self, data, threshold: float | None) -> np.ndarray:
        """:meth:`to_input_grid` (linear, axis-aligned) of a torch tensor, computed on its device.

        The values come from the same :func:`_separable_linear` as the numpy path (same float32 operations in the
        same order); what differs is only where the result is assembled: on the device, one map at a time, so
        that each map crosses to the host as one contiguous block (benchmarks/RESULTS.md §5, "After the measured
        runs").
        """
        import torch

        squeeze = tuple(data.shape) == tuple(self.shape)
        data = data[None] if squeeze else data
        if data.ndim != 4 or tuple(data.shape[1:]) != tuple(self.shape):
            raise ValueError(f"expected an array of shape {tuple(self.shape)} or (N, *{tuple(self.shape)}) on the "
                             f"model grid, got {tuple(data.shape)}")
        dtype = np.float32 if threshold is None else np.uint8
        # Each map comes back Fortran-ordered (NIfTI's on-disk order: nibabel then writes it without a
        # transposing copy), laid out on the device, so the transfer is one contiguous block per map.
        result = np.zeros((data.shape[0], *self.input_shape[::-1]), dtype=dtype).transpose(0, 3, 2, 1)
        flips = [axis for axis, flip in enumerate(self.ornt[:, 1]) if flip == -1]
        to_input = [int(a) for a in np.argsort(np.argsort(self.ornt[:, 0]))]  # undoes orient_view's transpose
        plan = self._inverse_plan()
        if plan is None:
            return result[0] if squeeze else result
        region, matrix, offset, extent = plan
        padded = self._pad_for_inverse(data)
        positions = _axis_positions(matrix, offset, extent)
        for n in range(data.shape[0]):  # one map at a time: bounded device memory
            values = _separable_linear(padded[n:n + 1], positions)[0]
            if threshold is not None:
                values = values > threshold
            full = torch.zeros(self.oriented_shape, dtype=torch.float32 if threshold is None else torch.uint8,
                               device=values.device)
            full[region] = values
            del values
            on_input = full.permute(*to_input).flip(flips) if flips else full.permute(*to_input)
            result[n] = on_input.permute(2, 1, 0).contiguous().cpu().numpy().T
        return result[0] if squeeze else result

    def from_input_grid(self, data: np.ndarray, *, order: str = "linear") -> np.ndarray:
        """Push maps on the scan's grid (e.g. a ground-truth mask) to the model grid, exactly like the image.

        Args:
            data: (I, J, K) or (N, I, J, K) array on the input grid (``self.input_shape``).
            order: ``"linear"`` (float32 result) or ``"nearest"`` (dtype kept).

        Returns:
            (H, W, D) or (N, H, W, D) array on the model grid.
        """
        data, squeeze = _as_channels(data, self.input_shape, "input grid")
        spline_order = _spline_order(order)
        out_dtype = np.float32 if spline_order == 1 else data.dtype
        oriented = orient_view(data, self.ornt)
        out = np.stack([
            _resample(oriented[n], self, spline_order, out_dtype, self.crop_start, self.shape)
            for n in range(data.shape[0])
        ])
        return out[0] if squeeze else out

    def to_dict(self) -> dict:
        """JSON-ready description for run reports."""
        return {
            "input_shape": list(self.input_shape),
            "input_affine": self.input_affine.tolist(),
            "input_axcodes": self.input_axcodes,
            "orientation": self.orientation,
            "ornt": self.ornt.astype(int).tolist(),
            "oriented_shape": list(self.oriented_shape),
            "oriented_affine": self.oriented_affine.tolist(),
            "spacing_mm": list(self.spacing_mm),
            "resampled_shape": list(self.resampled_shape),
            "resampled_affine": self.resampled_affine.tolist(),
            "index_matrix": self.index_matrix.tolist(),
            "index_offset": self.index_offset.tolist(),
            "interpolated": self.interpolated,
            "crop_start": list(self.crop_start),
            "crop_stop": list(self.crop_stop),
            "model_shape": list(self.shape),
            "model_affine": self.affine.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> GridRecord:
        """Inverse of :meth:`to_dict` (its derived ``model_shape`` / ``model_affine`` and other extra keys are
        ignored): a record read back from a run report or a cache's JSON undoes the same steps."""
        import dataclasses

        values = {}
        for item in dataclasses.fields(cls):
            value = data[item.name]
            if item.name in _ARRAYS:
                value = np.asarray(value, dtype=np.float64)
            elif item.name == "spacing_mm":
                value = tuple(float(v) for v in value)
            elif isinstance(value, list):
                value = tuple(int(v) for v in value)
            values[item.name] = value
        return cls(**values)

    def _pad_for_inverse(self, data):
        """(N, H, W, D) → (N, H+2, W+2, D+2): zeros beyond the crop box, the edge value where the box touches the
        resampled grid's border (MONAI's border padding holds there). A torch tensor is padded on its device,
        in float32."""
        shape = (data.shape[0], *(s + 2 for s in data.shape[1:]))
        if _is_tensor(data):
            import torch

            padded = torch.zeros(shape, dtype=torch.float32, device=data.device)
        else:
            padded = np.zeros(shape, dtype=data.dtype)
        padded[:, 1:-1, 1:-1, 1:-1] = data
        for axis in range(3):
            ax = axis + 1
            if self.crop_start[axis] == 0:
                _take(padded, ax, 0)[...] = _take(padded, ax, 1)
            if self.crop_stop[axis] == self.resampled_shape[axis]:
                _take(padded, ax, -1)[...] = _take(padded, ax, -2)
        return padded

    def _inverse_plan(self):
        """How the scan's voxels read the padded model grid (:meth:`_pad_for_inverse`): ``(region, matrix,
        offset, extent)`` for the box of oriented input voxels that land inside it (``matrix`` 1-D when the map
        is axis-aligned), or ``None`` when none does."""
        # oriented index o → resampled q = inv(M) (o − t) → padded index c = q − crop_start + 1
        inverse = np.linalg.inv(self.index_matrix)
        shift = -inverse @ self.index_offset - np.asarray(self.crop_start, dtype=float) + 1.0
        box = self._input_box(np.asarray(self.shape) + 2)
        if box is None:
            return None
        lo, hi = box
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        return region, _diagonal_or_full(inverse), shift + inverse @ lo.astype(float), hi - lo

    def _input_box(self, padded_shape: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Box [lo, hi) of oriented input indices whose padded model-grid position lies inside the padded array."""
        corners = np.array(np.meshgrid(*[(0.0, s - 1.0) for s in padded_shape], indexing="ij")).reshape(3, -1)
        q = corners + np.asarray(self.crop_start, dtype=float)[:, None] - 1.0
        o = self.index_matrix @ q + self.index_offset[:, None]
        lo = np.maximum(np.floor(o.min(axis=1)).astype(int), 0)
        hi = np.minimum(np.ceil(o.max(axis=1)).astype(int) + 1, np.asarray(self.oriented_shape))
        if np.any(hi <= lo):
            return None
        return lo, hi


