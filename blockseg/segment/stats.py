"""Per-instance statistics: partial tables per block, reduced into one table.

A partial table is a dict of 1-D arrays keyed by ``STAT_COLUMNS``; rows are label ids. The
reduction groups rows of equal id: counts and sums add, bounding boxes take min / max. Each
table is computed with sorting and ``reduceat``, never a loop over instances.
"""

from __future__ import annotations

import numpy as np

from ..runtime._jit import njit

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


@njit(nogil=True)
def _stats_kernel(labels, score, oz, oy, ox, n_max):
    nz, ny, nx = labels.shape
    index = np.full(n_max + 1, -1, dtype=np.int64)
    k = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = labels[z, y, x]
                if v != 0 and index[v] == -1:
                    index[v] = k
                    k += 1
    ids = np.zeros(k, dtype=np.uint64)
    count = np.zeros(k, dtype=np.int64)
    sums = np.zeros((k, 4), dtype=np.float64)  # z, y, x, score
    lo = np.full((k, 3), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((k, 3), np.iinfo(np.int64).min, dtype=np.int64)
    for z in range(nz):
        gz = z + oz
        for y in range(ny):
            gy = y + oy
            for x in range(nx):
                v = labels[z, y, x]
                if v == 0:
                    continue
                j = index[v]
                gx = x + ox
                ids[j] = v
                count[j] += 1
                sums[j, 0] += gz
                sums[j, 1] += gy
                sums[j, 2] += gx
                sums[j, 3] += score[z, y, x]
                c = (gz, gy, gx)
                for a in range(3):
                    if c[a] < lo[j, a]:
                        lo[j, a] = c[a]
                    if c[a] > hi[j, a]:
                        hi[j, a] = c[a]
    return ids, count, sums, lo, hi


def partial_stats(labels: np.ndarray, score: np.ndarray, origin=(0, 0, 0)) -> dict[str, np.ndarray]:
    """Statistics of every non-zero label of a block (one pass of a numba kernel, no sorting
    of voxels).

    Parameters
    ----------
    labels : ndarray of uint, 3D
        Labels of the block's core (a view is fine).
    score : ndarray of float, 3D
        Per-voxel score (summed per label).
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]``.
    """
    if labels.size == 0 or not labels.any():
        return _empty()
    n_max = int(labels.max())
    ids, count, sums, lo, hi = _stats_kernel(labels, score, *(int(o) for o in origin), n_max)
    order = np.argsort(ids)
    out = {"id": ids[order], "count": count[order]}
    for a, ax in enumerate("zyx"):
        out[f"sum_{ax}"] = sums[order, a]
        out[f"min_{ax}"] = lo[order, a]
        out[f"max_{ax}"] = hi[order, a]
    out["sum_score"] = sums[order, 3]
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


def instance_table(stats: dict[str, np.ndarray], voxel_size=None) -> dict[str, np.ndarray]:
    """Final per-instance columns: id, voxels, centroid (z, y, x), bbox (inclusive-exclusive), score.

    With ``voxel_size`` (z, y, x) in µm the same measures follow in micrometres:
    ``volume_um3``, ``centroid_um_z/y/x`` (voxel centres: index x size) and ``bbox_um_z0..x1``
    (the bounding box's outer faces: index x size, exclusive upper faces).
    """
    n = np.maximum(stats["count"], 1).astype(np.float64)
    table = _voxel_table(stats, n)
    if voxel_size is not None:
        vz, vy, vx = (float(v) for v in voxel_size)
        size = {"z": vz, "y": vy, "x": vx}
        table["volume_um3"] = stats["count"] * (vz * vy * vx)
        for a in "zyx":
            table[f"centroid_um_{a}"] = table[f"centroid_{a}"] * size[a]
        for a in "zyx":
            table[f"bbox_um_{a}0"] = table[f"bbox_{a}0"] * size[a]
        for a in "zyx":
            table[f"bbox_um_{a}1"] = table[f"bbox_{a}1"] * size[a]
    return table


def _voxel_table(stats: dict[str, np.ndarray], n: np.ndarray) -> dict[str, np.ndarray]:
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
