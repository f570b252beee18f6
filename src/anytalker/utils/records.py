"""JSON records of results: one conversion to JSON-safe values, one reader, one number format.

Used by the benchmark runner, the evaluation commands and the puppets reports, so a metric record
reads and prints the same everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .atomic import write_json_atomic


def jsonable(value):
    """JSON-safe copy: numpy scalars / arrays to Python, NaN and inf to None (an undefined
    correlation, a metric that could not be computed), paths to strings, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_record(path: str | Path, record) -> None:
    """`record` as indented, strict JSON (no NaN), written atomically."""
    write_json_atomic(Path(path), jsonable(record), indent=2, allow_nan=False, ensure_ascii=False)


def read_record(path: str | Path) -> dict | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def format_number(value, digits: int = 4) -> str:
    """A table cell: "-" for a missing or undefined value, floats at `digits` decimals."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
