"""Sparse contingency tables between two label images, built block by block.

A table lists every (gt id, pred id) pair that shares at least one voxel, with the number of
shared voxels and the sum of their coordinates (first moments, for centroids). Background (id
0) is kept on both sides, so instance sizes are the row and column sums of the *same* table.
Tables of disjoint regions simply add up, so any partition of a volume into blocks can be
counted independently and merged (:func:`merge_tables`). Memory is O(number of non-zero
pairs), never O(voxels) nor O(#gt x #pred).

Per block, one compiled (numba) scan reads the two label arrays row by row; each run of equal
(gt, pred) pairs along the last axis is added at once to an open-addressing hash table keyed by
the packed 64-bit pair ``gt << 32 | pred`` (ids >= 2**32 are first renumbered within the block),
so there is no per-voxel temporary and no sort over voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..runtime._jit import njit
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


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(nogil=True)
def _grow(keys, used, count, sums, bits):  # pragma: no cover - compiled
    """Rehash the open-addressing table into twice the capacity."""
    bits += 1
    cap = 1 << bits
    nk = np.zeros(cap, np.uint64)
    nu = np.zeros(cap, np.bool_)
    nc = np.zeros(cap, np.int64)
    ns = np.zeros((cap, sums.shape[1]), np.int64)
    shift = np.uint64(64 - bits)
    mask = cap - 1
    for j in range(keys.shape[0]):
        if used[j]:
            h = np.int64((keys[j] * _GOLDEN) >> shift)
            while nu[h]:
                h = (h + 1) & mask
            nu[h] = True
            nk[h] = keys[j]
            nc[h] = count[j]
            ns[h, :] = sums[j, :]
    return nk, nu, nc, ns, bits


@njit(nogil=True)
def _pair_counts(g, p, m, use_mask, row, row_coords, x0):  # pragma: no cover - compiled
    """Count voxels and sum coordinates per packed (g << 32 | p) key.

    Voxels are scanned row by row (last axis); each run of equal keys is added to an
    open-addressing hash table at once: count += length, coordinate sums += length * row
    coordinates and the arithmetic series of the last-axis positions. Masked-out voxels
    (where ``use_mask`` and not ``m``) are skipped.
    """
    ndim = row_coords.shape[1] + 1
    bits = 10
    cap = 1 << bits
    keys = np.zeros(cap, np.uint64)
    used = np.zeros(cap, np.bool_)
    count = np.zeros(cap, np.int64)
    sums = np.zeros((cap, ndim), np.int64)
    size = 0
    n_rows = g.shape[0] // row
    for r in range(n_rows):
        base = r * row
        i = 0
        while i < row:
            if use_mask and not m[base + i]:
                i += 1
                continue
            key = (np.uint64(g[base + i]) << np.uint64(32)) | np.uint64(p[base + i])
            j = i + 1
            while j < row and (not use_mask or m[base + j]):
                if ((np.uint64(g[base + j]) << np.uint64(32)) | np.uint64(p[base + j])) != key:
                    break
                j += 1
            length = j - i
            if 2 * (size + 1) > cap:
                keys, used, count, sums, bits = _grow(keys, used, count, sums, bits)
                cap = 1 << bits
            h = np.int64((key * _GOLDEN) >> np.uint64(64 - bits))
            while used[h] and keys[h] != key:
                h = (h + 1) & (cap - 1)
            if not used[h]:
                used[h] = True
                keys[h] = key
                size += 1
            count[h] += length
            for a in range(ndim - 1):
                sums[h, a] += length * row_coords[r, a]
            first = x0 + i
            sums[h, ndim - 1] += length * first + length * (length - 1) // 2
            i = j
    sel = np.flatnonzero(used)
    return keys[sel], count[sel], sums[sel]


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
    lead = shape[:-1]
    rows = np.unravel_index(np.arange(int(np.prod(lead))), lead) if lead else ()
    row_coords = np.stack([r + origin[k] for k, r in enumerate(rows)], axis=1) if lead else np.zeros((1, 0), np.int64)
    keys, count, coord_sum = _pair_counts(
        g, p, m, mask is not None, int(shape[-1]), row_coords.astype(np.int64), int(origin[-1])
    )
    order = np.argsort(keys)
    ukeys, count, coord_sum = keys[order], count[order], coord_sum[order]
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
