"""Strict JSON for every file the toolkit writes: NaN and ±inf become ``null`` (JSON has neither; jq and
browsers reject files that hold them), numpy scalars and arrays become numbers and lists."""

from __future__ import annotations

import json
import math

import numpy as np


def plain(value):
    """``value`` with numpy types made Python ones and non-finite floats made None, recursively."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`plain` (obj), refusing anything JSON cannot hold."""
    return json.dumps(plain(obj), allow_nan=False, **kwargs)
