"""Scan grid → model grid (orientation, 1×1×3 mm resampling, foreground crop) and back.

The forward path reproduces SAT's inference preprocessing (MONAI ``Orientationd`` → ``Spacingd(pixdim=(1, 1, 3),
mode="bilinear")`` with MONAI's defaults → ``CropForegroundd`` on raw intensities > 0), without depending on MONAI:

* Orientation: nibabel's ``io_orientation`` / ``ornt_transform``; the array is flipped and transposed as a view.
* Spacing: the output affine keeps the input's direction cosines with the new voxel size; the output shape is
  ``round(extent / spacing + 1)`` per axis computed from the grid corners, and the output grid starts at the input's
  first voxel centre. A target spacing within 1e-3 mm of the input's keeps the input's spacing, and a transform that
  is the identity within 1e-3 leaves the data untouched — both as MONAI does. Values: trilinear interpolation in
  float64 with border padding (coordinates clamped to the grid), stored as float32.
* Sheared grids (a gantry-tilted series, read on its own sheared affine) go the same way MONAI takes them: the
  output directions are the input's orthonormalised in axis order (the rotation of a Cholesky split), so the model
  grid is orthonormal, and the index map between the grids is a full matrix: the trilinear interpolation follows the
  shear (scipy, on the CPU), and so does the way back.
* Crop: bounding box of voxels > 0 of the resampled data, margin 0. A scan with no voxel > 0 is not cropped.

Everything each step did is kept in a :class:`GridRecord`, whose :meth:`~GridRecord.to_input_grid` brings model-grid
maps (probabilities, masks) back onto the scan's own voxel grid and :meth:`~GridRecord.from_input_grid` pushes
input-grid maps (e.g. ground truth) forward exactly like the image.

Modules: :mod:`~satseg.geometry.grid` (the forward path), :mod:`~satseg.geometry.record` (:class:`GridRecord` and
the inverse), :mod:`~satseg.geometry.resample` (the interpolation kernels, numpy and torch).
"""

from satseg.geometry.grid import AFFINE_TOL, MODEL_ORIENTATION, MODEL_SPACING_MM, foreground_box, to_model_grid
from satseg.geometry.record import GridRecord
from satseg.geometry.resample import _separable_linear, orient_view  # noqa: F401  (_separable_linear: tests import it here)

__all__ = ["AFFINE_TOL", "MODEL_ORIENTATION", "MODEL_SPACING_MM", "GridRecord", "foreground_box", "orient_view",
           "to_model_grid"]
