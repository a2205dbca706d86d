"""Benchmark of ``blockseg evaluate`` (not a test).

1. Generates, if absent, synthetic NucMM-Z-sized ground truth and prediction zarrs
   (397 x 1450 x 2000 voxels, ~170K nuclei) blockwise, deterministically and with bounded memory.
2. Evaluates them with a 2-worker LocalCluster and records wall time and the peak RSS of the
   whole process tree (this process + all children, sampled every 50 ms).
3. Cubes of ``--sizes`` (12x13x13-voxel cells, one nucleus each): paired repeats of blockseg
   (end to end from zarr on a fresh cluster, and in memory) and StarDist's
   ``matching_dataset`` where its dense matrices fit in memory (else N/A with the reason);
   TP/FP/FN at every threshold must agree.

Writes ``OUT.json`` (default ``benchmarks/results/evaluate``); ``benchmarks/run_all.py`` turns it
into RESULTS.md.

Usage::

    PYTHONPATH=. python benchmarks/bench_evaluate.py [DATA_DIR] [--sizes 128 256 512] [--repeats 3]
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

from blockseg.runtime.cluster import ClusterConfig, dask_client, run_blocks
from blockseg.grid import BlockGrid
from blockseg.io.volume import create_volume, open_volume

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
    create_volume(gt_path, shape, np.uint32, voxel_size=0.51, chunks=CHUNKS, overwrite=True, name="gt")
    create_volume(pred_path, shape, np.uint32, voxel_size=0.51, chunks=CHUNKS, overwrite=True, name="pred")
    grid = BlockGrid(shape, (CHUNKS[0], 4 * CHUNKS[1], 4 * CHUNKS[2]))
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


THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def _counts(stats) -> dict:
    """TP / FP / FN per threshold from StarDist's DatasetMatching list or blockseg's dicts."""
    get = (lambda s, k: s[k]) if isinstance(stats[0], dict) else getattr
    return {k: [int(get(s, k)) for s in stats] for k in ("tp", "fp", "fn")}


def compare_case(gt_path, pred_path, workers, repeats, ram_fraction=0.4):
    """Paired runs at one size: blockseg end to end (zarr, fresh cluster), blockseg in memory,
    StarDist ``matching_dataset`` in memory when its dense matrices fit, else N/A with the reason."""
    from blockseg.evaluate import evaluate

    rows = []
    gt = open_volume(gt_path).array[...]
    pred = open_volume(pred_path).array[...]
    dense_gb = None
    for r in range(repeats):
        row = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
        res, wall, peak = run_blockseg(gt_path, pred_path, workers)
        row.update(blockseg_s=wall, blockseg_peak_rss_gb=peak / 2**30, blockseg_cpu_s=run_blockseg.cpu_s)
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            res_arr = evaluate(gt, pred, thresholds=THRESHOLDS)
            row["blockseg_in_memory_s"] = time.perf_counter() - t0
        row["blockseg_in_memory_peak_rss_gb"] = mem.peak / 2**30
        n_t, n_p = res.overlaps.n_true, res.overlaps.n_pred
        dense_gb = (n_t + 1) * (n_p + 1) * (8 + 4 + 8) / 2**30  # overlap int64 + iou float32 + cost float64
        fits = dense_gb < ram_fraction * psutil.virtual_memory().available / 2**30
        if fits:
            from stardist.matching import matching_dataset

            with PeakRSS() as mem:
                t0 = time.perf_counter()
                ref = matching_dataset([gt], [pred], thresh=THRESHOLDS, show_progress=False)
                row["stardist_s"] = time.perf_counter() - t0
            row["stardist_peak_rss_gb"] = mem.peak / 2**30
            row["ratio_stardist_over_blockseg_in_memory"] = row["stardist_s"] / row["blockseg_in_memory_s"]
            row["ratio_stardist_over_blockseg_end_to_end"] = row["stardist_s"] / wall
            ours, theirs = _counts(res_arr.matching), _counts(ref)
            row["counts_equal"] = ours == theirs and _counts(res.matching) == ours
            row["counts_blockseg"], row["counts_stardist"] = ours, theirs
        row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("counts")}), flush=True)
    med = lambda k: float(np.median([row[k] for row in rows])) if k in rows[0] else None  # noqa: E731
    out = {"shape": list(gt.shape), "n_true": n_t, "n_pred": n_p, "voxels": int(gt.size), "runs": rows,
           "blockseg_median_s": med("blockseg_s"), "blockseg_in_memory_median_s": med("blockseg_in_memory_s"),
           "blockseg_peak_rss_gb": max(row["blockseg_peak_rss_gb"] for row in rows),
           "blockseg_in_memory_peak_rss_gb": max(row["blockseg_in_memory_peak_rss_gb"] for row in rows),
           "throughput_vox_per_s": gt.size / med("blockseg_s"), "stardist_dense_matrices_gb": dense_gb}  # fmt: skip
    if "stardist_s" in rows[0]:
        out.update(stardist_median_s=med("stardist_s"), stardist_peak_rss_gb=max(row["stardist_peak_rss_gb"] for row in rows),
                   ratio_in_memory_median=med("ratio_stardist_over_blockseg_in_memory"),
                   ratio_end_to_end_median=med("ratio_stardist_over_blockseg_end_to_end"),
                   counts_equal=all(row["counts_equal"] for row in rows), stardist="run")  # fmt: skip
    else:
        out["stardist"] = (f"N/A: its dense overlap/IoU/cost matrices need about {dense_gb:.0f} GB "
                           f"({n_t} x {n_p} instances); this machine has {psutil.virtual_memory().total / 2**30:.0f} GiB")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=str(Path(__file__).parent / "data"), help="where the synthetic zarrs live")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="cube edges compared with StarDist")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs per size; medians reported")
    ap.add_argument("--skip-nucmm", action="store_true", help="no NucMM-Z-size run")
    ap.add_argument("--scaling-workers", type=int, nargs="*", default=[1],
                    help="extra worker counts timed (once) on the largest cube, for the scaling plot")
    ap.add_argument("--generate-only", action="store_true", help="create the synthetic data and stop")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluate"), help="output prefix (.json)")
    args = ap.parse_args(argv)
    data = Path(args.data_dir)
    out = {"machine": {"cpus": os.cpu_count(), "ram_gb": psutil.virtual_memory().total / 2**30,
                       "python": platform.python_version()}, "workers": args.workers, "thresholds": THRESHOLDS,
           "synthetic": "one nucleus per cell of 12x13x13 voxels (17x20x21 at NucMM-Z size); prediction with "
                        "shifted centres, scaled radii and 3 % merges, splits, misses and false positives"}  # fmt: skip
    cases = {f"cube_{s}": ((s, s, s), MID_CELL) for s in args.sizes}
    if not args.skip_nucmm:
        cases["nucmm_z"] = (NUCMM_SHAPE, NUCMM_CELL)
    with dask_client(ClusterConfig(n_workers=2, dashboard=False), quiet=True) as client:
        t0 = time.perf_counter()
        paths = {k: ensure_data(data, k, s, c, client) for k, (s, c) in cases.items()}
        out["data_generation_s"] = time.perf_counter() - t0
    if args.generate_only:
        return 0
    out["cases"] = {}
    # warm-up, discarded: first imports and numba compilation in this process and the workers
    compare_case(*paths[f"cube_{min(args.sizes)}"], args.workers, 1)
    for s in args.sizes:
        out["cases"][f"cube_{s}"] = compare_case(*paths[f"cube_{s}"], args.workers, args.repeats)
    if not args.skip_nucmm:
        load0 = [round(x, 2) for x in os.getloadavg()]
        res, wall, peak = run_blockseg(*paths["nucmm_z"], args.workers)
        out["cases"]["nucmm_z"] = {
            "shape": list(NUCMM_SHAPE), "n_true": res.overlaps.n_true, "n_pred": res.overlaps.n_pred,
            "voxels": int(np.prod(NUCMM_SHAPE)), "runs": [{"blockseg_s": wall, "loadavg_before": load0,
                                                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]}],
            "blockseg_median_s": wall, "cpu_s": run_blockseg.cpu_s, "blockseg_peak_rss_gb": peak / 2**30,
            "throughput_vox_per_s": int(np.prod(NUCMM_SHAPE)) / wall, "stage_s": res.timings, "avAP": res.av_ap,
            "stardist": "N/A: not attempted at NucMM-Z size (dense matrices of ~165k x 165k instances, ~500 GB)",
        }  # fmt: skip
    big = f"cube_{max(args.sizes)}"
    out["workers_scaling"] = {"shape": out["cases"][big]["shape"], str(args.workers): out["cases"][big]["blockseg_median_s"]}
    for w in args.scaling_workers:
        if w != args.workers:
            _, wall, _ = run_blockseg(*paths[big], w)
            out["workers_scaling"][str(w)] = wall
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
