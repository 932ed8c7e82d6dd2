"""Small helpers the readers share: one-line messages, numbers and sizes in messages, the 4D volume choice."""

from __future__ import annotations

from satseg.errors import InputError


def _volume_index(name: str, n_volumes: int, volume: int | None) -> int:
    if n_volumes > 1 and volume is None:
        raise InputError(f"{name}: the scan is 4D ({n_volumes} volumes); pick one with --volume N (0..{n_volumes - 1})")
    index = 0 if volume is None else int(volume)
    if not 0 <= index < n_volumes:
        raise InputError(f"{name}: --volume {index} is out of range; the scan has {n_volumes} volume(s)")
    return index


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _fmt_bytes(n_bytes: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n_bytes >= size:
            return f"{n_bytes:,} bytes ({n_bytes / size:.1f} {unit})"
    return f"{n_bytes:,} bytes"


# A sheared grid is read and segmented as a gantry tilt when one axis leans off the normal of the other two (which
# are perpendicular) by at most this angle; CT gantries tilt up to ±30°.
MAX_TILT_DEG = 45.0


def axis_tilt(affine, tol: float, axes=(0, 1, 2)) -> float | None:
    """How far (degrees) an axis of ``affine`` among ``axes`` leans off the normal of the other two, when those two
    are perpendicular within ``tol`` (cosine): the shear of a gantry-tilted stack. Of several such axes, the one whose
    other two are the most nearly perpendicular (rows and columns are; the lean of a slightly tilted slice axis may
    be within ``tol`` of perpendicular too). ``None`` when no such axis is there (a shear no acquisition makes)."""
    import numpy as np

    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = linear / np.linalg.norm(linear, axis=0)
    best = None
    for axis in axes:
        b, c = (a for a in range(3) if a != axis)
        skew = abs(float(cosines[:, b] @ cosines[:, c]))
        if skew <= tol and (best is None or skew < best[0]):
            normal = np.cross(cosines[:, b], cosines[:, c])
            normal /= np.linalg.norm(normal)
            best = (skew, float(np.degrees(np.arccos(min(1.0, abs(float(cosines[:, axis] @ normal)))))))
    return None if best is None else best[1]
