"""Tests of blockseg.evaluate: exactness against StarDist / dense references, edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from blockseg.errors import BlocksegError
from blockseg.evaluate import (
    coco_ap,
    contingency_table,
    evaluate,
    inside_nearest_match,
    match_instances,
    matching_metrics,
    max_weight_matching,
    merge_tables,
    merges_and_splits,
    overlaps_from_table,
    radius_match,
    write_report,
)

from _helpers import REAL_DATA as REAL

THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


# ----------------------------------------------------------------------------- random labels


def blobs(rng, shape, n, rmin=1.5, rmax=4.0):
    """Voronoi cells of n random seeds, cut to a random radius: touching and separate blobs."""
    seeds = np.zeros(shape, np.int32)
    idx = tuple(rng.integers(0, s, n) for s in shape)
    seeds[idx] = rng.permutation(n) + 1
    dist, ind = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[tuple(ind)]
    lab[dist > rng.uniform(rmin, rmax)] = 0
    return lab


def perturb(rng, gt, kind):
    """A prediction derived from gt: independent, shifted, merged/split/dropped, relabelled."""
    if kind == "independent":
        return blobs(rng, gt.shape, int(gt.max() * rng.uniform(0.7, 1.3)) + 1)
    p = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(0, gt.ndim)))
    if kind == "edit":
        ids = np.arange(p.max() + 1)
        ids[rng.random(len(ids)) < 0.1] = 0  # missed
        merge = rng.random(len(ids)) < 0.1
        ids[merge] = np.maximum(ids[merge] - 1, 0)  # merged with another id
        p = ids[p]
        split = (p % 7 == 3) & (np.indices(p.shape)[-1] % 4 < 2)
        p = np.where(split, p + 10_000, p)  # split
    return p


def label_pairs(seed, n_images=1, shape=(16, 40, 40), n=120):
    rng = np.random.default_rng(seed)
    kinds = ["independent", "shift", "edit"]
    gts, preds = [], []
    for k in range(n_images):
        g = blobs(rng, shape, n)
        gts.append(g)
        preds.append(perturb(rng, g, kinds[(seed + k) % 3]))
    return gts, preds


# ----------------------------------------------------------------------------- dense references


def dense_iou(gt, pred):
    """Dense IoU matrix (GT x pred, background dropped), StarDist's definition."""
    g_ids, g = np.unique(gt, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    ov = np.zeros((len(g_ids), len(p_ids)), np.int64)
    np.add.at(ov, (g.ravel(), p.ravel()), 1)
    iou = ov / (ov.sum(1, keepdims=True) + ov.sum(0, keepdims=True) - ov)
    return iou[g_ids != 0][:, p_ids != 0], g_ids[g_ids != 0], p_ids[p_ids != 0]


def dense_matching_dataset(gts, preds, thresholds):
    """StarDist ``matching_dataset(by_image=False)``: dense LSA per image, counts pooled."""
    out = []
    mats = [dense_iou(g, p)[0] for g, p in zip(gts, preds)]
    for t in thresholds:
        tp = n_true = n_pred = 0
        s = 0.0
        for iou in mats:
            n_true += iou.shape[0]
            n_pred += iou.shape[1]
            if iou.size == 0:
                continue
            cost = -(iou >= t).astype(float) - iou / (2 * min(iou.shape))
            r, c = linear_sum_assignment(cost)
            ok = iou[r, c] >= t
            tp += int(ok.sum())
            s += float(iou[r, c][ok].sum())
        out.append((tp, n_pred - tp, n_true - tp, s))
    return out


def reference_coco(iou, gt_size, pred_size, scores, thresholds, lo=0, hi=np.inf):
    """Plain COCO evaluateImg + accumulate on a dense IoU matrix (one pooled image)."""
    order = np.argsort(-scores, kind="stable")
    g_ign = [not (lo <= s < hi) for s in gt_size]
    gt_order = sorted(range(len(gt_size)), key=lambda g: g_ign[g])
    n_gt = sum(not x for x in g_ign)
    aps = []
    for t in thresholds:
        taken = set()
        flags = []
        for p in order:
            best, best_iou = -1, min(t, 1 - 1e-10)
            for g in gt_order:
                if g in taken:
                    continue
                if best > -1 and not g_ign[best] and g_ign[g]:
                    break
                if iou[g, p] < best_iou:
                    continue
                if best > -1 and iou[g, p] == best_iou and g_ign[g] == g_ign[best]:
                    continue  # ties: first GT in order (blockseg's documented choice)
                best, best_iou = g, iou[g, p]
            if best >= 0:
                taken.add(best)
                ignored = g_ign[best]
            else:
                ignored = not (lo <= pred_size[p] < hi)
            if not ignored:
                flags.append(best >= 0)
        if n_gt == 0:
            aps.append(math.nan)
            continue
        tp = np.cumsum(flags)
        fp = np.cumsum([not f for f in flags])
        rc = tp / n_gt
        pr = [tp[i] / (tp[i] + fp[i]) for i in range(len(flags))]
        for i in range(len(pr) - 1, 0, -1):
            pr[i - 1] = max(pr[i - 1], pr[i])
        q = []
        for r in np.linspace(0, 1, 101):
            i = int(np.searchsorted(rc, r, side="left"))
            q.append(pr[i] if i < len(pr) else 0.0)
        aps.append(float(np.mean(q)))
    return aps


# ----------------------------------------------------------------------------- contingency


def brute_table(gt, pred, mask=None):
    m = np.ones(gt.shape, bool) if mask is None else mask.astype(bool)
    pairs = np.stack([gt[m].astype(np.uint64), pred[m].astype(np.uint64)], 1)
    uniq, inv, cnt = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
    coords = np.argwhere(m)
    sums = np.zeros((len(uniq), gt.ndim), np.int64)
    np.add.at(sums, inv.ravel(), coords)
    return uniq, cnt, sums


@pytest.mark.parametrize("seed", range(4))
def test_contingency_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, (5, 7, 9)).astype(np.uint16)
    pred = rng.integers(0, 4, (5, 7, 9)).astype(np.int32)
    mask = rng.random(gt.shape) > 0.3 if seed % 2 else None
    t = contingency_table(gt, pred, mask)
    uniq, cnt, sums = brute_table(gt, pred, mask)
    np.testing.assert_array_equal(np.c_[t.gt, t.pred], uniq)
    np.testing.assert_array_equal(t.count, cnt)
    np.testing.assert_array_equal(t.coord_sum, sums)


@pytest.mark.slow  # many block layouts, each a blockwise evaluation
def test_blocks_merge_to_whole_table():
    rng = np.random.default_rng(7)
    gt = blobs(rng, (12, 30, 30), 60)
    pred = perturb(rng, gt, "edit")
    whole = contingency_table(gt, pred)
    parts = [
        contingency_table(gt[z : z + 5, y : y + 13], pred[z : z + 5, y : y + 13], origin=(z, y, 0))
        for z in range(0, 12, 5)
        for y in range(0, 30, 13)
    ]
    merged = merge_tables(parts)
    for a in ("gt", "pred", "count", "coord_sum"):
        np.testing.assert_array_equal(getattr(merged, a), getattr(whole, a))


def test_uint64_ids_above_32_bits():
    big = np.uint64(2**63 + 5)
    gt = np.zeros((3, 4, 5), np.uint64)
    gt[:, :2] = big
    gt[:, 2:] = 2**40
    pred = np.zeros_like(gt)
    pred[:, :2] = 7
    pred[:, 3:] = big
    t = contingency_table(gt, pred)
    uniq, cnt, _ = brute_table(gt, pred)
    np.testing.assert_array_equal(np.c_[t.gt, t.pred], uniq)
    np.testing.assert_array_equal(t.count, cnt)
    res = evaluate(gt, pred, points=None)
    assert set(res.overlaps.gt_ids.tolist()) == {2**63 + 5, 2**40}
    assert res.matching[0]["tp"] == 2  # big<->7 (IoU 1), 2**40<->big (IoU 2/3)
    assert res.matching[6]["tp"] == 1  # only big<->7 at IoU 0.7


def test_bad_labels_raise():
    with pytest.raises(BlocksegError, match="integers"):
        contingency_table(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(BlocksegError, match="non-negative"):
        contingency_table(np.full((2, 2), -1), np.zeros((2, 2), np.uint8))
    with pytest.raises(BlocksegError, match="shape"):
        contingency_table(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(BlocksegError, match="mask shape"):
        contingency_table(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), np.ones((3, 2), bool))


# ----------------------------------------------------------------------------- matching


def _check_against(ref, stats):
    for (tp, fp, fn, s), st in zip(ref, stats):
        assert (st["tp"], st["fp"], st["fn"]) == (tp, fp, fn), st["threshold"]
        assert st["sum_matched_iou"] == pytest.approx(s, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_matching_equals_dense_reference(seed):
    gts, preds = label_pairs(seed, n_images=2)
    ref = dense_matching_dataset(gts, preds, THRESHOLDS)
    res = evaluate(gts, preds, thresholds=THRESHOLDS, points=None)
    _check_against(ref, res.matching)
    # the sparse solver (forced) finds the same optimum as the dense one
    ov = overlaps_from_table(contingency_table(gts[0], preds[0]))
    dense, _ = matching_metrics(ov, THRESHOLDS)
    sparse, _ = matching_metrics(ov, THRESHOLDS, dense_cells=0)
    assert [(d["tp"], round(d["sum_matched_iou"], 9)) for d in dense] == [
        (s["tp"], round(s["sum_matched_iou"], 9)) for s in sparse
    ]


def test_matching_equals_stardist_pooled_10k_instances():
    stardist_matching = pytest.importorskip("stardist.matching")
    gts, preds = [], []
    for seed in range(8):  # 8 volumes x ~1250 instances, pooled
        g, p = label_pairs(100 + seed, n_images=1, shape=(24, 72, 72), n=1250)
        gts += g
        preds += p
    res = evaluate(gts, preds, thresholds=THRESHOLDS, points=None)
    assert res.overlaps.n_true >= 9000
    ref = stardist_matching.matching_dataset(gts, preds, thresh=THRESHOLDS, show_progress=False, by_image=False)
    for r, s in zip(ref, res.matching):
        assert (r.tp, r.fp, r.fn, r.n_true, r.n_pred) == (s["tp"], s["fp"], s["fn"], s["n_true"], s["n_pred"])
        for key in ("precision", "recall", "accuracy", "f1"):
            assert getattr(r, key) == pytest.approx(s[key], rel=1e-12)
        # StarDist computes IoU in float32
        for key in ("mean_matched_score", "mean_true_score", "panoptic_quality"):
            assert getattr(r, key) == pytest.approx(s[key], rel=1e-6)


def test_exact_half_iou_tie_is_one_to_one():
    # GT of 4 voxels split into two predictions of 2: both IoU exactly 0.5
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 2, 2]])
    ov = overlaps_from_table(contingency_table(gt, pred))
    m = match_instances(ov, 0.5)
    assert m.tp == 1 and m.fp == 1 and m.fn == 0
    assert match_instances(ov, 0.51).tp == 0


def test_tie_break_counts_below_threshold_pairs_like_stardist():
    # at t=0.2, g1 can match p1 (IoU 0.3) or p2 (0.25); taking p2 frees p1 for g2 (0.15 < t):
    # StarDist's cost prefers the larger total (0.25 + 0.15 > 0.3), so g1-p2 is the match.
    iou = np.array([[0.3, 0.25], [0.15, 0.0]])
    from blockseg.evaluate.overlaps import Overlaps

    # build Overlaps with sizes/counts that give exactly these IoUs: c/(g+p-c)
    gt_size = np.array([100, 100])
    pred_size = np.array([100, 100])
    gi, pj, cnt = [], [], []
    for (g, p), v in np.ndenumerate(iou):
        if v > 0:
            c = round(v * 200 / (1 + v))  # c = IoU (g + p) / (1 + IoU)
            gi.append(g), pj.append(p), cnt.append(c)
    ov = Overlaps(
        np.array([1, 2], np.uint64), gt_size, np.zeros((2, 3)), np.zeros(2, np.int64),
        np.array([1, 2], np.uint64), pred_size, np.zeros((2, 3)), np.zeros(2, np.int64),
        np.array(gi), np.array(pj), np.array(cnt),
    )  # fmt: skip
    real = ov.iou
    dense = np.zeros((2, 2))
    dense[ov.gi, ov.pj] = real
    r, c = linear_sum_assignment(-(dense >= 0.2).astype(float) - dense / 4)
    expected = {(a, b) for a, b in zip(r, c) if dense[a, b] >= 0.2}
    m = match_instances(ov, 0.2)
    assert set(zip(m.gi.tolist(), m.pj.tolist())) == expected == {(0, 1)}


def test_max_weight_matching_dense_and_sparse_agree():
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 60, 300)
    cols = rng.integers(0, 50, 300)
    key = np.unique(rows * 100 + cols)
    rows, cols = key // 100, key % 100
    w = rng.random(len(rows)) + 0.01
    a = max_weight_matching(rows, cols, w)
    b = max_weight_matching(rows, cols, w, dense_cells=0)
    lookup = dict(zip(zip(rows.tolist(), cols.tolist()), w))
    wa = sum(lookup[p] for p in zip(a[0].tolist(), a[1].tolist()))
    wb = sum(lookup[p] for p in zip(b[0].tolist(), b[1].tolist()))
    assert wa == pytest.approx(wb, rel=1e-12)
    assert len(set(a[0].tolist())) == len(a[0]) and len(set(a[1].tolist())) == len(a[1])


def test_empty_and_disjoint_volumes():
    z = np.zeros((4, 5, 6), np.uint8)
    one = z.copy()
    one[1:3, 1:3, 1:3] = 5
    other = z.copy()
    other[0, 4, 4:] = 9
    for gt, pred, nt, npred in ((z, z, 0, 0), (one, z, 1, 0), (z, one, 0, 1), (one, other, 1, 1)):
        res = evaluate(gt, pred, points="centroids")
        for s in res.matching:
            assert (s["tp"], s["fp"], s["fn"]) == (0, npred, nt)
            assert s["accuracy"] == 0.0 and s["precision"] == 0.0
        assert res.av_ap == 0.0
        assert res.coco["AP"] == (0.0 if nt else None) or (nt == 0 and math.isnan(res.coco["AP"]))
        json.dumps(res.summary(), allow_nan=False)


def test_mask_cuts_instances():
    gt = np.zeros((1, 1, 10), np.uint8)
    gt[0, 0, :6] = 1  # 6 voxels, 2 of them outside the mask
    gt[0, 0, 8:] = 2  # entirely outside the mask
    pred = np.zeros_like(gt)
    pred[0, 0, 2:6] = 3
    mask = np.zeros(gt.shape, bool)
    mask[0, 0, 2:7] = True
    res = evaluate(gt, pred, mask=mask, points=None)
    assert res.overlaps.gt_ids.tolist() == [1]
    assert res.overlaps.gt_size.tolist() == [4]
    assert res.matching[-1]["tp"] == 1  # IoU 1 inside the mask
    no_mask = evaluate(gt, pred, points=None)
    assert no_mask.overlaps.n_true == 2 and no_mask.matching[-1]["tp"] == 0


# ----------------------------------------------------------------------------- COCO AP


@pytest.mark.parametrize("seed", range(5))
def test_coco_ap_equals_reference(seed):
    gts, preds = label_pairs(40 + seed, n_images=1, shape=(12, 32, 32), n=70)
    gt, pred = gts[0], preds[0]
    ov = overlaps_from_table(contingency_table(gt, pred))
    iou, g_ids, p_ids = dense_iou(gt, pred)
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(ov.n_pred), 1)  # many ties
    thresholds = [0.1, 0.3, 0.5, 0.75, 0.9]
    lo, hi = np.percentile(ov.gt_size, [30, 70])
    res = coco_ap(ov, scores, thresholds, size_ranges={"mid": (lo, hi)})
    for name, (a, b) in (("all", (0, np.inf)), ("mid", (lo, hi))):
        ref = reference_coco(iou, ov.gt_size, ov.pred_size, scores, thresholds, a, b)
        np.testing.assert_allclose(list(res["ap"][name].values()), ref, rtol=1e-12)
    by_size = coco_ap(ov, None, thresholds, size_ranges={})
    ref = reference_coco(iou, ov.gt_size, ov.pred_size, ov.pred_size.astype(float), thresholds)
    np.testing.assert_allclose(list(by_size["ap"]["all"].values()), ref, rtol=1e-12)


def test_coco_perfect_and_ranked():
    gt = np.zeros((1, 1, 12), np.uint8)
    gt[0, 0, 0:3], gt[0, 0, 4:7], gt[0, 0, 8:12] = 1, 2, 3
    res = evaluate(gt, gt, points=None)
    assert res.coco["AP"] == 1.0 and res.coco["AP75"] == 1.0
    pred = gt.copy()
    pred[0, 0, 8:12] = 0  # one miss: recall 2/3, precision 1 -> 67 of 101 points
    res = evaluate(gt, pred, points=None)
    assert res.coco["AP50"] == pytest.approx(67 / 101)


# ----------------------------------------------------------------------------- detection, errors


def test_inside_nearest_rule():
    gt = np.zeros((1, 10, 10), np.uint8)
    gt[0, 0:4, 0:4] = 1
    gt[0, 6:10, 6:10] = 2
    gt_ids = np.array([1, 2], np.uint64)
    centres = np.array([[0, 1.5, 1.5], [0, 7.5, 7.5]])
    pts = np.array([[0, 1, 1], [0, 2, 2], [0, 5, 5], [0, 8, 8]], float)
    lab = gt[tuple(pts.astype(int).T)]
    stats, gop = inside_nearest_match(pts, lab, gt_ids, centres)
    assert (stats["tp"], stats["fp"], stats["fn"]) == (2, 2, 0)
    assert gop.tolist() == [0, -1, -1, 1]
    assert stats["accuracy"] == pytest.approx(0.5)


def test_radius_match_is_maximum_cardinality():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 20, (40, 3))
    gtc = rng.uniform(0, 20, (35, 3))
    stats, pi, gi = radius_match(pts, gtc, radius=3.0, spacing=(2.0, 1.0, 1.0))
    d = np.linalg.norm((pts[:, None] - gtc[None]) * np.array([2.0, 1, 1]), axis=2)
    w = np.where(d <= 3.0, 1.0, 0.0)
    r, c = linear_sum_assignment(-w)
    assert stats["tp"] == int(w[r, c].sum())
    assert np.all(d[pi, gi] <= 3.0) and len(set(pi.tolist())) == len(pi)


def test_merges_and_splits():
    gt = np.zeros((1, 1, 20), np.uint8)
    gt[0, 0, 0:4], gt[0, 0, 5:9], gt[0, 0, 10:18] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[0, 0, 0:9] = 7  # merges GT 1 and 2
    pred[0, 0, 10:14], pred[0, 0, 14:18] = 8, 9  # split GT 3
    e = merges_and_splits(overlaps_from_table(contingency_table(gt, pred)))
    assert (e["merged_predictions"], e["false_merges"], e["split_gt"], e["false_splits"]) == (1, 1, 1, 1)


# ----------------------------------------------------------------------------- volumes, reports


def test_zarr_blockwise_equals_in_memory(tmp_path, monkeypatch):
    from blockseg.io.volume import create_volume

    rng = np.random.default_rng(11)
    gt = blobs(rng, (20, 48, 40), 150).astype(np.uint32)
    pred = perturb(rng, gt, "edit").astype(np.uint32)
    mask = (rng.random(gt.shape) > 0.05).astype(np.uint8)
    paths = []
    for name, arr in (("gt", gt), ("pred", pred), ("mask", mask)):
        v = create_volume(tmp_path / f"{name}.zarr", arr.shape, arr.dtype, chunks=(8, 16, 16))
        v[...] = arr
        paths.append(str(tmp_path / f"{name}.zarr"))
    a = evaluate(*paths[:2], mask=paths[2], block_voxels=4096, points="centroids")
    b = evaluate(gt, pred, mask=mask.astype(bool), points="centroids")
    assert a.detection is not None
    # given points (some outside the volume) are looked up during the pass
    from blockseg.evaluate import core

    def no_second_pass(*args, **kwargs):
        raise AssertionError("given points must be looked up in the main pass")

    monkeypatch.setattr(core, "sample_volume", no_second_pass)
    pts = rng.uniform(-2, 50, (300, 3))
    pa = evaluate(*paths[:2], mask=paths[2], block_voxels=4096, points=pts)
    pb = evaluate(gt, pred, mask=mask.astype(bool), points=pts)
    assert pa.detection == pb.detection
    assert pa.detection["inside_nearest"]["n_points"] < 300  # outside the volume or the mask
    assert a.matching == b.matching and a.detection == b.detection
    np.testing.assert_equal(a.coco["ap"], b.coco["ap"])
    monkeypatch.undo()
    out = write_report(a, tmp_path / "report")
    summary = json.loads(Path(out["json"]).read_text())
    assert summary["n_true"] == a.overlaps.n_true and len(summary["matching"]) == 9
    rows = Path(out["csv"]).read_text().splitlines()
    assert len(rows) == 1 + a.overlaps.n_true + a.overlaps.n_pred
    best = [float(r.split(",")[8]) for r in rows[1:]]
    assert best == sorted(best)  # worst first
    assert Path(out["png"]).stat().st_size > 1000


@pytest.mark.slow  # a LocalCluster of 2 workers
def test_dask_client_pass(tmp_path):
    from blockseg.runtime.cluster import ClusterConfig, dask_client
    from blockseg.io.volume import create_volume

    rng = np.random.default_rng(5)
    gt = blobs(rng, (16, 32, 32), 80).astype(np.uint16)
    pred = perturb(rng, gt, "shift").astype(np.uint16)
    neg = np.where(pred == 3, -1, pred).astype(np.int16)
    for name, arr in (("gt", gt), ("pred", pred), ("neg", neg)):
        create_volume(tmp_path / f"{name}.zarr", arr.shape, arr.dtype, chunks=(8, 16, 16))[...] = arr
    cfg = ClusterConfig(n_workers=2, processes=False, dashboard=False)
    with dask_client(cfg, quiet=True) as client:
        a = evaluate(str(tmp_path / "gt.zarr"), str(tmp_path / "pred.zarr"), client=client, block_voxels=2048)
        # two volumes through the same client, pooled
        pooled = evaluate(
            [str(tmp_path / "gt.zarr")] * 2, [str(tmp_path / "pred.zarr")] * 2,
            client=client, block_voxels=2048, points="centroids",
        )  # fmt: skip
        # a user error found inside a block task reaches the caller as BlocksegError
        with pytest.raises(BlocksegError, match="non-negative"):
            evaluate(str(tmp_path / "gt.zarr"), str(tmp_path / "neg.zarr"), client=client, block_voxels=2048)
    b = evaluate(gt, pred)
    assert a.matching == b.matching
    np.testing.assert_equal(a.coco["ap"], b.coco["ap"])
    assert [m["tp"] for m in pooled.matching] == [2 * m["tp"] for m in b.matching]
    assert pooled.detection["radius"]["n_true"] == 2 * b.overlaps.n_true


@pytest.mark.skipif(not REAL.is_dir(), reason="shared real data not available")
def test_real_labels_against_dense_reference():
    data = np.load(REAL / "gonuclear_1135_mini.npz")
    gt = data["labels"]
    rng = np.random.default_rng(0)
    pred = perturb(rng, gt.astype(np.int64), "edit")
    pred = ndi.grey_erosion(pred, size=(1, 2, 2))
    ref = dense_matching_dataset([gt], [pred], THRESHOLDS)
    res = evaluate(gt, pred, points="centroids", voxel_size=tuple(data["voxel_size_zyx"]))
    _check_against(ref, res.matching)
    assert res.detection["inside_nearest"]["n_true"] == len(np.unique(gt)) - 1
