"""Few annotations per modality: `blockseg tune` (thresholds only) vs fine-tuning from the closest
shipped model's recipe, on a sub-box of one real crop holding N whole nuclei, tested on another crop.

The protocol is ``PROTOCOL.md`` beside this file (committed before the first scored run). Steps::

    PYTHONPATH=. python experiments/few_annotation/run.py --boxes      # sub-boxes per budget (labels only)
    PYTHONPATH=. python experiments/few_annotation/run.py --start      # start models (shipped recipe, pair left out)
    PYTHONPATH=. python experiments/few_annotation/run.py --score [--seeds 0,1]   # arms a-d -> results/*.json
    PYTHONPATH=. python experiments/few_annotation/run.py --table      # RESULTS.md

Needs the training volumes of ``experiments/modality_models/run.py --prepare``. Each scored cell
writes ``results/<pair>_<arm>_N<budget>[_s<seed>].json`` and is skipped when it exists (resumable).
Work files go to ``runs/few_annotation/`` (not in git).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

def _modality_models():
    """experiments/modality_models/run.py (data, scoring, baseline, the shipped recipe), imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("modality_models_run", HERE.parent / "modality_models" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


mm = _modality_models()

RESULTS = HERE / "results"
WORK = ROOT / "runs" / "few_annotation"

#: pair -> (modality arm of modality_models, train crop, test crop)
PAIRS = {
    "em_r2_to_r3": ("em", "em_zfish_roi2", "em_zfish_roi3"),
    "em_r3_to_r2": ("em", "em_zfish_roi3", "em_zfish_roi2"),
    "xct_b5_to_b6": ("xct", "xray_zfish_box5", "xray_zfish_box6"),
    # supplementary, outside the protocol's verdict (PROTOCOL.md, "Fluorescence"): one crop split in two
    "fluo_gon_top_to_bottom": ("fluo", "gonuclear_top", "gonuclear_bottom"),
}
#: annotation budgets (annotated nuclei in the sub-box, pieces_in_box); "all" = the whole train crop
BUDGETS = {"em": (2, 4, 8, "all"), "xct": (5, 10, 20, 40, "all"), "fluo": (5, 10, 20, "all")}
SEEDS = (0, 1, 2)
FT_ITERATIONS = 200
FT_LR = 5e-4
FT_PATCH = {"em": (16, 16, 16), "xct": (16, 16, 16), "fluo": (16, 32, 32)}
MIN_PIECE = mm.MIN_PIECE

# ------------------------------------------------------------------ the supplementary fluorescence pair
#: fluo_synth's training voxel size and median nucleus diameter (its model card)
FLUO_VS, FLUO_D = (0.5, 0.25, 0.25), 4.1
_mm_load = mm.load


def load(name: str):
    """mm.load, plus ``gonuclear_top`` / ``gonuclear_bottom``: the GoNuclear crop resampled (predict's
    lattice: linear image, nearest labels) so that its median nucleus diameter (from its labels, a
    stand-in for the user's --diameter) is fluo_synth's in voxels, then cut in two at the middle z;
    their voxel size is recorded as fluo_synth's (the network runs at scale 1)."""
    if not name.startswith("gonuclear_"):
        return _mm_load(name)
    from blockseg.predict.resample import nucleus_diameter_um, resample_array

    img, gt, vs = _mm_load("gonuclear_1135_mini")
    k = nucleus_diameter_um(gt, vs) / FLUO_D
    shape = tuple(int(round(n * v / (f * k))) for n, v, f in zip(img.shape, vs, FLUO_VS))
    img, gt = resample_array(img, shape), resample_array(gt, shape, labels=True)
    half = slice(0, shape[0] // 2) if name == "gonuclear_top" else slice(shape[0] // 2, None)
    lab = gt[half]
    ids = np.unique(lab)
    relabel = np.zeros(int(gt.max()) + 1, np.uint16)
    relabel[ids[ids > 0]] = np.arange(1, int((ids > 0).sum()) + 1)
    return np.ascontiguousarray(img[half]), relabel[lab], FLUO_VS


mm.load = load  # mm.baseline reads crops through it


# ------------------------------------------------------------------ annotation sub-boxes
def clean_labels(gt: np.ndarray) -> np.ndarray:
    """``gt`` with every piece under MIN_PIECE voxels set to background (the scoring's ignore rule)."""
    out = gt.copy()
    out[~mm.ignore_mask(gt)] = 0
    return out


def pieces_in_box(lab: np.ndarray, box) -> int:
    """Annotated nuclei of ``box``: labels (after clean_labels) with at least MIN_PIECE voxels inside it
    (a nucleus cut by the box face counts: its part in the box is painted too)."""
    sub = lab[tuple(slice(a, b) for a, b in box)]
    return int(np.count_nonzero(np.bincount(sub.ravel())[1:] >= MIN_PIECE))


def whole_in_box(lab: np.ndarray, box) -> int:
    """Labels (after clean_labels) all of whose voxels in the crop lie inside ``box`` (reported only)."""
    from scipy import ndimage as ndi

    return sum(1 for sl in ndi.find_objects(lab) if sl is not None and all(s.start >= a and s.stop <= b for s, (a, b) in zip(sl, box)))


def grow_box(lab: np.ndarray, n: int):
    """Smallest box of the deterministic growth that holds >= n annotated nuclei (pieces_in_box):
    start at the crop's centre voxel, grow one face by one voxel per step, faces in turn z-, z+,
    y-, y+, x-, x+ (a face at the crop's bound is skipped)."""
    shape = lab.shape
    box = [[s // 2, s // 2 + 1] for s in shape]
    face = 0
    while pieces_in_box(lab, box) < n:
        if all(b == [0, s] for b, s in zip(box, shape)):
            raise ValueError(f"the crop holds fewer than {n} nuclei")
        for _ in range(6):
            a, side = divmod(face, 2)
            face = (face + 1) % 6
            if side == 0 and box[a][0] > 0:
                box[a][0] -= 1
                break
            if side == 1 and box[a][1] < shape[a]:
                box[a][1] += 1
                break
    return [tuple(b) for b in box]


def boxes() -> dict:
    out = {}
    for pair, (arm, train, _) in PAIRS.items():
        _, gt, _ = load(train)
        lab = clean_labels(gt)
        out[pair] = {}
        for n in BUDGETS[arm]:
            box = [(0, s) for s in lab.shape] if n == "all" else grow_box(lab, n)
            sub = lab[tuple(slice(a, b) for a, b in box)]
            out[pair][str(n)] = {"box": box, "annotated_nuclei": pieces_in_box(lab, box), "whole_nuclei": whole_in_box(lab, box),
                                 "voxels": int(sub.size), "shape": list(sub.shape)}  # fmt: skip
    return out


def load_boxes() -> dict:
    return json.loads((RESULTS / "boxes.json").read_text())


# ------------------------------------------------------------------ start models
def start_config(arm: str) -> dict:
    """The shipped recipe (modality_models.config) with the two crops of this arm's pair(s) left out."""
    cfg = mm.config(arm, None, 0, str(WORK / "start" / arm))
    if arm == "em":  # no real EM crop left: the recipe's synthetic EM (inverted); decoder tuned on a held-out slab of one
        cfg["data"]["train"] = [mm.volume_path(s, True) for s in ("synth_em_a", "synth_em_b")]
        cfg["data"]["validation"] = [{"volume": mm.volume_path("synth_em_b", True), "region": [[24, 32], None, None]}]
    else:  # xct: box2 + synthetic micro-CT, decoder tuned on box2 z 38-50 (as the recipe)
        cfg["data"]["train"] = [mm.volume_path("xray_zfish_box2")] + [mm.volume_path(s) for s in ("synth_uct_a", "synth_uct_b")]
        cfg["data"]["validation"] = [{"volume": mm.volume_path("xray_zfish_box2"), "region": [list(mm.VAL_Z), None, None]}]
    return cfg


def start_checkpoint(arm: str) -> str:
    if arm == "fluo":  # fluo_synth saw no real data (fluo trained on GoNuclear z 0-70)
        from blockseg.models import resolve_checkpoint

        return str(resolve_checkpoint("fluo_synth"))
    return str(WORK / "start" / arm / "checkpoint.pt")


def train_start(arm: str) -> dict:
    if Path(start_checkpoint(arm)).exists():
        return {"arm": arm, "checkpoint": start_checkpoint(arm), "skipped": True}
    ckpt, val, cpu, wall = mm.train_one(start_config(arm))
    row = {"arm": arm, "checkpoint": ckpt, "validation": val, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "config": start_config(arm)}
    (RESULTS / f"start_{arm}.json").write_text(json.dumps(row, indent=1, default=str))
    return row


# ------------------------------------------------------------------ predict / tune / segment
def predict_store(ckpt: str, img: np.ndarray, vs, store: str) -> str:
    """``predict`` (scale 1: every crop is at the networks' 0.51 µm) of ``img`` into ``store``."""
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict

    path = store + ".zarr"
    create_volume(path, img.shape, img.dtype, vs).array[...] = img
    predict(path, ckpt, store, progress=False, pyramid_levels=1, scale=1)
    return store


def segment_store(store: str, params: dict | None = None) -> np.ndarray:
    """The store decoded with its stored decoder, or with bcd ``params``."""
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.segment import segment_array
    from blockseg.segment.decoders import make_decoder
    from blockseg.segment.params import choose_decoder, store_decoder

    dec = make_decoder("bcd", **params) if params else choose_decoder(stored=store_decoder(store)).decoder
    return segment_array(read_channels(open_predictions(store), (slice(None),) * 3), dec)


def stored_params(store: str) -> dict:
    from blockseg.segment.params import choose_decoder, store_decoder

    return choose_decoder(stored=store_decoder(store)).decoder.params()


def tune_on_box(store: str, lab: np.ndarray, box) -> dict:
    """`blockseg tune` (its API, default grid, dry run) on the sub-box's annotation."""
    from blockseg.pipeline.tune import tune_store

    sl = tuple(slice(a, b) for a, b in box)
    res = tune_store(store, np.ascontiguousarray(lab[sl]).astype(np.uint32), region=sl, write=False)
    return res.to_dict()


# ------------------------------------------------------------------ fine-tuning
def subbox_volume(pair: str, n: str, img: np.ndarray, lab: np.ndarray, box, vs) -> str:
    """The sub-box (image, cleaned labels) as a training volume, mirror-padded (numpy 'symmetric') to
    at least FT_PATCH per axis: a mirrored image with its mirrored labels is still a consistent pair."""
    from blockseg.train.training_data import import_pair

    out = WORK / "data" / f"{pair}_N{n}.zarr"
    if out.exists():
        return str(out)
    sl = tuple(slice(a, b) for a, b in box)
    si, sla = img[sl], lab[sl]
    pad = [(0, max(0, p - s)) for p, s in zip(FT_PATCH[pair.split("_")[0]], si.shape)]
    si, sla = np.pad(si, pad, mode="symmetric"), np.pad(sla, pad, mode="symmetric")
    tmp = WORK / "data" / "npy"
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "img.npy", si)
    np.save(tmp / "lab.npy", sla.astype(np.uint16))
    import_pair(str(tmp / "img.npy"), str(tmp / "lab.npy"), str(out), voxel_size=vs, overwrite=True)
    return str(out)


def finetune_config(arm: str, volume: str, seed: int, output: str, decoder_params: dict) -> dict:
    if arm == "fluo":  # fluo_synth's architecture (configs/train_fluo_synth.yaml), the same schedule as em / xct
        cfg = mm.config("em", None, seed, output, iterations=FT_ITERATIONS)
        cfg["model"]["params"]["anisotropic"] = 1
        cfg.pop("polarity")
        cfg["augment"] = {"intensity_scale": 0.3, "intensity_shift": 0.1}
    else:
        cfg = mm.config(arm, None, seed, output, iterations=FT_ITERATIONS)
    cfg["data"] = {"train": [volume]}
    cfg["model"]["init"] = start_checkpoint(arm)
    cfg["optimizer"]["lr"] = FT_LR
    cfg["patch"] = list(FT_PATCH[arm])
    cfg["decoder"] = {"name": "bcd", "params": decoder_params}
    return cfg


# ------------------------------------------------------------------ cells
def cell_path(pair, arm, n, seed=None) -> Path:
    return RESULTS / (f"{pair}_{arm}_N{n}" + ("" if seed is None else f"_s{seed}") + ".json")


def write_cell(path: Path, row: dict) -> None:
    row = {**row, "load_end": os.getloadavg()}
    path.write_text(json.dumps(row, indent=1, default=str))
    keep = {k: row.get(k) for k in ("pair", "arm", "N", "seed", "annotated_nuclei", "cpu_s")}
    print(json.dumps({**keep, "test": {k: row["test"][k] for k in ("avAP", "AP50")}}), flush=True)


def score_pair(pair: str, seeds) -> None:
    arm, train, test = PAIRS[pair]
    bx = load_boxes()[pair]
    img_tr, gt_tr, vs = load(train)
    img_te, gt_te, vs_te = load(test)
    lab_tr = clean_labels(gt_tr)
    work = WORK / "stores" / pair
    work.mkdir(parents=True, exist_ok=True)
    # (d) baseline tuned on the test crop's labels (modality_models' grid and criterion)
    p = cell_path(pair, "baseline", "test")
    if not p.exists():
        b = mm.baseline(test)
        write_cell(p, {"pair": pair, "arm": "baseline", "N": "test labels", "test": b["best"], "grid": b["grid"]})
    # (a) start model as is; (b) its thresholds tuned on each sub-box
    start = start_checkpoint(arm)
    st_tr, st_te = str(work / "start_train"), str(work / "start_test")
    if not Path(st_te).exists():
        predict_store(start, img_tr, vs, st_tr)
        predict_store(start, img_te, vs_te, st_te)
    p = cell_path(pair, "start", 0)
    if not p.exists():
        write_cell(p, {"pair": pair, "arm": "start", "N": 0, "decoder": stored_params(st_te), "test": mm.scores(gt_te, segment_store(st_te), test)})
    for n, b in bx.items():
        p = cell_path(pair, "tune", n)
        if p.exists():
            continue
        t = tune_on_box(st_tr, lab_tr, b["box"])
        write_cell(p, {"pair": pair, "arm": "tune", "N": n, **b, "tune": t, "test": mm.scores(gt_te, segment_store(st_te, t["params"]), test)})
    # (c) fine-tuned from the start model on each sub-box, then its thresholds tuned on the same sub-box
    base_params = stored_params(st_te)
    for seed in seeds:
        for n, b in bx.items():
            p = cell_path(pair, "finetune", n, seed)
            if p.exists():
                continue
            vol = subbox_volume(pair, n, img_tr, lab_tr, b["box"], vs)
            out = WORK / "ft" / f"{pair}_N{n}_s{seed}"
            ckpt, _, cpu, wall = mm.train_one(finetune_config(arm, vol, seed, str(out), base_params))
            s_tr, s_te = str(work / f"ft_N{n}_s{seed}_train"), str(work / f"ft_N{n}_s{seed}_test")
            predict_store(ckpt, img_tr, vs, s_tr)
            predict_store(ckpt, img_te, vs_te, s_te)
            t = tune_on_box(s_tr, lab_tr, b["box"])
            write_cell(p, {"pair": pair, "arm": "finetune", "N": n, "seed": seed, **b, "checkpoint": ckpt, "cpu_s": round(cpu, 1),
                           "wall_s": round(wall, 1), "iterations": FT_ITERATIONS, "lr": FT_LR, "patch": FT_PATCH[arm], "tune": t,
                           "test_start_thresholds": mm.scores(gt_te, segment_store(s_te, base_params), test),
                           "test": mm.scores(gt_te, segment_store(s_te, t["params"]), test)})  # fmt: skip


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", action="store_true")
    ap.add_argument("--start", action="store_true")
    ap.add_argument("--score", action="store_true")
    ap.add_argument("--pairs", default=",".join(PAIRS))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.boxes:
        b = boxes()
        (RESULTS / "boxes.json").write_text(json.dumps(b, indent=1))
        for pair, rows in b.items():
            for n, r in rows.items():
                print(pair, n, r)
    if args.start:
        for arm in sorted({PAIRS[p][0] for p in args.pairs.split(",")}):
            print(json.dumps({k: v for k, v in train_start(arm).items() if k != "config"}, default=str), flush=True)
    if args.score:
        seeds = [int(s) for s in args.seeds.split(",")]
        for pair in args.pairs.split(","):
            score_pair(pair, seeds)
    if args.table:
        from table import results_text  # noqa: PLC0415

        (HERE / "RESULTS.md").write_text(results_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
