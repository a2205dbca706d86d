"""Benchmark: seam quality of blockseg vs contact stitching (Cellpose's Dask mode), against GT.

Not a test. One ``blockseg synth`` volume (NucMM-Z look and density, clustered nuclei that touch),
cached under benchmarks/data, with its perfect B, C, D predictions. Three segmentations with the
same BCD decoder and the same thresholds:

- **whole volume**: :func:`blockseg.segment.segment_array` in memory (what the decoder itself
  merges or splits, without any blocks);
- **blockseg**: :func:`blockseg.segment.segment` on ``--workers`` workers (global seeds, then a
  seeded watershed per block + halo);
- **contact**: what Cellpose's distributed mode does: every block (core + the same halo) is
  segmented independently with the same decoder, cropped to its core, given unique ids, and two
  labels that touch across a block face are merged (union-find over face voxel pairs).

Each is compared with the ground truth. A predicted instance holding the majority (> 50 %) of
two or more GT nuclei is a **merge**; merged GT pairs count every pair of GT nuclei that end up
in one instance this way. A GT nucleus with two or more predicted instances each covering at
least 25 % of it is **split**. Writes ``OUT.json``.

    PYTHONPATH=.:benchmarks python benchmarks/bench_seams.py --size 256 --block 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import DATA, loadavg, shape_key  # noqa: E402

from blockseg.runtime.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.grid import BlockGrid  # noqa: E402
from blockseg.io.volume import open_volume  # noqa: E402
from blockseg.io.predictions import open_predictions, read_channels  # noqa: E402
from blockseg.segment import BCDDecoder, segment, segment_array  # noqa: E402
from blockseg.synth import preset_params, synthesize  # noqa: E402
from blockseg.train.targets import write_bcd_targets  # noqa: E402


def make_data(shape, seed, radius, density, client) -> tuple[str, str]:
    """A synthetic NucMM-Z-like volume (labels under ``labels/nuclei``) and its perfect BCD
    predictions, cached by shape, seed, radius and density."""
    key = f"synth_{shape_key(shape)}_s{seed}_r{radius}_d{density}"
    img, pred = DATA / f"{key}.zarr", DATA / f"{key}_pred.zarr"
    if not (DATA / f"{key}.done").exists():
        DATA.mkdir(exist_ok=True)
        synthesize(str(img), preset_params("nucmm-z", shape=tuple(shape), seed=seed, radius=radius, density=density), chunks=(64, 64, 64), client=client,
                   overwrite=True, progress=False)  # fmt: skip
        write_bcd_targets(str(img / "labels" / "nuclei"), str(pred), client=client, overwrite=True)
        (DATA / f"{key}.done").write_text("ok\n")
    return str(img / "labels" / "nuclei"), str(pred)


def contact_stitch(pred_path: str, decoder, block: int, halo: int) -> np.ndarray:
    """Per-block segmentation (core + halo, cropped to the core), then labels touching across a
    block face merged: the contact stitching of Cellpose's distributed mode."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    vols = open_predictions(pred_path, decoder.channels)
    first = vols[decoder.channels[0]]
    grid = BlockGrid(first.shape, block, halo, first.write_unit)
    out = np.zeros(first.shape, np.uint32)
    offset = 0
    for b in grid:
        lab = segment_array(read_channels(vols, b.outer), decoder)[b.core_in_outer].astype(np.uint32)
        n = int(lab.max())
        lab[lab > 0] += np.uint32(offset)
        out[b.core] = lab
        offset += n
    pairs = []
    for axis in range(3):
        for c in range(block, out.shape[axis], block):
            lo = np.take(out, c - 1, axis=axis).ravel()
            hi = np.take(out, c, axis=axis).ravel()
            both = (lo != 0) & (hi != 0)
            pairs.append(np.stack([lo[both], hi[both]], axis=1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    graph = sparse.coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(offset + 1, offset + 1))
    _, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.uint32) + 1
    comp[0] = 0
    return comp[out]


def merge_split(gt: np.ndarray, pred: np.ndarray, majority: float = 0.5, piece: float = 0.25) -> dict:
    """Merges and splits of ``pred`` against ``gt`` (see the module docstring)."""
    sel = (gt != 0) & (pred != 0)
    g, p = gt[sel].astype(np.int64), pred[sel].astype(np.int64)
    keys, counts = np.unique(g * (int(pred.max()) + 1) + p, return_counts=True)
    kg, kp = keys // (int(pred.max()) + 1), keys % (int(pred.max()) + 1)
    gsize = np.bincount(gt.ravel().astype(np.int64))
    frac = counts / gsize[kg]
    # merges: GT nuclei whose majority lies in one predicted instance, grouped by that instance
    owner = kp[frac > majority]
    per_pred = np.bincount(owner) if owner.size else np.zeros(1, np.int64)
    merged = per_pred[per_pred >= 2]
    # splits: GT nuclei with >= 2 substantial pieces
    pieces = np.bincount(kg[frac >= piece], minlength=gsize.size)
    return {
        "gt_instances": int((gsize[1:] > 0).sum()),
        "pred_instances": int(np.unique(pred).size - 1),
        "merged_instances": int(merged.size),
        "merged_gt_nuclei": int(merged.sum()),
        "merged_gt_pairs": int((merged * (merged - 1) // 2).sum()),
        "split_gt_nuclei": int((pieces >= 2).sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="volume edge (voxels)")
    ap.add_argument("--block", type=int, default=128, help="block edge (both methods)")
    ap.add_argument("--halo", type=int, default=24, help="halo (both methods; blockseg's default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--radius", type=float, default=5.0,
                    help="mean nucleus radius (um; ~10 voxels, the size the NucMM decoder defaults are made for)")
    ap.add_argument("--density", type=float, default=2.0e-5, help="nuclei per voxel (NucMM-Z's packing at this radius)")
    ap.add_argument("--out", default=str(HERE / "results" / "seams"), help="output prefix (.json)")
    args = ap.parse_args()
    shape = (args.size,) * 3
    decoder = BCDDecoder()
    seg_path = str(DATA / f"seams_blockseg_{args.size}.zarr")
    cfg = ClusterConfig(n_workers=args.workers, threads_per_worker=1, dashboard=False, memory_limit="8GiB")
    res: dict = {"volume": {"shape": list(shape), "synth": "preset nucmm-z (clustered, touching nuclei)", "seed": args.seed,
                            "radius_um": args.radius, "density_per_voxel": args.density,
                            "prediction": "perfect BCD targets, uint8"},
                 "block": args.block, "halo": args.halo, "workers": args.workers, "decoder": decoder.params(),
                 "loadavg_before": loadavg()}  # fmt: skip
    with dask_client(cfg, quiet=True) as client:
        gt_path, pred_path = make_data(shape, args.seed, args.radius, args.density, client)
        t = time.perf_counter()
        segment(pred_path, seg_path, decoder, block_shape=args.block, halo=args.halo, client=client, overwrite=True)
        res["blockseg_seconds"] = round(time.perf_counter() - t, 2)
    gt = open_volume(gt_path).array[...]
    t = time.perf_counter()
    contact = contact_stitch(pred_path, decoder, args.block, args.halo)
    res["contact_seconds_serial"] = round(time.perf_counter() - t, 2)
    whole = segment_array(read_channels(open_predictions(pred_path, decoder.channels), (slice(None),) * 3), decoder)
    ours = open_volume(seg_path).array[...]
    shutil.rmtree(seg_path, ignore_errors=True)
    res["whole_volume"] = merge_split(gt, whole)
    res["blockseg"] = merge_split(gt, ours)
    res["contact"] = merge_split(gt, contact)
    # GT nuclei cut by a block face (where stitching matters)
    on_face = set()
    for axis in range(3):
        for c in range(args.block, args.size, args.block):
            a, b = np.take(gt, c - 1, axis=axis), np.take(gt, c, axis=axis)
            on_face.update(np.unique(a[(a == b) & (a != 0)]).tolist())
    res["gt_nuclei_cut_by_block_faces"] = len(on_face)
    res["loadavg_after"] = loadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
