"""One-to-one matching of instances at IoU thresholds (StarDist's ``matching`` semantics).

StarDist solves, per threshold t, one dense linear sum assignment with the cost
``-[iou >= t] - iou / (2 * min(n_true, n_pred))``: it maximises the number of matched pairs with
IoU >= t, and among those maximisations the summed IoU of *all* assigned pairs (pairs below t
included, although they are not counted as matches). Here the same optimum is found on the
sparse overlap graph, without any dense (#gt x #pred) matrix:

* an edge (g, p) with IoU >= t that is alone in its candidate component (neither end has
  another candidate) is in every optimal assignment: a *fixed* match. For t > 0.5 every
  candidate component is such an edge, since IoU > 0.5 is only possible between one GT and one
  prediction;
* every other node (no candidate, or in a component with several candidates) may end up
  assigned to anything it overlaps that is not fixed. The connected components of that graph
  that hold at least one candidate are solved exactly with the StarDist objective: dense
  Hungarian when small, else one sparse assignment (scipy's LAPJVsp) on the whole of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from .options import DEFAULT_THRESHOLDS  # the default's one owner (evaluate's options)
from .overlaps import Overlaps

#: components with at most this many (rows x cols) cells are solved densely
DENSE_CELLS = 250_000


def max_weight_matching(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, dense_cells: int = DENSE_CELLS
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight bipartite matching on a sparse graph with positive weights.

    Parameters
    ----------
    rows, cols : ndarray of int
        Edge end points (any non-negative ids; each (row, col) at most once).
    weights : ndarray of float
        Positive edge weights.
    dense_cells : int
        Solve with a dense Hungarian when (#rows x #cols) is at most this, else with a sparse
        assignment on the graph extended by "unmatched" dummy nodes.

    Returns
    -------
    match_rows, match_cols : ndarray of int
        Matched edges (original ids).
    """
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    weights = np.asarray(weights, dtype=np.float64)
    if len(rows) == 0:
        return rows[:0], cols[:0]
    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    m, n = len(r_ids), len(c_ids)
    if m * n <= dense_cells:
        w = np.zeros((m, n))
        w[r, c] = weights
        ri, ci = linear_sum_assignment(w, maximize=True)
        real = w[ri, ci] > 0
        return r_ids[ri[real]], c_ids[ci[real]]
    # square (m+n) problem: rows = m real + n "pred unmatched"; cols = n real + m "gt unmatched"
    big = float(weights.max()) + 1.0
    e = len(r)
    ar_m, ar_n = np.arange(m), np.arange(n)
    ii = np.concatenate([r, ar_m, m + ar_n, m + c])
    jj = np.concatenate([c, n + ar_m, ar_n, n + r])
    vv = np.concatenate([big - weights, np.full(m + n + e, big)])
    graph = csr_matrix(coo_matrix((vv, (ii, jj)), shape=(m + n, m + n)))
    ri, ci = min_weight_full_bipartite_matching(graph)
    real = (ri < m) & (ci < n)
    return r_ids[ri[real]], c_ids[ci[real]]


@dataclass
class Matching:
    """The one-to-one matching of one IoU threshold.

    Attributes
    ----------
    threshold : float
    gi, pj : ndarray of int64
        Matched pairs (IoU >= threshold), as instance indices.
    iou : ndarray of float64
        IoU of each matched pair.
    n_true, n_pred : int
    """

    threshold: float
    gi: np.ndarray
    pj: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int

    @property
    def tp(self) -> int:
        return len(self.gi)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


def match_instances(overlaps: Overlaps, threshold: float, dense_cells: int = DENSE_CELLS) -> Matching:
    """Optimal one-to-one matching at an IoU threshold, exactly as StarDist's ``matching``.

    Parameters
    ----------
    overlaps : Overlaps
    threshold : float
        A pair can match when its IoU is >= threshold.
    dense_cells : int
        See :func:`max_weight_matching`.

    Returns
    -------
    Matching
    """
    n_true, n_pred = overlaps.n_true, overlaps.n_pred
    gi, pj = overlaps.gi, overlaps.pj
    iou = overlaps.iou
    cand = iou >= threshold
    deg_g = np.bincount(gi[cand], minlength=n_true)
    deg_p = np.bincount(pj[cand], minlength=n_pred)
    fixed = cand & (deg_g[gi] == 1) & (deg_p[pj] == 1)
    out_g, out_p = [gi[fixed]], [pj[fixed]]

    free_g = np.ones(n_true, bool)
    free_g[gi[fixed]] = False
    free_p = np.ones(n_pred, bool)
    free_p[pj[fixed]] = False
    h = free_g[gi] & free_p[pj]
    if np.any(h & cand):
        hg, hp = gi[h], pj[h]
        graph = coo_matrix((np.ones(len(hg), np.int8), (hg, n_true + hp)), shape=(n_true + n_pred,) * 2)
        _, label = connected_components(graph, directed=False)
        has_cand = np.zeros(label.max() + 1, bool)
        has_cand[label[gi[h & cand]]] = True
        sel = np.flatnonzero(h)[has_cand[label[hg]]]
        scale = 2.0 * max(1, min(n_true, n_pred))
        weights = cand[sel].astype(np.float64) + iou[sel] / scale
        mg, mp = max_weight_matching(gi[sel], pj[sel], weights, dense_cells)
        # keep the matched pairs that reach the threshold
        key = np.searchsorted(_pair_key(gi[sel], pj[sel], n_pred), _pair_key(mg, mp, n_pred))
        ok = cand[sel][key]
        out_g.append(mg[ok])
        out_p.append(mp[ok])
    mg = np.concatenate(out_g).astype(np.int64)
    mp = np.concatenate(out_p).astype(np.int64)
    order = np.argsort(mg, kind="stable")
    mg, mp = mg[order], mp[order]
    pair_iou = iou[np.searchsorted(_pair_key(gi, pj, n_pred), _pair_key(mg, mp, n_pred))]
    return Matching(float(threshold), mg, mp, pair_iou, n_true, n_pred)


def _pair_key(g: np.ndarray, p: np.ndarray, n_pred: int) -> np.ndarray:
    """Sortable key of (gi, pj) pairs (the overlap list is sorted by it)."""
    return np.asarray(g, np.int64) * np.int64(max(n_pred, 1)) + np.asarray(p, np.int64)


def matching_stats(matching: Matching) -> dict:
    """StarDist's statistics of one matching (ratios are 0 when there is no match).

    Returns
    -------
    dict
        threshold, tp, fp, fn, precision, recall, accuracy (TP/(TP+FP+FN)), f1, n_true, n_pred,
        mean_true_score, mean_matched_score, panoptic_quality, sum_matched_iou.
    """
    return _stats(matching.threshold, matching.tp, matching.n_true, matching.n_pred, float(matching.iou.sum()))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def _stats(threshold: float, tp: int, n_true: int, n_pred: int, sum_iou: float) -> dict:
    fp, fn = n_pred - tp, n_true - tp
    return {
        "threshold": float(threshold),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "mean_true_score": _ratio(sum_iou, n_true),
        "mean_matched_score": _ratio(sum_iou, tp),
        "panoptic_quality": _ratio(sum_iou, tp + fp / 2 + fn / 2),
        "sum_matched_iou": float(sum_iou),
    }


def matching_metrics(
    overlaps: Overlaps, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, dense_cells: int = DENSE_CELLS
) -> tuple[list[dict], float]:
    """Pooled matching statistics at every threshold, and avAP (mean accuracy over them).

    Counts (TP, FP, FN, summed IoU) are pooled over all instances of ``overlaps`` (all blocks
    and all volumes) before the ratios are taken, as StarDist's ``matching_dataset`` with
    ``by_image=False``.

    Returns
    -------
    stats : list of dict
        :func:`matching_stats` per threshold.
    av_ap : float
        Mean ``accuracy`` over the thresholds.
    """
    stats = [matching_stats(match_instances(overlaps, t, dense_cells)) for t in thresholds]
    av_ap = float(np.mean([s["accuracy"] for s in stats])) if stats else float("nan")
    return stats, av_ap
