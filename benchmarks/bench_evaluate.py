"""Benchmark of ``blockseg evaluate`` (not a test).

1. Generates, if absent, synthetic NucMM-Z-sized ground truth and prediction zarrs
   (397 x 1450 x 2000 voxels, ~170K nuclei) blockwise, deterministically and with bounded memory.
2. Evaluates them with a 2-worker LocalCluster and records wall time and the peak RSS of the
   whole process tree (this process + all children, sampled every 50 ms).
3. A 512^3 / ~64K-instance case: blockseg alone (StarDist's dense matrices would need tens of
   GB there), and a small case that StarDist (or, when absent, a dense reference) can hold,
   timed in the same run against blockseg, with equality of the pooled counts checked.

Writes ``benchmarks/results/evaluate.json`` and ``benchmarks/results/evaluate.md``.

Usage::

    PYTHONPATH=. python benchmarks/bench_evaluate.py [DATA_DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from blockseg.cluster import ClusterConfig, dask_client, run_blocks
from blockseg.grid import BlockGrid
from blockseg.io import create_volume, open_volume

NUCMM_SHAPE = (397, 1450, 2000)
NUCMM_CELL = (17, 20, 21)  # one nucleus per cell: 24 x 73 x 96 = 168K cells
MID_SHAPE = (512, 512, 512)
MID_CELL = (12, 13, 13)  # 43 x 40 x 40 = 69K cells
SMALL_SHAPE = (192, 260, 260)
SMALL_CELL = (12, 13, 13)  # 16 x 20 x 20 = 6.4K cells
CHUNKS = (64, 128, 128)


# ----------------------------------------------------------------------------- synthetic data


def _cell_params(grid_cells, cell, seed):
    """Per-cell nucleus parameters, deterministic in ``seed`` (same in every task)."""
    n = int(np.prod(grid_cells))
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, np.float64)
    radii = (cell / 2 - 1.5) * rng.uniform(0.7, 1.0, (n, 3))
    centre = cell / 2 + rng.uniform(-1.0, 1.0, (n, 3))
    present = rng.random(n) > 0.02
    gt_ids = rng.permutation(n).astype(np.uint64) + 1
    # prediction: shifted centre, scaled radii; some merges, splits, misses and extras
    p_centre = centre + rng.normal(0, 0.5, (n, 3))
    p_radii = radii * rng.uniform(0.85, 1.15, (n, 3))
    kind = rng.choice(4, n, p=[0.91, 0.03, 0.03, 0.03])  # 0 ok, 1 merged into x-neighbour, 2 split, 3 missed
    extra = rng.random(n) < 0.03  # a small false positive in the cell corner
    pred_ids = rng.permutation(2 * n).astype(np.uint64) + 1
    return dict(radii=radii, centre=centre, present=present, gt_ids=gt_ids, p_centre=p_centre, p_radii=p_radii,
                kind=kind, extra=extra, pred_ids=pred_ids)  # fmt: skip


def synth_block(shape, cell, seed, core):
    """GT and prediction labels of one region (vectorised over voxels)."""
    cell = np.asarray(cell)
    grid_cells = -(-np.asarray(shape) // cell)
    prm = _cell_params(grid_cells, cell, seed)
    axes = [np.arange(s.start, s.stop) for s in core]
    ci = [a // c for a, c in zip(axes, cell)]
    off = [a - i * c for a, i, c in zip(axes, ci, cell)]  # position inside the cell
    cid = (ci[0][:, None, None] * grid_cells[1] + ci[1][None, :, None]) * grid_cells[2] + ci[2][None, None, :]

    def inside(centre, radii, ids):
        d = 0.0
        for a in range(3):
            o = off[a].reshape([-1 if k == a else 1 for k in range(3)])
            d = d + ((o - centre[ids, a]) / radii[ids, a]) ** 2
        return d <= 1.0

    gt_in = inside(prm["centre"], prm["radii"], cid) & prm["present"][cid]
    gt = np.where(gt_in, prm["gt_ids"][cid], 0).astype(np.uint32)

    kind = prm["kind"][cid]
    p_in = inside(prm["p_centre"], prm["p_radii"], cid) & prm["present"][cid] & (kind != 3)
    n = len(prm["gt_ids"])
    pid = cid.copy()
    # merged: the cell takes the id of its x-neighbour (same row, previous cell)
    merged = (kind == 1) & (ci[2][None, None, :] > 0)
    pid = np.where(merged, cid - 1, pid)
    # split: the half beyond the centre along x gets a second id
    xo = off[2][None, None, :]
    split = (kind == 2) & (xo > prm["p_centre"][cid, 2])
    pid = np.where(split, cid + n, pid)
    pred = np.where(p_in, prm["pred_ids"][pid], 0)
    corner = prm["extra"][cid] & (off[0][:, None, None] < 3) & (off[1][None, :, None] < 3) & (xo < 3)
    pred = np.where(corner & ~p_in, prm["pred_ids"][(cid + n) % (2 * n)] + np.uint64(0), pred)
    return gt, pred.astype(np.uint32)


def _write_block(block_id, grid, gt_path, pred_path, shape, cell, seed):
    core = grid[block_id].core
    gt, pred = synth_block(shape, cell, seed, core)
    open_volume(gt_path, mode="r+").array[core] = gt
    open_volume(pred_path, mode="r+").array[core] = pred
    return int(gt.size)


def ensure_data(data_dir: Path, name: str, shape, cell, client, seed=0) -> tuple[str, str]:
    """Create ``name_gt.zarr`` / ``name_pred.zarr`` under ``data_dir`` unless present."""
    gt_path, pred_path = str(data_dir / f"{name}_gt.zarr"), str(data_dir / f"{name}_pred.zarr")
    done = data_dir / f"{name}.done"
    if done.exists():
        return gt_path, pred_path
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gt = create_volume(gt_path, shape, np.uint32, voxel_size=0.51, chunks=CHUNKS, overwrite=True, name="gt")
    create_volume(pred_path, shape, np.uint32, voxel_size=0.51, chunks=CHUNKS, overwrite=True, name="pred")
    grid = BlockGrid(shape, (CHUNKS[0], 4 * CHUNKS[1], 4 * CHUNKS[2]))
    assert gt.chunks == CHUNKS
    func = functools.partial(_write_block, grid=grid, gt_path=gt_path, pred_path=pred_path, shape=shape, cell=cell, seed=seed)
    run_blocks(func, grid.block_ids, client=client, name=f"synth-{name}", progress=False)
    done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return gt_path, pred_path


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._cpu: dict[int, float] = {}

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) used by the tree while sampled (last sample per process)."""
        return sum(self._cpu.values())

    def _sample(self):
        me = psutil.Process()
        start = me.cpu_times()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    used = t.user + t.system
                    if p.pid == me.pid:
                        used -= start.user + start.system
                    self._cpu[p.pid] = used
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_blockseg(gt, pred, workers, out_dir=None):
    """Cluster start + evaluate + report, as the CLI does; returns (result, seconds, peak bytes)."""
    from blockseg.evaluate import evaluate, write_report

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        with dask_client(ClusterConfig(n_workers=workers, dashboard=False), quiet=True) as client:
            res = evaluate(gt, pred, client=client)
        if out_dir:
            write_report(res, out_dir)
        wall = time.perf_counter() - t0
    print(f"blockseg evaluate: {wall:.1f} s wall, {mem.cpu_s:.1f} s CPU, peak {mem.peak / 2**30:.2f} GB "
          f"(1-min load average now: {os.getloadavg()[0]:.1f})", flush=True)
    run_blockseg.cpu_s = mem.cpu_s
    return res, wall, mem.peak


def dense_reference(gt, pred, thresholds):
    """StarDist's definitions on dense matrices (used when StarDist is not installed)."""
    from scipy.optimize import linear_sum_assignment

    g_ids, g = np.unique(gt, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    ov = np.zeros((len(g_ids), len(p_ids)), np.int64)
    np.add.at(ov, (g.ravel(), p.ravel()), 1)
    gs, ps = ov.sum(1, keepdims=True), ov.sum(0, keepdims=True)
    iou = (ov / (gs + ps - ov))[g_ids != 0][:, p_ids != 0]
    n = max(1, min(iou.shape))
    out = []
    for t in thresholds:
        cost = -(iou >= t).astype(float) - iou / (2 * n)
        r, c = linear_sum_assignment(cost)
        out.append(int((iou[r, c] >= t).sum()))
    return out


def compare_small(gt_path, pred_path, workers):
    """blockseg vs StarDist (or the dense reference) on a case that fits in memory."""
    from blockseg.evaluate import evaluate

    th = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    res, wall, peak = run_blockseg(gt_path, pred_path, workers)
    gt = open_volume(gt_path).array[...]
    pred = open_volume(pred_path).array[...]
    # same conditions as the reference: arrays in memory, one process, matching metrics + COCO AP
    with PeakRSS() as mem_arr:
        t0 = time.perf_counter()
        res_arr = evaluate(gt, pred)
        t_arr = time.perf_counter() - t0
    assert res_arr.matching == res.matching
    try:
        from stardist.matching import matching_dataset

        name = "stardist.matching.matching_dataset"
    except ImportError:
        matching_dataset, name = None, "dense reference (scipy linear_sum_assignment)"
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if matching_dataset is not None:
            ref = [s.tp for s in matching_dataset([gt], [pred], thresh=th, show_progress=False)]
        else:
            ref = dense_reference(gt, pred, th)
        t_ref = time.perf_counter() - t0
    ours = [s["tp"] for s in res.matching]
    return {
        "shape": list(gt.shape),
        "n_true": res.overlaps.n_true,
        "n_pred": res.overlaps.n_pred,
        "reference": name,
        "blockseg_wall_s": wall,
        "blockseg_peak_rss_gb": peak / 2**30,
        "blockseg_in_memory_s": t_arr,
        "blockseg_in_memory_peak_rss_gb": mem_arr.peak / 2**30,
        "reference_s": t_ref,
        "reference_peak_rss_gb": mem.peak / 2**30,
        "speedup_in_memory": t_ref / t_arr,
        "speedup_end_to_end": t_ref / wall,
        "tp_equal_at_all_thresholds": ours == ref,
        "tp_blockseg": [int(v) for v in ours],
        "tp_reference": [int(v) for v in ref],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=str(Path(__file__).parent / "data"), help="where the synthetic zarrs live")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--skip-nucmm", action="store_true", help="only the small/medium cases")
    ap.add_argument("--generate-only", action="store_true", help="create the synthetic data and stop")
    args = ap.parse_args(argv)
    data = Path(args.data_dir)
    results_dir = Path(__file__).parent / "results"
    results_dir.mkdir(exist_ok=True)
    out = {"machine": {"cpus": os.cpu_count(), "ram_gb": psutil.virtual_memory().total / 2**30,
                       "python": platform.python_version()}, "workers": args.workers}  # fmt: skip

    with dask_client(ClusterConfig(n_workers=args.workers, dashboard=False), quiet=True) as client:
        cases = {"small": (SMALL_SHAPE, SMALL_CELL), "mid": (MID_SHAPE, MID_CELL)}
        if not args.skip_nucmm:
            cases["nucmm_z"] = (NUCMM_SHAPE, NUCMM_CELL)
        paths = {k: ensure_data(data, k, s, c, client) for k, (s, c) in cases.items()}
    if args.generate_only:
        return 0

    if not args.skip_nucmm:
        res, wall, peak = run_blockseg(*paths["nucmm_z"], args.workers, out_dir=data / "nucmm_z_report")
        out["nucmm_z"] = {
            "shape": list(NUCMM_SHAPE),
            "n_true": res.overlaps.n_true,
            "n_pred": res.overlaps.n_pred,
            "n_pairs": len(res.overlaps.count),
            "wall_s": wall,
            "cpu_s": run_blockseg.cpu_s,
            "load_average_1min_after": os.getloadavg()[0],
            "peak_rss_gb": peak / 2**30,
            "stage_s": res.timings,
            "avAP": res.av_ap,
            "accuracy_at_0.5": res.matching[4]["accuracy"],
            "coco_AP": res.coco["AP"],
            "coco_AP75": res.coco["AP75"],
        }
        print(json.dumps(out["nucmm_z"], indent=1), flush=True)
    res, wall, peak = run_blockseg(*paths["mid"], args.workers)
    n_t, n_p = res.overlaps.n_true, res.overlaps.n_pred
    dense_gb = (n_t + 1) * (n_p + 1) * (8 + 4 + 8) / 2**30  # overlap uint64 + iou float32 + cost float64
    out["mid_512"] = {"shape": list(MID_SHAPE), "n_true": n_t, "n_pred": n_p, "wall_s": wall, "cpu_s": run_blockseg.cpu_s,
                      "peak_rss_gb": peak / 2**30, "avAP": res.av_ap,
                      "stardist_dense_matrices_gb": dense_gb,
                      "stardist": "not run: its dense matrices need about %.0f GB" % dense_gb}  # fmt: skip
    print(json.dumps(out["mid_512"], indent=1), flush=True)
    out["vs_reference"] = compare_small(*paths["small"], args.workers)
    print(json.dumps(out["vs_reference"], indent=1), flush=True)

    (results_dir / "evaluate.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["## Evaluate benchmark", "", f"Machine: {out['machine']['cpus']} cores, {out['machine']['ram_gb']:.0f} GiB RAM, "
          f"{args.workers} dask workers. Wall time includes starting the cluster and writing the report; peak memory is "
          "the summed RSS of the whole process tree.", "", "| case | shape | GT / pred instances | wall (s) | CPU (s) | peak RSS (GB) |",
          "|---|---|---|---|---|---|"]  # fmt: skip
    for key in ("nucmm_z", "mid_512"):
        if key in out:
            c = out[key]
            md.append(f"| {key} | {'x'.join(map(str, c['shape']))} | {c['n_true']} / {c['n_pred']} | {c['wall_s']:.1f} | {c['cpu_s']:.1f} | {c['peak_rss_gb']:.2f} |")
    v = out["vs_reference"]
    md += ["", f"Against {v['reference']} on {'x'.join(map(str, v['shape']))} ({v['n_true']} GT, same in-memory "
           f"arrays, same run): reference {v['reference_s']:.1f} s / {v['reference_peak_rss_gb']:.2f} GB, blockseg "
           f"{v['blockseg_in_memory_s']:.1f} s / {v['blockseg_in_memory_peak_rss_gb']:.2f} GB in memory "
           f"(x{v['speedup_in_memory']:.1f} faster; it also computes COCO AP) and {v['blockseg_wall_s']:.1f} s end to end "
           f"from zarr with a fresh 2-worker cluster; TP equal at all 9 thresholds: {v['tp_equal_at_all_thresholds']}. "
           f"At 512^3 the reference is {out['mid_512']['stardist']}.", ""]  # fmt: skip
    (results_dir / "evaluate.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
