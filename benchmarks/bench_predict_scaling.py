"""Predict throughput vs volume size and number of workers (blockseg only; not a test).

Same model as ``bench_predict.py`` (``bench_unet.BenchResUNet``, random weights, patch
``--patch``³, batch 2) on ``blockseg.synth`` volumes of each ``--sizes`` edge, ``blockseg.predict``
zarr -> zarr with 1 and 2 workers x 1 thread, two blocks of ``size/2 x size x size`` (as
``bench_predict.py`` cuts 288³; sizes must be multiples of 64). Cluster start-up is not timed. Writes ``OUT.json``.

    PYTHONPATH=.:benchmarks python benchmarks/bench_predict_scaling.py --sizes 128 192 --workers 1 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_unet  # noqa: E402  (registers "bench_resunet")
from common import loadavg  # noqa: E402

from blockseg.runtime.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.models import save_checkpoint  # noqa: E402
from blockseg.predict import predict  # noqa: E402
from blockseg.synth import SynthParams, synthesize  # noqa: E402

NORM = {"offset": 128.0, "scale": 64.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--out", default=str(HERE / "results" / "predict_scaling"), help="output prefix (.json)")
    args = ap.parse_args()
    if any(s % 64 for s in args.sizes):
        ap.error("sizes must be multiples of 64")
    work = Path(tempfile.mkdtemp(prefix="bench_predict_scaling_"))
    patch = (args.patch,) * 3
    ckpt = str(work / "unet.pt")
    save_checkpoint(ckpt, bench_unet.BenchResUNet(input_patch=patch).eval(), normalisation=NORM)
    runs = []
    try:
        for w in args.workers:
            cfg = ClusterConfig(n_workers=w, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
            with dask_client(cfg, quiet=True) as client:
                client.run(importlib.import_module, "bench_unet")
                for size in args.sizes:
                    img = work / f"img_{size}.zarr"
                    if not img.exists():
                        synthesize(str(img), SynthParams(shape=(size,) * 3, voxel_size=(0.5, 0.5, 0.5), seed=1),
                                   chunks=(size // 2, 64, 64), client=client, progress=False)  # fmt: skip
                    load0, t = loadavg(), time.perf_counter()
                    predict(str(img), ckpt, str(work / "pred.zarr"), block_shape=(size // 2, size, size), client=client, overwrite=True, batch_size=2,
                            device="cpu", progress=False)  # fmt: skip
                    wall = time.perf_counter() - t
                    runs.append({"size": size, "workers": w, "seconds": wall, "throughput_vox_per_s": size**3 / wall,
                                 "loadavg_before": load0, "loadavg_after": loadavg()})  # fmt: skip
                    print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"model": "bench_resunet", "patch": list(patch), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
