"""Shipped micro-CT (``xct``) and EM (``em``) models: leave-one-volume-out training vs the baseline.

The protocol is ``PROTOCOL.md`` beside this file (committed before the first run). Steps::

    PYTHONPATH=. python experiments/modality_models/run.py --prepare        # training volumes
    PYTHONPATH=. python experiments/modality_models/run.py --baseline       # tuned Otsu per crop
    PYTHONPATH=. python experiments/modality_models/run.py --folds [--jobs 2] [--arms xct,em,nuclei]
    PYTHONPATH=. python experiments/modality_models/run.py --final xct      # all dev crops
    PYTHONPATH=. python experiments/modality_models/run.py --table          # RESULTS.md

Every fold writes ``results/<arm>_<test>_s<seed>.json`` (a fold whose file exists is skipped, so
a stopped run resumes). Work files go to ``runs/modality_models/`` (not in git).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
RESULTS = HERE / "results"
WORK = ROOT / "runs" / "modality_models"

XRAY = ("xray_zfish_box2", "xray_zfish_box5", "xray_zfish_box6")
EM = ("em_zfish_roi2", "em_zfish_roi3")
PARTIAL = ("xray_zfish_box2", "xray_zfish_box5")
VOXEL = (0.51, 0.51, 0.51)
#: (name, generator mode, radius µm, density per voxel, shape, seed)
SYNTH = [("uct_a", "uct", 2.6, 1.5e-3, (48, 96, 96), 101), ("uct_b", "uct", 2.6, 1.5e-3, (48, 96, 96), 102),
         ("em_a", "em", 1.6, 5e-3, (32, 64, 64), 201), ("em_b", "em", 1.6, 5e-3, (32, 64, 64), 202)]  # fmt: skip
#: held-out validation slab (z) of every training X-ray box
VAL_Z = (38, 50)
MIN_PIECE = 20
LABELLED_FRACTION = 0.25
SEEDS = (0, 1)
ITERATIONS = 250
#: baseline grid: polarity x smoothing (µm) x h-maxima (µm)
BASE_GRID = {"bright_nuclei": (True, False), "sigma_um": (0.5, 1.0), "h_um": (0.5, 1.0, 2.0)}
DECODER_TUNE = {"fg_b": [0.5, 0.7, 0.85], "seed_c": [0.3, 0.5, 0.8], "seed_d": [-0.2, 0.2, 0.4]}
#: arm -> (input polarity, patch, held-out crops of its LOVO folds)
ARMS = {"xct": ("dark", 32, XRAY), "em": ("bright", 16, EM), "nuclei": ("bright", 16, EM + XRAY)}


# ------------------------------------------------------------------ data
def load(name: str) -> tuple[np.ndarray, np.ndarray, tuple]:
    d = np.load(REAL / f"{name}.npz")
    return d["image"], d["labels"], tuple(float(v) for v in d["voxel_size_zyx"])


def volume_path(name: str, inverted: bool = False) -> str:
    return str(WORK / "data" / f"{name}{'_inv' if inverted else ''}.zarr")


def _write(name: str, image: np.ndarray, labels: np.ndarray, vs) -> None:
    """``name`` as it is and inverted (255 - x); an EM crop also as a copy (``name_val``): a whole
    training volume cannot be its own validation volume, so the copy is."""
    from blockseg.train.training_data import import_pair

    tmp = WORK / "data" / "npy"
    tmp.mkdir(parents=True, exist_ok=True)
    versions = [(name, image), (f"{name}_inv", (255 - image.astype(np.int16)).astype(np.uint8))]
    if name in EM:
        versions.append((f"{name}_val", image))
    for out, img in versions:
        np.save(tmp / "img.npy", img)
        np.save(tmp / "lab.npy", labels)
        import_pair(str(tmp / "img.npy"), str(tmp / "lab.npy"), str(WORK / "data" / f"{out}.zarr"), voxel_size=vs, overwrite=True)


def prepare() -> None:
    """Every real dev crop and synthetic volume as a training volume, as it is and inverted."""
    from blockseg.io.volume import open_volume
    from blockseg.synth import preset_params, synthesize

    for name in XRAY + EM:
        img, lab, vs = load(name)
        assert img.dtype == np.uint8
        _write(name, img, lab, vs)
    for name, mode, radius, density, shape, seed in SYNTH:
        path = str(WORK / "data" / f"synth_{name}_raw.zarr")
        if not Path(path).exists():
            synthesize(path, preset_params("nucmm-m", shape=shape, voxel_size=VOXEL, radius=radius, density=density, mode=mode, seed=seed),
                       progress=False)  # fmt: skip
        img = np.asarray(open_volume(path).array[...])
        lab = np.asarray(open_volume(f"{path}/labels/nuclei").array[...])
        _write(f"synth_{name}", img, lab, VOXEL)
        print(name, "nuclei", int(lab.max()), "fill", round(float((lab > 0).mean()), 3), flush=True)


# ------------------------------------------------------------------ scoring
def ignore_mask(gt: np.ndarray) -> np.ndarray:
    """False on every ground-truth piece (26-connected component of one label) under MIN_PIECE voxels."""
    from scipy import ndimage as ndi

    mask = np.ones(gt.shape, bool)
    for lab, sl in enumerate(ndi.find_objects(gt), 1):
        if sl is None:
            continue
        cc, _ = ndi.label(gt[sl] == lab, structure=np.ones((3, 3, 3)))
        small = np.bincount(cc.ravel()) < MIN_PIECE
        small[0] = False
        mask[sl][small[cc]] = False
    return mask


def labelled_only(gt: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """``seg`` without predicted instances of which under LABELLED_FRACTION lie on labelled nuclei."""
    n = int(seg.max()) + 1
    size = np.bincount(seg.ravel(), minlength=n)
    on = np.bincount(seg.ravel(), weights=(gt > 0).ravel(), minlength=n)
    drop = on < LABELLED_FRACTION * np.maximum(size, 1)
    drop[0] = False
    out = seg.copy()
    out[drop[seg]] = 0
    return out


def scores(gt: np.ndarray, seg: np.ndarray, name: str) -> dict:
    """avAP and COCO AP-50 with small GT pieces ignored (+ labelled-only for the partial crops)."""
    from blockseg.evaluate import evaluate

    mask = ignore_mask(gt)

    def one(s):
        r = evaluate(gt, s, mask=mask).summary()
        return {"avAP": float(r["avAP"]), "AP50": float(r["coco"]["AP50"]), "n_true": int(r["n_true"]), "n_pred": int(r["n_pred"])}

    out = one(seg)
    if name in PARTIAL:
        out["labelled_only"] = one(labelled_only(gt, seg))
    return out


# ------------------------------------------------------------------ baseline
def baseline(name: str) -> dict:
    """The Otsu + h-maxima watershed baseline tuned on the crop's own labels (best avAP, then AP-50)."""
    from blockseg.segment.baseline import otsu_watershed

    img, gt, vs = load(name)
    rows = []
    for vals in itertools.product(*BASE_GRID.values()):
        p = dict(zip(BASE_GRID, vals))
        rows.append({"params": p, **scores(gt, otsu_watershed(img, vs, min_size=MIN_PIECE, **p), name)})
    best = max(rows, key=lambda r: (r["avAP"], r["AP50"]))
    return {"crop": name, "best": best, "grid": rows}


# ------------------------------------------------------------------ training
def training_set(arm: str, test: str | None) -> tuple[list[str], list]:
    """Training volumes and validation entries of ``arm`` with ``test`` held out (None: all crops)."""
    polarity = ARMS[arm][0]
    if arm == "xct":
        real = [n for n in XRAY if n != test]
        synth = ["synth_uct_a", "synth_uct_b"]
        train = [volume_path(n) for n in real + synth]
        val = [{"volume": volume_path(n), "region": [list(VAL_Z), None, None]} for n in real]
        return train, val
    if arm == "em":
        real = [n for n in EM if n != test]
        train = [volume_path(n) for n in real] + [volume_path(s, True) for s in ("synth_em_a", "synth_em_b")]
        return train, [str(WORK / "data" / f"{n}_val.zarr") for n in real]
    assert polarity == "bright"
    xray = [n for n in XRAY if n != test]
    em = [n for n in EM if n != test]
    train = ([volume_path(n, True) for n in xray] + [volume_path(n) for n in em]
             + [volume_path(s, True) for s in ("synth_uct_a", "synth_uct_b", "synth_em_a", "synth_em_b")])  # fmt: skip
    val = [{"volume": volume_path(n, True), "region": [list(VAL_Z), None, None]} for n in xray]
    return train, val


def config(arm: str, test: str | None, seed: int, output: str, iterations: int = ITERATIONS) -> dict:
    train, val = training_set(arm, test)
    patch = ARMS[arm][1]
    return {
        "data": {"train": train, "validation": val},
        "model": {"architecture": "resunet3d", "representations": ["B", "C", "D"],
                  "params": {"widths": [8, 16, 32], "anisotropic": 0, "norm": "batch", "activation": "elu"}},
        "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 0.0, "warmup": 20},
        "decoder": {"name": "bcd", "params": {"seed_b": 0.9, "fg_d": -0.3, "min_seed_size": 4.0, "min_size": float(MIN_PIECE)},
                    "tune": DECODER_TUNE},
        "output": output, "iterations": iterations, "patch": [patch] * 3, "batch_size": 2,
        "checkpoint_every": iterations, "validate_every": 0, "log_every": 50, "seed": seed, "threads": 1,
        "normalisation": "percentile",
    }  # fmt: skip


def train_one(cfg: dict) -> tuple[str, dict, float, float]:
    import torch

    from blockseg.train import parse_config, train

    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.perf_counter()
    res = train(parse_config(cfg), progress=False)
    return str(res.checkpoint), res.validation, time.process_time() - c0, time.perf_counter() - t0


def segment_crop(ckpt: str, name: str, polarity: str | None = None) -> tuple[np.ndarray, dict]:
    """Blockwise ``predict`` of a real crop (as it is) + the checkpoint's stored decoder."""
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict
    from blockseg.segment import segment_array
    from blockseg.segment.params import choose_decoder, store_decoder

    img, _, vs = load(name)
    with tempfile.TemporaryDirectory() as tmp:
        path, pred = f"{tmp}/{name}.zarr", f"{tmp}/{name}.pred"
        create_volume(path, img.shape, img.dtype, vs).array[...] = img
        kw = {} if polarity is None else {"polarity": polarity}
        rep = predict(path, ckpt, pred, progress=False, pyramid_levels=1, scale=1, **kw)
        dec = choose_decoder(stored=store_decoder(pred)).decoder
        seg = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), dec)
    return seg, {"decoder": dec.params(), "normalisation": rep.plan.normalisation}


def fold(job: tuple) -> dict:
    arm, test, seed = job
    out = RESULTS / f"{arm}_{test}_s{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    load_start = os.getloadavg()
    ckpt, val, cpu, wall = train_one(config(arm, test, seed, str(WORK / "folds" / f"{arm}_{test}_s{seed}")))
    _, gt, _ = load(test)
    seg, info = segment_crop(ckpt, test)
    row = {"arm": arm, "test": test, "seed": seed, "checkpoint": ckpt, "validation": val, "cpu_s": round(cpu, 1),
           "wall_s": round(wall, 1), "load_start": load_start, "load_end": os.getloadavg(), "machine": platform.platform(),
           "iterations": ITERATIONS, "test_scores": scores(gt, seg, test), "predict": info}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1, default=str))
    print(json.dumps({k: row[k] for k in ("arm", "test", "seed", "cpu_s", "test_scores")}, default=str), flush=True)
    return row


def final(arm: str) -> dict:
    """The arm retrained on all its dev crops (+ synthetic), seed 0."""
    ckpt, val, cpu, wall = train_one(config(arm, None, 0, str(WORK / "final" / arm)))
    row = {"arm": arm, "checkpoint": ckpt, "validation": val, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
           "bytes": os.path.getsize(ckpt), "config": config(arm, None, 0, str(WORK / "final" / arm))}  # fmt: skip
    (RESULTS / f"final_{arm}.json").write_text(json.dumps(row, indent=1, default=str))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--folds", action="store_true")
    ap.add_argument("--arms", default="xct,em,nuclei")
    ap.add_argument("--tests", default=None, help="comma-separated held-out crops (default: every fold of each arm)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--final", default=None, help="train the final model of this arm")
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent: the real crops are needed", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare()
    if args.baseline:
        rows = {n: baseline(n) for n in XRAY + EM}
        (RESULTS / "baseline.json").write_text(json.dumps(rows, indent=1))
        for n, r in rows.items():
            print(n, r["best"]["params"], {k: r["best"][k] for k in ("avAP", "AP50")}, flush=True)
    if args.folds:
        tests = None if args.tests is None else args.tests.split(",")
        jobs = [(arm, t, s) for arm in args.arms.split(",") for t in ARMS[arm][2] if tests is None or t in tests for s in SEEDS]
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            list(ex.map(fold, jobs))
    if args.final:
        print(json.dumps(final(args.final), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
