"""Shipped micro-CT (``xct``) and EM (``em``) models: leave-one-volume-out training vs the baseline.

The protocol is ``PROTOCOL.md`` beside this file (committed before the first run). Steps::

    PYTHONPATH=. python experiments/modality_models/run.py --prepare        # training volumes
    PYTHONPATH=. python experiments/modality_models/run.py --baseline       # tuned Otsu per crop
    PYTHONPATH=. python experiments/modality_models/run.py --folds [--jobs 2] [--arms xct,em,nuclei]
    PYTHONPATH=. python experiments/modality_models/run.py --prepare-ignore  # v2: box2/box5 + labels/ignore
    PYTHONPATH=. python experiments/modality_models/run.py --folds --jobs 1 --arms xct,xct_v2 --seeds 0,1,2  # PROTOCOL_v2
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
#: supplementary baseline grid (added after the protocol's picked its lower edge everywhere; not in the verdict)
BASE_GRID_WIDE = {"bright_nuclei": (True, False), "sigma_um": (0.0, 0.25, 0.5), "h_um": (0.1, 0.25, 0.5)}
DECODER_TUNE = {"fg_b": [0.5, 0.7, 0.85], "seed_c": [0.3, 0.5, 0.8], "seed_d": [-0.2, 0.2, 0.4]}
#: arm -> (input polarity, patch, held-out crops of its LOVO folds)
ARMS = {"xct": ("dark", 32, XRAY), "xct_v2": ("dark", 32, XRAY), "em": ("bright", 16, EM), "nuclei": ("bright", 16, EM + XRAY)}
#: PROTOCOL_v2: the fixed baseline setting whose unlabelled instances are ignored on the partial boxes
IGNORE_SEG = {"bright_nuclei": False, "sigma_um": 0.5, "h_um": 0.5}
IGNORE_DILATE_UM = 1.0


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


def unlabelled_candidates(image: np.ndarray, labels: np.ndarray, vs) -> np.ndarray:
    """PROTOCOL_v2's ignore mask of a partially labelled box (uint8 0/1).

    The instances of the fixed baseline (:data:`IGNORE_SEG`) with under LABELLED_FRACTION of
    their voxels on labelled nuclei, dilated by IGNORE_DILATE_UM (Euclidean), minus every
    labelled voxel.
    """
    from scipy import ndimage as ndi

    from blockseg.segment.baseline import otsu_watershed

    seg = otsu_watershed(image, vs, min_size=MIN_PIECE, **IGNORE_SEG)
    n = int(seg.max()) + 1
    size = np.bincount(seg.ravel(), minlength=n)
    on = np.bincount(seg.ravel(), weights=(labels > 0).ravel(), minlength=n)
    cand = on < LABELLED_FRACTION * np.maximum(size, 1)
    cand[0] = False
    near = ndi.distance_transform_edt(~cand[seg], sampling=vs) <= IGNORE_DILATE_UM
    return (near & (labels == 0)).astype(np.uint8)


def prepare_ignore() -> dict:
    """PROTOCOL_v2: ``<box>_ign.zarr`` = the partial boxes with their ignore array (``labels/ignore``)."""
    from blockseg.train.training_data import import_pair

    tmp = WORK / "data" / "npy"
    tmp.mkdir(parents=True, exist_ok=True)
    stats = {}
    for name in PARTIAL:
        img, lab, vs = load(name)
        ign = unlabelled_candidates(img, lab, vs)
        for key, arr in (("img", img), ("lab", lab), ("ign", ign)):
            np.save(tmp / f"{key}.npy", arr)
        import_pair(str(tmp / "img.npy"), str(tmp / "lab.npy"), str(WORK / "data" / f"{name}_ign.zarr"), voxel_size=vs,
                    overwrite=True, ignore=str(tmp / "ign.npy"))  # fmt: skip
        stats[name] = {"ignored_fraction": round(float(ign.mean()), 4), "labelled_fraction": round(float((lab > 0).mean()), 4)}
        print(name, stats[name], flush=True)
    (RESULTS / "ignore_masks.json").write_text(json.dumps({"setting": IGNORE_SEG, "dilate_um": IGNORE_DILATE_UM, **stats}, indent=1))
    return stats


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
def baseline(name: str, grid: dict = BASE_GRID) -> dict:
    """The Otsu + h-maxima watershed baseline tuned on the crop's own labels (best avAP, then AP-50)."""
    from blockseg.segment.baseline import otsu_watershed

    img, gt, vs = load(name)
    rows = []
    for vals in itertools.product(*grid.values()):
        p = dict(zip(grid, vals))
        rows.append({"params": p, **scores(gt, otsu_watershed(img, vs, min_size=MIN_PIECE, **p), name)})
    best = max(rows, key=lambda r: (r["avAP"], r["AP50"]))
    return {"crop": name, "best": best, "grid": rows}


# ------------------------------------------------------------------ training
def training_set(arm: str, test: str | None) -> tuple[list[str], list]:
    """Training volumes and validation entries of ``arm`` with ``test`` held out (None: all crops)."""
    polarity = ARMS[arm][0]
    if arm in ("xct", "xct_v2"):
        real = [n for n in XRAY if n != test]
        synth = ["synth_uct_a", "synth_uct_b"]
        path = lambda n: str(WORK / "data" / f"{n}_ign.zarr") if arm == "xct_v2" and n in PARTIAL else volume_path(n)  # noqa: E731
        train = [path(n) for n in real] + [volume_path(n) for n in synth]
        val = [{"volume": path(n), "region": [list(VAL_Z), None, None]} for n in real]
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
        "normalisation": "percentile", "polarity": ARMS[arm][0],
    }  # fmt: skip


def train_one(cfg: dict) -> tuple[str, dict, float, float]:
    import torch

    from blockseg.train import parse_config, train

    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.perf_counter()
    res = train(parse_config(cfg), progress=False)
    return str(res.checkpoint), res.validation, time.process_time() - c0, time.perf_counter() - t0


def segment_crop(ckpt: str, name: str, polarity: str | None = None, scale=1, diameter=None) -> tuple[np.ndarray, dict]:
    """Blockwise ``predict`` of a real crop (as it is; ``scale``: predict's, None its default;
    ``diameter``: predict's, e.g. ``"auto"``) + the checkpoint's stored decoder."""
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
        if diameter is not None:
            kw["diameter"] = diameter
        rep = predict(path, ckpt, pred, progress=False, pyramid_levels=1, scale=scale, **kw)
        dec = choose_decoder(stored=store_decoder(pred)).decoder
        seg = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), dec)
    return seg, {"decoder": dec.params(), "normalisation": rep.plan.normalisation, "nucleus_size": getattr(rep.plan, "nucleus_size", None)}


def fold(job: tuple) -> dict:
    arm, test, seed = job
    out = RESULTS / f"{arm}_{test}_s{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    load_start = os.getloadavg()
    run_dir = WORK / "folds" / f"{arm}_{test}_s{seed}"
    if (run_dir / "checkpoint.pt").exists():  # trained, not scored (a scoring error): score it, times unknown
        from blockseg.models import read_checkpoint

        ckpt, cpu, wall = str(run_dir / "checkpoint.pt"), None, None
        val = read_checkpoint(ckpt)["metadata"]["validation"]
    else:
        ckpt, val, cpu, wall = train_one(config(arm, test, seed, str(run_dir)))
    _, gt, _ = load(test)
    seg, info = segment_crop(ckpt, test)
    row = {"arm": arm, "test": test, "seed": seed, "checkpoint": ckpt, "validation": val, "cpu_s": cpu and round(cpu, 1),
           "wall_s": wall and round(wall, 1), "load_start": load_start, "load_end": os.getloadavg(), "machine": platform.platform(),
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


# ------------------------------------------------------------------ every shipped model x every crop
CONFOCAL = ("gonuclear_1135_mini", "bbbc050_qcanet_8cell")


def matrix_cell(model: str, crop: str, diameter=None) -> dict:
    """A shipped model on a whole real crop, with predict's defaults (as a new user runs it);
    ``NAME@POLARITY`` passes ``polarity=POLARITY`` (e.g. ``xct@auto``); ``diameter="auto"``:
    the CLI's default nucleus-size estimate and resampling to the network's nucleus size."""
    from blockseg.models import resolve_checkpoint

    name, _, polarity = model.partition("@")
    _, gt, _ = load(crop)
    t0 = time.perf_counter()
    seg, info = segment_crop(resolve_checkpoint(name), crop, polarity=polarity or None, scale=None, diameter=diameter)
    return {"model": model, "crop": crop, **scores(gt, seg, crop), "normalisation": info["normalisation"], "diameter": diameter,
            "nucleus_size": info["nucleus_size"], "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def matrix(models: list[str], filename: str = "matrix.json", crops=None, diameter=None) -> None:
    """Each shipped model on each real crop -> results/<filename> (cells already there are kept; a
    run that refuses, e.g. ``polarity="auto"`` when the check is unsure, is recorded as its error)."""
    from blockseg.errors import BlocksegError

    path = RESULTS / filename
    cells = json.loads(path.read_text()) if path.exists() else {}
    for crop in CONFOCAL:
        if f"baseline|{crop}" not in cells:
            cells[f"baseline|{crop}"] = baseline(crop)["best"]
            path.write_text(json.dumps(cells, indent=1))
    for model in models:
        for crop in crops or XRAY + EM + CONFOCAL:
            if f"{model}|{crop}" in cells:
                continue
            try:
                cells[f"{model}|{crop}"] = matrix_cell(model, crop, diameter)
            except BlocksegError as e:
                cells[f"{model}|{crop}"] = {"error": str(e)}
            path.write_text(json.dumps(cells, indent=1))
            print(model, crop, {k: cells[f"{model}|{crop}"].get(k) for k in ("avAP", "AP50", "error")}, flush=True)


# ------------------------------------------------------------------ results
def fold_rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*_s[0-9].json"))]


def summary(rows: list[dict], arm: str) -> dict:
    """Per held-out crop: mean and s.d. over seeds of avAP and AP-50 (and labelled-only ones)."""
    out = {}
    for test in sorted({r["test"] for r in rows if r["arm"] == arm}):
        rs = [r for r in rows if r["arm"] == arm and r["test"] == test]
        cell = {"seeds": [r["seed"] for r in rs]}
        for key in ("avAP", "AP50"):
            vals = [r["test_scores"][key] for r in rs]
            cell[key] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0]
            if "labelled_only" in rs[0]["test_scores"]:
                lo = [r["test_scores"]["labelled_only"][key] for r in rs]
                cell[f"labelled_only_{key}"] = [float(np.mean(lo)), float(np.std(lo, ddof=1)) if len(lo) > 1 else 0.0]
        out[test] = cell
    return out


PROTOCOL_V2_COMMIT = "322818b"


def v2_decision(rows: list[dict]) -> dict:
    """PROTOCOL_v2's shipping rule on the seeds both xct arms completed on all three boxes: ship
    xct_v2 iff its mean LOVO avAP is above v1's and it beats the protocol baseline (avAP and AP-50)."""
    base = json.loads((RESULTS / "baseline.json").read_text())
    done = {a: {s for s in (0, 1, 2) if all(any(r["arm"] == a and r["test"] == t and r["seed"] == s for r in rows) for t in XRAY)}
            for a in ("xct", "xct_v2")}  # fmt: skip
    seeds = sorted(done["xct"] & done["xct_v2"])
    out = {"seeds": seeds, "arms": {}}
    for arm in ("xct", "xct_v2"):
        summ = summary([r for r in rows if r["seed"] in seeds], arm)
        m = {k: float(np.mean([summ[t][k][0] for t in XRAY])) if len(summ) == 3 else None for k in ("avAP", "AP50")}
        out["arms"][arm] = {"mean": m, "per_crop": summ}
    mb = {k: float(np.mean([base[t]["best"][k] for t in XRAY])) for k in ("avAP", "AP50")}
    v1, v2 = out["arms"]["xct"]["mean"], out["arms"]["xct_v2"]["mean"]
    ok = len(seeds) >= 2 and v2["avAP"] is not None
    out["baseline_mean"] = mb
    out["v2_beats_v1"] = bool(ok and v2["avAP"] > v1["avAP"])
    out["v2_beats_baseline"] = bool(ok and v2["avAP"] > mb["avAP"] and v2["AP50"] > mb["AP50"])
    out["ship_v2"] = out["v2_beats_v1"] and out["v2_beats_baseline"]
    return out


def fold_table(rows: list[dict], arms=("xct", "xct_v2")) -> list[str]:
    """Markdown rows: every fold of ``arms`` (standard and labelled-only scores, CPU seconds)."""
    lines = ["| arm | held-out box | seed | avAP | AP-50 | labelled-only avAP | labelled-only AP-50 | CPU s |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["arm"] in arms), key=lambda r: (r["arm"], r["test"], r["seed"])):
        sc, lo = r["test_scores"], r["test_scores"].get("labelled_only")
        lab = f"{lo['avAP']:.3f} | {lo['AP50']:.3f}" if lo else "– | –"
        lines.append(f"| {r['arm']} | {r['test'].split('_')[-1]} | {r['seed']} | {sc['avAP']:.3f} | {sc['AP50']:.3f} | {lab} | "
                     f"{r['cpu_s'] if r['cpu_s'] is not None else 'n/a'} |")  # fmt: skip
    return lines


#: the reading of the v2 comparison, written after its numbers (RESULTS.md)
READING_V2: list[str] = [
    "Leaving the unlabelled nuclei of box2 / box5 out of the loss raised the 3-seed LOVO mean from avAP 0.214 / AP-50",
    "0.223 (v1) to 0.226 / 0.258 (v2); both beat the baseline's mean (0.135 / 0.111). The gain is where the hypothesis",
    "put it: on the clean box6, whose fold trains on both masked boxes, v2 has 0.379 / 0.459 against v1's 0.327 / 0.324",
    "(per seed +0.145, +0.029, -0.017 avAP), close to the few-annotation start model trained on box2 + synthetic only",
    "(0.366 / 0.453). On box5 (its fold trains on box2, 36 % of it ignored) v2 is lower, 0.274 / 0.310 vs 0.296 / 0.344,",
    "all of it from seed 2 (-0.098 avAP); on box2 both fail. **It is not a robust improvement**: averaged over the boxes,",
    "v2 is higher for seeds 0 and 1 (avAP +0.052, +0.022) and lower for seed 2 (-0.038), and every per-box difference is",
    "within about one seed s.d. (0.05-0.06 avAP). By the rule written before the runs v2 is shipped; read it as \"no worse",
    "on the mean, better on the clean box in 2 of 3 seeds\", not as a measured gain. The shipped (all-boxes) v2 weights",
    "score validation AP-50 0.373 on the z 38-50 slabs against v1's 0.407 (`results/final_xct*.json`); those slabs of",
    "box2 / box5 are scored against their partial labels, so a network that finds the unlabelled nuclei loses there",
    "(not part of the rule).",
]
#: deviations from PROTOCOL_v2 (RESULTS.md)
DEVIATIONS_V2: list[str] = [
    "None in the design: the 12 runs ran as written (v1 seed 2 first, then v2 seeds 0, 1, 2), one at a time under",
    "`nice`, one torch thread, load 1-6. Said for completeness: (1) the v1 seed-2 folds started while the ignore",
    "feature was being written; a v1 fold (box6, seed 2) retrained afterwards with the feature committed gave",
    "bit-identical weights and the same scores (`results/repro_v1_box6_seed2.json`), so no v1 run depends on which",
    "code it imported. (2) v1 seeds 0-1 are the original runs (not rerun; CPU s unknown, load 15-27). (3) The test",
    "crop of `tests/models/test_modality_models.py` (box5) was chosen after the v1 runs; its checkpoint is now the v2",
    "seed-0 fold (`tests/data/modality_lovo/xct_v2_not_box5_s0.pt`).",
]


def v2_section(rows: list[dict]) -> list[str]:
    """RESULTS.md's PROTOCOL_v2 part: the decision, per-crop v1 vs v2 on the same seeds, every fold."""
    d = v2_decision(rows)
    base = json.loads((RESULTS / "baseline.json").read_text())
    f = lambda c: f"{c[0]:.3f} ± {c[1]:.3f}"  # noqa: E731
    lines = ["", "## PROTOCOL_v2: `xct_v2` (unlabelled nuclei of box2 / box5 ignored in the loss) vs `xct` (v1)", "",
             f"Seeds completed by both arms on all three boxes: {d['seeds']}. Per held-out box, mean ± s.d. over those seeds "
             "(standard scoring; GT pieces < 20 voxels ignored):", "",
             "| held-out box | xct avAP | xct AP-50 | xct_v2 avAP | xct_v2 AP-50 | baseline avAP | baseline AP-50 | v2 better than v1 (avAP / AP-50) | v2 beats baseline (both) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    a1, a2 = d["arms"]["xct"]["per_crop"], d["arms"]["xct_v2"]["per_crop"]
    for t in XRAY:
        if t not in a1 or t not in a2:
            continue
        b = base[t]["best"]
        better = f"{'yes' if a2[t]['avAP'][0] > a1[t]['avAP'][0] else 'no'} / {'yes' if a2[t]['AP50'][0] > a1[t]['AP50'][0] else 'no'}"
        win = a2[t]["avAP"][0] > b["avAP"] and a2[t]["AP50"][0] > b["AP50"]
        lines.append(f"| {t.split('_')[-1]} | {f(a1[t]['avAP'])} | {f(a1[t]['AP50'])} | {f(a2[t]['avAP'])} | {f(a2[t]['AP50'])} | "
                     f"{b['avAP']:.3f} | {b['AP50']:.3f} | {better} | {'yes' if win else '**no**'} |")  # fmt: skip
    m1, m2, mb = d["arms"]["xct"]["mean"], d["arms"]["xct_v2"]["mean"], d["baseline_mean"]
    if m1["avAP"] is not None and m2["avAP"] is not None:
        lines += ["", f"Mean over the three boxes: xct avAP {m1['avAP']:.3f} / AP-50 {m1['AP50']:.3f}; xct_v2 {m2['avAP']:.3f} / "
                  f"{m2['AP50']:.3f}; baseline {mb['avAP']:.3f} / {mb['AP50']:.3f}.", "",
                  f"**Decision (rule of PROTOCOL_v2):** v2 mean avAP above v1's: {'yes' if d['v2_beats_v1'] else 'no'}; v2 beats the "
                  f"baseline (mean avAP and AP-50): {'yes' if d['v2_beats_baseline'] else 'no'} -> "
                  + ("**xct_v2 is shipped as `xct`**." if d["ship_v2"] else "**v1 stays the shipped `xct`**; v2 is reported here.")]  # fmt: skip
    ign = RESULTS / "ignore_masks.json"
    if ign.exists():
        g = json.loads(ign.read_text())
        lines += ["", "Ignore masks (`results/ignore_masks.json`): " + "; ".join(
            f"{t.split('_')[-1]} {g[t]['ignored_fraction']:.1%} of the voxels ignored (labelled {g[t]['labelled_fraction']:.1%})" for t in PARTIAL)
            + f"; setting {g['setting']}, dilation {g['dilate_um']} µm."]  # fmt: skip
    lines += ["", "Every fold of both micro-CT arms (`results/<arm>_<box>_s<seed>.json`; CPU s n/a: v1 folds scored from saved "
              "checkpoints, see the deviations below):", ""] + fold_table(rows)
    if READING_V2:
        lines += ["", "**Reading (v2).** " + " ".join(READING_V2)]
    if DEVIATIONS_V2:
        lines += ["", "**Deviations from PROTOCOL_v2.** " + " ".join(DEVIATIONS_V2)]
    return lines


def results_text() -> str:
    rows = fold_rows()
    base = json.loads((RESULTS / "baseline.json").read_text())
    f = lambda c: f"{c[0]:.3f} ± {c[1]:.3f}"  # noqa: E731
    lines = ["# Micro-CT and EM models: leave-one-volume-out results", "",
             "Protocol: `PROTOCOL.md` (commit ad6930b, before the first run); the `xct_v2` arm and seed 2 of `xct`: "
             f"`PROTOCOL_v2.md` (commit {PROTOCOL_V2_COMMIT}, before any of those runs). Command: "
             "`PYTHONPATH=. python experiments/modality_models/run.py --folds` then `--table` (v2: `--prepare-ignore`, then "
             "`--folds --jobs 1 --arms xct --seeds 2` and `--folds --jobs 1 --arms xct_v2 --seeds 0,1,2`); CPU, one torch thread "
             "per run; v1 seeds 0-1 on a machine shared with other jobs (load 15-27 on 2 cores), the v2 runs one at a time "
             "under `nice` (load 1-4).", "",
             "Held-out crop scores, mean ± s.d. over seeds (n = number of seeds); baseline = Otsu + h-maxima distance "
             "watershed tuned on the held-out crop's own labels (optimistic). GT pieces < 20 voxels ignored.", "",
             "| arm | held-out crop | seeds | avAP | AP-50 | baseline avAP | baseline AP-50 | beats baseline (both) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    verdict = {}
    for arm in ARMS:
        summ = summary(rows, arm)
        for test, c in summ.items():
            b = base[test]["best"]
            win = c["avAP"][0] > b["avAP"] and c["AP50"][0] > b["AP50"]
            lines.append(f"| {arm} | {test} | {len(c['seeds'])} | {f(c['avAP'])} | {f(c['AP50'])} | {b['avAP']:.3f} | {b['AP50']:.3f} | "
                         f"{'yes' if win else '**no**'} |")  # fmt: skip
        if summ:
            m = {k: float(np.mean([c[k][0] for c in summ.values()])) for k in ("avAP", "AP50")}
            mb = {k: float(np.mean([base[t]["best"][k] for t in summ])) for k in ("avAP", "AP50")}
            verdict[arm] = (m, mb, sorted(summ))
    lines += ["", "Mean over held-out crops (verdict of the protocol: seed-mean avAP **and** AP-50 above the baseline's):", "",
              "| arm | held-out crops | avAP | AP-50 | baseline avAP | baseline AP-50 | verdict |", "|---|---|---|---|---|---|---|"]
    for arm, (m, mb, tests) in verdict.items():
        ok = m["avAP"] > mb["avAP"] and m["AP50"] > mb["AP50"]
        lines.append(f"| {arm} | {', '.join(t.split('_')[-1] for t in tests)} | {m['avAP']:.3f} | {m['AP50']:.3f} | {mb['avAP']:.3f} | "
                     f"{mb['AP50']:.3f} | {'beats the baseline' if ok else '**does not beat the baseline**'} |")  # fmt: skip
    part = [(arm, t, c) for arm in ARMS for t, c in summary(rows, arm).items() if "labelled_only_avAP" in c]
    if part:
        lines += ["", "Partially labelled boxes, *labelled-only* scoring (predictions with < 25 % of their voxels on "
                  "labelled nuclei dropped, for every method):", "",
                  "| arm | crop | avAP | AP-50 | baseline avAP | baseline AP-50 |", "|---|---|---|---|---|---|"]  # fmt: skip
        for arm, t, c in part:
            b = base[t]["best"]["labelled_only"]
            lines.append(f"| {arm} | {t} | {f(c['labelled_only_avAP'])} | {f(c['labelled_only_AP50'])} | {b['avAP']:.3f} | {b['AP50']:.3f} |")
    wide_path = RESULTS / "baseline_wide.json"
    if wide_path.exists():
        wide = json.loads(wide_path.read_text())
        lines += ["", "**Supplementary baseline (added after the protocol, not in the verdict).** The protocol's grid picked its",
                  f"lowest σ and h on every crop, so the baseline was also tuned over a finer grid {BASE_GRID_WIDE} (again on",
                  "each test crop's own labels). Against it:", "",
                  "| arm | held-out crop | avAP | AP-50 | wide-grid baseline avAP | AP-50 | settings | model better on both |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for arm in ("xct", "xct_v2", "em"):
            for t, c in summary(rows, arm).items():
                b = wide[t]["best"]
                win = c["avAP"][0] > b["avAP"] and c["AP50"][0] > b["AP50"]
                lines.append(f"| {arm} | {t} | {c['avAP'][0]:.3f} | {c['AP50'][0]:.3f} | {b['avAP']:.3f} | {b['AP50']:.3f} | {b['params']} | "
                             f"{'yes' if win else '**no**'} |")  # fmt: skip
    lines += v2_section(rows)
    lines += ["", "**Reading of PROTOCOL.md's arms** (`xct` now with seeds 0-2, `em` and `nuclei` with 0-1; the v2 comparison is",
              "above). By the protocol's verdict (mean over held-out crops) both specialists beat the baseline. Per crop: `em`",
              "wins on both EM crops. `xct` (v1) wins on box5; on the clean box6 its 2-seed mean tied on avAP and lost on AP-50",
              "(0.292 / 0.257 vs 0.289 / 0.277), with seed 2 (0.397 / 0.459) its 3-seed mean is above the baseline (0.327 / 0.324):",
              "the seed spread on box6 is large (AP-50 s.d. 0.13). Both methods fail on box2 (different contrast, sparse labels).",
              "Against the finer-grid baseline (supplementary) `em` still wins on roi3 but loses on roi2; `xct` (v1) wins only on",
              "box5, `xct_v2` on box5 and, narrowly, box6. The generalist `nuclei` (X-ray boxes inverted + EM + synthetic) is worse",
              "than `em` on both EM crops, so the shipped EM model is the specialist. Tiny crops (14-18 scored nuclei per EM crop):",
              "the spread is large.", ""]
    lines += ["**Deviations from the protocol, all said here.** (1) The four xct folds of box2/box5 and the two of box6",
              "trained, then failed while scoring on an import error of the working tree being restructured by another",
              "engineer at that moment; they were scored afterwards from their saved checkpoints without retraining",
              "(`cpu_s` null in their JSON). (2) The generalist `nuclei` arm ran on the two EM folds only; its X-ray",
              "folds (optional in the protocol) were not run for lack of CPU time (load 20-30 on 2 shared cores).",
              "(3) The finer baseline grid above was added after the protocol's results. (4) The crops of the tests",
              "(`tests/models/test_modality_models.py`) were chosen after the runs, where each model wins.", ""]
    lines += ["", "Baseline settings picked (per crop): " + "; ".join(f"{t.split('_')[-1]} {b['best']['params']}" for t, b in base.items()), ""]
    return "\n".join(lines)


SHIPPED = ("demo", "fluo", "fluo_synth", "xct", "em")
#: (shipped model, crop) pairs where the shipped weights trained on the crop (not held-out scores)
_OWN = {("xct", c) for c in XRAY} | {("em", c) for c in EM}
#: shipped name -> the arm whose LOVO folds stand for it on the crops it trained on (xct: by PROTOCOL_v2's rule)
LOVO_OF = {"xct": "xct", "em": "em"}
#: the reading of docs/results-modalities.md, written after the numbers
READING_DOCS: list[str] = [
    "* `em` beats the tuned baseline on both EM crops leave-one-out; a finer baseline grid (supplementary, in",
    "  RESULTS.md) still loses to it on roi3 but beats it on roi2. The synthetic-only `fluo_synth` comes close on",
    "  roi2 and is well below on roi3: bright nuclei at a similar size transfer.",
    "* `xct` is since PROTOCOL_v2 trained with the unlabelled nuclei of the partially labelled boxes 2 and 5 ignored in",
    "  the loss (an ignore array, `data.ignore`). Leave-one-out over 3 seeds it beats the baseline on the mean of the three",
    "  boxes (avAP 0.23 / AP-50 0.26 vs 0.14 / 0.11) and on box5 and the clean box6; both fail on box2 (another contrast,",
    "  sparse labels). Against v1 (`xct v1` row, same seeds) the mean rose from 0.21 / 0.22, all of it on box6, but in 2 of",
    "  3 seeds only and within the seed spread: not a robust gain (RESULTS.md). Use it as a start for `blockseg tune` or",
    "  fine-tuning, not as a finished micro-CT segmenter.",
    "* `fluo` on the BBBC050 embryo (‡) with `predict`'s size estimate (14.5 µm for 16.8 µm nuclei) finds all 8 nuclei",
    "  (AP-50 1.00, avAP 0.66, against the tuned baseline's 0.44 / 0.25): the estimate is what makes a network trained on",
    "  3 µm nuclei usable on 17 µm ones (`docs/size-estimate.md`). 8 nuclei: a small test.",
    "* Out of their modality the micro-CT and EM networks fail (avAP ≤ 0.10, AP-50 ≤ 0.19, most near 0), also with the",
    "  polarity inverted (`--polarity auto`): polarity handling makes an input legible to a network, it does not make a",
    "  network generalise.",
    "* One generalist network for X-ray + EM (`nuclei` in RESULTS.md) was worse than `em` on both EM crops, so the",
    "  shipped models are the two specialists.",
]
#: (model, crop) cells run with predict's nucleus-size estimate (diameter="auto"), from results/matrix_diameter.json
DIAMETER_CELLS = {("fluo", "bbbc050_qcanet_8cell")}


def _docs_cells() -> dict:
    """Every matrix cell: matrix.json, the --polarity auto cells, and the diameter="auto" cells."""
    cells = json.loads((RESULTS / "matrix.json").read_text())
    for extra in ("matrix_auto.json", "matrix_diameter.json"):
        if (RESULTS / extra).exists():
            cells.update(json.loads((RESULTS / extra).read_text()))
    return cells


def _docs_cell(model: str, crop: str, cells: dict, rows: list[dict], lovo_of: dict) -> str:
    """One cell of the results table: LOVO mean ± s.d., a single run (marks), refused, or –."""
    arm = lovo_of.get(model)
    lovo = summary(rows, arm).get(crop) if arm else None
    if lovo:
        return f"{lovo['avAP'][0]:.2f}±{lovo['avAP'][1]:.2f} / {lovo['AP50'][0]:.2f}±{lovo['AP50'][1]:.2f} (LOVO, {len(lovo['seeds'])} seeds)"
    cell = cells.get(f"{model}|{crop}")
    if cell is None or (model, crop) in DIAMETER_CELLS and cell.get("diameter") != "auto":
        return "–"
    if "error" in cell:
        return "refused (check unsure)" if "unsure" in cell["error"] else "error"
    trained = (model, crop) == ("fluo", "gonuclear_1135_mini") or (model.partition("@")[0], crop) in _OWN
    return f"{cell['avAP']:.2f} / {cell['AP50']:.2f}" + (" †" if trained else "") + (" ‡" if (model, crop) in DIAMETER_CELLS else "")


def _docs_head(protocol_commit: str, decision: dict, lovo_of: dict) -> list[str]:
    other = "xct v1" if lovo_of["xct"] == "xct_v2" else "xct_v2"
    return ["# Results: shipped models on the real crops", "",
            "Every shipped network on every real dev crop of `../shared/data/real` (X-ray micro-CT and EM of larval",
            "zebrafish brain, 0.51 µm; two confocal crops), next to the classical baseline. Each cell is **avAP / AP-50**",
            "(avAP: mean over IoU 0.1–0.9 of TP / (TP + FP + FN); COCO AP-50), ground-truth pieces under 20 voxels",
            "ignored, nuclei cut by the crop border counted as their part inside it.", "",
            f"* Protocols: `experiments/modality_models/PROTOCOL.md`, committed (`{protocol_commit}`) before the first training run;",
            f"  `experiments/modality_models/PROTOCOL_v2.md` (`{PROTOCOL_V2_COMMIT}`, before any of its runs): the `xct` recipe with the",
            "  unlabelled nuclei of the partially labelled boxes 2 and 5 ignored in the training loss (`xct_v2`), seeds 0–2 for both",
            f"  micro-CT arms. By its rule (seeds {decision['seeds']}) the shipped `xct` is the "
            + ("**v2** recipe." if lovo_of["xct"] == "xct_v2" else "**v1** recipe (v2 did not qualify)."),
            f"* **LOVO** cells (`xct` on the X-ray boxes, `em` on the EM crops, and the `{other}` row, which has LOVO cells only): the",
            "  recipe trained without that crop (leave one volume out), mean ± s.d. over the seeds said; the shipped weights themselves",
            "  saw every dev crop of their modality.",
            "  The non-LOVO `xct` cells (and `xct --polarity auto`) are of the shipped weights, rerun when v2 replaced v1 (v1's:",
            "  `experiments/modality_models/results/matrix_xct_v1_weights.json`).",
            "* Other cells: the shipped checkpoint once on the whole crop with `predict`'s defaults (voxel-size resampling,",
            "  the card's polarity, its stored decoder), as a new user would run it. † the shipped weights trained on this",
            "  crop (`fluo`: z 0–70 of GoNuclear; `xct` / `em`: every crop of their modality): not a held-out score.",
            "  ‡ run with `predict`'s nucleus-size estimate (`diameter=\"auto\"`, the CLI's default) instead: resampling BBBC050",
            "  (1.75 × 0.8 × 0.8 µm) by voxel size alone to `fluo`'s 0.13 µm grid is ~1.8 × 10⁸ voxels and did not finish in",
            "  the CPU time of the first session; with the estimate the volume is resampled so that its nuclei span the network's",
            "  2.97 µm nuclei (much smaller).",
            "* Baseline: Otsu + distance-transform watershed with h-maxima seeds, best of both polarities × σ {0.5, 1} µm ×",
            "  h {0.5, 1, 2} µm, **tuned on each crop's own labels** (optimistic).",
            "* `xct` / `em --polarity auto`: the polarity detected by the label-free blob test instead of the card's (goal 3 of",
            "  issue 32); with the card's polarity, `xct` on bright-nuclei crops (and `em` on dark ones) finds nothing, and",
            "  `predict` warns that the nuclei look the other way.",
            "* X-ray boxes 2 and 5 are partially labelled: a prediction on an unlabelled nucleus counts as a false positive here",
            "  (the *labelled-only* scores are in `experiments/modality_models/RESULTS.md`).",
            "* Reproduce: `PYTHONPATH=. python experiments/modality_models/run.py --prepare --prepare-ignore --baseline --folds "
            "--arms xct,xct_v2,em --seeds 0,1,2 --matrix " + ",".join(SHIPPED) + " --docs`; the ‡ cell: `--matrix fluo "
            "--matrix-crops bbbc050_qcanet_8cell --diameter auto --matrix-file matrix_diameter.json`.", ""]  # fmt: skip


def docs_text(protocol_commit: str) -> str:
    """docs/results-modalities.md: every shipped model x every real crop x the baseline."""
    cells, base, rows = _docs_cells(), json.loads((RESULTS / "baseline.json").read_text()), fold_rows()
    decision = v2_decision(rows)
    lovo_of = {**LOVO_OF, "xct": "xct_v2" if decision["ship_v2"] else "xct"}
    other = "xct" if lovo_of["xct"] == "xct_v2" else "xct_v2"
    crops = XRAY + EM + CONFOCAL
    short = {c: c.replace("xray_zfish_", "X-ray ").replace("em_zfish_", "EM ").replace("_1135_mini", "").replace("_qcanet_8cell", "") for c in crops}
    lines = _docs_head(protocol_commit, decision, lovo_of)
    lines += ["| model | " + " | ".join(short[c] for c in crops) + " |", "|" + "---|" * (len(crops) + 1)]
    other_row = "xct v1" if other == "xct" else other  # the micro-CT recipe not shipped: its LOVO cells only
    lovo = {**lovo_of, other_row: other}
    for model in SHIPPED + (other_row, "xct@auto", "em@auto"):
        label = f"`{model.replace('@', ' --polarity ')}`" + (" recipe (not shipped, LOVO only)" if model == other_row else "")
        lines.append(f"| {label} | " + " | ".join(_docs_cell(model, c, cells, rows, lovo) for c in crops) + " |")
    brow = [base[c]["best"] if c in base else cells.get(f"baseline|{c}") for c in crops]
    lines.append("| baseline (tuned on the crop) | " + " | ".join(f"{b['avAP']:.2f} / {b['AP50']:.2f}" if b else "–" for b in brow) + " |")
    lines += ["", "Reading (the numbers above, 2026-12-07):", ""] + READING_DOCS
    lines += ["", "Per-fold numbers, the seeds, the baseline's picked settings and the partial-label scoring: "
              "`experiments/modality_models/RESULTS.md` and `experiments/modality_models/results/`.", ""]
    return "\n".join(lines)


def write_config(name: str, modality: str, cfg: dict) -> None:
    """configs/train_<name>.yaml: the shipped model's training config, paths relative to the checkout."""
    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(cfg).replace(str(ROOT) + "/", "")), sort_keys=False, default_flow_style=None, width=110)
    head = [f"# The shipped `{name}` checkpoint (blockseg/checkpoints/{name}.pt): {modality} nuclei, trained on every dev crop of",
            "# its modality in ../shared/data/real plus synthetic volumes (issue 32). The training volumes are written by",
            "#   PYTHONPATH=. python experiments/modality_models/run.py --prepare --prepare-ignore",
            "# (--prepare-ignore: the partially labelled boxes 2 and 5 with their ignore arrays, *_ign.zarr/labels/ignore, PROTOCOL_v2.md)",
            "# then this config is what `run.py --final` trains (blockseg train configs/train_" + name + ".yaml gives the same run).",
            "# Protocol, leave-one-volume-out accuracy and the model card: experiments/modality_models/ (PROTOCOL.md, PROTOCOL_v2.md, RESULTS.md)."]
    (ROOT / "configs" / f"train_{name}.yaml").write_text("\n".join(head) + "\n" + text)


def _verdict(cell: dict, base: dict, wide: dict | None) -> str:
    """One line: does the seed-mean beat the baseline (protocol grid; supplementary finer grid) on avAP and AP-50?"""
    beats = lambda b: cell["avAP"][0] > b["avAP"] and cell["AP50"][0] > b["AP50"]  # noqa: E731
    out = f"{'beats' if beats(base) else 'does not beat'} the protocol's tuned baseline"
    if wide:
        out += f"; {'beats' if beats(wide) else 'does not beat'} the finer-grid tuned baseline (supplementary)"
    return out


def ship(arm: str, name: str, modality: str) -> dict:
    """Copy the final checkpoint of ``arm`` into blockseg/checkpoints/<name>.pt with its model card."""
    import copy

    import torch

    from blockseg.models import read_checkpoint

    final_row = json.loads((RESULTS / f"final_{arm}.json").read_text())
    payload = copy.deepcopy(read_checkpoint(final_row["checkpoint"]))
    meta = payload["metadata"]
    lovo = summary(fold_rows(), arm)
    base = json.loads((RESULTS / "baseline.json").read_text())
    wide = json.loads((RESULTS / "baseline_wide.json").read_text()) if (RESULTS / "baseline_wide.json").exists() else {}
    train, _ = training_set(arm, None)
    meta["card"] = {
        "name": name, "modality": modality, "polarity": meta["normalisation"].get("polarity"),
        "training_data": [Path(p).stem for p in train],
        "training_data_note": ("real: manual labels of larval zebrafish brain crops (../shared/data/real, paulttt/connectomics, MIT); "
                               "synth_*: blockseg.synth volumes (experiments/modality_models/run.py SYNTH; '_inv' = inverted 255 - x); "
                               "xray_zfish_box2/box5 are partially labelled"
                               + ("; '_ign' = with an ignore array over their unlabelled nuclei (left out of the loss, PROTOCOL_v2.md)"
                                  if arm == "xct_v2" else "")),
        "voxel_size_um": meta.get("voxel_size"), "voxel_size_note": "0.51 µm isotropic, approximate (the data's README)",
        "normalisation": "percentile 1-99.8 % of each volume -> [0, 1]", "nucleus_diameter_um": meta.get("nucleus_diameter_um"),
        "decoder": meta.get("decoder"),
        "accuracy": {"protocol": "experiments/modality_models/PROTOCOL.md (commit ad6930b)"
                     + (f" and PROTOCOL_v2.md (commit {PROTOCOL_V2_COMMIT}), arm xct_v2" if arm == "xct_v2" else ""),
                     "method": "leave-one-volume-out, mean ± s.d. over seeds; GT pieces < 20 voxels ignored; baseline Otsu + "
                               "h-maxima watershed tuned on the test crop's labels",
                     "held_out": {t: {**c, "baseline": {k: base[t]["best"][k] for k in ("avAP", "AP50")}} for t, c in lovo.items()},
                     "verdict": {t: _verdict(c, base[t]["best"], wide.get(t, {}).get("best")) for t, c in lovo.items()},
                     "note": "the shipped weights were retrained on every dev crop: this is the LOVO estimate, not a score of these weights"},
    }  # fmt: skip
    dest = ROOT / "blockseg" / "checkpoints" / f"{name}.pt"
    torch.save(payload, dest)
    write_config(name, modality, final_row["config"])
    return {"name": name, "path": str(dest), "bytes": dest.stat().st_size, "card": meta["card"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--prepare-ignore", action="store_true", help="PROTOCOL_v2's ignore arrays of the partial boxes")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds of --folds (default 0,1)")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--baseline-wide", action="store_true", help="the supplementary baseline grid (not in the verdict)")
    ap.add_argument("--folds", action="store_true")
    ap.add_argument("--arms", default="xct,em,nuclei")
    ap.add_argument("--tests", default=None, help="comma-separated held-out crops (default: every fold of each arm)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--final", default=None, help="train the final model of this arm")
    ap.add_argument("--ship", nargs=3, metavar=("ARM", "NAME", "MODALITY"), help="copy ARM's final model to blockseg/checkpoints/NAME.pt with its card")
    ap.add_argument("--matrix", default=None, help="comma-separated shipped models to score on every real crop (results/matrix.json)")
    ap.add_argument("--docs", default=None, metavar="PROTOCOL_COMMIT", help="write docs/results-modalities.md")
    ap.add_argument("--matrix-file", default="matrix.json", help="results file of --matrix (default matrix.json)")
    ap.add_argument("--matrix-crops", default=None, help="comma-separated crops of --matrix (default: every real crop)")
    ap.add_argument("--diameter", default=None, help="predict's diameter for --matrix (e.g. auto: the nucleus-size estimate)")
    ap.add_argument("--table", action="store_true", help="write RESULTS.md from results/*.json")
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent: the real crops are needed", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare()
    if args.prepare_ignore:
        prepare_ignore()
    if args.baseline:
        rows = {n: baseline(n) for n in XRAY + EM}
        (RESULTS / "baseline.json").write_text(json.dumps(rows, indent=1))
        for n, r in rows.items():
            print(n, r["best"]["params"], {k: r["best"][k] for k in ("avAP", "AP50")}, flush=True)
    if args.baseline_wide:
        rows = {n: baseline(n, BASE_GRID_WIDE) for n in XRAY + EM}
        (RESULTS / "baseline_wide.json").write_text(json.dumps(rows, indent=1))
        for n, r in rows.items():
            print(n, r["best"]["params"], {k: r["best"][k] for k in ("avAP", "AP50")}, flush=True)
    if args.folds:
        tests = None if args.tests is None else args.tests.split(",")
        seeds = [int(s) for s in args.seeds.split(",")]
        jobs = [(arm, t, s) for s in seeds for arm in args.arms.split(",") for t in ARMS[arm][2] if tests is None or t in tests]
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            list(ex.map(fold, jobs))
    if args.matrix:
        matrix(args.matrix.split(","), args.matrix_file, args.matrix_crops and args.matrix_crops.split(","), args.diameter)
    if args.final:
        print(json.dumps(final(args.final), default=str))
    if args.ship:
        arm, name, modality = args.ship
        print(json.dumps(ship(arm, name, modality), default=str))
    if args.docs:
        doc = ROOT / "docs" / "results-modalities.md"
        old = doc.read_text() if doc.exists() else ""
        kept = old[old.find("\n## Few annotations\n"):] if "\n## Few annotations\n" in old else ""
        doc.write_text(docs_text(args.docs).rstrip("\n") + "\n" + kept)  # the few-annotation section is few_annotation/table.py's
    if args.table:
        (HERE / "RESULTS.md").write_text(results_text())
        print(results_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
