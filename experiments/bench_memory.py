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
* ``segment``  -- ``blockseg.segment`` of the perfect predictions (3-label decoder, default halo);
* ``evaluate`` -- ``blockseg.evaluate`` of that segmentation against the synthetic ground
  truth, with ``block_voxels`` = the block's voxel count (evaluate picks its own block shape of
  whole chunks; the shape used is recorded).

The resident memory (RSS) of every worker process and of the driver is sampled every 0.1 s.
The bound is fitted per stage from the two block shapes on the big volume as
``peak <= A + B x block_voxels`` and checked against the small volume.

Every measured stage is appended to a JSON-lines file (``--rows``, default ROOT/rows.jsonl) as
it completes, so an interrupted run keeps its rows; ``memory.json`` and ``memory.md`` (in
``--out``, default experiments/results/) are written from all rows of that file
(``--report-only`` only does that). Data go under ``--root`` (default /tmp/bench_memory) and
are deleted at the end unless ``--keep``.

    # development size
    PYTHONPATH=. python experiments/bench_memory.py --chunks 32x64x64 --root /tmp/memdev --out /tmp/memdev \
        --case "32x128x128 32x128x128 synth,targets,predict,segment,evaluate" \
        --case "32x128x128 32x64x64 predict,segment,evaluate" \
        --case "64x128x128 32x128x128 synth,targets,predict,segment,evaluate"
    # the >= 1 Gvox run (NucMM-Z size, 1.15 Gvox) with the default cases
    PYTHONPATH=. python experiments/bench_memory.py
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
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # measure.py, kept with the maintained benchmarks

from blockseg.runtime.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.grid import default_block_shape  # noqa: E402
from blockseg.io.volume import open_volume  # noqa: E402
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


def run_case(root: Path, shape, chunks, block, stages, workers: int, ckpt: str, seed: int, emit) -> None:
    """Run ``stages`` of one case (volume shape, block shape); ``emit(row)`` after each stage.

    ``synth`` and ``targets`` make the volume and the segment input; without them the volume of
    an earlier case (same shape, under ``root``) is reused.
    """
    from blockseg.evaluate import evaluate
    from blockseg.predict import predict
    from blockseg.segment import ThreeLabelDecoder, segment
    from blockseg.synth import preset_params, synthesize
    from blockseg.train.targets import write_targets

    tag = "x".join(map(str, shape))
    img = root / f"img_{tag}.zarr"
    gt = f"{img}/labels/nuclei"
    perfect = root / f"perfect_{tag}.zarr"
    pred = root / f"tiny_{tag}.zarr"
    seg = root / f"seg_{tag}_{'x'.join(map(str, block))}.zarr"
    info = {"volume": list(shape), "volume_voxels": math.prod(shape), "block_shape": list(block),
            "block_voxels": math.prod(block)}  # fmt: skip

    def do_synth(c):
        params = preset_params("nucmm-z", shape=tuple(shape), seed=seed)
        s = synthesize(str(img), params, chunks=chunks, block_shape=block, client=c, overwrite=True, progress=False)
        return {"n_nuclei": s.n_nuclei}

    def do_targets(c):
        write_targets(gt, str(perfect), ("3label",), block_shape=block, client=c, overwrite=True)

    def do_predict(c):
        r = predict(str(img), ckpt, str(pred), block_shape=block, client=c, overwrite=True, progress=False, batch_size=2)
        shutil.rmtree(pred, ignore_errors=True)
        return {"blocks": r.blocks, "memory_estimate_gib": round(r.plan.memory_bytes["total"] / GIB, 3)}

    def do_segment(c):
        r = segment(str(perfect), str(seg), ThreeLabelDecoder(), block_shape=block, client=c, overwrite=True)  # default halo
        return {"n_instances": r.n_instances}

    def do_evaluate(c):
        s = evaluate(gt, str(seg), client=c, block_voxels=math.prod(block)).summary()
        ev_block = default_block_shape(shape, open_volume(gt).write_unit, math.prod(block))
        return {"n_true": s["n_true"], "n_pred": s["n_pred"], "avAP": round(s["avAP"], 4),
                "block_shape": list(ev_block), "block_voxels": math.prod(ev_block)}  # fmt: skip

    funcs = {"synth": do_synth, "targets": do_targets, "predict": do_predict, "segment": do_segment, "evaluate": do_evaluate}
    for stage in stages:
        row = {**info, **_measure(stage, workers, funcs[stage])}
        emit(row)


def fit(rows: list[dict], big: list[int]) -> dict:
    """Per stage: A, B of ``peak = A + B x block_voxels`` through the two block shapes of one
    volume (the biggest that has two), checked against the other volume's rows."""
    out = {}
    for stage in ("predict", "segment", "evaluate"):
        mine = [r for r in rows if r["stage"] == stage]
        for vol in sorted({tuple(r["volume"]) for r in mine}, key=math.prod, reverse=True):
            pts = sorted({(r["block_voxels"], r["worker_peak_rss_gib"]) for r in mine if tuple(r["volume"]) == vol})
            if len(pts) >= 2 and pts[0][0] != pts[-1][0]:
                break
        else:
            continue
        (v1, p1), (v2, p2) = pts[0], pts[-1]
        b = (p2 - p1) / (v2 - v1)
        a = p1 - b * v1
        out[stage] = {
            "fitted_on": list(vol),
            "A_gib": round(a, 3),
            "B_bytes_per_block_voxel": round(b * GIB, 1),
            "check": [
                {"volume": r["volume"], "block_voxels": r["block_voxels"], "measured_gib": r["worker_peak_rss_gib"],
                 "fitted_gib": round(a + b * r["block_voxels"], 3)}
                for r in mine if tuple(r["volume"]) != vol
            ],  # fmt: skip
        }
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Bounded memory: per-worker peak RSS is set by the block, not the volume",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']} (other jobs may share it; load averages per stage below). "
        f"{res['workers']} worker processes, a fresh LocalCluster per stage.  ",
        "predict runs an untrained `tiny_conv` network (2 convolutions, width 2, training patch 36x132x132; predict picks "
        "its inference patch from its memory budget, `--patch auto`, the default): a real U-Net "
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
            f"(line through the two block shapes on {'x'.join(map(str, f['fitted_on']))}). {checks}."
        )
    lines += ["", res.get("conclusion", "")]
    return "\n".join(lines) + "\n"


DEFAULT_CASES = [
    "128x512x512 64x512x512 synth,targets,predict,segment,evaluate",
    "128x512x512 32x256x256 predict,segment,evaluate",
    "397x1450x2000 64x512x512 synth,targets,predict,segment,evaluate",
    "397x1450x2000 32x256x256 predict,segment,evaluate",
]


def _triple(text: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in text.split("x"))  # type: ignore[return-value]


def report(rows: list[dict], command: str, workers: int) -> dict:
    big = max((r["volume"] for r in rows), key=math.prod)
    res = {
        "command": command,
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
        "workers": workers,
        "rows": rows,
        "fit": fit(rows, big),
    }
    w = [r["worker_peak_rss_gib"] for r in rows if r["stage"] in ("predict", "segment", "evaluate")]
    biggest = math.prod(big)
    res["conclusion"] = (
        f"Largest per-worker peak of predict/segment/evaluate over all cases: {max(w):.2f} GiB "
        f"(volumes up to {biggest / 1e9:.2f} G voxels, i.e. {biggest / GIB:.2f} GiB as uint8 and "
        f"{4 * biggest / GIB:.2f} GiB as uint32 labels)."
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--case", action="append", metavar="'ZxYxX BZxBYxBX STAGES'",
        help="a volume shape, a block shape and comma-separated stages; repeatable (default: small and big "
        "volume with blocks 64x512x512, and both with 32x256x256)",
    )  # fmt: skip
    ap.add_argument("--chunks", default="32x128x128")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--root", default="/tmp/bench_memory", help="where the volumes are written")
    ap.add_argument("--rows", default=None, help="JSON-lines file the rows are appended to (default ROOT/rows.jsonl)")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder of memory.json / memory.md")
    ap.add_argument("--report-only", action="store_true", help="write the report from the rows file, run nothing")
    ap.add_argument("--keep", action="store_true", help="keep the volumes")
    args = ap.parse_args()

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows_file = Path(args.rows or root / "rows.jsonl")
    if not args.report_only:
        ckpt = _checkpoint(root / "tiny.pt")

        def emit(row):
            with open(rows_file, "a") as f:
                f.write(json.dumps(row) + "\n")

        for case in args.case or DEFAULT_CASES:
            shape, block, stages = case.split()
            run_case(root, _triple(shape), _triple(args.chunks), _triple(block), stages.split(","), args.workers, ckpt,
                     args.seed, emit)  # fmt: skip
        if not args.keep:
            for p in root.glob("*.zarr"):
                shutil.rmtree(p, ignore_errors=True)
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    res = report(rows, "PYTHONPATH=. python experiments/bench_memory.py " + " ".join(sys.argv[1:]), args.workers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "memory.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
