"""Cost of the multiscale pyramid relative to writing level 0, on the same machine and run.

Writes a synthetic uint8 image and a uint32 label volume (level 0 through ``create_volume`` +
a blockwise dask store, the way import writes), then builds the automatic pyramid on them
(mean / stride) with dask's threaded scheduler, and prints both times and their ratio.

    .venv/bin/python experiments/bench_pyramid.py --shape 128 512 512 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import dask
import dask.array as da
import numpy as np

from blockseg.io.volume import create_volume
from blockseg.io.pyramid import write_pyramid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 512, 512])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    labels = (np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) // 4096).astype(np.uint32)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.repeats):
            for name, data, method in (("image", image, "mean"), ("labels", labels, "stride")):
                path = os.path.join(d, f"{name}{rep}.zarr")
                t0 = time.perf_counter()
                vol = create_volume(path, shape, data.dtype, (1.0, 0.5, 0.5))
                src = da.from_array(data, chunks=vol.grid().dask_chunks)
                dask.compute(da.store(src, vol.array, lock=False, compute=False), scheduler="threads")
                t1 = time.perf_counter()
                shapes = write_pyramid(path, method)
                t2 = time.perf_counter()
                rows.append((name, t1 - t0, t2 - t1, len(shapes)))
    print(f"shape {shape}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name in ("image", "labels"):
        r = [x for x in rows if x[0] == name]
        base = float(np.median([x[1] for x in r]))
        pyr = float(np.median([x[2] for x in r]))
        print(f"{name:7s} levels {r[0][3]}: level 0 write {base:.2f} s, pyramid {pyr:.2f} s, ratio {pyr / base:.2f} (median of {len(r)})")


if __name__ == "__main__":
    main()
