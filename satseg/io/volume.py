"""The one record every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Volume:
    """A 3D scan as read from disk.

    Attributes:
        array: voxel data, shape (I, J, K), in the file's own voxel order and dtype.
        affine: 4×4 voxel index → world mm matrix in nibabel's RAS+ convention.
        header: the NIfTI header to write results back with (qform/sform codes kept); ``None`` when the
            input was not NIfTI (a fresh header is made from ``affine`` then).
        source: the path the scan was read from, if any.
        modality: ``"ct"``, ``"mri"`` or ``"pet"`` when the file says so (DICOM Modality), else ``None``.
        meta: reader notes for reports (format, series UID, chosen volume, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    header: Any = None
    source: Path | None = None
    modality: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """A case name derived from the source path (``scan.nii.gz`` → ``scan``)."""
        if self.source is None:
            return "scan"
        name = Path(self.source).name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name
