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
