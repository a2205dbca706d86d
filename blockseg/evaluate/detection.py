"""Detection scores: predicted centre points against ground-truth instances.

Two rules, both on O(n log n) k-d trees, never on dense distance matrices:

* **inside-nearest** (the rule of Kainmueller-lab's ``evaluate-instance-detection``, "hoefener"):
  each point is assigned to the GT instance whose centre is nearest (in µm); it counts for that
  instance only if it lies inside it (the GT label under the point is that instance). The
  first such point of an instance (in the given point order) is a TP, any further ones and
  points that fail the test are FPs, instances without a point are FNs.
* **radius**: one-to-one matching of points and GT centres closer than a radius (µm) that
  maximises the number of matches (ties: smallest total distance), solved on the sparse radius
  graph.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree

from .matching import max_weight_matching


def _as_points(points, ndim: int | None = None) -> np.ndarray:
    """(n, ndim) float64 array of points (empty input allowed)."""
    points = np.asarray(points, np.float64)
    if points.ndim == 2:
        return points
    return points.reshape(-1, ndim or 3)


def _ratios(tp: int, n_points: int, n_gt: int) -> dict:
    fp, fn = n_points - tp, n_gt - tp
    div = lambda a, b: a / b if b else 0.0  # noqa: E731
    return {
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": div(tp, tp + fp),
        "recall": div(tp, tp + fn),
        "f1": div(2 * tp, 2 * tp + fp + fn),
        "accuracy": div(tp, tp + fp + fn),
        "n_points": int(n_points),
        "n_true": int(n_gt),
    }


def inside_nearest_match(
    points: np.ndarray,
    labels_at_points: np.ndarray,
    gt_ids: np.ndarray,
    gt_centres: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[dict, np.ndarray]:
    """Score points with the inside-nearest-centre rule.

    Parameters
    ----------
    points : ndarray, shape (n, ndim)
        Predicted centres in voxel coordinates, in priority order.
    labels_at_points : ndarray of int, shape (n,)
        GT label under each point (at the rounded coordinate; 0 = background).
    gt_ids : ndarray, shape (m,)
        GT instance labels.
    gt_centres : ndarray, shape (m, ndim)
        GT centres in voxel coordinates.
    spacing : sequence of float
        Voxel size, so that "nearest" is measured in µm.

    Returns
    -------
    stats : dict
        tp, fp, fn, precision, recall, f1, accuracy (= TP/(TP+FP+FN)), n_points, n_true.
    gt_of_point : ndarray of int64
        GT index each TP point detects, -1 for FP points.
    """
    gt_centres = _as_points(gt_centres)
    points = _as_points(points, gt_centres.shape[1])
    n, m = len(points), len(gt_ids)
    gt_of_point = np.full(n, -1, np.int64)
    if n and m:
        s = np.asarray(spacing, np.float64)
        _, nearest = cKDTree(np.asarray(gt_centres) * s).query(points * s, k=1)
        hit = np.asarray(labels_at_points, np.uint64) == np.asarray(gt_ids, np.uint64)[nearest]
        hits = np.flatnonzero(hit)
        _, first = np.unique(nearest[hits], return_index=True)
        tp_points = hits[first]
        gt_of_point[tp_points] = nearest[tp_points]
    return _ratios(int((gt_of_point >= 0).sum()), n, m), gt_of_point


def radius_match(
    points: np.ndarray, gt_centres: np.ndarray, radius: float, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[dict, np.ndarray, np.ndarray]:
    """One-to-one matching of points and GT centres within ``radius`` µm.

    Maximises the number of matched pairs, then minimises their summed distance.

    Returns
    -------
    stats : dict
        As :func:`inside_nearest_match`, plus ``radius_um`` and ``mean_distance_um``.
    point_index, gt_index : ndarray of int64
        Matched pairs.
    """
    gt_centres = _as_points(gt_centres)
    points = _as_points(points, gt_centres.shape[1])
    s = np.asarray(spacing, np.float64)
    pi = gi = np.zeros(0, np.int64)
    dist = np.zeros(0)
    if len(points) and len(gt_centres):
        pairs = cKDTree(points * s).sparse_distance_matrix(
            cKDTree(gt_centres * s), max_distance=radius, output_type="ndarray"
        )
        if len(pairs):
            i, j, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
            scale = 2.0 * max(1, min(len(points), len(gt_centres))) * max(radius, 1e-12)
            pi, gi = max_weight_matching(i, j, 1.0 + (radius - d) / scale + 1e-12)
            key = i * len(gt_centres) + j
            order = np.argsort(key)
            dist = d[order][np.searchsorted(key[order], pi * len(gt_centres) + gi)]
    stats = _ratios(len(pi), len(points), len(gt_centres))
    stats["radius_um"] = float(radius)
    stats["mean_distance_um"] = float(dist.mean()) if len(dist) else float("nan")
    return stats, pi, gi
