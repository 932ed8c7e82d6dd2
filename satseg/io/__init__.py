"""Scan input/output: readers into one :class:`Volume` record, validation, atomic writes."""

from satseg.io.readers import read_volume, validate_volume
from satseg.io.volume import Volume

__all__ = ["Volume", "read_volume", "validate_volume"]
