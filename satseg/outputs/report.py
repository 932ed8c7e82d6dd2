"""JSON outputs: the run report, and the conversion every JSON writer here shares."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from satseg.io.atomic import write_text_atomic


def to_jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths, dataclasses, sets and dates turned into JSON types.

    Non-finite floats (NaN, ±inf) become ``None``: strict JSON has no such values, and a reader should
    see "no number" rather than a parse error. Mapping keys become strings.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def dumps(obj: Any) -> str:
    """Strict, indented JSON text with a final newline (see :func:`to_jsonable`)."""
    return json.dumps(to_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; the whole text is built before the file is touched."""
    path = Path(path)
    write_text_atomic(path, dumps(obj))
    return path


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Write the run report (versions, model, device, timings, outputs, prompt resolution) as JSON.

    The content is the caller's; this only makes it strict JSON and writes it atomically.
    """
    return write_json(path, report)
