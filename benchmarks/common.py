"""Helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages (the machine is shared: recorded next to every timing)."""
    return [round(x, 2) for x in os.getloadavg()]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` have the same background and their labels are in bijection."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    fg = a != 0
    pairs = np.unique(np.stack([a[fg].astype(np.uint64), b[fg].astype(np.uint64)]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def median(values) -> float:
    return float(np.median(np.asarray(list(values), dtype=float)))


def shape_key(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
