"""The evaluator: one blockwise pass over (gt, pred[, mask]) volumes, then all metrics."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BlocksegError
from ..faults import fault_point
from ..grid import BlockGrid, BlockTask, default_block_shape
from .analysis import merges_and_splits
from .coco import coco_ap
from .contingency import contingency_table, reduce_tables
from .detection import _ratios, inside_nearest_match, radius_match
from .matching import Matching, match_instances, matching_stats
from .options import (
    COCO_THRESHOLDS, DEFAULT_FRACTION, DEFAULT_RADIUS_UM, DEFAULT_THRESHOLDS, EVAL_BLOCK_VOXELS,
    EvaluateOptions, evaluate_options,
)  # fmt: skip
from .overlaps import Overlaps, concat_overlaps, overlaps_from_table
from ..io.volume import open_volume
from ..runtime.cluster import run_blocks, run_task
from .labelcheck import check_label_volume


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` measured.

    Attributes
    ----------
    overlaps : Overlaps
        Instances (ids, sizes, centroids) and their sparse overlaps, pooled over volumes.
    matching : list of dict
        StarDist-style statistics per IoU threshold (pooled counts).
    av_ap : float
        Mean of ``accuracy`` (TP/(TP+FP+FN)) over the matching thresholds.
    report_matching : Matching
        The matching at ``report_threshold`` (used for the per-instance table).
    coco : dict
        COCO AP (see :func:`blockseg.evaluate.coco.coco_ap`).
    detection : dict or None
        Detection scores (inside-nearest rule and radius matching), None when skipped.
    errors : dict
        False merges and splits (see :func:`blockseg.evaluate.analysis.merges_and_splits`).
    config : dict
        Parameters and inputs of the run.
    timings : dict
        Seconds per stage.
    """

    overlaps: Overlaps
    matching: list[dict]
    av_ap: float
    report_matching: Matching
    coco: dict
    detection: dict | None
    errors: dict
    config: dict
    timings: dict = field(default_factory=dict)
    gt_of_point: np.ndarray | None = None

    def summary(self) -> dict:
        """JSON-serialisable summary (no per-instance arrays)."""
        errors = {k: v for k, v in self.errors.items() if not isinstance(v, np.ndarray)}
        o = self.overlaps
        return _jsonable(
            {
                "config": self.config,
                "n_true": o.n_true,
                "n_pred": o.n_pred,
                "n_overlapping_pairs": len(o.count),
                "matching": self.matching,
                "avAP": self.av_ap,
                "coco": {k: v for k, v in self.coco.items()},
                "detection": self.detection,
                "errors": errors,
                "timings_s": self.timings,
            }
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


# ----------------------------------------------------------------------------- volume pass


@functools.lru_cache(maxsize=16)
def _open(path: str, token: int = 0):
    """Open a volume once per process and evaluation (``token`` differs between evaluations)."""

    return open_volume(path)


def _block_table(
    block_id: int,
    grid: BlockGrid,
    gt: str,
    pred: str,
    mask: str | None,
    token: int = 0,
    points: np.ndarray | None = None,
):
    """Table of one block; with ``points``, also the GT (and mask) values at those inside it.
    It writes nothing: a rerun returns the same table."""
    fault_point("evaluate.block:before", block=block_id)
    core = grid[block_id].core
    g = _open(gt, token).array[core]
    p = _open(pred, token).array[core]
    m = _open(mask, token).array[core] if mask else None
    origin = tuple(s.start for s in core)
    table = contingency_table(g, p, m, origin=origin)
    if points is None:
        return table
    lo = np.array(origin)
    hi = np.array([s.stop for s in core])
    idx = np.flatnonzero(np.all((points >= lo) & (points < hi), axis=1))
    local = tuple((points[idx] - lo).T)
    return table, idx, g[local], (m[local] != 0) if m is not None else None


def _block_samples(
    block_id: int, grid: BlockGrid, path: str, points: np.ndarray, token: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    core = grid[block_id].core
    lo = np.array([s.start for s in core])
    hi = np.array([s.stop for s in core])
    inside = np.all((points >= lo) & (points < hi), axis=1)
    idx = np.flatnonzero(inside)
    data = _open(path, token).array[core]
    local = points[idx] - lo
    return idx, data[tuple(local.T)]


def check_inputs(gt: str, pred: str, mask: str | None = None, labels_anyway: bool = False) -> None:
    """Open the volumes and check dtypes and shapes (raises :class:`BlocksegError`).

    ``gt`` and ``pred`` must also look like instance labels, not a raw image or a probability
    map (:func:`.labelcheck.check_label_volume`), unless ``labels_anyway``.
    """

    g, p = _open(str(gt)), _open(str(pred))
    check_label_volume(g, "--gt", labels_anyway)
    check_label_volume(p, "--pred", labels_anyway)
    _check_volumes(g, p, None if mask is None else _open(str(mask)))


def _check_volumes(gt, pred, mask) -> None:
    for vol, name in ((gt, "ground truth"), (pred, "prediction")):
        if vol.dtype.kind not in "iu":
            raise BlocksegError(f"{name} {vol.path}: labels must be integers, got dtype {vol.dtype}")
    if gt.shape != pred.shape:
        raise BlocksegError(f"ground truth shape {gt.shape} ({gt.path}) differs from prediction shape {pred.shape}")
    if mask is not None and mask.shape != gt.shape:
        raise BlocksegError(f"mask shape {mask.shape} ({mask.path}) differs from label shape {gt.shape}")


def volume_table(
    gt: str,
    pred: str,
    mask: str | None = None,
    client=None,
    block_voxels: int = EVAL_BLOCK_VOXELS,
    progress: bool = False,
    points: np.ndarray | None = None,
):
    """Contingency table of two label volumes (zarr paths) in one blockwise pass.

    Parameters
    ----------
    gt, pred : str
        Label volumes of the same shape.
    mask : str, optional
        Valid-region volume (non-zero = valid).
    client : distributed.Client, optional
        Run the blocks there (None: in this process).
    block_voxels : int
        Voxels per block, rounded to whole chunks of ``gt``.
    progress : bool
        Show a progress bar.
    points : ndarray of int, shape (n, 3), optional
        Voxel positions inside the volume whose GT label (and mask value) are read in the same
        pass (detection points known beforehand).

    Returns
    -------
    ContingencyTable
        Without ``points``.
    (ContingencyTable, ndarray of uint64, ndarray of bool or None)
        With ``points``: also the GT label and the mask value at each point.
    """

    _open.cache_clear()
    g, p = _open(str(gt)), _open(str(pred))
    m = _open(str(mask)) if mask is not None else None
    _check_volumes(g, p, m)
    grid = _pass_grid(g, block_voxels)
    token = time.time_ns()  # volumes rewritten between two evaluations are re-opened
    if points is not None:
        points = np.asarray(points, np.int32 if max(g.shape) < 2**31 else np.int64).reshape(-1, 3)
    func = functools.partial(
        _block_table, grid=grid, gt=str(gt), pred=str(pred), mask=str(mask) if mask else None, token=token,
        points=points,
    )  # fmt: skip
    # every block, read-only (nothing to resume: a rerun reads them again); the runner makes its
    # task keys unique per call (a rerun never meets cancelled keys)
    results = run_task(BlockTask("evaluate", grid, func), client=client, progress=progress)
    if points is None:
        return reduce_tables(results)
    labels = np.zeros(len(points), np.uint64)
    valid = np.ones(len(points), bool)
    for _, idx, lab, val in results:
        labels[idx] = lab
        if val is not None:
            valid[idx] = val
    return reduce_tables(r[0] for r in results), labels, valid if mask is not None else None


def sample_volume(path: str, points: np.ndarray, client=None, block_voxels: int = EVAL_BLOCK_VOXELS) -> np.ndarray:
    """Values of a volume at integer points (n, 3), reading only the blocks that hold points."""

    vol = _open(str(path))
    points = np.asarray(points, np.int64).reshape(-1, 3)
    out = np.zeros(len(points), np.uint64)
    if not len(points):
        return out
    grid = BlockGrid(vol.shape, default_block_shape(vol.shape, vol.write_unit, block_voxels))
    block_of = np.ravel_multi_index(tuple((points // np.array(grid.block_shape)).T), grid.grid_shape)
    ids = np.unique(block_of)
    token = time.time_ns()
    func = functools.partial(_block_samples, grid=grid, path=str(path), points=points, token=token)
    for idx, values in run_blocks(func, ids, client=client, name=f"sample-{token:x}", progress=False):
        out[idx] = values
    return out


# ----------------------------------------------------------------------------- metrics


def _round_points(points: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rounded integer points and which of them lie inside ``shape``."""
    r = np.floor(np.asarray(points, np.float64) + 0.5).astype(np.int64).reshape(len(points), len(shape))
    ok = np.all((r >= 0) & (r < np.asarray(shape)), axis=1)
    return r, ok


def _scores_for(pred_ids: np.ndarray, scores) -> np.ndarray:
    """Per-instance scores from an (n, 2) [id, score] table or a {id: score} mapping."""
    if isinstance(scores, Mapping):
        ids = np.fromiter(scores.keys(), np.uint64, len(scores))
        vals = np.fromiter(scores.values(), np.float64, len(scores))
    else:
        arr = np.asarray(scores, np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise BlocksegError(f"scores must be an (n, 2) table of [id, score], got shape {arr.shape}")
        ids, vals = arr[:, 0].astype(np.uint64), arr[:, 1]
    order = np.argsort(ids)
    ids, vals = ids[order], vals[order]
    pos = np.clip(np.searchsorted(ids, pred_ids), 0, max(len(ids) - 1, 0))
    found = (ids[pos] == pred_ids) if len(ids) else np.zeros(len(pred_ids), bool)
    return np.where(found, vals[pos] if len(ids) else 0.0, -np.inf)


def evaluate_overlaps(
    overlaps: Overlaps,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    coco_thresholds: Sequence[float] = COCO_THRESHOLDS,
    size_ranges: Mapping[str, tuple[float, float]] | None = None,
    scores: np.ndarray | None = None,
    report_threshold: float = 0.5,
    merge_threshold: float = 0.5,
    split_threshold: float = 0.5,
) -> tuple[list[dict], float, Matching, dict, dict, dict]:
    """All segmentation metrics of an :class:`Overlaps` (see :func:`evaluate`)."""
    timings = {}
    t0 = time.perf_counter()
    stats = []
    report = None
    for t in thresholds:
        mt = match_instances(overlaps, t)
        stats.append(matching_stats(mt))
        if np.isclose(t, report_threshold):
            report = mt
    if report is None:
        report = match_instances(overlaps, report_threshold)
    av_ap = float(np.mean([s["accuracy"] for s in stats])) if stats else float("nan")
    timings["matching"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    coco = coco_ap(overlaps, scores, coco_thresholds, size_ranges)
    timings["coco"] = time.perf_counter() - t0
    errors = merges_and_splits(overlaps, merge_threshold, split_threshold)
    return stats, av_ap, report, coco, errors, timings


def _as_list(x, n=None):
    if x is None:
        return [None] * (n or 1)
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


@dataclass(frozen=True)
class _Case:
    """One (gt, pred[, mask]) pair of an evaluation, with its points and scores."""

    gt: Any
    pred: Any
    mask: Any = None
    points: Any = None
    scores: Any = None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.gt, np.ndarray) or isinstance(self.pred, np.ndarray)


@dataclass
class EvaluatePlan:
    """What :func:`evaluate` would read (``dry_run=True`` / ``--dry-run`` returns / prints it).

    Attributes
    ----------
    volumes : list of dict
        Per (gt, pred) pair: the paths (``"array"`` for arrays in memory), shape, block shape and
        blocks of the pass, and how detection points are looked up.
    config : dict
        The metric settings (thresholds, size ranges, scores, points, radius).
    """

    volumes: list
    config: dict

    def describe(self) -> str:
        lines = []
        for k, v in enumerate(self.volumes):
            blocks = "in memory" if v["blocks"] is None else f"{v['blocks']} blocks of {tuple(v['block_shape'])}"
            lines.append(f"volume {k}: gt {v['gt']}, pred {v['pred']}, mask {v['mask']}; shape {tuple(v['shape'])}, {blocks}")
            lines.append(f"  detection points: {v['detection']}")
        c = self.config
        lines.append(f"matching IoU thresholds: {', '.join(f'{t:g}' for t in c['thresholds'])}; COCO AP over "
                     f"{len(c['coco_thresholds'])} thresholds; ranked by {c['score']}")  # fmt: skip
        lines.append("writes nothing; a rerun reads every block again (the pass keeps nothing to resume from)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return _jsonable({"volumes": self.volumes, "config": self.config})


def _validate_inputs(gt, pred, mask, points, scores, **options) -> tuple[list[_Case], EvaluateOptions]:
    """The (gt, pred, mask, points, scores) of each volume and the checked options
    (:class:`~blockseg.evaluate.options.EvaluateOptions`); one-line :class:`BlocksegError` for
    a bad option, lists of different lengths or bad ``points``."""
    opts = evaluate_options(**options)
    gts, preds = _as_list(gt), _as_list(pred)
    if len(gts) != len(preds):
        raise BlocksegError(f"{len(gts)} ground-truth volumes but {len(preds)} predictions")
    masks = _as_list(mask, len(gts))
    if len(masks) != len(gts):
        raise BlocksegError(f"{len(masks)} masks for {len(gts)} volumes")
    point_list = [points] * len(gts) if points is None or isinstance(points, str) else _as_list(points)
    if isinstance(points, str) and points != "centroids":
        raise BlocksegError(f"points must be 'centroids', None or an array, got {points!r}")
    if len(point_list) != len(gts):
        raise BlocksegError(f"{len(point_list)} point sets for {len(gts)} volumes")
    score_list = _as_list(scores, len(gts)) if scores is not None else [None] * len(gts)
    return [_Case(*c) for c in zip(gts, preds, masks, point_list, score_list)], opts


def plan_evaluate(gt, pred, mask=None, points=None, scores=None, voxel_size=None, **options) -> EvaluatePlan:
    """The :class:`EvaluatePlan` of :func:`evaluate` (same parameters; ``options`` are those of
    :class:`~blockseg.evaluate.options.EvaluateOptions`), from the volumes' metadata only:
    their shapes and dtypes are checked, no block is read.

    Examples
    --------
    >>> import numpy as np
    >>> plan = plan_evaluate(np.zeros((4, 8, 8), np.uint32), np.zeros((4, 8, 8), np.uint32))
    >>> plan.volumes[0]["shape"], plan.volumes[0]["blocks"]
    ((4, 8, 8), None)
    """
    volumes = []
    cases, opts = _validate_inputs(gt, pred, mask, points, scores, **options)
    for case in cases:
        names = {k: None if v is None else ("array" if isinstance(v, np.ndarray) else str(v))
                 for k, v in (("gt", case.gt), ("pred", case.pred), ("mask", case.mask))}  # fmt: skip
        detection = ("none" if case.points is None else "centroids: a second pass over the GT blocks holding them"
                     if isinstance(case.points, str) else "given: looked up during the pass")  # fmt: skip
        if case.in_memory:
            shape, grid = np.asarray(case.gt).shape, None
        else:
            g, p = _open(str(case.gt)), _open(str(case.pred))
            _check_volumes(g, p, None if case.mask is None else _open(str(case.mask)))
            shape, grid = g.shape, _pass_grid(g, opts.block_voxels)
        volumes.append({**names, "shape": tuple(shape), "blocks": None if grid is None else len(grid),
                        "block_shape": None if grid is None else grid.block_shape, "detection": detection})  # fmt: skip
    return EvaluatePlan(volumes, _run_config(volumes, opts, scores, points, voxel_size))


def _pass_grid(vol, block_voxels: int) -> BlockGrid:
    """The blocks of the evaluation pass over ``vol``: whole chunks, about ``block_voxels`` each."""
    return BlockGrid(vol.shape, default_block_shape(vol.shape, vol.write_unit, block_voxels))


def _run_config(inputs, opts: EvaluateOptions, scores, points, spacing) -> dict:
    """The parameters and inputs of a run (:attr:`EvaluationResult.config`)."""
    return {
        "inputs": inputs,
        "thresholds": list(opts.thresholds),
        "coco_thresholds": list(opts.coco_thresholds),
        "size_ranges": opts.ranges,
        "score": "voxel count" if scores is None else "given table",
        "points": points if isinstance(points, str) or points is None else "given",
        "radius_um": opts.radius_um,
        "voxel_size_um": spacing,
        "report_threshold": opts.report_threshold,
        "mask_policy": "voxels outside the mask are ignored; instances are cut to the mask",
    }


def _contingency(case: _Case, client, block_voxels: int, progress: bool):
    """The pass over one volume: ``(contingency table, shape, voxel size, input record, looked
    up)``; ``looked up`` is ``(GT label, valid)`` at given points of a zarr volume (read in the
    same pass), else None."""
    g, p, m, pts = case.gt, case.pred, case.mask, case.points
    if case.in_memory:
        g_arr, p_arr = np.asarray(g), np.asarray(p)
        table = contingency_table(g_arr, p_arr, None if m is None else np.asarray(m))
        info = {"gt": "array", "pred": "array", "mask": None if m is None else "array", "shape": g_arr.shape}
        return table, g_arr.shape, (1.0,) * g_arr.ndim, info, None
    vol = _open(str(g))
    shape, mask_path = vol.shape, None if m is None else str(m)
    info = {"gt": str(g), "pred": str(p), "mask": mask_path, "shape": shape}
    if pts is not None and not isinstance(pts, str):  # known points: looked up in the same pass
        r, ok = _round_points(np.asarray(pts, np.float64).reshape(-1, len(shape)), shape)
        table, labels, valid = volume_table(str(g), str(p), mask_path, client, block_voxels, progress, points=r[ok])
        return table, shape, vol.voxel_size, info, (labels, valid)
    return volume_table(str(g), str(p), mask_path, client, block_voxels, progress), shape, vol.voxel_size, info, None


def _detection_points(case: _Case, ov: Overlaps, shape, looked_up, client, block_voxels: int):
    """``(points, GT label under each)`` of one volume's detection points inside the volume
    (and the mask); None without points. Centroids are known only after the pass: the GT
    blocks holding them are read then."""
    g, m = case.gt, case.mask
    if case.points is None:
        return None
    pts = ov.pred_centroid if isinstance(case.points, str) else np.asarray(case.points, np.float64).reshape(-1, len(shape))
    r, ok = _round_points(pts, shape)
    keep = None
    if case.in_memory:
        lab = np.asarray(g)[tuple(r[ok].T)].astype(np.uint64)
        if m is not None:
            keep = np.asarray(m)[tuple(r[ok].T)] != 0
    elif looked_up is not None:  # read during the pass
        lab, keep = looked_up
    else:
        lab = sample_volume(str(g), r[ok], client, block_voxels)
        if m is not None:
            keep = sample_volume(str(m), r[ok], client, block_voxels) != 0
    pts_ok = pts[ok]
    if m is not None:
        pts_ok, lab = pts_ok[keep], lab[keep]
    return pts_ok, lab


def _pooled_scores(score_parts: list, parts: list[Overlaps]) -> np.ndarray | None:
    """Every volume's prediction scores in pooled order (voxel counts where none were given)."""
    if not any(s is not None for s in score_parts):
        return None
    return np.concatenate([s if s is not None else o.pred_size.astype(np.float64) for s, o in zip(score_parts, parts)])


def evaluate(
    gt,
    pred,
    mask=None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    coco_thresholds: Sequence[float] = COCO_THRESHOLDS,
    size_ranges: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
    scores=None,
    points=None,
    radius_um: float = DEFAULT_RADIUS_UM,
    voxel_size: Sequence[float] | None = None,
    report_threshold: float = DEFAULT_FRACTION,
    merge_threshold: float = DEFAULT_FRACTION,
    split_threshold: float = DEFAULT_FRACTION,
    client=None,
    block_voxels: int = EVAL_BLOCK_VOXELS,
    progress: bool = False,
    dry_run: bool = False,
) -> EvaluationResult | EvaluatePlan:
    """Score an instance segmentation against ground truth.

    Parameters
    ----------
    gt, pred : ndarray, str/path of a zarr volume, or a list of them
        Ground-truth and predicted labels (0 = background). Lists pool several volumes: counts
        and ranked predictions are pooled, never averaged per volume.
    mask : ndarray or str or list, optional
        Valid region (non-zero = valid). Voxels outside are ignored entirely: instance sizes,
        overlaps and centroids are those of the part inside the mask, an instance entirely
        outside does not exist, and detection points outside are dropped.
    thresholds : sequence of float
        IoU thresholds of the matching metrics (default 0.1, ..., 0.9).
    coco_thresholds : sequence of float
        IoU thresholds of COCO AP (default 0.50:0.05:0.95).
    size_ranges : (float, float) or mapping, optional
        GT size ranges (voxels) for COCO AP: two voxel counts splitting small / medium / large,
        or a mapping name -> (lo, hi) (default 5000, 15000).
    scores : (n, 2) array or mapping or list of them, optional
        Prediction scores [id, score] for COCO ranking (default: voxel count). Predictions
        without a score rank last.
    points : None, "centroids", (n, ndim) array or list of them
        Predicted centre points (voxel coordinates) for the detection metrics, e.g. from
        ``segment``'s instance table or a detector. "centroids" uses the centres of mass of the
        predicted instances. For zarr volumes the GT label under each point is read in a second,
        GT-only pass over the blocks holding points; given points are looked up during the
        main pass. None (default) skips detection.
    radius_um : float
        Radius of the radius-based detection matching, in µm (> 0; default 3).
    voxel_size : sequence of float, optional
        Voxel size (µm) for distances; default that of the gt volume (1 for arrays).
    report_threshold : float
        IoU threshold of the matching shown per instance (in (0, 1]; default 0.5).
    merge_threshold, split_threshold : float
        See :func:`blockseg.evaluate.analysis.merges_and_splits` (in (0, 1]; default 0.5).
    client : distributed.Client, optional
        Dask client for the blockwise pass of zarr volumes (None: in this process).
    block_voxels : int
        Voxels per block of the pass (a speed and memory knob).
    progress : bool
        Show a progress bar.
    dry_run : bool
        Return the :class:`EvaluatePlan` (volumes, blocks, settings; :func:`plan_evaluate`)
        without reading a block.

    Returns
    -------
    EvaluationResult, or EvaluatePlan with ``dry_run``

    Raises
    ------
    BlocksegError
        Missing paths, shape mismatches, non-integer or negative labels, bad options (checked by
        :class:`~blockseg.evaluate.options.EvaluateOptions`, the model the run config's
        ``evaluate`` section and ``blockseg evaluate``'s flags share: one default and one check
        each).

    Notes
    -----
    Runs as named passes: the checks (:func:`_validate_inputs`), the map (one blockwise,
    read-only pass per volume: a contingency table per block, reduced to the volume's overlaps;
    detection points looked up), then the reduce (every metric of the pooled overlaps). It writes
    nothing, so there is no per-block resume: a rerun reads the blocks again.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((1, 8, 8), np.uint32)
    >>> gt[0, 1:4, 1:4], gt[0, 5:8, 5:8] = 1, 2
    >>> pred = gt.copy()
    >>> pred[0, 5:8, 5:8] = 0
    >>> result = evaluate(gt, pred)
    >>> result.matching[4]["threshold"], result.matching[4]["tp"], result.matching[4]["fn"]
    (0.5, 1, 1)
    >>> evaluate(gt, pred, dry_run=True).volumes[0]["shape"]
    (1, 8, 8)
    """
    t_start = time.perf_counter()
    options = dict(thresholds=thresholds, coco_thresholds=coco_thresholds, size_ranges=size_ranges, radius_um=radius_um,
                   report_threshold=report_threshold, merge_threshold=merge_threshold, split_threshold=split_threshold,
                   block_voxels=block_voxels)  # fmt: skip
    if dry_run:
        return plan_evaluate(gt, pred, mask, points, scores, voxel_size, **options)
    cases, opts = _validate_inputs(gt, pred, mask, points, scores, **options)
    block_voxels = opts.block_voxels
    parts, det_parts, score_parts, inputs, spacing = [], [], [], [], None
    timings: dict[str, float] = {"pass": 0.0, "detection_lookup": 0.0}
    for case in cases:  # the map: one blockwise pass per volume, reduced to its overlaps
        t0 = time.perf_counter()
        table, shape, vs, info, looked_up = _contingency(case, client, block_voxels, progress)
        inputs.append(info)
        timings["pass"] += time.perf_counter() - t0
        spacing = tuple(voxel_size) if voxel_size is not None else (spacing or vs)
        ov = overlaps_from_table(table)
        parts.append(ov)
        score_parts.append(None if case.scores is None else _scores_for(ov.pred_ids, case.scores))
        t0 = time.perf_counter()
        det_parts.append(_detection_points(case, ov, shape, looked_up, client, block_voxels))
        if case.points is not None:
            timings["detection_lookup"] += time.perf_counter() - t0
    # the reduce: metrics of the pooled overlaps
    overlaps = concat_overlaps(parts)
    stats, av_ap, report, coco, errors, t_metrics = evaluate_overlaps(
        overlaps, opts.thresholds, opts.coco_thresholds, opts.ranges, _pooled_scores(score_parts, parts),
        opts.report_threshold, opts.merge_threshold, opts.split_threshold,
    )  # fmt: skip
    timings.update(t_metrics)
    detection = gt_of_point = None
    if any(d is not None for d in det_parts):
        t0 = time.perf_counter()
        detection, gt_of_point = _detection(parts, det_parts, spacing, opts.radius_um)
        timings["detection"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    config = _run_config(inputs, opts, scores, points, spacing)
    return EvaluationResult(overlaps, stats, av_ap, report, coco, detection, errors, config, timings, gt_of_point)


def _detection(parts: list[Overlaps], det_parts, spacing, radius_um: float) -> tuple[dict, np.ndarray]:
    """Pool detection counts over volumes (each volume matched on its own)."""
    tp_in = tp_r = n_pts = n_gt = 0
    dist_sum = 0.0
    gt_of_point = []
    offset = 0
    for ov, det in zip(parts, det_parts):
        if det is None:
            offset += ov.n_true
            continue
        pts, lab = det
        s1, gop = inside_nearest_match(pts, lab, ov.gt_ids, ov.gt_centroid, spacing)
        s2, _, _ = radius_match(pts, ov.gt_centroid, radius_um, spacing)
        tp_in += s1["tp"]
        tp_r += s2["tp"]
        n_pts += len(pts)
        n_gt += ov.n_true
        if s2["tp"]:
            dist_sum += s2["mean_distance_um"] * s2["tp"]
        gt_of_point.append(np.where(gop >= 0, gop + offset, -1))
        offset += ov.n_true
    radius = _ratios(tp_r, n_pts, n_gt)
    radius["radius_um"] = float(radius_um)
    radius["mean_distance_um"] = dist_sum / tp_r if tp_r else float("nan")
    return {"inside_nearest": _ratios(tp_in, n_pts, n_gt), "radius": radius}, np.concatenate(gt_of_point)
