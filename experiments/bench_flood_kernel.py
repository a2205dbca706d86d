"""Benchmark: ``keyed_flood`` of one block region of the 512³ segment benchmark, HEAD vs working tree.

Not a test. Loads the region ``[0:264]³`` (a corner block, 256³ plus its 8-voxel halo, as
``benchmarks/bench_segment.py`` cuts it) of ``benchmarks/data/nuclei_512x512x512_d0.3_s0_pred.zarr``,
decodes it with the NucMM thresholds and labels the seed mask (26-connected, ``cc3d``, uint32).
Then, interleaved, warm (round 0 compiles and is not timed) and in one process, it runs the
committed ``keyed_flood`` (``git show REV:blockseg/segment/exact.py`` loaded as its own module)
and the working tree's, each once without and once with a shell (the region's own solution
padded by one voxel: some shell values, enough to exercise the sources). Reported: median and
min over the repeats of the shell-less call, and of ``_prepare_padded`` and ``_keyed_kernel``
(each version's module functions wrapped; the mean of the two calls), in s and ns per region
voxel. Every round asserts both versions' outputs byte-identical: dtype, shape and SHA-1 of the
labels, level, dist and every state array; outputs are dropped before the next call, since
held ones make the next call's allocations (page faults) dearer.

    nice PYTHONPATH=. .venv/bin/python experiments/bench_flood_kernel.py --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cc3d  # noqa: E402

from blockseg.io.predictions import decode_channel, open_predictions, prediction_kind  # noqa: E402
from blockseg.segment import BCDDecoder  # noqa: E402
from blockseg.segment import exact as new  # noqa: E402

NUCMM = dict(seed_b=0.9, seed_c=0.8, seed_d=0.5, fg_b=0.85, fg_d=0.0)
PRED = ROOT / "benchmarks/data/nuclei_512x512x512_d0.3_s0_pred.zarr"


def load_ref(rev: str):
    """The ``exact`` module of ``rev``, importable beside the working tree's."""
    text = subprocess.run(["git", "show", f"{rev}:blockseg/segment/exact.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "exact_ref.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("blockseg.segment._exact_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_region(edge: int):
    """(height, seeds uint32, mask) of the region ``[0:edge]³``."""
    dec = BCDDecoder(**NUCMM)
    vols = open_predictions(PRED, dec.channels)
    region = (slice(0, edge),) * 3
    ch = {c: decode_channel(vols[c].array[region], prediction_kind(vols[c], c)) for c in dec.channels}
    seeds, fg, height = dec.decode(ch)
    lab = cc3d.connected_components(np.asarray(seeds), connectivity=26).astype(np.uint32)
    return np.ascontiguousarray(height, dtype=np.uint8), lab, np.asarray(fg, dtype=bool)


class Timed:
    """Wrap a module's njit function so calls through the module accumulate wall time."""

    def __init__(self, mod, name):
        self.mod, self.name, self.fn, self.t = mod, name, getattr(mod, name), 0.0
        setattr(mod, name, self)

    def __call__(self, *a, **k):
        t = time.perf_counter()
        out = self.fn(*a, **k)
        self.t += time.perf_counter() - t
        return out


def digest(out) -> list[str]:
    """Dtype, shape and SHA-1 of the bytes of every array of an output (nested tuples; None kept)."""
    if isinstance(out, tuple):
        return [d for x in out for d in digest(x)]
    if out is None:
        return ["None"]
    a = np.ascontiguousarray(out)
    return [f"{a.dtype}{a.shape}:{hashlib.sha1(a.view(np.uint8).reshape(-1)).hexdigest()}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--edge", type=int, default=264)
    ap.add_argument("--rev", default="HEAD")
    args = ap.parse_args()
    ref = load_ref(args.rev)
    h, seeds, mask = load_region(args.edge)
    nvox = h.size
    print(f"region {h.shape}, fg {mask.mean():.3f}, seeds {int(seeds.max())}", flush=True)
    # a shell: the region's own solution one voxel further out (reached face values only matter)
    shell = tuple(np.pad(a, 1, mode="edge") for a in ref.keyed_flood(h, seeds, mask))
    timers = {m: (Timed(m, "_prepare_padded"), Timed(m, "_keyed_kernel")) for m in (ref, new)}
    rows = {m: [] for m in (ref, new)}
    for r in range(args.repeats + 1):  # repeat 0 warms up (JIT, page cache)
        outs = {}
        for m in ((ref, new) if r % 2 else (new, ref)):
            tp, tk = timers[m]
            tp.t = tk.t = 0.0
            t0 = time.perf_counter()
            o1 = m.keyed_flood(h, seeds, mask, None, return_state=True)
            t1 = time.perf_counter()
            d1 = digest(o1)
            del o1  # held outputs would make the next call's allocations dearer (page faults)
            o2 = m.keyed_flood(h, seeds, mask, shell, return_state=True)
            outs[m] = d1 + digest(o2)
            del o2
            if r:
                rows[m].append((t1 - t0, tp.t / 2, tk.t / 2))
        assert outs[ref] == outs[new], "outputs differ"
    for m in (ref, new):
        print("prepare per repeat", [round(r[1], 3) for r in rows[m]])
    print(f"identical outputs in all {args.repeats + 1} rounds (no shell and shell)")
    print(f"load average {os.getloadavg()}")
    for m, name in ((ref, args.rev), (new, "working tree")):
        for stat in (np.median, np.min):
            a = stat(np.array(rows[m]), axis=0)
            print(f"{name:>13} {stat.__name__:>6}: keyed_flood {a[0]:.3f} s   prepare {a[1]:.3f} s ({a[1] / nvox * 1e9:.1f} "
                  f"ns/voxel)   kernel {a[2]:.3f} s ({a[2] / nvox * 1e9:.1f} ns/voxel)")  # fmt: skip


if __name__ == "__main__":
    main()
