"""Per-instance statistics: partial tables per block, reduced into one table.

A partial table is a dict of 1-D arrays keyed by ``STAT_COLUMNS``; rows are label ids. The
reduction groups rows of equal id: counts and sums add, bounding boxes take min / max. Each
table is computed with sorting and ``reduceat``, never a loop over instances.
"""

from __future__ import annotations

import numpy as np

#: partial-statistics columns
STAT_COLUMNS = (
    "id", "count", "sum_z", "sum_y", "sum_x", "min_z", "min_y", "min_x", "max_z", "max_y", "max_x", "sum_score",
)  # fmt: skip


def _empty() -> dict[str, np.ndarray]:
    out = {c: np.zeros(0, dtype=np.float64) for c in STAT_COLUMNS}
    out["id"] = np.zeros(0, dtype=np.uint64)
    for c in ("count", "min_z", "min_y", "min_x", "max_z", "max_y", "max_x"):
        out[c] = np.zeros(0, dtype=np.int64)
    return out


def partial_stats(labels: np.ndarray, score: np.ndarray, origin=(0, 0, 0)) -> dict[str, np.ndarray]:
    """Statistics of every non-zero label of a block.

    Parameters
    ----------
    labels : ndarray of uint, 3D
        Labels of the block's core.
    score : ndarray of float, 3D
        Per-voxel score (summed per label).
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]``.
    """
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    if fg.size == 0:
        return _empty()
    ids = flat[fg]
    order = np.argsort(ids, kind="stable")
    fg, ids = fg[order], ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    coords = np.unravel_index(fg, labels.shape)
    out = {"id": ids[starts].astype(np.uint64), "count": np.diff(np.r_[starts, ids.size]).astype(np.int64)}
    for ax, c in zip("zyx", coords):
        g = c.astype(np.int64) + int(origin["zyx".index(ax)])
        out[f"sum_{ax}"] = np.add.reduceat(g.astype(np.float64), starts)
        out[f"min_{ax}"] = np.minimum.reduceat(g, starts)
        out[f"max_{ax}"] = np.maximum.reduceat(g, starts)
    out["sum_score"] = np.add.reduceat(score.ravel()[fg].astype(np.float64), starts)
    return out


def reduce_stats(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge partial tables: one row per id, sorted by id."""
    parts = [p for p in parts if len(p["id"])]
    if not parts:
        return _empty()
    cat = {c: np.concatenate([p[c] for p in parts]) for c in STAT_COLUMNS}
    order = np.argsort(cat["id"], kind="stable")
    cat = {c: v[order] for c, v in cat.items()}
    ids = cat["id"]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    out = {"id": ids[starts]}
    for c in STAT_COLUMNS[1:]:
        op = np.minimum if c.startswith("min") else np.maximum if c.startswith("max") else np.add
        out[c] = op.reduceat(cat[c], starts)
    return out


def instance_table(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final per-instance columns: id, voxels, centroid (z, y, x), bbox (inclusive-exclusive), score."""
    n = np.maximum(stats["count"], 1).astype(np.float64)
    return {
        "id": stats["id"],
        "voxels": stats["count"],
        "centroid_z": stats["sum_z"] / n,
        "centroid_y": stats["sum_y"] / n,
        "centroid_x": stats["sum_x"] / n,
        "bbox_z0": stats["min_z"],
        "bbox_y0": stats["min_y"],
        "bbox_x0": stats["min_x"],
        "bbox_z1": stats["max_z"] + 1,
        "bbox_y1": stats["max_y"] + 1,
        "bbox_x1": stats["max_x"] + 1,
        "score": stats["sum_score"] / n,
    }


def write_csv(table: dict[str, np.ndarray], path: str) -> None:
    """Write a column dict as CSV (header + one row per instance)."""
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        if n:
            fmt = ",".join("%d" if np.asarray(table[c]).dtype.kind in "iu" else "%.6g" for c in cols)
            data = np.empty((n, len(cols)), dtype=object)
            for j, c in enumerate(cols):
                data[:, j] = table[c]
            np.savetxt(f, data, fmt=fmt)


def read_csv(path: str) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_csv`."""
    with open(path) as f:
        header = f.readline().strip().split(",")
        body = f.read().strip()
    if not body:
        return {c: np.zeros(0) for c in header}
    data = np.loadtxt(body.splitlines(), delimiter=",", ndmin=2)
    return {c: data[:, j] for j, c in enumerate(header)}
