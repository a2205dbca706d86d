"""One-page PNG report of a run: mid-slice overlays, AP vs IoU, instance sizes."""

from __future__ import annotations

import os

import numpy as np

from ..evaluate.core import EvaluationResult
from ..evaluate.report import draw_ap, instance_table
from ..io.volume import open_volume

#: RGB colours of the overlay, by error class of :func:`blockseg.evaluate.report.instance_table`
STATUS_COLOURS = {
    "ok": (0.10, 0.75, 0.25),  # true positive
    "fn": (0.95, 0.55, 0.05),  # missed GT
    "fp": (0.90, 0.10, 0.10),  # spurious prediction
    "merge": (0.60, 0.20, 0.85),
    "split": (0.10, 0.55, 0.95),
}


def status_image(labels: np.ndarray, ids: np.ndarray, status: np.ndarray) -> np.ndarray:
    """RGBA image of a 2D label slice, each instance coloured by its status, edges darker."""
    from skimage.segmentation import find_boundaries

    rgba = np.zeros(labels.shape + (4,), np.float32)
    present = np.unique(labels)
    present = present[present != 0]
    if present.size == 0:
        return rgba
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], present)
    pos = np.minimum(pos, len(ids) - 1)
    known = ids[order][pos] == present
    codes = {name: i for i, name in enumerate(STATUS_COLOURS)}
    palette = np.array([(*c, 0.55) for c in STATUS_COLOURS.values()] + [(0.5, 0.5, 0.5, 0.4)], np.float32)
    code_of = np.full(present.size, len(palette) - 1)
    code_of[known] = [codes.get(str(s), len(palette) - 1) for s in status[order][pos[known]]]
    idx = np.searchsorted(present, labels)
    idx = np.minimum(idx, present.size - 1)
    fg = labels != 0
    rgba[fg] = palette[code_of[idx[fg]]]
    edges = find_boundaries(labels, mode="inner") & fg
    rgba[edges, :3] *= 0.5
    rgba[edges, 3] = 0.9
    return rgba


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _draw_sizes(ax, sizes_g: np.ndarray, sizes_p: np.ndarray) -> None:
    """Histograms of the GT and predicted instance sizes (log bins)."""
    both = np.concatenate([sizes_g, sizes_p]).astype(float)
    if both.size and both.max() > 0:
        bins = np.geomspace(max(1, both[both > 0].min()), both.max() + 1, 40)
        ax.hist(sizes_g, bins=bins, alpha=0.6, label=f"GT ({sizes_g.size})")
        ax.hist(sizes_p, bins=bins, alpha=0.6, label=f"predicted ({sizes_p.size})")
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("instance size (voxels)")
    ax.set_ylabel("instances")
    ax.set_title("instance sizes")


def _draw_summary(ax, s: dict) -> None:
    """The headline numbers of an evaluation summary as monospaced text."""
    ax.set_axis_off()
    errors = {k: v for k, v in s["errors"].items() if isinstance(v, (int, float))}
    lines = [
        f"GT instances      {s['n_true']}",
        f"predicted         {s['n_pred']}",
        f"avAP (0.1-0.9)    {s['avAP']:.3f}",
        f"COCO AP           {_fmt(s['coco'].get('AP'))}",
        f"COCO AP-50        {_fmt(s['coco'].get('AP50'))}",
        f"COCO AP-75        {_fmt(s['coco'].get('AP75'))}",
    ] + [f"{k:<17} {v}" for k, v in list(errors.items())[:6]]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=10)


def overview_png(
    image: str, gt: str, pred: str, result: EvaluationResult, path: str | os.PathLike, mask: str | None = None, z: int | None = None
) -> str:
    """Write a 2×3 figure: image, GT and prediction on the middle z-slice coloured by match
    status (TP green, FN orange, FP red, merge purple, split blue), AP vs IoU, size histogram.

    Only one z-slice of each volume is read, so this costs nothing next to the run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    img_v, gt_v, pr_v = open_volume(image), open_volume(gt), open_volume(pred)
    z = img_v.shape[0] // 2 if z is None else int(z)
    img = np.asarray(img_v.array[z], dtype=np.float32)
    g = np.asarray(gt_v.array[z])
    p = np.asarray(pr_v.array[z])
    table = instance_table(result)
    is_gt = table["kind"] == "gt"
    lo, hi = np.percentile(img, [1, 99.5]) if img.size else (0, 1)

    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), dpi=100)
    ax = axes[0, 0]
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(f"image, z = {z}")
    for ax, lab, sel, title in (
        (axes[0, 1], g, is_gt, "ground truth (TP green, FN orange)"),
        (axes[0, 2], p, ~is_gt, "prediction (TP green, FP red)"),
    ):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(status_image(lab, table["id"][sel], table["error"][sel]))
        ax.set_title(title + ", merge purple, split blue", fontsize=9)
    if mask is not None:
        m = np.asarray(open_volume(mask).array[z]) != 0
        for ax in axes[0]:
            ax.contour(m, levels=[0.5], colors="yellow", linewidths=0.6)
    for ax in axes[0]:
        ax.set_axis_off()
    draw_ap(axes[1, 0], result)
    _draw_sizes(axes[1, 1], table["size"][is_gt], table["size"][~is_gt])
    _draw_summary(axes[1, 2], result.summary())
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
