"""Benchmark: time of every training target on one synthetic volume, as ratios to baselines
measured in the same run.

Not a test. In one process, on a synthetic nuclei volume (``--shape``, voxel size 2x1x1 µm):

* every representation of :func:`blockseg.train.targets.compute_targets`, best of ``--repeat``,
  relative to one ``scipy.ndimage.distance_transform_edt`` of the foreground mask (the unit of
  work of the distance targets);
* :func:`blockseg.train.targets.instance_centres` (one numba pass) against
  ``scipy.ndimage.center_of_mass``;
* the gauss splat (one numba kernel over all blobs) against a Python loop over instances that
  pastes a precomputed kernel per nucleus (``np.maximum`` into each window).

Writes experiments/results/targets.json and prints a table.

    PYTHONPATH=. python experiments/bench_targets.py --shape 96 256 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from blockseg.segment.synthetic import random_nuclei, rasterise  # noqa: E402
from blockseg.train.targets import compute_targets, gauss_target, instance_centres  # noqa: E402

REPS = ("B", "C", "D", "cpv", "3label", "sdt", "aff", "gauss", "density")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gauss_loop(shape, centres, sigma=2.0, truncate=4.0):
    """Baseline: one Python iteration per nucleus pasting a precomputed blob."""
    r = int(truncate * sigma)
    ax = np.arange(-r, r + 1, dtype=np.float64)
    g1 = np.exp(-0.5 * (ax / sigma) ** 2)
    kernel = (g1[:, None, None] * g1[None, :, None] * g1[None, None, :]).astype(np.float32)
    out = np.zeros(shape, np.float32)
    for c in np.floor(centres + 0.5).astype(int):
        lo = c - r
        src = tuple(slice(max(-lo_, 0), 2 * r + 1 - max(lo_ + 2 * r + 1 - s, 0)) for lo_, s in zip(lo, shape))
        dst = tuple(slice(max(lo_, 0), min(lo_ + 2 * r + 1, s)) for lo_, s in zip(lo, shape))
        if all(d.stop > d.start for d in dst):
            np.maximum(out[dst], kernel[src], out=out[dst])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(96, 256, 256))
    ap.add_argument("--density", type=float, default=1.2e-4, help="nuclei per voxel")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "targets.json"))
    args = ap.parse_args()
    shape, vs = tuple(args.shape), (2.0, 1.0, 1.0)
    n = int(np.prod(shape) * args.density)
    c, r = random_nuclei(shape, n, (4.0, 7.0), seed=0)
    lab = rasterise(shape, c, r, voxel_size=vs)
    table = instance_centres(lab)
    compute_targets(lab[:16, :32, :32], REPS, vs)  # compile the numba kernels outside the timings
    fg = lab > 0
    base = best(lambda: ndi.distance_transform_edt(fg, sampling=vs), args.repeat)
    rows = {}
    for rep in REPS:
        rows[rep] = best(lambda: compute_targets(lab, [rep], vs, table), args.repeat)
    t_centres = best(lambda: instance_centres(lab), args.repeat)
    t_com = best(lambda: ndi.center_of_mass(fg, lab, table[0]), args.repeat)
    t_gauss = best(lambda: gauss_target(shape, table[1]), args.repeat)
    t_loop = best(lambda: gauss_loop(shape, table[1]), args.repeat)
    assert np.allclose(gauss_target(shape, table[1]), gauss_loop(shape, table[1]), atol=1e-6)
    result = {
        "shape": list(shape),
        "voxel_size": list(vs),
        "instances": int(len(table[0])),
        "foreground_fraction": round(float(fg.mean()), 3),
        "baseline_edt_s": round(base, 3),
        "targets_s": {k: round(v, 3) for k, v in rows.items()},
        "targets_over_edt": {k: round(v / base, 2) for k, v in rows.items()},
        "centres_s": round(t_centres, 3),
        "center_of_mass_s": round(t_com, 3),
        "centres_speedup": round(t_com / t_centres, 1),
        "gauss_numba_s": round(t_gauss, 3),
        "gauss_python_loop_s": round(t_loop, 3),
        "gauss_speedup": round(t_loop / t_gauss, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
