"""Benchmark: ``blockseg segment`` on 2 dask workers vs one whole-volume skimage watershed.

Not a test. Generates (once, under benchmarks/data/, git-ignored) a synthetic nuclei volume and
its perfect BCD predictions (uint8 store), then in one run:

1. ``segment`` with a LocalCluster of ``--workers`` processes, in its default configuration
   (blocks 256³ here, halo 24, certificate only); the peak RSS of every worker process is
   sampled every 0.1 s and the workers' CPU seconds are summed;
2. the same decoder on the whole volume in a fresh subprocess: decode, 26-connected seeds
   (``cc3d``), ``skimage.segmentation.watershed`` of the same uint8 height map with the same
   mask, the same size filters; its peak RSS is the child's ``ru_maxrss``;

1 and 2 are repeated ``--repeats`` times (paired, medians reported, with the load average:
the machine is shared), then one run with a resolution round (``--resolution-halo``);
3. agreement: voxels outside the one-to-one best overlap of the two labellings, and against
   blockseg's own flood on the whole volume (same tie rule: the seam check).

Writes ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/segment``). ``--skip-whole``
times blockseg alone (the scaling runs; sizes where the whole volume does not fit in memory).

    PYTHONPATH=. python benchmarks/bench_segment.py --size 512 --workers 2 --repeats 3
    PYTHONPATH=. python benchmarks/bench_segment.py --shape 397 1450 2000 --skip-whole --repeats 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from blockseg.cluster import ClusterConfig, dask_client, run_blocks  # noqa: E402
from blockseg.io import create_volume, open_volume  # noqa: E402
from blockseg.segment import BCDDecoder, segment  # noqa: E402
from blockseg.segment.synthetic import random_nuclei, rasterise  # noqa: E402
from blockseg.targets import write_bcd_targets  # noqa: E402
from measure import RssSampler  # noqa: E402


def _label_block(block_id, path, block_shape, centres, radii):
    vol = open_volume(path, mode="r+")
    block = vol.grid(block_shape)[block_id]
    vol.array[block.core] = rasterise(vol.shape, centres, radii, block.core)


def make_data(shape, density: float, seed: int, client, block: int) -> tuple[Path, Path, int]:
    """Random touching nuclei and their perfect BCD predictions, cached under benchmarks/data
    (keyed by shape, density and seed)."""
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    shape = tuple(int(s) for s in shape)
    key = f"{'x'.join(map(str, shape))}_d{density}_s{seed}"
    labels_path, pred_path = data / f"nuclei_{key}.zarr", data / f"nuclei_{key}_pred.zarr"
    n = int(density * np.prod(shape, dtype=float) / (4 / 3 * np.pi * 10**3))
    if not (pred_path / "zarr.json").exists():
        centres, radii = random_nuclei(shape, n, (8.0, 12.0), seed=seed)
        create_volume(labels_path, shape, np.uint32, 1.0, chunks=(64, 64, 64), overwrite=True)
        run_blocks(partial(_label_block, path=str(labels_path), block_shape=(block,) * 3, centres=centres, radii=radii),
                   open_volume(labels_path).grid((block,) * 3).block_ids, client=client, name="labels", progress=False)  # fmt: skip
        write_bcd_targets(str(labels_path), str(pred_path), block_shape=(block,) * 3, client=client, overwrite=True)
    return labels_path, pred_path, n


def _whole_volume(pred_path: str, decoder: BCDDecoder, out_npy: str, queue, own: bool = True) -> None:
    import cc3d
    import fastremap
    from skimage.segmentation import watershed

    from blockseg.predictions import open_predictions, read_channels

    t0 = time.perf_counter()
    ch = read_channels(open_predictions(pred_path), (slice(None),) * 3)
    t_read = time.perf_counter() - t0
    seeds_mask, fg, height = decoder.decode(ch)
    del ch
    seeds = cc3d.connected_components(seeds_mask.view(np.uint8), connectivity=26, out_dtype=np.uint32)
    seeds = cc3d.dust(seeds, threshold=decoder.min_seed_size, connectivity=26, in_place=True, precomputed_ccl=True)
    labels = watershed(height, seeds, mask=fg)
    ids, counts = fastremap.unique(labels, return_counts=True)
    labels = fastremap.mask(labels, ids[(counts < decoder.min_size) & (ids != 0)])
    labels, _ = fastremap.renumber(labels, in_place=True)
    t_total = time.perf_counter() - t0
    np.save(out_npy, labels.astype(np.uint32))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak, cpu_s = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    n = int(labels.max())
    del labels, seeds, seeds_mask, fg, height
    if not own:
        queue.put({"seconds": t_total, "cpu_seconds": cpu_s, "read_seconds": t_read, "peak_rss_bytes": peak, "n_instances": n})
        return
    # the same decoder with blockseg's own flood on the whole volume: the seam reference
    from blockseg.segment import segment_array

    t1 = time.perf_counter()
    own = segment_array(read_channels(open_predictions(pred_path), (slice(None),) * 3), decoder)
    t_own = time.perf_counter() - t1
    np.save(out_npy.replace(".npy", "_own.npy"), own)
    queue.put({"seconds": t_total, "cpu_seconds": cpu_s, "read_seconds": t_read, "peak_rss_bytes": peak, "n_instances": n,
               "own_flood_whole_volume_seconds": t_own})  # fmt: skip


def disagreement(a: np.ndarray, b: np.ndarray) -> int:
    """Voxels outside the one-to-one best overlap of two labellings (greedy on overlap size)."""
    sel = (a != 0) | (b != 0)
    key = a[sel].astype(np.uint64) * np.uint64(int(b.max()) + 1) + b[sel].astype(np.uint64)
    keys, counts = np.unique(key, return_counts=True)
    pa, pb = keys // np.uint64(int(b.max()) + 1), keys % np.uint64(int(b.max()) + 1)
    order = np.argsort(-counts, kind="stable")
    used_a, used_b, agree = set(), set(), 0
    for x, y, c in zip(pa[order].tolist(), pb[order].tolist(), counts[order].tolist()):
        if x and y and x not in used_a and y not in used_b:
            used_a.add(x)
            used_b.add(y)
            agree += c
    return int(sel.sum() - agree)


def _cpu_seconds(pids) -> float:
    """User + system CPU seconds used so far by the given processes (robust to a busy machine)."""
    import psutil

    total = 0.0
    for p in pids:
        t = psutil.Process(p).cpu_times()
        total += t.user + t.system
    return total


def _whole(pred_path, decoder, whole_npy, own):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_whole_volume, args=(str(pred_path), decoder, whole_npy, q, own))
    proc.start()
    out = q.get()
    proc.join()
    return out


def _remove(path: str) -> None:
    """Delete a benchmark output (disk is limited; the repeats rewrite it anyway)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _median(values):
    return float(np.median(np.asarray(values, dtype=float)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="volume edge (voxels)")
    ap.add_argument("--block", type=int, default=256, help="block edge (voxels; 256 = segment's default here)")
    ap.add_argument("--halo", type=int, default=24, help="halo (voxels; segment's default)")
    ap.add_argument("--resolution-halo", type=int, default=48,
                    help="one extra run with resolution rounds up to this halo (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs (blockseg, whole volume); medians reported")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--density", type=float, default=0.3, help="fraction of the volume covered by nuclei (approx.)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=3, help="volume shape (z y x) instead of --size cubed")
    ap.add_argument("--skip-whole", action="store_true", help="time blockseg only (no whole-volume runs)")
    ap.add_argument("--out", default=str(HERE / "results" / "segment"), help="output prefix (.json, .md)")
    args = ap.parse_args()
    shape = tuple(args.shape) if args.shape else (args.size,) * 3
    skey = "x".join(map(str, shape))
    decoder = BCDDecoder()
    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
    whole_npy = str(HERE / "data" / f"whole_{skey}.npy")
    runs, wholes, loads = [], [], []
    resolution = None
    with dask_client(cfg, quiet=True) as client:
        t0 = time.perf_counter()
        labels_path, pred_path, n_nuclei = make_data(shape, args.density, args.seed, client, 128)
        t_data = time.perf_counter() - t0
        pids = list(client.run(os.getpid).values())
        client.run(lambda: __import__("blockseg.segment.pipeline"))  # import (and load the numba cache) before timing

        def one(max_halo, label):
            out = HERE / "data" / f"seg_{skey}_{label}.zarr"
            sampler = RssSampler(pids)
            sampler.start()
            cpu0 = _cpu_seconds(pids)
            load0 = os.getloadavg()
            t = time.perf_counter()
            rep = segment(pred_path, out, decoder, block_shape=args.block, halo=args.halo, max_halo=max_halo,
                          client=client, overwrite=True)  # fmt: skip
            wall = time.perf_counter() - t
            cpu = _cpu_seconds(pids) - cpu0
            sampler.stop.set()
            sampler.join()
            return {"seconds": round(wall, 2), "worker_cpu_seconds": round(cpu, 2), "report": rep.to_dict(),
                    "peak_rss_per_worker_bytes": sorted(sampler.peak.values()), "loadavg_before": load0,
                    "loadavg_after": os.getloadavg(), "out": str(out)}  # fmt: skip

        for r in range(args.repeats):
            runs.append(one(args.halo, "default"))
            loads.append(os.getloadavg())
            if args.skip_whole:
                print(f"repeat {r}: blockseg {runs[-1]['seconds']} s, load {os.getloadavg()}", flush=True)
                continue
            w = _whole(pred_path, decoder, whole_npy, own=(r == 0))
            w["loadavg_after"] = os.getloadavg()
            wholes.append(w)
            print(f"repeat {r}: blockseg {runs[-1]['seconds']} s, whole {w['seconds']:.1f} s, load {os.getloadavg()}", flush=True)
        if args.resolution_halo:
            resolution = one(args.resolution_halo, "resolution")
    if args.skip_whole:
        t_block = _median([r["seconds"] for r in runs])
        res = {"volume": {"shape": list(shape), "nuclei_generated": n_nuclei, "prediction": "perfect BCD targets, uint8"},
               "blockseg": {"workers": args.workers, "block": args.block, "halo": args.halo, "runs": runs,
                            "median_seconds": t_block, "throughput_vox_per_s": float(np.prod(shape, dtype=float)) / t_block,
                            "peak_rss_per_worker_bytes_max": max(max(r["peak_rss_per_worker_bytes"]) for r in runs)},
               "data_generation_seconds": round(t_data, 1)}  # fmt: skip
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(res, indent=2))
        print(json.dumps({k: v for k, v in res["blockseg"].items() if k != "runs"}, indent=1))
        for r in runs:
            _remove(r["out"])
        return
    a = open_volume(runs[-1]["out"]).array[:]
    b = np.load(whole_npy)
    diff = disagreement(a, b)
    del b
    diff_own = disagreement(a, np.load(whole_npy.replace(".npy", "_own.npy")))
    fg = int((a > 0).sum())
    report = runs[-1]["report"]
    t_block = _median([r["seconds"] for r in runs])
    t_whole = _median([w["seconds"] for w in wholes])
    cpu_block = _median([r["worker_cpu_seconds"] for r in runs])
    cpu_whole = _median([w["cpu_seconds"] for w in wholes])
    ratios = [w["seconds"] / r["seconds"] for r, w in zip(runs, wholes)]
    peak = max(max(r["peak_rss_per_worker_bytes"]) for r in runs)
    for r in runs + ([resolution] if resolution else []):
        _remove(r["out"])
    res = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "shared with 3 other engineers' jobs (one training a network): see the load averages"},
        "volume": {"shape": list(shape), "nuclei_generated": n_nuclei, "prediction": "perfect BCD targets, uint8"},
        "blockseg": {"workers": args.workers, "block": args.block, "halo": args.halo, "runs": runs,
                     "median_seconds": t_block, "throughput_vox_per_s": float(np.prod(shape, dtype=float)) / t_block, "median_worker_cpu_seconds": cpu_block,
                     "peak_rss_per_worker_bytes_max": peak, "resolution_run": resolution},
        "whole_volume_skimage": {"runs": wholes, "median_seconds": t_whole,
                                 "peak_rss_bytes_max": max(w["peak_rss_bytes"] for w in wholes), "median_cpu_seconds": cpu_whole},
        "wall_ratio_whole_over_blockseg_per_repeat": [round(x, 3) for x in ratios],
        "wall_ratio_median": round(_median(ratios), 3),
        "cpu_ratio_whole_over_blockseg_median": round(cpu_whole / cpu_block, 3),
        "agreement_vs_skimage": {"foreground_voxels": fg, "voxels_differing": diff, "fraction": diff / max(fg, 1)},
        "agreement_vs_own_whole_volume": {"voxels_differing": diff_own, "fraction": diff_own / max(fg, 1)},
        "data_generation_seconds": round(t_data, 1),
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2))
    gib = 2**30
    rows = "\n".join(
        f"| {i} | {r['seconds']:.1f} | {r['worker_cpu_seconds']:.1f} | {w['seconds']:.1f} | {w['cpu_seconds']:.1f} | "
        f"{x:.2f}x | {r['loadavg_before'][0]:.1f} / {w['loadavg_after'][0]:.1f} |"
        for i, (r, w, x) in enumerate(zip(runs, wholes, ratios))
    )
    res_line = ""
    if resolution:
        rr = resolution["report"]
        res_line = (f"With one resolution round (halo {args.resolution_halo}): {resolution['seconds']:.1f} s wall, "
                    f"{resolution['worker_cpu_seconds']:.1f} CPU s; rounds {rr['rounds']}.\n")
    md = f"""# segment benchmark ({skey}, {args.workers} workers)

Command: `PYTHONPATH=. python benchmarks/bench_segment.py --shape {' '.join(map(str, shape))} --workers {args.workers} --block {args.block} --halo {args.halo} --repeats {args.repeats}`
Machine: {os.cpu_count()} CPUs, {platform.platform()}, **shared** with three other engineers' jobs (one
training a network) -- wall times are inflated and noisy; the CPU-time ratio is the steadier figure.

| repeat | blockseg wall (s) | blockseg worker CPU (s) | whole-volume skimage wall (s) | whole CPU (s) | wall ratio | 1-min load (before / after) |
|---|---|---|---|---|---|---|
{rows}

Medians: blockseg {t_block:.1f} s wall, {cpu_block:.1f} CPU s (blocks {args.block}³, halo {args.halo}, no resolution round:
the default configuration); whole volume (same decoder, cc3d seeds, `skimage.segmentation.watershed`) {t_whole:.1f} s,
{cpu_whole:.1f} CPU s. **Wall ratio {res['wall_ratio_median']:.2f}x** (median of per-repeat ratios), **CPU ratio {res['cpu_ratio_whole_over_blockseg_median']:.2f}x**.
Peak RSS per worker: {peak / gib:.2f} GiB (max over runs and workers); whole volume {max(w['peak_rss_bytes'] for w in wholes) / gib:.2f} GiB.
Whole volume with blockseg's own flood instead of skimage (single process): {wholes[0]['own_flood_whole_volume_seconds']:.1f} s.
Instances: blockseg {report['n_instances']}, whole volume {wholes[-1]['n_instances']}.
Voxels differing from the whole-volume skimage result (its own tie rule): {diff} of {fg} foreground ({diff / max(fg, 1):.2e}).
Voxels differing from the whole-volume run of blockseg's flood (same tie rule; the seam check): {diff_own} ({diff_own / max(fg, 1):.2e}).
Certificate: {report['uncertain_voxels']} voxels ({report['uncertain_voxels'] / max(report['foreground_voxels'], 1):.3%} of foreground) not certified by the first pass.
{res_line}Pass timings of the last default run (s): {report['seconds']}
"""
    Path(args.out + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
