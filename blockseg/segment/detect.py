"""Centre-point detection (gauss / density maps): local maxima, blockwise with a halo.

A voxel is a *peak* when its value is above ``threshold`` and equals the maximum of the
``(2n+1)^3`` window around it (the window is clipped at the volume border). Every voxel of a
plateau of equal maxima is reported. Computed per block on core + ``n`` halo, the peaks of the
core are exactly the whole-volume peaks in that core, so the union over blocks is the
whole-volume table, without stitching.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
from scipy import ndimage as ndi

from ..runtime.cluster import run_blocks
from ..errors import BlocksegError
from ..io.predictions import decode_channel, open_predictions, prediction_kind
from ..io.tables import write_table
from .pipeline import _within, expand


def local_peaks(values: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Boolean mask of the local maxima of ``values`` in a ``(2n+1)^3`` window above ``threshold``."""
    if n < 1:
        raise BlocksegError(f"the peak window radius n must be at least 1, got {n}")
    neg = np.float32(-np.inf)
    peak_max = ndi.maximum_filter(values, size=2 * n + 1, mode="constant", cval=neg)
    return (values == peak_max) & (values > threshold)


def _peaks_table(mask: np.ndarray, values: np.ndarray, origin) -> dict[str, np.ndarray]:
    z, y, x = np.nonzero(mask)
    return {
        "z": z.astype(np.int64) + origin[0],
        "y": y.astype(np.int64) + origin[1],
        "x": x.astype(np.int64) + origin[2],
        "value": values[z, y, x].astype(np.float64),
    }


def _detect_task(block_id, pred_path, channel, kind, block_shape, n, threshold):
    vol = open_predictions(pred_path, (channel,))[channel]
    grid = vol.grid(block_shape)
    core = grid[block_id].core
    outer = expand(core, (n,) * 3, vol.shape)
    values = decode_channel(vol.array[outer], kind)
    inner = _within(core, outer)
    peaks = local_peaks(values, n, threshold)[inner]
    return _peaks_table(peaks, values[inner], [s.start for s in core])


def detect_peaks(
    pred_path: str | os.PathLike,
    channel: str = "G",
    n: int = 3,
    threshold: float = 0.5,
    block_shape=None,
    client=None,
    out_csv: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Peaks of one prediction channel, blockwise; a table with columns z, y, x, value.

    Parameters
    ----------
    pred_path : str or path-like
        Prediction store.
    channel : str
        The gauss / density channel.
    n : int
        Window radius: peaks are maxima of a ``(2n+1)^3`` window; also the halo.
    threshold : float
        Peaks must be strictly above it.
    block_shape : int or sequence of int, optional
        Block core shape (multiple of the chunks).
    client : distributed.Client, optional
        Where to run; None runs in this process.
    out_csv : path, optional
        Also write the table as CSV.
    """
    vol = open_predictions(pred_path, (channel,))[channel]
    grid = vol.grid(block_shape)
    if n > min(grid.block_shape):
        raise BlocksegError(f"window radius {n} is larger than the block shape {grid.block_shape}")
    func = partial(
        _detect_task, pred_path=str(pred_path), channel=channel, kind=prediction_kind(vol, channel),
        block_shape=grid.block_shape, n=int(n), threshold=float(threshold),
    )  # fmt: skip
    parts = run_blocks(func, grid.block_ids, client=client, name="detect", progress=False)
    table = {c: np.concatenate([p[c] for p in parts]) for c in ("z", "y", "x", "value")}
    order = np.lexsort((table["x"], table["y"], table["z"]))
    table = {c: v[order] for c, v in table.items()}
    if out_csv is not None:
        write_table(table, str(out_csv))
    return table
