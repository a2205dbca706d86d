"""COCO-style average precision over score-ranked predictions (the NucMM / MitoEM "AP").

Predictions are ranked by a score (default: their voxel count, as ``mAP_3Dvolume``), then, for
each IoU threshold, matched greedily in that order: each prediction takes the unmatched GT
instance of highest IoU >= t, preferring GT instances inside the evaluated size range (COCO's
rule; equal IoUs: the lower GT index). Precision is made monotone and sampled at 101 recall points; AP is their mean.

Size ranges (by GT voxel count) follow COCO: a GT instance outside the range is *ignored*;
a prediction matched to an ignored GT is ignored; an unmatched prediction is ignored when its
own size is outside the range. Unlike pycocotools there is no cap on detections per image.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..runtime._jit import njit
from .options import COCO_THRESHOLDS, DEFAULT_SIZE_RANGES  # the defaults' one owner (evaluate's options)
from .overlaps import Overlaps


RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@njit
def _greedy(order, indptr, g_of_edge, iou_of_edge, threshold, gt_ignore):  # pragma: no cover - numba
    n_pred = len(indptr) - 1
    taken = np.zeros(len(gt_ignore), np.bool_)
    match = np.full(n_pred, -1, np.int64)
    for p in order:
        best = -1
        best_iou = 0.0
        best_ign = True
        for k in range(indptr[p], indptr[p + 1]):
            g = g_of_edge[k]
            v = iou_of_edge[k]
            if taken[g] or v < threshold:
                continue
            ign = gt_ignore[g]
            if best == -1 or (best_ign and not ign) or (ign == best_ign and v > best_iou):
                best, best_iou, best_ign = g, v, ign
        if best >= 0:
            taken[best] = True
            match[p] = best
    return match


def greedy_match(
    overlaps: Overlaps, order: np.ndarray, threshold: float, gt_ignore: np.ndarray | None = None
) -> np.ndarray:
    """Greedy one-to-one matching of predictions in ``order`` (COCO's rule).

    Parameters
    ----------
    overlaps : Overlaps
    order : ndarray of int
        Prediction indices, best score first.
    threshold : float
        Minimum IoU of a match (inclusive).
    gt_ignore : ndarray of bool, optional
        GT instances to match only when no other is available.

    Returns
    -------
    ndarray of int64
        Matched GT index per prediction, -1 where unmatched.
    """
    by_pred = np.lexsort((overlaps.gi, overlaps.pj))
    indptr = np.zeros(overlaps.n_pred + 1, np.int64)
    np.cumsum(np.bincount(overlaps.pj, minlength=overlaps.n_pred), out=indptr[1:])
    if gt_ignore is None:
        gt_ignore = np.zeros(overlaps.n_true, bool)
    return _greedy(
        np.asarray(order, np.int64),
        indptr,
        overlaps.gi[by_pred],
        overlaps.iou[by_pred],
        float(threshold),
        np.asarray(gt_ignore, bool),
    )


def interpolated_ap(tp: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP of a ranked list of TP (1) / FP (0) decisions.

    Returns NaN when ``n_gt`` is 0 (AP is undefined without ground truth).
    """
    if n_gt == 0:
        return float("nan")
    tp = np.asarray(tp, np.float64)
    if len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(q.mean())


def score_order(scores: np.ndarray) -> np.ndarray:
    """Prediction indices by descending score; ties keep index (label id) order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def coco_ap(
    overlaps: Overlaps,
    scores: np.ndarray | None = None,
    thresholds: Sequence[float] = COCO_THRESHOLDS,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
) -> dict:
    """COCO average precision at IoU thresholds and per GT size range.

    Parameters
    ----------
    overlaps : Overlaps
    scores : ndarray of float, optional
        One score per prediction (higher = more confident). Default: voxel count.
    thresholds : sequence of float
        IoU thresholds (default 0.50:0.05:0.95).
    size_ranges : mapping of name -> (lo, hi), optional
        GT voxel-count ranges [lo, hi); default :data:`DEFAULT_SIZE_RANGES`. ``"all"`` is
        always added.

    Returns
    -------
    dict
        ``ap[range][threshold]`` (NaN without GT in range), ``AP`` (mean over thresholds,
        range all), ``AP50``, ``AP75``, ``AP_<range>`` (mean over thresholds) and
        ``AP75_<range>``, ``n_gt`` per range, ``best_match`` (GT index per prediction at the
        first threshold, range all).
    """
    size_ranges = dict(DEFAULT_SIZE_RANGES if size_ranges is None else size_ranges)
    ranges = {"all": (0.0, np.inf), **{k: v for k, v in size_ranges.items() if k != "all"}}
    if scores is None:
        scores = overlaps.pred_size.astype(np.float64)
    scores = np.asarray(scores, np.float64)
    if scores.shape != (overlaps.n_pred,):
        raise ValueError(f"need one score per prediction ({overlaps.n_pred}), got shape {scores.shape}")
    order = score_order(scores)
    ap: dict[str, dict[float, float]] = {}
    n_gt: dict[str, int] = {}
    for name, (lo, hi) in ranges.items():
        g_ign = (overlaps.gt_size < lo) | (overlaps.gt_size >= hi)
        p_out = (overlaps.pred_size < lo) | (overlaps.pred_size >= hi)
        n_gt[name] = int((~g_ign).sum())
        ap[name] = {}
        for t in thresholds:
            match = greedy_match(overlaps, order, t, g_ign)
            m = match[order]
            # index -1 (unmatched) reads the padding entry; unmatched use their own size
            ignored = np.where(m >= 0, np.r_[g_ign, False][m], p_out[order])
            tp = (m >= 0)[~ignored]
            ap[name][float(t)] = interpolated_ap(tp, n_gt[name])
    out: dict = {"ap": ap, "n_gt": n_gt, "thresholds": [float(t) for t in thresholds]}
    with np.errstate(all="ignore"):
        for name in ranges:
            vals = np.array(list(ap[name].values()))
            key = "AP" if name == "all" else f"AP_{name}"
            out[key] = float(np.nan if np.isnan(vals).all() else np.nanmean(vals))
    for t, label in ((0.5, "AP50"), (0.75, "AP75")):
        if t in ap["all"]:
            out[label] = ap["all"][t]
            for name in ranges:
                if name != "all":
                    out[f"{label}_{name}"] = ap[name][t]
    return out
