"""Instances and their overlaps, in index space, derived from a contingency table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .contingency import ContingencyTable


@dataclass
class Overlaps:
    """Ground-truth and predicted instances with their sizes and pairwise overlaps.

    Instances are numbered 0..n-1 on each side (``gt_ids[i]`` is the label of GT instance
    ``i``); background is not an instance. When several volumes are pooled, ``gt_volume`` /
    ``pred_volume`` say which volume each instance comes from, and pairs never cross volumes.

    Attributes
    ----------
    gt_ids, pred_ids : ndarray of uint64
    gt_size, pred_size : ndarray of int64
        Voxels of each instance (inside the valid mask).
    gt_centroid, pred_centroid : ndarray of float64, shape (n, ndim)
        Centre of mass in voxel coordinates (of the part inside the mask).
    gt_volume, pred_volume : ndarray of int64
    gi, pj : ndarray of int64
        Foreground pairs with at least one shared voxel, sorted by (gi, pj).
    count : ndarray of int64
        Shared voxels of each pair.
    """

    gt_ids: np.ndarray
    gt_size: np.ndarray
    gt_centroid: np.ndarray
    gt_volume: np.ndarray
    pred_ids: np.ndarray
    pred_size: np.ndarray
    pred_centroid: np.ndarray
    pred_volume: np.ndarray
    gi: np.ndarray
    pj: np.ndarray
    count: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.gt_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    @property
    def iou(self) -> np.ndarray:
        """IoU of every pair: c / (|g| + |p| - c), with full instance sizes."""
        c = self.count
        return c / (self.gt_size[self.gi] + self.pred_size[self.pj] - c)

    @property
    def recall(self) -> np.ndarray:
        """Fraction of the GT instance covered by the prediction, c / |g|, per pair."""
        return self.count / self.gt_size[self.gi]

    @property
    def precision(self) -> np.ndarray:
        """Fraction of the prediction inside the GT instance, c / |p|, per pair."""
        return self.count / self.pred_size[self.pj]


def _instances(ids: np.ndarray, count: np.ndarray, coord_sum: np.ndarray):
    uniq, inv = np.unique(ids, return_inverse=True)
    size = np.bincount(inv, weights=count, minlength=len(uniq)).astype(np.int64)
    sums = np.stack(
        [np.bincount(inv, weights=coord_sum[:, a], minlength=len(uniq)) for a in range(coord_sum.shape[1])], axis=1
    ).reshape(len(uniq), coord_sum.shape[1])
    fg = uniq != 0
    return uniq[fg], size[fg], sums[fg] / np.maximum(size[fg], 1)[:, None]


def overlaps_from_table(table: ContingencyTable) -> Overlaps:
    """Index the instances of a :class:`ContingencyTable` and list their foreground pairs.

    Parameters
    ----------
    table : ContingencyTable

    Returns
    -------
    Overlaps
    """
    gt_ids, gt_size, gt_c = _instances(table.gt, table.count, table.coord_sum)
    pred_ids, pred_size, pred_c = _instances(table.pred, table.count, table.coord_sum)
    fg = (table.gt != 0) & (table.pred != 0)
    gi = np.searchsorted(gt_ids, table.gt[fg]).astype(np.int64)
    pj = np.searchsorted(pred_ids, table.pred[fg]).astype(np.int64)
    return Overlaps(
        gt_ids, gt_size, gt_c, np.zeros(len(gt_ids), np.int64),
        pred_ids, pred_size, pred_c, np.zeros(len(pred_ids), np.int64),
        gi, pj, table.count[fg].astype(np.int64),
    )  # fmt: skip


def concat_overlaps(parts: Sequence[Overlaps]) -> Overlaps:
    """Pool the instances of several volumes into one :class:`Overlaps` (volume index kept)."""
    if len(parts) == 1:
        return parts[0]
    go = np.cumsum([0] + [p.n_true for p in parts])
    po = np.cumsum([0] + [p.n_pred for p in parts])
    cat = np.concatenate
    return Overlaps(
        cat([p.gt_ids for p in parts]),
        cat([p.gt_size for p in parts]),
        cat([p.gt_centroid for p in parts]),
        cat([np.full(p.n_true, k, np.int64) for k, p in enumerate(parts)]),
        cat([p.pred_ids for p in parts]),
        cat([p.pred_size for p in parts]),
        cat([p.pred_centroid for p in parts]),
        cat([np.full(p.n_pred, k, np.int64) for k, p in enumerate(parts)]),
        cat([p.gi + go[k] for k, p in enumerate(parts)]),
        cat([p.pj + po[k] for k, p in enumerate(parts)]),
        cat([p.count for p in parts]),
    )
