"""Error analysis: false merges, false splits and per-instance quality."""

from __future__ import annotations

import numpy as np

from .overlaps import Overlaps


def merges_and_splits(overlaps: Overlaps, merge_threshold: float = 0.5, split_threshold: float = 0.5) -> dict:
    """Count false merges and false splits.

    A prediction is a **false merge** when it covers at least ``merge_threshold`` of each of two
    or more GT instances (recall c/|g|). A GT instance is **falsely split** when two or more
    predictions each lie at least ``split_threshold`` inside it (precision c/|p|).

    Returns
    -------
    dict
        ``merged_predictions`` (predictions covering >= 2 GT), ``false_merges`` (sum over them
        of #GT - 1), ``split_gt`` (GT instances split), ``false_splits`` (sum of #pred - 1),
        the thresholds, and per-instance counts ``gt_per_pred`` / ``pred_per_gt``.
    """
    rec = overlaps.recall >= merge_threshold
    prec = overlaps.precision >= split_threshold
    gt_per_pred = np.bincount(overlaps.pj[rec], minlength=overlaps.n_pred)
    pred_per_gt = np.bincount(overlaps.gi[prec], minlength=overlaps.n_true)
    return {
        "merge_threshold": float(merge_threshold),
        "split_threshold": float(split_threshold),
        "merged_predictions": int((gt_per_pred >= 2).sum()),
        "false_merges": int(np.maximum(gt_per_pred - 1, 0).sum()),
        "split_gt": int((pred_per_gt >= 2).sum()),
        "false_splits": int(np.maximum(pred_per_gt - 1, 0).sum()),
        "gt_per_pred": gt_per_pred,
        "pred_per_gt": pred_per_gt,
    }


def best_partners(overlaps: Overlaps) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Highest-IoU partner of every instance.

    Returns
    -------
    gt_best_pred, gt_best_iou, pred_best_gt, pred_best_iou : ndarray
        Index of the best partner (-1 if none overlaps) and its IoU (0 if none).
    """
    iou = overlaps.iou
    out = []
    for own, other, n in ((overlaps.gi, overlaps.pj, overlaps.n_true), (overlaps.pj, overlaps.gi, overlaps.n_pred)):
        best = np.full(n, -1, np.int64)
        best_iou = np.zeros(n)
        if len(own):
            order = np.lexsort((-iou, own))  # per instance, highest IoU first
            first = np.flatnonzero(np.r_[True, own[order][1:] != own[order][:-1]])
            sel = order[first]
            best[own[sel]] = other[sel]
            best_iou[own[sel]] = iou[sel]
        out += [best, best_iou]
    return tuple(out)  # type: ignore[return-value]
