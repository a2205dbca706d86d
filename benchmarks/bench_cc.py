"""Benchmark: connected-components stitching, blockseg ``segment.label`` vs ``dask_image.ndmeasure.label``.

Not a test. Both label the SAME seed mask (the BCD decoder's seeds of the segment benchmark's
perfect predictions, written once as a uint8 zarr under benchmarks/data) with 26-connectivity,
on the same 2-worker LocalCluster, zarr -> zarr:

- blockseg: :func:`blockseg.segment.label` (per-block cc3d, face/edge/corner slab pairs,
  driver union-find, per-block relabel tables) with blocks of ``--block``³;
- dask-image: ``ndmeasure.label(da.from_zarr(mask, chunks=block), structure=ones((3,3,3)))``
  written with ``to_zarr`` (same blocks as dask chunks, each a whole number of zarr chunks).

Paired repeats (medians of per-repeat ratios), then the two outputs and a whole-volume ``cc3d``
run are compared as partitions (must be equal). Writes ``OUT.json``.

    PYTHONPATH=.:benchmarks python benchmarks/bench_cc.py --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_segment import _cpu_seconds, make_data  # noqa: E402
from common import DATA, loadavg, median, same_partition, shape_key  # noqa: E402
from measure import RssSampler  # noqa: E402

from blockseg.runtime.cluster import ClusterConfig, dask_client, run_blocks  # noqa: E402
from blockseg.io.volume import create_volume, open_volume  # noqa: E402
from blockseg.io.predictions import open_predictions, read_channels  # noqa: E402
from blockseg.segment import BCDDecoder, label  # noqa: E402


def _seed_mask_block(block_id, pred_path, mask_path, block_shape):
    vol = open_volume(mask_path, mode="r+")
    core = vol.grid(block_shape)[block_id].core
    seeds, _, _ = BCDDecoder().decode(read_channels(open_predictions(pred_path), core))
    vol.array[core] = seeds.astype(np.uint8)


def make_mask(shape, client, block) -> tuple[str, dict]:
    """The decoder's seed mask of the segment benchmark's predictions (cached)."""
    _, pred_path, _ = make_data(shape, 0.3, 0, client, 128)
    mask_path = DATA / f"seedmask_{shape_key(shape)}.zarr"
    if not (mask_path / ".done").exists():
        chunks = open_predictions(pred_path)["B"].chunks
        vol = create_volume(mask_path, shape, np.uint8, 1.0, chunks=chunks, overwrite=True, name="seeds")
        run_blocks(partial(_seed_mask_block, pred_path=str(pred_path), mask_path=str(mask_path), block_shape=(block,) * 3),
                   vol.grid((block,) * 3).block_ids, client=client, name="seed-mask", progress=False)  # fmt: skip
        (mask_path / ".done").write_text("ok\n")
    return str(mask_path), {"chunks": list(open_volume(mask_path).chunks)}


def _timed(fn, pids):
    sampler = RssSampler(pids)
    sampler.start()
    cpu0, load0, t = _cpu_seconds(pids), loadavg(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    cpu = _cpu_seconds(pids) - cpu0
    sampler.stop.set()
    sampler.join()
    return {"seconds": round(wall, 3), "worker_cpu_seconds": round(cpu, 2), "peak_rss_per_worker_bytes": max(sampler.peak.values()),
            "loadavg_before": load0, "loadavg_after": loadavg()}, out  # fmt: skip


def run_dask_image(mask_path: str, out_path: str, block: int, client) -> int:
    import dask.array as da
    from dask_image.ndmeasure import label as di_label

    arr = open_volume(mask_path).array
    x = da.from_zarr(arr, chunks=(block,) * 3)
    labels, n = di_label(x, structure=np.ones((3, 3, 3), bool))
    shutil.rmtree(out_path, ignore_errors=True)
    store = da.to_zarr(labels.astype(np.uint32), out_path, compute=False, overwrite=True)
    _, n = client.compute([store, n], sync=True)
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="volume edge (voxels)")
    ap.add_argument("--block", type=int, default=256, help="block edge: blockseg's block and dask-image's dask chunk")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs; medians reported")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "cc"), help="output prefix (.json)")
    args = ap.parse_args()
    shape = (args.size,) * 3
    ours_path, theirs_path = str(DATA / f"cc_blockseg_{args.size}.zarr"), str(DATA / f"cc_daskimage_{args.size}.zarr")
    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
    runs = []
    with dask_client(cfg, quiet=True) as client:
        mask_path, info = make_mask(shape, client, 128)
        pids = list(client.run(os.getpid).values())
        client.run(lambda: __import__("dask_image.ndmeasure") and __import__("blockseg.segment.components"))
        for r in range(args.repeats):
            ours, rep = _timed(lambda: label(mask_path, ours_path, 26, args.block, client=client, overwrite=True), pids)
            ours["n_components"] = rep.n_components
            ours["passes"] = rep.seconds
            theirs, n = _timed(lambda: run_dask_image(mask_path, theirs_path, args.block, client), pids)
            theirs["n_components"] = n
            runs.append({"blockseg": ours, "dask_image": theirs, "ratio": theirs["seconds"] / ours["seconds"]})
            print(f"repeat {r}: blockseg {ours['seconds']:.2f} s, dask-image {theirs['seconds']:.2f} s, load {loadavg()}", flush=True)
    import cc3d
    import zarr

    mask = open_volume(mask_path).array[...]
    ref = cc3d.connected_components(mask, connectivity=26)
    del mask
    a = open_volume(ours_path).array[...]
    b = zarr.open_array(theirs_path, mode="r")[...]
    res = {
        "volume": {"shape": list(shape), "mask": "BCD decoder seeds of perfect predictions", "foreground_voxels": int((a > 0).sum()), **info},
        "block": args.block, "workers": args.workers, "connectivity": 26, "runs": runs,
        "blockseg_median_seconds": median(r["blockseg"]["seconds"] for r in runs),
        "dask_image_median_seconds": median(r["dask_image"]["seconds"] for r in runs),
        "ratio_dask_image_over_blockseg_median": median(r["ratio"] for r in runs),
        "n_components": {"blockseg": runs[-1]["blockseg"]["n_components"], "dask_image": runs[-1]["dask_image"]["n_components"],
                         "cc3d_whole_volume": int(ref.max())},
        "partition_equal": {"blockseg_vs_dask_image": same_partition(a, b), "blockseg_vs_cc3d": same_partition(a, ref)},
    }  # fmt: skip
    for p in (ours_path, theirs_path):
        shutil.rmtree(p, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
