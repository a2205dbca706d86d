"""Where predict's engine spends its time: cProfile of a blockwise run with the identity network.

The identity network (``B``, ``C``, ``gauss``: three probability channels, sigmoid of the normalised input, stored uint8) costs nothing, so
every second measured is engine overhead. The run is in-process (no dask), so cProfile sees
every step; times are bucketed per step and reported in ns per volume voxel.

    PYTHONPATH=. python experiments/profile_predict.py --shape 64 256 256 --block 64 128 128
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

#: step -> substrings of "file:function" whose *own* time (tottime) belongs to it
BUCKETS = {
    "read (zarr decode + reflect)": ("zarr", "numcodecs", "read_reflected", "blosc", "zstd", "_chunk_getitem"),
    "normalise (+cast)": ("normalise", "fused_normalise"),
    "patch extraction": ("predict_region", "extract"),
    "forward (network)": ("torch", "run_batch", "identity.py", "forward"),
    "blend / accumulate": ("_accumulate", "blend"),
    "quantise / encode": ("encode_channel", "quantise", "clip", "rint"),
}


def bucket_of(key: tuple) -> str:
    name = f"{key[0]}:{key[2]}"
    for b, subs in BUCKETS.items():
        if any(s in name for s in subs):
            return b
    return "other (python, numpy glue, dask-free bookkeeping)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--block", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--chunks", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--train-patch", type=int, nargs=3, default=[32, 64, 64])
    ap.add_argument("--patch", default=None, help="inference patch passed to predict (engines that support it)")
    ap.add_argument("--out", default=None, help="JSON file of the breakdown")
    args = ap.parse_args()

    from blockseg.io.volume import create_volume
    from blockseg.models import IdentityNet, save_checkpoint
    from blockseg.predict import predict

    work = Path(tempfile.mkdtemp(prefix="profile_predict_"))
    try:
        shape = tuple(args.shape)
        vol = create_volume(work / "img.zarr", shape, np.uint8, chunks=tuple(args.chunks))
        vol.array[...] = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        ck = str(work / "id.pt")
        save_checkpoint(ck, IdentityNet(("B", "C", "gauss"), input_patch=tuple(args.train_patch)), normalisation={"offset": 128.0, "scale": 64.0})
        # prefetch off: cProfile sees only this thread, and reads must be attributed to "read"
        kw = dict(block_shape=tuple(args.block), progress=False, torch_threads=1, device="cpu", overwrite=True,
                  prefetch=False, pyramid_levels=1)
        if args.patch:
            kw["patch"] = args.patch if args.patch in ("auto", "train") else int(args.patch)
        predict(str(vol.path), ck, str(work / "warm.zarr"), **kw)  # imports and caches out of the profile
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        rep = predict(str(vol.path), ck, str(work / "out.zarr"), **kw)
        prof.disable()
        wall = time.perf_counter() - t
        n = math.prod(shape)
        st = pstats.Stats(prof)
        sums: dict[str, float] = {}
        for key, (cc, nc, tt, ct, callers) in st.stats.items():
            b = bucket_of(key)
            sums[b] = sums.get(b, 0.0) + tt
        total = sum(sums.values())
        res = {"shape": shape, "block": args.block, "chunks": args.chunks, "train_patch": args.train_patch,
               "patch": list(rep.plan.lattice.patch), "wall_s": wall, "voxels": n,
               "engine_mvox_s": n / wall / 1e6, "load": os.getloadavg(),
               "ns_per_voxel": {b: 1e9 * s / n for b, s in sorted(sums.items(), key=lambda kv: -kv[1])},
               "ns_per_voxel_total_profiled": 1e9 * total / n}
        print(json.dumps(res, indent=2))
        # inclusive time of the engine's I/O steps (zarr waits on its own event-loop thread, so
        # its own-time shows up as lock waits: the inclusive times attribute it)
        cum = {"read (inclusive)": ("engine.py", "read"), "write channels (inclusive)": ("engine.py", "_write_channels"),
               "pass 2: finish_block (inclusive)": ("engine.py", "finish_block"),
               "pass 1: predict_block (inclusive)": ("engine.py", "predict_block"),
               "forward run_batch (inclusive)": ("infer.py", "run_batch"),
               "scratch create (inclusive)": ("engine.py", "_create_scratch"),
               "pyramid/finish (inclusive)": ("pyramid.py", "finish_volume")}
        res["inclusive_ns_per_voxel"] = {
            k: round(1e9 * sum(v[3] for key, v in st.stats.items() if key[0].endswith(f) and key[2] == fn) / n, 1)
            for k, (f, fn) in cum.items()
        }
        other = sorted(((v[2], k) for k, v in st.stats.items() if bucket_of(k).startswith("other")), reverse=True)[:12]
        res["top_other"] = [(f"{k[0].split('/')[-1]}:{k[2]}", round(1e9 * t / n, 1)) for t, k in other]
        print(json.dumps(res["top_other"]))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
