"""Nucleus size estimate (blockseg.predict.size) against the labels of every real crop, and the
fluo model's AP with the estimated vs the true diameter.

Truth: median equivalent-sphere diameter (µm) of the labelled nuclei of >= 20 voxels; reported
for all of them and for those not touching the crop border (a border piece is cut by the crop,
not by biology; in a large volume almost no nucleus touches the border). The target column uses
the interior ones where a crop has at least 3, else all.

Estimates: ``estimate_volume_diameter`` as ``predict --diameter auto`` calls it for ``fluo``
(search around fluo's 2.97 µm) and without a prior (3 voxels up to what a box holds); polarity
from the README (micro-CT dark, the others bright), as a model card would give it.

AP: ``fluo`` through blockwise predict + its stored decoder on the confocal (GoNuclear, fluo's
own training crop: optimistic) and embryo (BBBC050) crops, ``--diameter`` = the true median
(all labelled pieces >= 20 voxels, the definition of the checkpoint's own 2.97 µm) vs ``auto``.
Scores: blockseg.evaluate, ground-truth pieces under 20 voxels removed.

Usage: OMP_NUM_THREADS=1 python experiments/size_estimate/run.py [--no-ap]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / ".." / "shared" / "data" / "real"
MIN_VOXELS = 20


def true_diameters(labels: np.ndarray, voxel_size) -> dict:
    counts = np.bincount(labels.ravel().astype(np.int64))
    border = set()
    for axis in range(3):
        for side in (0, -1):
            border |= set(np.unique(np.take(labels, side, axis=axis)).tolist())
    ids = [i for i in range(1, counts.size) if counts[i] >= MIN_VOXELS]
    inner = [i for i in ids if i not in border]
    d = lambda sel: float(np.median((6 * counts[sel] * np.prod(voxel_size) / np.pi) ** (1 / 3))) if sel else None  # noqa: E731
    out = {"n_all": len(ids), "d_all": d(ids), "n_interior": len(inner), "d_interior": d(inner)}
    out["d_true"] = out["d_interior"] if len(inner) >= 3 else out["d_all"]
    out["true_from"] = "interior" if len(inner) >= 3 else "all"
    return out


def size_table() -> list[dict]:
    from blockseg.predict.size import estimate_volume_diameter

    rows = []
    for f in sorted(REAL.glob("*.npz")):
        d = np.load(f)
        img, lab, vs = d["image"], d["labels"], tuple(float(v) for v in d["voxel_size_zyx"])
        pol = "dark" if f.stem.startswith("xray") else "bright"
        row = {"crop": f.stem, "shape": list(img.shape), "voxel_size": vs, "polarity": pol, **true_diameters(lab, vs)}
        for tag, expected in (("fluo_prior", 2.970493070412388), ("no_prior", None)):
            t0 = time.perf_counter()
            est = estimate_volume_diameter(img, vs, pol, expected)
            row[tag] = {**est.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
                        "error": round(est.diameter_um / row["d_true"] - 1, 3) if est.diameter_um else None}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ap_rows() -> list[dict]:
    from blockseg.evaluate import evaluate
    from blockseg.io import create_volume
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.predict import predict
    from blockseg.segment import segment_array
    from blockseg.segment.params import choose_decoder, store_decoder

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("gonuclear_1135_mini", "bbbc050_qcanet_8cell"):
            d = np.load(REAL / f"{name}.npz")
            img, gt, vs = d["image"], d["labels"], tuple(float(v) for v in d["voxel_size_zyx"])
            counts = np.bincount(gt.ravel().astype(np.int64))
            gt = np.where(counts[gt] >= MIN_VOXELS, gt, 0)
            true_d = true_diameters(d["labels"], vs)["d_all"]
            path = f"{tmp}/{name}.zarr"
            create_volume(path, img.shape, img.dtype, vs).array[...] = img
            for tag, diameter in (("true", f"{true_d}um"), ("auto", "auto")):
                pred = f"{tmp}/{name}_{tag}.pred"
                rep = predict(path, "fluo", pred, progress=False, pyramid_levels=1, diameter=diameter)
                dec = choose_decoder(stored=store_decoder(pred)).decoder
                seg = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), dec)
                r = evaluate(gt, seg)
                row = {"crop": name, "diameter": tag, "true_d_all": round(true_d, 3), "avAP": round(float(r.av_ap), 4),
                       "AP50": round(float(r.coco["AP50"]), 4), "n_pred": int(r.overlaps.n_pred),
                       "size": rep.plan.nucleus_size, "resampling": rep.plan.resampling}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-ap", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if not REAL.is_dir():
        print(f"{REAL} not found", file=sys.stderr)
        return 1
    out = {"sizes": size_table()}
    if not args.no_ap:
        out["ap"] = ap_rows()
    (HERE / "results.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
