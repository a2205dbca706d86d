"""Sparse contingency tables between two label images, built block by block.

A table lists every (gt id, pred id) pair that shares at least one voxel, with the number of
shared voxels and the sum of their coordinates (first moments, for centroids). Background (id
0) is kept on both sides, so instance sizes are the row and column sums of the *same* table.
Tables of disjoint regions simply add up, so any partition of a volume into blocks can be
counted independently and merged (:func:`merge_tables`). Memory is O(number of non-zero
pairs), never O(voxels) nor O(#gt x #pred).

Per block, voxels are first run-length encoded along the last axis (a run never crosses a
row), so the sort that groups equal pairs works on runs, not voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numba
import numpy as np

from ..errors import BlocksegError

_LOW32 = np.uint64(0xFFFFFFFF)


@dataclass
class ContingencyTable:
    """Sparse overlap counts between ground-truth and predicted labels.

    Attributes
    ----------
    gt, pred : ndarray of uint64, shape (K,)
        Label pairs, sorted by (gt, pred), unique. 0 is background.
    count : ndarray of int64, shape (K,)
        Voxels where ``gt`` and ``pred`` co-occur (inside the valid mask, if any).
    coord_sum : ndarray of int64, shape (K, ndim)
        Sum of the (global) voxel coordinates of those voxels.
    """

    gt: np.ndarray
    pred: np.ndarray
    count: np.ndarray
    coord_sum: np.ndarray

    @property
    def ndim(self) -> int:
        return self.coord_sum.shape[1]

    def __len__(self) -> int:
        return len(self.count)

    @property
    def n_voxels(self) -> int:
        """Voxels counted (background pairs included)."""
        return int(self.count.sum())

    @classmethod
    def empty(cls, ndim: int = 3) -> "ContingencyTable":
        z = np.zeros(0, np.uint64)
        return cls(z, z.copy(), np.zeros(0, np.int64), np.zeros((0, ndim), np.int64))


def check_labels(array: np.ndarray, name: str = "labels") -> None:
    """Raise :class:`BlocksegError` unless ``array`` holds non-negative integer labels."""
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "iu":
        raise BlocksegError(f"{name}: labels must be integers, got dtype {dtype}")
    if dtype.kind == "i" and array.size and array.min() < 0:
        raise BlocksegError(f"{name}: labels must be non-negative, found {int(array.min())}")


def _as_uint64(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint64:
        return array
    return array.astype(np.uint64)


@numba.njit(cache=True, nogil=True)
def _count_runs(g, p, m, use_mask, row):  # pragma: no cover - compiled
    count = 0
    for base in range(0, g.shape[0], row):
        prev = np.uint64(0)
        inside = False
        for i in range(base, base + row):
            if use_mask and not m[i]:
                inside = False
                continue
            key = (np.uint64(g[i]) << np.uint64(32)) | np.uint64(p[i])
            if not inside or key != prev:
                count += 1
                prev = key
                inside = True
    return count


@numba.njit(cache=True, nogil=True)
def _run_length(g, p, m, use_mask, row):  # pragma: no cover - compiled
    """Runs of equal (g, p) along rows: packed keys, start indices, lengths.

    A run never crosses a row; masked-out voxels break runs and produce none.
    """
    count = _count_runs(g, p, m, use_mask, row)
    keys = np.empty(count, np.uint64)
    starts = np.empty(count, np.int64)
    lengths = np.zeros(count, np.int64)
    k = -1
    for base in range(0, g.shape[0], row):
        prev = np.uint64(0)
        inside = False
        for i in range(base, base + row):
            if use_mask and not m[i]:
                inside = False
                continue
            key = (np.uint64(g[i]) << np.uint64(32)) | np.uint64(p[i])
            if not inside or key != prev:
                k += 1
                keys[k] = key
                starts[k] = i
                prev = key
                inside = True
            lengths[k] += 1
    return keys, starts, lengths


def contingency_table(
    gt: np.ndarray,
    pred: np.ndarray,
    mask: np.ndarray | None = None,
    origin: Sequence[int] | None = None,
) -> ContingencyTable:
    """Count the voxels of every (gt, pred) label pair in two aligned label arrays.

    Parameters
    ----------
    gt, pred : ndarray of int
        Label arrays of the same shape; 0 is background. Any integer dtype, ids up to 2**64-1.
    mask : ndarray of bool, optional
        Valid region, same shape: voxels where it is False (zero) are not counted at all.
    origin : sequence of int, optional
        Global coordinate of ``gt[0, 0, ...]`` (for blocks of a larger volume); default 0.

    Returns
    -------
    ContingencyTable
        Unique pairs sorted by (gt, pred) with counts and coordinate sums.

    Raises
    ------
    BlocksegError
        If shapes differ or labels are not non-negative integers.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise BlocksegError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != gt.shape:
            raise BlocksegError(f"mask shape {mask.shape} differs from label shape {gt.shape}")
    check_labels(gt, "ground truth")
    check_labels(pred, "prediction")
    ndim = max(gt.ndim, 1)
    shape = gt.shape if gt.ndim else (1,)
    origin = np.zeros(ndim, np.int64) if origin is None else np.asarray(origin, np.int64)
    n = gt.size
    if n == 0:
        return ContingencyTable.empty(ndim)

    g = gt.reshape(-1)
    p = pred.reshape(-1)
    # pack both ids into one 64-bit key; ids >= 2**32 are first renumbered within the block
    g_lut = p_lut = None
    if g.dtype.itemsize > 4 and g.max() > _LOW32:
        g_lut, g = np.unique(g, return_inverse=True)
    if p.dtype.itemsize > 4 and p.max() > _LOW32:
        p_lut, p = np.unique(p, return_inverse=True)
    if mask is not None:
        m = np.ascontiguousarray(mask.reshape(-1)).astype(bool, copy=False)
    else:
        m = np.ones(1, bool)
    g = np.ascontiguousarray(g)
    p = np.ascontiguousarray(p)
    if g.dtype.kind == "i":
        g = g.view(g.dtype.str.replace("i", "u"))  # checked non-negative above
    if p.dtype.kind == "i":
        p = p.view(p.dtype.str.replace("i", "u"))
    run_keys, starts, lengths = _run_length(g, p, m, mask is not None, int(shape[-1]))

    # coordinate sums of every run (a run lies in one row of the last axis)
    coords = np.unravel_index(starts, shape)
    sums = np.empty((len(starts), ndim), np.int64)
    for axis in range(ndim - 1):
        sums[:, axis] = lengths * (coords[axis] + origin[axis])
    sums[:, -1] = lengths * (coords[-1] + origin[-1]) + lengths * (lengths - 1) // 2

    order = np.argsort(run_keys, kind="stable")
    run_keys = run_keys[order]
    first = np.flatnonzero(np.r_[True, run_keys[1:] != run_keys[:-1]]) if len(run_keys) else np.zeros(0, np.int64)
    ukeys = run_keys[first]
    count = np.add.reduceat(lengths[order], first) if len(first) else np.zeros(0, np.int64)
    coord_sum = np.add.reduceat(sums[order], first, axis=0) if len(first) else np.zeros((0, ndim), np.int64)
    gk = ukeys >> np.uint64(32)
    pk = ukeys & _LOW32
    if g_lut is not None:
        gk = g_lut[gk.astype(np.intp)].astype(np.uint64)
    if p_lut is not None:
        pk = p_lut[pk.astype(np.intp)].astype(np.uint64)
    table = ContingencyTable(gk, pk, count.astype(np.int64), coord_sum.astype(np.int64))
    if g_lut is not None or p_lut is not None:  # renumbering kept the order of gt, but be safe
        table = merge_tables([table])
    return table


def merge_tables(tables: Iterable[ContingencyTable]) -> ContingencyTable:
    """Sum contingency tables of disjoint regions into one (sorted, unique pairs).

    Parameters
    ----------
    tables : iterable of ContingencyTable
        Tables with the same number of axes.

    Returns
    -------
    ContingencyTable
    """
    tables = [t for t in tables]
    if not tables:
        return ContingencyTable.empty()
    ndim = tables[0].ndim
    gt = np.concatenate([t.gt for t in tables])
    pred = np.concatenate([t.pred for t in tables])
    count = np.concatenate([t.count for t in tables])
    coord_sum = np.concatenate([t.coord_sum for t in tables]).reshape(-1, ndim)
    if len(gt) == 0:
        return ContingencyTable.empty(ndim)
    order = np.lexsort((pred, gt))
    gt, pred = gt[order], pred[order]
    first = np.flatnonzero(np.r_[True, (gt[1:] != gt[:-1]) | (pred[1:] != pred[:-1])])
    return ContingencyTable(
        gt[first],
        pred[first],
        np.add.reduceat(count[order], first),
        np.add.reduceat(coord_sum[order], first, axis=0),
    )


def reduce_tables(tables: Iterable[ContingencyTable], batch: int = 64) -> ContingencyTable:
    """Merge many tables in batches, so at most ``batch`` unmerged tables are held at once."""
    merged: ContingencyTable | None = None
    pending: list[ContingencyTable] = []
    for t in tables:
        pending.append(t)
        if len(pending) >= batch:
            merged = merge_tables(([merged] if merged is not None else []) + pending)
            pending = []
    if pending or merged is None:
        merged = merge_tables(([merged] if merged is not None else []) + pending)
    return merged
