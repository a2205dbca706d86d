"""Benchmark: the per-worker memory of every blockwise stage is set by the block, not the volume.

Not a test. For each case (a volume shape and a block shape), with a fresh LocalCluster of
``--workers`` worker processes per stage (so one stage's caches do not count in the next):

* ``synth``    -- ``blockseg.synthesize`` of a NucMM-Z-like EM volume (once per volume; its
  block shape is the first case's);
* ``targets``  -- perfect 3-label predictions (P_bg, P_boundary, P_interior) of the synthetic
  labels (``write_targets``; once per volume): the input of ``segment``, so that segment sees
  realistic nuclei. 3-label rather than B, C, D because the D target (a distance transform per
  nucleus) would take ~15 min per Gvox here, 3-label ~2 min;
* ``predict``  -- ``blockseg.predict`` with an *untrained* small network (``tiny_conv``,
  width 2, random weights, patch 36x132x132, output 32x128x128). A real U-Net would take about
  35 minutes per Gvox on 2 CPU cores; predict's memory is bounded the same way (input slabs +
  the block's float accumulator + the patch batch) and the small network keeps the run short;
* ``segment``  -- ``blockseg.segment`` of the perfect predictions (3-label decoder, halo 24);
* ``evaluate`` -- ``blockseg.evaluate`` of that segmentation against the synthetic ground
  truth, with ``block_voxels`` = the block's voxel count (evaluate picks its own block shape of
  whole chunks; the shape used is recorded).

The resident memory (RSS) of every worker process and of the driver is sampled every 0.1 s.
The bound is fitted per stage from the two block shapes on the big volume as
``peak <= A + B x block_voxels`` and checked against the small volume.

Writes ``--out``/memory.json and memory.md (default benchmarks/results/); data go under
``--root`` (default /tmp/bench_memory) and are deleted at the end unless ``--keep``.

    # development size
    PYTHONPATH=. python benchmarks/bench_memory.py --small 32 128 128 --big 64 256 256 \
        --block 32 128 128 --block2 32 64 64 --chunks 32 64 64 --out /tmp/memdev
    # the >= 1 Gvox run (NucMM-Z size, 1.15 Gvox)
    PYTHONPATH=. python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from blockseg.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.grid import default_block_shape  # noqa: E402
from blockseg.io import open_volume  # noqa: E402
from measure import RssSampler  # noqa: E402

GIB = 2**30


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _measure(name: str, workers: int, fn) -> dict:
    """Run ``fn(client)`` on a fresh LocalCluster; peak RSS per worker and of the driver, wall."""
    cfg = ClusterConfig(n_workers=workers, dashboard=False)
    with dask_client(cfg, quiet=True) as client:
        pids = sorted(client.run(os.getpid).values())
        idle_rss = [psutil.Process(p).memory_info().rss for p in pids]
        sampler = RssSampler(pids + [os.getpid()], interval=0.1)
        load0 = _load()
        sampler.start()
        t0 = time.perf_counter()
        extra = fn(client) or {}
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    peaks = [sampler.peak[p] for p in pids]
    row = {
        "stage": name,
        "wall_s": round(wall, 1),
        "worker_peak_rss_gib": round(max(peaks) / GIB, 3),
        "worker_peaks_gib": [round(p / GIB, 3) for p in peaks],
        "worker_idle_rss_gib": round(max(idle_rss) / GIB, 3),
        "driver_peak_rss_gib": round(sampler.peak[os.getpid()] / GIB, 3),
        "load_before": load0,
        "load_after": _load(),
        **extra,
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _checkpoint(path: Path) -> str:
    from blockseg.models import save_checkpoint
    from blockseg.models.tiny import TinyConvNet

    net = TinyConvNet(("B", "C", "D"), width=2, valid=True, input_patch=(36, 132, 132), dropout=0.0, seed=1)
    save_checkpoint(path, net, normalisation={"offset": 128.0, "scale": 64.0})
    return str(path)


def run_volume(root: Path, shape, chunks, blocks, workers: int, ckpt: str, seed: int) -> list[dict]:
    from blockseg.evaluate import evaluate
    from blockseg.predict import predict
    from blockseg.segment import ThreeLabelDecoder, segment
    from blockseg.synth import preset_params, synthesize
    from blockseg.targets import write_targets

    tag = "x".join(map(str, shape))
    vox = math.prod(shape)
    img = root / f"img_{tag}.zarr"
    gt = f"{img}/labels/nuclei"
    perfect = root / f"perfect_{tag}.zarr"
    params = preset_params("nucmm-z", shape=tuple(shape), seed=seed)
    common = {"volume": list(shape), "volume_voxels": vox}
    rows = []

    def blk(b):
        return {"block_shape": list(b), "block_voxels": math.prod(b)}

    rows.append({**_measure("synth", workers, lambda c: {"n_nuclei": synthesize(
        str(img), params, chunks=chunks, block_shape=blocks[0], client=c, overwrite=True, progress=False).n_nuclei}),
        **common, **blk(blocks[0])})  # fmt: skip
    rows.append({**_measure("targets", workers, lambda c: write_targets(
        gt, str(perfect), ("3label",), block_shape=blocks[0], client=c, overwrite=True) and None), **common, **blk(blocks[0])})  # fmt: skip
    for b in blocks:
        pred = root / f"tiny_{tag}.zarr"
        seg = root / f"seg_{tag}.zarr"

        def do_predict(c):
            r = predict(str(img), ckpt, str(pred), block_shape=b, client=c, overwrite=True, progress=False,
                        batch_size=2)  # fmt: skip
            return {"blocks": r.blocks, "memory_estimate_gib": round(r.plan.memory_bytes["total"] / GIB, 3)}

        rows.append({**_measure("predict", workers, do_predict), **common, **blk(b)})
        shutil.rmtree(pred, ignore_errors=True)

        def do_segment(c):
            r = segment(str(perfect), str(seg), ThreeLabelDecoder(), block_shape=b, halo=24, client=c, overwrite=True)
            return {"n_instances": r.n_instances}

        rows.append({**_measure("segment", workers, do_segment), **common, **blk(b)})

        ev_block = default_block_shape(shape, open_volume(gt).write_unit, math.prod(b))

        def do_evaluate(c):
            s = evaluate(gt, str(seg), client=c, block_voxels=math.prod(b)).summary()
            return {"n_true": s["n_true"], "n_pred": s["n_pred"], "avAP": round(s["avAP"], 4)}

        rows.append({**_measure("evaluate", workers, do_evaluate), **common, **blk(ev_block)})
        shutil.rmtree(seg, ignore_errors=True)
    return rows


def fit(rows: list[dict], big: list[int]) -> dict:
    """Per stage: A, B of ``peak = A + B x block_voxels`` through the big volume's two block shapes."""
    out = {}
    for stage in ("predict", "segment", "evaluate"):
        pts = sorted({(r["block_voxels"], r["worker_peak_rss_gib"]) for r in rows if r["stage"] == stage and r["volume"] == big})
        if len(pts) < 2 or pts[0][0] == pts[-1][0]:
            continue
        (v1, p1), (v2, p2) = pts[0], pts[-1]
        b = (p2 - p1) / (v2 - v1)
        a = p1 - b * v1
        others = [r for r in rows if r["stage"] == stage and r["volume"] != big]
        out[stage] = {
            "A_gib": round(a, 3),
            "B_bytes_per_block_voxel": round(b * GIB, 1),
            "check": [
                {"volume": r["volume"], "block_voxels": r["block_voxels"], "measured_gib": r["worker_peak_rss_gib"],
                 "fitted_gib": round(a + b * r["block_voxels"], 3)}
                for r in others
            ],  # fmt: skip
        }
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Bounded memory: per-worker peak RSS is set by the block, not the volume",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']} (shared with other engineers' jobs; load averages per stage below). "
        f"{res['workers']} worker processes, a fresh LocalCluster per stage.  ",
        "predict runs an untrained `tiny_conv` network (2 convolutions, width 2, patch 36x132x132): a real U-Net "
        "would take ~35 min per Gvox on 2 CPU cores. segment runs on perfect 3-label predictions written from the "
        "synthetic labels (`write_targets`; the D target of B, C, D costs ~8x more to write), evaluate scores that segmentation against the synthetic ground truth.",
        "",
        "| stage | volume | voxels | block shape | per-worker peak RSS (GiB) | worker idle RSS (GiB) | driver peak RSS (GiB) | wall (s) | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['stage']} | {'x'.join(map(str, r['volume']))} | {r['volume_voxels'] / 1e9:.3f} G | "
            f"{'x'.join(map(str, r['block_shape']))} ({r['block_voxels'] / 1e6:.1f} M) | {r['worker_peak_rss_gib']:.2f} | "
            f"{r['worker_idle_rss_gib']:.2f} | {r['driver_peak_rss_gib']:.2f} | {r['wall_s']:.0f} | "
            f"{r['load_before'][0]} / {r['load_after'][0]} |"
        )
    lines += ["", "## Bound", ""]
    for stage, f in res["fit"].items():
        checks = "; ".join(
            f"volume {'x'.join(map(str, c['volume']))}, {c['block_voxels'] / 1e6:.1f} M-voxel blocks: measured "
            f"{c['measured_gib']:.2f} GiB, bound {c['fitted_gib']:.2f} GiB"
            for c in f["check"]
        )
        lines.append(
            f"- **{stage}**: per-worker peak ≈ {f['A_gib']:.2f} GiB + {f['B_bytes_per_block_voxel']:.0f} B × block voxels "
            f"(line through the big volume's two block shapes). {checks}."
        )
    lines += ["", res.get("conclusion", "")]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, nargs=3, default=[128, 512, 512], help="small volume shape")
    ap.add_argument("--big", type=int, nargs=3, default=[397, 1450, 2000], help="big volume shape (NucMM-Z)")
    ap.add_argument("--block", type=int, nargs=3, default=[64, 512, 512], help="block shape of every stage")
    ap.add_argument("--block2", type=int, nargs=3, default=[32, 256, 256], help="the smaller block shape (big volume)")
    ap.add_argument("--chunks", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--root", default="/tmp/bench_memory", help="where the volumes are written")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder of memory.json / memory.md")
    ap.add_argument("--keep", action="store_true", help="keep the volumes")
    args = ap.parse_args()

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint(root / "tiny.pt")
    rows = []
    t0 = time.perf_counter()
    try:
        rows += run_volume(root, args.small, tuple(args.chunks), [tuple(args.block)], args.workers, ckpt, args.seed)
        rows += run_volume(root, args.big, tuple(args.chunks), [tuple(args.block), tuple(args.block2)], args.workers,
                           ckpt, args.seed)  # fmt: skip
    finally:
        if not args.keep:
            for p in root.glob("*.zarr"):
                shutil.rmtree(p, ignore_errors=True)
    res = {
        "command": "PYTHONPATH=. python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "workers": args.workers,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "rows": rows,
        "fit": fit(rows, list(args.big)),
    }
    biggest = max(r["volume_voxels"] for r in rows)
    w = [r["worker_peak_rss_gib"] for r in rows if r["stage"] in ("predict", "segment", "evaluate")]
    res["conclusion"] = (
        f"Largest per-worker peak of predict/segment/evaluate over all cases: {max(w):.2f} GiB "
        f"(volume up to {biggest / 1e9:.2f} G voxels, i.e. {biggest / GIB:.2f} GiB as uint8 and "
        f"{4 * biggest / GIB:.2f} GiB as uint32 labels)."
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "memory.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
