"""Reports of an evaluation: JSON summary, per-instance CSV (worst first), AP-vs-IoU PNG."""

from __future__ import annotations

import json
import os

import numpy as np

from ..io.tables import write_table
from .analysis import best_partners
from .core import EvaluationResult
from ..io.safety import prepare_output
from ..io.storage import makedirs, open_file

CSV_COLUMNS = (
    "kind", "volume", "id", "size", "z", "y", "x", "best_partner", "best_iou",
    "matched_partner", "matched_iou", "n_merged_or_split", "error", "size_um3", "z_um", "y_um", "x_um",
)  # fmt: skip


def instance_table(result: EvaluationResult) -> dict[str, np.ndarray]:
    """One row per GT and per predicted instance, worst (lowest best IoU) first.

    Columns: ``kind`` (gt/pred), ``volume``, ``id``, ``size`` (voxels in the mask), centroid
    ``z, y, x`` (voxels; ``size_um3`` and ``z_um, y_um, x_um`` in µm when the voxel size is
    known), ``best_partner`` / ``best_iou`` (highest-IoU overlapping instance of the
    other side, 0 if none), ``matched_partner`` / ``matched_iou`` (one-to-one match at the report
    threshold, 0 if unmatched), ``n_merged_or_split`` (for a prediction: GT instances it covers;
    for a GT: predictions inside it) and ``error``: ``ok``, ``fn`` / ``fp`` (unmatched),
    ``merge`` (prediction covering >= 2 GT, or GT covered by such a prediction) or ``split``.
    """
    o = result.overlaps
    gbp, gbi, pbg, pbi = best_partners(o)
    m = result.report_matching
    g_match = np.full(o.n_true, -1, np.int64)
    g_match[m.gi] = m.pj
    g_miou = np.zeros(o.n_true)
    g_miou[m.gi] = m.iou
    p_match = np.full(o.n_pred, -1, np.int64)
    p_match[m.pj] = m.gi
    p_miou = np.zeros(o.n_pred)
    p_miou[m.pj] = m.iou
    gpp, ppg = result.errors["gt_per_pred"], result.errors["pred_per_gt"]
    # a GT is part of a merge when a merging prediction covers it
    rec = o.recall >= result.errors["merge_threshold"]
    g_in_merge = np.zeros(o.n_true, bool)
    g_in_merge[o.gi[rec & (gpp[o.pj] >= 2)]] = True

    def err(matched, merged, split, fail):
        return np.where(merged, "merge", np.where(split, "split", np.where(matched, "ok", fail)))

    g_err = err(g_match >= 0, g_in_merge, ppg >= 2, "fn")
    p_err = err(p_match >= 0, gpp >= 2, np.zeros(o.n_pred, bool), "fp")
    if o.n_pred:  # a prediction that lies inside a split GT
        prec = o.precision >= result.errors["split_threshold"]
        p_split = np.zeros(o.n_pred, bool)
        p_split[o.pj[prec & (ppg[o.gi] >= 2)]] = True
        p_err = np.where((p_err != "merge") & p_split, "split", p_err)

    def partner(idx, ids):
        return np.where(idx >= 0, ids[np.maximum(idx, 0)] if len(ids) else 0, 0).astype(np.uint64)

    cols = {
        "kind": np.r_[np.full(o.n_true, "gt"), np.full(o.n_pred, "pred")],
        "volume": np.r_[o.gt_volume, o.pred_volume],
        "id": np.r_[o.gt_ids, o.pred_ids].astype(np.uint64),
        "size": np.r_[o.gt_size, o.pred_size],
        "best_partner": np.r_[partner(gbp, o.pred_ids), partner(pbg, o.gt_ids)],
        "best_iou": np.r_[gbi, pbi],
        "matched_partner": np.r_[partner(g_match, o.pred_ids), partner(p_match, o.gt_ids)],
        "matched_iou": np.r_[g_miou, p_miou],
        "n_merged_or_split": np.r_[ppg, gpp],
        "error": np.r_[g_err, p_err],
    }
    cent = np.concatenate([o.gt_centroid, o.pred_centroid]).reshape(o.n_true + o.n_pred, -1)
    for a, name in enumerate(("z", "y", "x")[-cent.shape[1] :] if cent.shape[1] <= 3 else range(cent.shape[1])):
        cols[str(name)] = cent[:, a]
    spacing = result.config.get("voxel_size_um")
    if spacing is not None and np.size(spacing) == 3 and all(n in cols for n in "zyx"):
        vz, vy, vx = (float(v) for v in np.ravel(spacing))  # the same measures in micrometres
        cols["size_um3"] = cols["size"] * (vz * vy * vx)
        for a, v in zip("zyx", (vz, vy, vx)):
            cols[f"{a}_um"] = cols[a] * v
    order = np.lexsort((cols["id"], cols["kind"], -cols["size"], cols["best_iou"]))
    return {k: cols[k][order] for k in CSV_COLUMNS if k in cols}


def plot_ap(result: EvaluationResult, path: str | os.PathLike) -> None:
    """PNG of accuracy (TP/(TP+FP+FN)), F1, precision, recall and COCO AP vs IoU threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    draw_ap(ax, result)
    fig.tight_layout()

    with open_file(str(path), "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def draw_ap(ax, result: EvaluationResult) -> None:
    """Draw the curves of :func:`plot_ap` on a matplotlib axis."""
    th = [s["threshold"] for s in result.matching]
    curves = (("accuracy", "accuracy TP/(TP+FP+FN)"), ("f1", "F1"), ("precision", "precision"), ("recall", "recall"))
    for key, label in curves:
        ax.plot(th, [s[key] for s in result.matching], marker="o", ms=3, label=label)
    coco = result.coco["ap"]["all"]
    ax.plot(list(coco), [np.nan if v is None else v for v in coco.values()], marker="s", ms=3, ls="--", label="COCO AP")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"avAP {result.av_ap:.3f}   COCO AP {result.coco['AP']:.3f}   ({result.overlaps.n_true} GT)")
    ax.legend(fontsize=8, loc="lower left")


def write_report(
    result: EvaluationResult,
    out_dir: str | os.PathLike,
    png: bool = True,
    overwrite: bool = False,
    inputs=(),
) -> dict[str, str]:
    """Write ``evaluation.json``, ``instances.csv`` and ``ap_vs_iou.png`` into ``out_dir``.

    ``out_dir`` follows :func:`blockseg.io.safety.prepare_output`: it must be new or empty, or,
    with ``overwrite``, an earlier report folder (replaced new-then-swap); it may not be, hold
    or lie inside one of ``inputs`` (the evaluated volumes and tables).

    Returns
    -------
    dict
        Paths written, by kind.
    """

    output = prepare_output(out_dir, inputs, overwrite, what="report folder")
    with output.writing() as target:
        _write_report_files(result, target, png)
    out = str(out_dir).rstrip("/")
    paths = {"json": f"{out}/evaluation.json", "csv": f"{out}/instances.csv"}
    if png:
        paths["png"] = f"{out}/ap_vs_iou.png"
    return paths


def _write_report_files(result: EvaluationResult, out_dir: str, png: bool) -> dict[str, str]:

    out = str(out_dir).rstrip("/")
    makedirs(out)
    paths = {"json": f"{out}/evaluation.json", "csv": f"{out}/instances.csv"}
    summary = result.summary()
    table = instance_table(result)
    worst = {k: v[:20] for k, v in table.items()}
    summary["worst_instances"] = [dict(zip(worst, row)) for row in zip(*[v.tolist() for v in worst.values()])]
    with open_file(paths["json"], "w") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
    write_table(table, paths["csv"])
    if png:
        paths["png"] = f"{out}/ap_vs_iou.png"
        plot_ap(result, paths["png"])
    return paths
