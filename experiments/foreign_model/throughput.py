"""Predict throughput: a shipped checkpoint vs the same network as a foreign TorchScript package.

Issue 31, goal 4: a foreign TorchScript network of the same architecture runs within 10 % of the
native checkpoint's throughput. The shipped ``fluo`` checkpoint is exported with
``export_package`` (TorchScript with its activations, as any bioimage.io consumer gets it) and
both are run by ``blockseg.predict`` on the same synthetic volume, same block shape, in this
process (no cluster), alternating native / foreign for ``--repeats`` pairs so that the machine's
load drifts over both alike. The ratio is the median over pairs of foreign seconds / native
seconds; the outputs are compared too (they must agree within one storage step).

    .venv/bin/python experiments/foreign_model/throughput.py --repeats 3

Results: ``experiments/foreign_model/results/throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

import blockseg
from blockseg.io.predictions import open_predictions
from blockseg.models.bioimageio_export import export_package
from blockseg.synth import preset_params

HERE = Path(__file__).resolve().parent
SHAPE, BLOCK = (32, 256, 256), (32, 128, 128)


def timed_predict(image: Path, model: str, out: Path, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    blockseg.predict(str(image), model, str(out), block_shape=BLOCK, torch_threads=threads, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="fluo")
    ap.add_argument("--work", default="/tmp/foreign_throughput")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    image = work / "image.zarr"
    if not image.exists():
        blockseg.synthesize(str(image), preset_params("fluo", shape=SHAPE, seed=3), chunks=(32, 128, 128), progress=False)
    package = work / f"{args.model}_bioimageio.zip"
    if not package.exists():
        export_package(args.model, str(package))
    pairs = []
    for _ in range(args.repeats):
        native = timed_predict(image, args.model, work / "native.zarr", args.threads)
        foreign = timed_predict(image, str(package), work / "foreign.zarr", args.threads)
        pairs.append((round(native, 2), round(foreign, 2)))
        print(f"native {native:.1f} s, foreign {foreign:.1f} s, ratio {foreign / native:.3f}", flush=True)
    a, b = open_predictions(str(work / "native.zarr")), open_predictions(str(work / "foreign.zarr"))
    diff = {c: int(np.abs(a[c].array[...].astype(np.int64) - b[c].array[...].astype(np.int64)).max()) for c in a}
    ratios = [f / n for n, f in pairs]
    voxels = int(np.prod(SHAPE))
    result = {
        "model": args.model, "volume": list(SHAPE), "block_shape": list(BLOCK), "threads": args.threads,
        "pairs_native_foreign_s": pairs, "ratio_median": round(float(np.median(ratios)), 3),
        "native_voxels_per_s_median": round(voxels / float(np.median([n for n, _ in pairs]))),
        "foreign_voxels_per_s_median": round(voxels / float(np.median([f for _, f in pairs]))),
        "max_abs_difference_in_storage_steps": diff,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    }  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "throughput.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
