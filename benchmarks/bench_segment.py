"""Benchmark: ``blockseg segment`` on 2 dask workers vs one whole-volume skimage watershed.

Not a test. Generates (once, under benchmarks/data/, git-ignored) a synthetic nuclei volume and
its perfect BCD predictions (uint8 store), then in one run:

1. ``segment`` with a LocalCluster of ``--workers`` processes, in its default configuration
   (blocks 256³ here, segment's default halo; exact: exchange rounds until no face value changes); the peak RSS of every worker process is
   sampled every 0.1 s and the workers' CPU seconds are summed;
2. the same decoder on the whole volume in a fresh subprocess: decode, 26-connected seeds
   (``cc3d``), ``skimage.segmentation.watershed`` of the same uint8 height map with the same
   mask, the same size filters; its peak RSS is the child's ``ru_maxrss``;

1 and 2 are repeated ``--repeats`` times (paired, medians reported, with the load average:
the machine is shared); with ``--main PATH``, each repeat also times the previous code's
first pass (a read-only checkout, e.g. ``/work/main``, run in a subprocess with its own
cluster of the same size) on the same data and decoder: the baseline of the exact mode's cost;
3. agreement: voxels differing from ``segment_array`` (the exact whole-volume run, ids compared
   directly; must be 0), and, as partitions, from skimage and from main's first pass.

Every run uses NucMM's reference decoder thresholds (:data:`NUCMM`), old and new code alike.

Writes ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/segment``). ``--skip-whole``
times blockseg alone (the scaling runs; sizes where the whole volume does not fit in memory).

    PYTHONPATH=. python benchmarks/bench_segment.py --size 512 --workers 2 --repeats 3 --main /work/main
    PYTHONPATH=. python benchmarks/bench_segment.py --size 256 --block 128 --radius 24 24 --repeats 1 --main /work/main
    PYTHONPATH=. python benchmarks/bench_segment.py --shape 397 1450 2000 --skip-whole --repeats 1
"""

from __future__ import annotations

import argparse
import json
import math
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

from blockseg.runtime.cluster import ClusterConfig, dask_client, run_blocks  # noqa: E402
from blockseg.io.volume import create_volume, open_volume  # noqa: E402
from blockseg.segment import BCDDecoder, segment  # noqa: E402
from blockseg.segment.options import DEFAULT_HALO  # noqa: E402
from blockseg.segment.synthetic import random_nuclei, rasterise  # noqa: E402
from blockseg.train.targets import write_bcd_targets  # noqa: E402
from measure import FolderPeak, RssSampler  # noqa: E402
from blockseg.grid import BlockGrid  # noqa: E402
from blockseg.segment.pipeline import work_bytes  # noqa: E402


def _label_block(block_id, path, block_shape, centres, radii):
    vol = open_volume(path, mode="r+")
    block = vol.grid(block_shape)[block_id]
    vol.array[block.core] = rasterise(vol.shape, centres, radii, block.core)


def make_data(shape, density: float, seed: int, client, block: int, radius=(8.0, 12.0)) -> tuple[Path, Path, int]:
    """Random touching nuclei and their perfect BCD predictions, cached under benchmarks/data
    (keyed by shape, density and seed)."""
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    shape = tuple(int(s) for s in shape)
    key = f"{'x'.join(map(str, shape))}_d{density}_s{seed}" + ("" if tuple(radius) == (8.0, 12.0) else f"_r{radius[0]:g}-{radius[1]:g}")
    labels_path, pred_path = data / f"nuclei_{key}.zarr", data / f"nuclei_{key}_pred.zarr"
    n = int(density * np.prod(shape, dtype=float) / (4 / 3 * np.pi * (sum(radius) / 2) ** 3))
    if not (pred_path / "zarr.json").exists():
        centres, radii = random_nuclei(shape, n, tuple(radius), seed=seed)
        create_volume(labels_path, shape, np.uint32, 1.0, chunks=(64, 64, 64), overwrite=True)
        run_blocks(partial(_label_block, path=str(labels_path), block_shape=(block,) * 3, centres=centres, radii=radii),
                   open_volume(labels_path).grid((block,) * 3).block_ids, client=client, name="labels", progress=False)  # fmt: skip
        write_bcd_targets(str(labels_path), str(pred_path), block_shape=(block,) * 3, client=client, overwrite=True)
    return labels_path, pred_path, n


def tile_predictions(src: Path, shape, dst: Path) -> Path:
    """A prediction store of ``shape`` made by repeating ``src``'s chunks periodically (hard links,
    copies where links fail): a volume of any size in seconds and with no extra disk. Nuclei are
    cut where the tiles meet, which changes nothing for timing and memory."""
    import math
    import shutil

    if (dst / "zarr.json").exists():
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=lambda d, names: [n for n in names if n == "c"])
    for meta_path in tmp.glob("*/*/zarr.json"):
        meta = json.loads(meta_path.read_text())
        cs = meta["chunk_grid"]["configuration"]["chunk_shape"]
        n_src = [s // c for s, c in zip(meta["shape"], cs)]
        assert all(s % c == 0 for s, c in zip(meta["shape"], cs)), "the source must be whole chunks"
        meta["shape"] = list(shape)
        meta_path.write_text(json.dumps(meta))
        chunks_src, chunks_dst = src / meta_path.parent.relative_to(tmp) / "c", meta_path.parent / "c"
        for i in range(math.ceil(shape[0] / cs[0])):
            for j in range(math.ceil(shape[1] / cs[1])):
                row = chunks_dst / str(i) / str(j)
                row.mkdir(parents=True)
                for k in range(math.ceil(shape[2] / cs[2])):
                    f = chunks_src / str(i % n_src[0]) / str(j % n_src[1]) / str(k % n_src[2])
                    if f.exists():
                        try:
                            os.link(f, row / str(k))
                        except OSError:
                            shutil.copyfile(f, row / str(k))
    tmp.rename(dst)
    return dst


def _whole_volume(pred_path: str, decoder: BCDDecoder, out_npy: str, queue, own: bool = True) -> None:
    import cc3d
    import fastremap
    from skimage.segmentation import watershed

    from blockseg.io.predictions import open_predictions, read_channels

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


def _seconds(runs, i) -> str:
    """A table cell: run ``i``'s wall seconds, or a dash when that comparison was not run."""
    return f"{runs[i]['seconds']:.1f}" if runs else "–"


def _median(values):
    return float(np.median(np.asarray(values, dtype=float)))


#: NucMM's reference thresholds: the decoder of every run here (old and new code alike)
NUCMM = dict(seed_b=0.9, seed_c=0.8, seed_d=0.5, fg_b=0.85, fg_d=0.0, min_seed_size=32, min_size=128)

_MAIN_SCRIPT = r"""
import json, os, sys, time
import psutil
from blockseg.runtime.cluster import ClusterConfig, dask_client
from blockseg.segment import BCDDecoder, segment
pred, out, block, halo, workers, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
cfg = ClusterConfig(n_workers=workers, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
with dask_client(cfg, quiet=True) as client:
    pids = list(client.run(os.getpid).values())
    client.run(lambda: __import__("blockseg.segment.pipeline"))
    cpu = lambda: sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
    c0, t = cpu(), time.perf_counter()
    rep = segment(pred, out, BCDDecoder(**params), block_shape=block, halo=halo, client=client, overwrite=True)
    wall = time.perf_counter() - t
    print("RESULT " + json.dumps({"seconds": round(wall, 2), "worker_cpu_seconds": round(cpu() - c0, 2), "report": rep.to_dict()}))
"""


def _main_first_pass(main: str, pred_path, out, block, halo, workers) -> dict:
    """Today's (main's) first pass, certificate only, on the same data and decoder, in a
    subprocess running main's code read-only with its own cluster of the same size."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=main)
    cmd = [os.path.join(main, ".venv", "bin", "python"), "-c", _MAIN_SCRIPT, str(pred_path), str(out), str(block),
           str(halo), str(workers), json.dumps(NUCMM)]  # fmt: skip
    res = subprocess.run(cmd, cwd=main, env=env, capture_output=True, text=True, check=True)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="volume edge (voxels)")
    ap.add_argument("--block", type=int, default=256, help="block edge (voxels; 256 = segment's default here)")
    ap.add_argument("--halo", type=int, default=DEFAULT_HALO, help=f"halo of the exact mode (voxels; default {DEFAULT_HALO}, segment's)")
    ap.add_argument("--main-halo", type=int, default=24, help="halo of the previous code's first pass (default 24, its default)")
    ap.add_argument("--radius", type=float, nargs=2, default=(8.0, 12.0), help="nucleus radius range (voxels)")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs (blockseg, main, whole volume); medians reported")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes")
    ap.add_argument("--density", type=float, default=0.3, help="fraction of the volume covered by nuclei (approx.)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", type=int, nargs=3, help="volume shape (z y x) instead of --size cubed")
    ap.add_argument("--tile-from", type=int, default=0, metavar="N",
                    help="make the --shape volume by repeating the chunks of the N³ one (seconds, no disk; "
                    "for sizes whose generation would take long, e.g. NucMM-Z's; implies --skip-whole)")
    ap.add_argument("--skip-whole", action="store_true", help="time blockseg only (no whole-volume runs)")
    ap.add_argument("--main", default="", help="a checkout of the previous code (e.g. /work/main, read-only): its "
                    "first pass is timed in the same repeats, as the baseline of the exact mode's cost")
    ap.add_argument("--also", action="append", default=[], metavar="PATH",
                    help="another checkout (e.g. the code before a change) timed in the same repeats, "
                    "reported as this code's wall / its wall (repeatable)")
    ap.add_argument("--out", default=str(HERE / "results" / "segment"), help="output prefix (.json, .md)")
    args = ap.parse_args()
    shape = tuple(args.shape) if args.shape else (args.size,) * 3
    skey = "x".join(map(str, shape)) + ("" if tuple(args.radius) == (8.0, 12.0) else f"_r{args.radius[0]:g}-{args.radius[1]:g}")
    decoder = BCDDecoder(**NUCMM)
    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
    whole_npy = str(HERE / "data" / f"whole_{skey}.npy")
    runs, wholes, olds, loads = [], [], [], []
    alsos: dict[str, list] = {p: [] for p in args.also}
    with dask_client(cfg, quiet=True) as client:
        t0 = time.perf_counter()
        if args.tile_from:
            args.skip_whole = True
            _, small, n_small = make_data((args.tile_from,) * 3, args.density, args.seed, client, 128, tuple(args.radius))
            pred_path = tile_predictions(small, shape, HERE / "data" / f"tiled_{skey}_from{args.tile_from}_pred.zarr")
            n_nuclei = f"{n_small} generated in {args.tile_from}³, tiled"
        else:
            labels_path, pred_path, n_nuclei = make_data(shape, args.density, args.seed, client, 128, tuple(args.radius))
        t_data = time.perf_counter() - t0
        pids = list(client.run(os.getpid).values())
        client.run(lambda: __import__("blockseg.segment.pipeline"))  # import (and load the numba cache) before timing

        def one(label):
            out = HERE / "data" / f"seg_{skey}_{label}.zarr"
            sampler = RssSampler(pids)
            sampler.start()
            cpu0 = _cpu_seconds(pids)
            load0 = os.getloadavg()
            t = time.perf_counter()
            with FolderPeak(f"{out}.work", dt=0.2) as work:
                rep = segment(pred_path, out, decoder, block_shape=args.block, halo=args.halo, client=client,
                              overwrite=True)  # fmt: skip
            wall = time.perf_counter() - t
            cpu = _cpu_seconds(pids) - cpu0
            sampler.stop.set()
            sampler.join()
            return {"seconds": round(wall, 2), "worker_cpu_seconds": round(cpu, 2), "report": rep.to_dict(),
                    "peak_rss_per_worker_bytes": sorted(sampler.peak.values()), "loadavg_before": load0,
                    "work_peak_bytes": work.peak, "work_peak_over_uint8_volume": round(work.peak / math.prod(shape), 2),
                    "work_estimate_over_uint8_volume": round(work_bytes(BlockGrid(shape, (args.block,) * 3), (args.halo,) * 3) / math.prod(shape), 2),
                    "loadavg_after": os.getloadavg(), "out": str(out)}  # fmt: skip

        for r in range(args.repeats):
            runs.append(one("default"))
            loads.append(os.getloadavg())
            msg = f"repeat {r}: blockseg {runs[-1]['seconds']} s (rounds {len(runs[-1]['report']['rounds'])})"
            if args.main:
                o = _main_first_pass(args.main, pred_path, HERE / "data" / f"seg_{skey}_main.zarr", args.block, args.main_halo, args.workers)
                o["loadavg_after"] = os.getloadavg()
                olds.append(o)
                msg += f", main's first pass {o['seconds']} s"
            for other in args.also:
                o = _main_first_pass(other, pred_path, HERE / "data" / f"seg_{skey}_also.zarr", args.block, args.halo, args.workers)
                o["loadavg_after"] = os.getloadavg()
                alsos[other].append(o)
                _remove(str(HERE / "data" / f"seg_{skey}_also.zarr"))
                msg += f", {other} {o['seconds']} s"
            if not args.skip_whole:
                w = _whole(pred_path, decoder, whole_npy, own=(r == 0))
                w["loadavg_after"] = os.getloadavg()
                wholes.append(w)
                msg += f", whole {w['seconds']:.1f} s"
            print(msg + f", load {os.getloadavg()}", flush=True)
    t_block = _median([r["seconds"] for r in runs])
    res = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "a shared machine: see the load averages"},
        "volume": {"shape": list(shape), "nuclei_generated": n_nuclei, "radius": list(args.radius),
                   "prediction": "perfect BCD targets, uint8", "decoder": NUCMM},
        "blockseg": {"workers": args.workers, "block": args.block, "halo": args.halo, "runs": runs,
                     "median_seconds": t_block, "throughput_vox_per_s": float(np.prod(shape, dtype=float)) / t_block,
                     "median_worker_cpu_seconds": _median([r["worker_cpu_seconds"] for r in runs]),
                     "peak_rss_per_worker_bytes_max": max(max(r["peak_rss_per_worker_bytes"]) for r in runs)},
        "data_generation_seconds": round(t_data, 1),
    }  # fmt: skip
    report = runs[-1]["report"]
    lines = []
    if olds:
        cost = [r["seconds"] / o["seconds"] for r, o in zip(runs, olds)]
        cpu_cost = [r["worker_cpu_seconds"] / o["worker_cpu_seconds"] for r, o in zip(runs, olds)]
        res["main_first_pass"] = {"path": args.main, "runs": olds, "median_seconds": _median([o["seconds"] for o in olds])}
        res["exact_cost_over_main_first_pass_per_repeat"] = [round(x, 3) for x in cost]
        res["exact_cost_over_main_first_pass_median"] = round(_median(cost), 3)
        res["exact_cpu_cost_over_main_first_pass_median"] = round(_median(cpu_cost), 3)
        lines.append(f"Main's first pass (certificate only, `{args.main}`): median {res['main_first_pass']['median_seconds']:.1f} s; "
                     f"**exact / main = {res['exact_cost_over_main_first_pass_median']:.2f}x wall** (per repeat {res['exact_cost_over_main_first_pass_per_repeat']}), "
                     f"{res['exact_cpu_cost_over_main_first_pass_median']:.2f}x worker CPU; main left "
                     f"{olds[-1]['report'].get('uncertain_voxels')} voxels uncertified.")  # fmt: skip
    for other, os_ in alsos.items():
        cost = [r["seconds"] / o["seconds"] for r, o in zip(runs, os_)]
        res.setdefault("also", {})[other] = {"runs": os_, "median_seconds": _median([o["seconds"] for o in os_]),
                                             "this_over_it_per_repeat": [round(x, 3) for x in cost],
                                             "this_over_it_median": round(_median(cost), 3)}  # fmt: skip
        lines.append(f"`{other}` (same repeats): median {res['also'][other]['median_seconds']:.1f} s; **this code / it = "
                     f"{res['also'][other]['this_over_it_median']:.2f}x wall** (per repeat {res['also'][other]['this_over_it_per_repeat']}).")
        if olds:
            base = [o["seconds"] / m["seconds"] for o, m in zip(os_, olds)]
            lines.append(f"`{other}` / main's first pass: {_median(base):.2f}x wall (per repeat {[round(x, 3) for x in base]}).")
    a = open_volume(runs[-1]["out"]).array[:]
    fg = int((a > 0).sum())
    if not args.skip_whole:
        own = np.load(whole_npy.replace(".npy", "_own.npy"))
        diff_own = int(np.count_nonzero(a != own))  # ids included: segment writes segment_array's ids
        b = np.load(whole_npy)
        diff = disagreement(a, b)
        del b
        res["agreement_vs_own_whole_volume"] = {"voxels_differing": diff_own, "fraction": diff_own / max(fg, 1)}
        res["agreement_vs_skimage"] = {"foreground_voxels": fg, "voxels_differing": diff, "fraction": diff / max(fg, 1)}
        if olds:
            old = open_volume(str(HERE / "data" / f"seg_{skey}_main.zarr")).array[:]
            res["main_first_pass"]["voxels_differing_from_exact_whole_volume"] = disagreement(old, own)
            del old
        t_whole = _median([w["seconds"] for w in wholes])
        ratios = [w["seconds"] / r["seconds"] for r, w in zip(runs, wholes)]
        res["whole_volume_skimage"] = {"runs": wholes, "median_seconds": t_whole,
                                       "peak_rss_bytes_max": max(w["peak_rss_bytes"] for w in wholes),
                                       "median_cpu_seconds": _median([w["cpu_seconds"] for w in wholes])}  # fmt: skip
        res["wall_ratio_whole_over_blockseg_per_repeat"] = [round(x, 3) for x in ratios]
        res["wall_ratio_median"] = round(_median(ratios), 3)
        res["cpu_ratio_whole_over_blockseg_median"] = round(
            res["whole_volume_skimage"]["median_cpu_seconds"] / res["blockseg"]["median_worker_cpu_seconds"], 3)
        lines.append(f"Whole volume (same decoder, cc3d seeds, `skimage.segmentation.watershed`, one process): median {t_whole:.1f} s; "
                     f"**whole / blockseg = {res['wall_ratio_median']:.2f}x wall** (per repeat {res['wall_ratio_whole_over_blockseg_per_repeat']}), "
                     f"{res['cpu_ratio_whole_over_blockseg_median']:.2f}x CPU; peak RSS {res['whole_volume_skimage']['peak_rss_bytes_max'] / 2**30:.2f} GiB.")
        lines.append(f"**Voxels differing from `segment_array` (the exact whole-volume run, ids compared directly): {diff_own}** of {fg} foreground.")
        if olds:
            lines.append(f"Main's first pass differs from the exact whole-volume result in {res['main_first_pass']['voxels_differing_from_exact_whole_volume']} voxels "
                         "(partition comparison; its own tie rule was first-come, so part of this is the rule change, not seams).")
        lines.append(f"Voxels differing from skimage's watershed (its own tie rule, partition comparison): {diff} ({diff / max(fg, 1):.2e}).")
    for r in runs:
        _remove(r["out"])
    _remove(str(HERE / "data" / f"seg_{skey}_main.zarr"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2))
    rows = "\n".join(
        f"| {i} | {r['seconds']:.1f} | {r['worker_cpu_seconds']:.1f} | {len(r['report']['rounds'])} | {r['report']['blocks_rerun']} | "
        f"{_seconds(olds, i)} | {_seconds(wholes, i)} | "
        f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |"
        for i, r in enumerate(runs)
    )
    cmd = f"PYTHONPATH=.:benchmarks python benchmarks/bench_segment.py --shape {' '.join(map(str, shape))} --radius {args.radius[0]:g} {args.radius[1]:g} --workers {args.workers} --block {args.block} --halo {args.halo} --main-halo {args.main_halo} --repeats {args.repeats}" + (f" --main {args.main}" if args.main else "") + (f" --tile-from {args.tile_from}" if args.tile_from else (" --skip-whole" if args.skip_whole else ""))
    nl = "\n"
    md = f"""# segment benchmark ({skey}, {args.workers} workers, exact mode)

Command: `{cmd}`
Machine: {os.cpu_count()} CPUs, {platform.platform()}, shared (other jobs may run beside it) -- see the load column.
Volume: {n_nuclei} random touching nuclei of radius {args.radius[0]:g}-{args.radius[1]:g}, perfect BCD predictions (uint8), NucMM decoder thresholds; blocks {args.block}³, halo {args.halo} (the previous code's first pass: halo {args.main_halo}, its default).

| repeat | blockseg wall (s) | worker CPU (s) | exchange rounds | block re-runs | main's first pass wall (s) | whole-volume skimage wall (s) | 1-min load (before / after) |
|---|---|---|---|---|---|---|---|
{rows}

{nl.join(lines)}
Peak RSS per worker: {res['blockseg']['peak_rss_per_worker_bytes_max'] / 2**30:.2f} GiB. Instances: {report['n_instances']}.
Rounds of the last run: {report['rounds']}; flood amplification {report['flood_amplification']}.
Pass timings of the last run (s): {report['seconds']}
"""
    Path(args.out + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
