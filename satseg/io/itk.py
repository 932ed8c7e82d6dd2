"""NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK, and ITK images → :class:`Volume`.

ITK's LPS geometry is converted to a nibabel RAS affine (:func:`itk_to_volume`, also used for DICOM series that
SimpleITK converts). The header's size is checked against the memory before reading.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io._common import _fmt, _fmt_bytes, _one_line, _volume_index
from satseg.io.memory import _check_memory
from satseg.io.volume import Volume


def _read_itk(path: Path, volume: int | None) -> Volume:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(logging.getLogger("satseg").isEnabledFor(logging.DEBUG))

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
        dim = reader.GetDimension()
        if reader.GetNumberOfComponents() != 1:
            raise InputError(f"{path.name}: {reader.GetNumberOfComponents()} components per voxel; expected 1")
        spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
        if np.any(~np.isfinite(spacing[:3])) or np.any(spacing[:3] <= 0):
            raise InputError(f"{path.name}: voxel spacing {_fmt(spacing[:3])} is not positive")
        if dim < 3 or min(size[:3]) < 2:
            raise InputError(f"{path.name}: the scan is 2D (size {size}); a 3D volume is needed")
        if dim > 4:
            raise InputError(f"{path.name}: {dim}D image; only 3D and 4D scans are supported")
        n_volumes = size[3] if dim == 4 else 1
        index = _volume_index(path.name, n_volumes, volume)
        # ITK allocates the whole image, then the array is copied out of it (one volume of a 4D scan)
        image_bytes = math.prod(size) * _itk_bytes_per_voxel(reader.GetPixelID())
        voxel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        what = f"a {'×'.join(map(str, size))} {voxel_type} image of {_fmt_bytes(image_bytes)}"
        _check_memory(path, what, image_bytes + image_bytes // n_volumes)
        image = reader.Execute()
    except InputError:
        raise
    except RuntimeError as exc:
        raise InputError(f"{path.name}: cannot read the file ({_one_line(exc)})") from exc
    array = sitk.GetArrayFromImage(image)  # (T,) Z, Y, X
    if dim == 4:
        array = array[index]
    vol = itk_to_volume(array.transpose(2, 1, 0), image, source=path)
    vol.meta["format"] = path.suffix.lower().lstrip(".")
    if dim == 4:
        vol.meta.update(volume=index, n_volumes=n_volumes)
    return vol


def _itk_bytes_per_voxel(pixel_id: int) -> int:
    """Bytes per voxel of a SimpleITK pixel type: the item size of a one-voxel image of that type."""
    import SimpleITK as sitk

    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], pixel_id)).dtype.itemsize


def itk_to_volume(array_xyz: np.ndarray, image, source: Path | None = None) -> Volume:
    """Wrap an ITK image's voxels (shape (X, Y, Z), ITK index order) with a nibabel RAS affine.

    ITK maps index → LPS mm as ``origin + direction @ diag(spacing) @ index``; RAS flips the first two world axes.
    """
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return Volume(array=array_xyz, affine=affine, header=None, source=source, meta={})
