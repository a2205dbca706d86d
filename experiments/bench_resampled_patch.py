"""Resampled predict: the auto patch chosen on the network's grid vs the block-aligned choice before it.

When an image's voxel size differs from the checkpoint's, predict runs the network on a
resampled grid where blocks do not align with the lattice and each block runs every tile
reaching its region. ``--patch auto`` used to pick the patch as if blocks were aligned; since
``b9a2caa`` it ranks patches by the tiles the regions actually reach. This times both engines on
the same volumes and workers (``engine_run.py`` in subprocesses, the baseline's ``blockseg``
unpacked from ``--baseline-rev``), in paired repeats, and writes
``experiments/results/resampled_patch.{md,json}``::

    PYTHONPATH=.:benchmarks python experiments/bench_resampled_patch.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "experiments" / "results"
#: name: (shipped checkpoint, image shape, image voxel size (µm), block shape)
CASES = {
    "fluo_synth, image at 0.6x its voxel size": ("fluo_synth", (96, 320, 320), (0.3, 0.15, 0.15), (48, 160, 160)),
    "fluo, image at 1.8-2x its voxel size": ("fluo", (48, 160, 160), (0.5, 0.25, 0.25), (48, 96, 96)),
}


def make_image(path: str, shape, voxel_size) -> None:
    from scipy import ndimage as ndi

    from blockseg.io.volume import create_volume

    rng = np.random.default_rng(0)
    img = ndi.gaussian_filter(rng.normal(size=shape).astype(np.float32), 3)
    img = np.clip((img - img.mean()) / img.std() * 40 + 100, 0, 255).astype(np.uint8)
    create_volume(path, shape, np.uint8, voxel_size, chunks=(16, 32, 32)).array[...] = img


def run_engine(pythonpath: str, image: str, ckpt: str, out: str, block) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "engine_run.py"), "predict", image, ckpt, out, "--block", *map(str, block),
           "--workers", "2", "--patch", "auto"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"engine_run failed ({pythonpath}): {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from blockseg.models import shipped_checkpoint_path
    from blockseg.io.predictions import open_predictions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-rev", default="b9a2caa~1", help="git revision of the engine before the change")
    args = ap.parse_args(argv)
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "baseline_rev": args.baseline_rev, "load_start": os.getloadavg(), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_rev, "blockseg"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        for name, (ck, shape, vs, block) in CASES.items():
            image = f"{tmp}/{ck}.zarr"
            make_image(image, shape, vs)
            ckpt = shipped_checkpoint_path(ck)
            rows = []
            for r in range(args.repeats):
                load = os.getloadavg()
                new = run_engine(str(ROOT), image, ckpt, f"{tmp}/{ck}_new.pred", block)
                old = run_engine(str(base), image, ckpt, f"{tmp}/{ck}_old.pred", block)
                a, b = (open_predictions(f"{tmp}/{ck}_{w}.pred") for w in ("new", "old"))
                diff = max(int(np.abs(a[k].array[...].astype(int) - b[k].array[...].astype(int)).max()) for k in a if a[k].array.dtype == np.uint8)
                rows.append({"load": load, "new": new, "old": old, "ratio": old["wall"] / new["wall"], "max_uint8_diff": diff})
                print(name, r, json.dumps(rows[-1]), flush=True)
            out["cases"][name] = {"checkpoint": ck, "shape": shape, "voxel_size": vs, "block": block, "rows": rows,
                                  "median_ratio": float(np.median([x["ratio"] for x in rows]))}  # fmt: skip
    out["load_end"] = os.getloadavg()
    (OUT / "resampled_patch.json").write_text(json.dumps(out, indent=1, default=str))
    lines = ["# Resampled predict: auto patch on the network's grid vs block-aligned (before `b9a2caa`)", "",
             f"Command: `PYTHONPATH=.:benchmarks python experiments/bench_resampled_patch.py --repeats {args.repeats}`  ",
             f"Machine: {out['machine']}, {out['cpus']} CPUs (shared); 1-min load at start {out['load_start'][0]:.2f}, at end {out['load_end'][0]:.2f}.  ",
             f"Each run: `engine_run.py predict` on a fresh 2-worker cluster (1 thread each), `--patch auto`, timed as the second (warm) run; "
             f"the baseline is the engine of `{args.baseline_rev}`, run right after in each repeat. Synthetic smooth-noise uint8 images written "
             "at a voxel size unlike the checkpoint's, so predict resamples them.", "",
             "| case | patch before → now | output voxels per resampled voxel before → now | wall before / now (s, medians) | speed-up (median of paired ratios) | max uint8 difference |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, c in out["cases"].items():
        rows = c["rows"]
        o, n = rows[0]["old"], rows[0]["new"]
        lines.append(f"| {name}, {tuple(c['shape'])}, blocks {tuple(c['block'])} | {tuple(o['patch'])} → {tuple(n['patch'])} "
                     f"| {o['compute_factor']:.2f} → {n['compute_factor']:.2f} "
                     f"| {np.median([r['old']['wall'] for r in rows]):.1f} / {np.median([r['new']['wall'] for r in rows]):.1f} "
                     f"| **{c['median_ratio']:.2f}×** ({min(r['ratio'] for r in rows):.2f}–{max(r['ratio'] for r in rows):.2f}) "
                     f"| {max(r['max_uint8_diff'] for r in rows)} |")  # fmt: skip
    lines += ["", "The two engines use different lattices (other patches), so their blends differ slightly; each equals the "
              "whole-volume reference on its own lattice (tests/test_properties.py).", ""]  # fmt: skip
    (OUT / "resampled_patch.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
