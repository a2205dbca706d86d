"""A checkpoint trained on synthetic fluorescence, with no real training data, on the real crops.

Protocol (fixed before the first run):

* the checkpoint saw only ``blockseg synth --preset fluo`` volumes (its training config is
  recorded in its metadata); the two real crops in ``../shared/data/real/`` are test data only;
* decoder thresholds: the ones the checkpoint records (tuned on its synthetic validation
  volume at the end of training) -- never tuned on a real crop;
* the classical baseline (Otsu + distance-transform watershed, ``blockseg.segment.baseline``) is tuned
  the same way: a grid over ``sigma_um`` x ``min_distance_um`` on the same synthetic validation
  volume, the best (AP-50, then avAP) applied to the real crops; its default parameters are
  reported too;
* each real crop is written as an OME-Zarr image with its voxel size and run through the
  blockwise ``predict`` (percentile normalisation, voxel-size resampling to the checkpoint's
  voxel size: both printed) and ``segment_array``; scores from ``blockseg.evaluate``.

Usage::

    python experiments/eval_fluo_checkpoint.py CHECKPOINT --validation VAL.zarr [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
CROPS = ("gonuclear_1135_mini", "bbbc050_qcanet_8cell")


def scores(gt, seg) -> dict:
    from blockseg.evaluate import evaluate

    r = evaluate(gt, seg)
    return {"avAP": round(float(r.av_ap), 4), "AP50": round(float(r.coco["AP50"]), 4),
            "n_true": int(r.overlaps.n_true), "n_pred": int(r.overlaps.n_pred)}  # fmt: skip


def tune_baseline(val_image, val_labels, voxel_size) -> tuple[dict, dict]:
    from blockseg.segment.baseline import otsu_watershed

    best = None
    for sigma, dist in itertools.product((0.3, 0.5, 1.0), (1.0, 1.5, 2.0, 3.0, 4.0)):
        params = {"sigma_um": sigma, "min_distance_um": dist}
        s = scores(val_labels, otsu_watershed(val_image, voxel_size, **params))
        if best is None or (s["AP50"], s["avAP"]) > (best[1]["AP50"], best[1]["avAP"]):
            best = (params, s)
    return best


def main(argv=None) -> int:
    import torch

    from blockseg.segment.baseline import otsu_watershed
    from blockseg.io.volume import open_volume
    from blockseg.models import read_checkpoint
    from fluo_real import run_checkpoint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--validation", required=True, help="the synthetic validation volume (image + labels/nuclei)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    meta = read_checkpoint(args.checkpoint)["metadata"]
    dec = meta["decoder"]
    val = open_volume(args.validation)
    val_img = np.asarray(val.array[...])
    val_lab = np.asarray(open_volume(f"{args.validation}/labels/nuclei").array[...])
    base_params, base_val = tune_baseline(val_img, val_lab, val.voxel_size)
    out = {"checkpoint": os.path.basename(args.checkpoint), "checkpoint_voxel_size": meta.get("voxel_size"),
           "decoder": dec, "baseline_params": base_params, "baseline_on_validation": base_val,
           "load": os.getloadavg(), "crops": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in CROPS:
            f = REAL / f"{name}.npz"
            if not f.is_file():
                print(f"{f} absent; skipped", file=sys.stderr)
                continue
            d = np.load(f)
            img, gt, vs = d["image"], d["labels"], tuple(float(v) for v in d["voxel_size_zyx"])
            t = time.perf_counter()
            # blockwise predict + the decoder predict stored (its sizes already in this image's voxels)
            seg, info = run_checkpoint(args.checkpoint, img, vs, tmp, name)
            seconds = time.perf_counter() - t
            out["crops"][name] = {
                "voxel_size": vs, "normalisation": info["normalisation"], "resampling": info["resampling"],
                "decoder_applied": info["decoder"], "fluo": scores(gt, seg), "seconds": round(seconds, 1),
                "baseline_tuned_on_synthetic": scores(gt, otsu_watershed(img, vs, **base_params)),
                "baseline_default": scores(gt, otsu_watershed(img, vs)),
            }  # fmt: skip
            print(name, json.dumps(out["crops"][name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
