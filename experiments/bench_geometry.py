"""Benchmark: segment's exchange rounds on path-like geometry (issue 29, goals 3-4).

Not a test. The exact blockwise watershed (:mod:`blockseg.segment.exact`) needs one exchange
round per time a flooding path crosses a block face, so long thin foreground is its worst
case. Three families, each with one seed at one end of the path and a plateau in D (so the
flood follows the path, not a gradient), blocks and halo as given:

* ``tube K``: a straight tube of radius 5 along x through K blocks (32 x 32 x 64K voxels,
  blocks 32 x 32 x 64);
* ``serpentine P``: P one-voxel rows joined alternately at their ends, so the path crosses
  the face between two blocks P times (4 x 2P x 64 voxels, blocks 4 x 2P x 32);
* ``spiral R``: a square spiral of R rings in the (y, x) plane, centred on the corner of
  2 x 2 blocks (each ring crosses four faces; 4 x (4R+4) x (4R+4) voxels).

For each case: rounds, block runs after round 1, wall seconds (in process, one worker: the
rounds' count does not depend on workers; ``--tile-voxels`` sets segment's tiles), the work directory's peak size over the uint8
volume (sampled every 20 ms), and whether the result equals ``segment_array`` (it must).

    PYTHONPATH=. python experiments/bench_geometry.py --out experiments/results/geometry
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))  # measure.py, kept with the maintained benchmarks

from blockseg.io.volume import open_volume  # noqa: E402
from blockseg.io.predictions import save_predictions  # noqa: E402
from blockseg.segment import BCDDecoder, segment, segment_array  # noqa: E402
from measure import FolderPeak  # noqa: E402

DECODER = BCDDecoder(min_seed_size=1, min_size=1)


def _channels(path_mask: np.ndarray, seed: tuple) -> dict:
    ch = {"B": np.zeros(path_mask.shape, np.float32), "C": np.zeros(path_mask.shape, np.float32),
          "D": -np.ones(path_mask.shape, np.float32)}  # fmt: skip
    ch["B"][path_mask] = 1.0
    ch["D"][path_mask] = 0.2  # foreground without seed: one plateau
    ch["D"][seed] = 0.9
    return ch


def tube(k: int):
    shape = (32, 32, 64 * k)
    z, y = np.ogrid[:32, :32]
    mask = np.zeros(shape, bool)
    mask[(z - 16) ** 2 + (y - 16) ** 2 <= 25, 2:-2] = True
    seed = (slice(14, 18), slice(14, 18), slice(2, 6))
    return _channels(mask, seed), (32, 32, 64), (32, 32, 32)


def serpentine(p: int):
    shape = (4, 2 * p, 64)
    mask = np.zeros(shape, bool)
    for i in range(p):
        mask[1, 2 * i, 2:62] = True
        if i + 1 < p:  # the joint to the next row, at alternating ends
            x = 61 if i % 2 == 0 else 2
            mask[1, 2 * i : 2 * i + 3, x] = True
    seed = (slice(1, 2), slice(0, 1), slice(2, 3))
    return _channels(mask, seed), (4, 2 * p, 32), (4, 2 * p, 32)


def spiral(rings: int):
    n = 4 * rings + 4
    mask = np.zeros((4, n, n), bool)
    c = n // 2
    y, x = c, c
    mask[1, y, x] = True
    step, d = 1, 0
    moves = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    while True:  # a square spiral with one free voxel between its arms
        for _ in range(2):
            dy, dx = moves[d % 4]
            for _ in range(2 * step):
                y, x = y + dy, x + dx
                if not (1 <= y < n - 1 and 1 <= x < n - 1):
                    break
                mask[1, y, x] = True
            else:
                d += 1
                continue
            break
        else:
            step += 1
            continue
        break
    seed = (slice(1, 2), slice(c, c + 1), slice(c, c + 1))
    return _channels(mask, seed), (4, n // 2, n // 2), (4, n // 4, n // 4)


def run_case(name: str, ch: dict, block, chunks, halo: int, tile_voxels: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pred, out = f"{tmp}/pred.zarr", f"{tmp}/seg.zarr"
        save_predictions(pred, ch, chunks=chunks)
        ref = segment_array(ch, DECODER)
        with FolderPeak(out + ".work") as peak:
            t0 = time.perf_counter()
            kw = {} if tile_voxels is None else {"tile_voxels": tile_voxels}  # the code before tiles has no such knob
            report = segment(pred, out, DECODER, block_shape=block, halo=halo, **kw)
            wall = time.perf_counter() - t0
        same = bool(np.array_equal(open_volume(out).array[:], ref))
    volume = int(np.prod(ch["B"].shape))
    return {"case": name, "shape": list(ch["B"].shape), "block": list(block), "halo": halo,
            "rounds": len(report.rounds), "block_runs_after_round_1": report.blocks_rerun,
            "wall_s": round(wall, 2), "work_peak_over_volume": round(peak.peak / volume, 1),
            "equals_segment_array": same}  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tube", type=int, nargs="*", default=[2, 4, 8, 16, 32])
    ap.add_argument("--serpentine", type=int, nargs="*", default=[4, 16, 64, 256])
    ap.add_argument("--spiral", type=int, nargs="*", default=[8, 16, 32])
    ap.add_argument("--halo", type=int, default=8)
    ap.add_argument("--tile-voxels", type=int, default=None, help="segment's tile_voxels (default: its default)")
    ap.add_argument("--out", default=str(HERE / "results" / "geometry"))
    args = ap.parse_args(argv)
    rows = []
    cases = [(f"tube K={k}", tube(k)) for k in args.tube]
    cases += [(f"serpentine P={p}", serpentine(p)) for p in args.serpentine]
    cases += [(f"spiral R={r}", spiral(r)) for r in args.spiral]
    for name, (ch, block, chunks) in cases:
        row = run_case(name, ch, block, chunks, args.halo, args.tile_voxels)
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    lines = ["| case | shape | blocks | rounds | block runs after round 1 | wall (s) | work peak / volume | equals segment_array |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['block']))} | "
                     f"{r['rounds']} | {r['block_runs_after_round_1']} | {r['wall_s']} | {r['work_peak_over_volume']} | "
                     f"{r['equals_segment_array']} |")  # fmt: skip
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
