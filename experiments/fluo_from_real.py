"""A light-microscopy checkpoint trained on one real crop, tested on the other crop it never saw.

The shipped ``fluo`` network (synthetic fluorescence only) does not beat the classical baseline
on GoNuclear with its own thresholds, and every synthetic-only fix failed the same way
(``experiments/results/fluo_checkpoint.md``). This script trains a candidate for the shipped
``fluo`` on a real crop instead, picks it on validation data only and tests it once on held-out
data of both crops. The protocol is written into ``experiments/results/fluo_from_real.md`` by
``--protocol`` and committed before ``--train``::

    PYTHONPATH=.:benchmarks python experiments/fluo_from_real.py --protocol
    PYTHONPATH=.:benchmarks python experiments/fluo_from_real.py --train [--jobs 2]
    PYTHONPATH=.:benchmarks python experiments/fluo_from_real.py --test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_task_real import ARMS  # noqa: E402
from fluo_real import run_checkpoint  # noqa: E402
from real_volumes_train import DATASETS, OUT, PATCH, REAL, prepare, score_cells, scores, seed_table, slab_config, slabs, train_row, tune_baseline  # noqa: E402

STEM = "fluo_from_real"
ARM = "3label+cpv"
ITERATIONS = 600
SEEDS = (0, 1, 2)
KEEP = Path("runs") / STEM
SOURCE, TARGET = "gonuclear", "bbbc050"
MAX_BYTES = 5 * 2**20


def protocol_text() -> str:
    g = np.load(REAL / DATASETS[SOURCE])
    nz = g["image"].shape[0]
    a, b = slabs(nz)
    spec = ARMS[ARM]
    return "\n".join([
        "# A `fluo` candidate trained on a real crop (GoNuclear), tested on both crops",
        "",
        "## Protocol (written and committed before the first run, 2026-11-29)",
        "",
        "Claim tested (issue 15): *the shipped light-microscopy checkpoint, with no training by the user,",
        "beats the classical baseline on both crops.* A shipped checkpoint may be trained on real crops;",
        "then only data it never saw can test it.",
        "",
        f"* Training data: GoNuclear 1135 mini {tuple(g['image'].shape)}, train slab z 0–{a} (imported with",
        f"  its validation slab z {a}–{b}, which the crop sampler never reads). No synthetic data (the",
        "  synthetic + real mix of `fluo_real.py` scored lower on GoNuclear; not re-tested here). BBBC050 is",
        "  never used for training, tuning or selection.",
        f"* Model: {ARM} ({', '.join(spec['representations'])}; the 3-label decoder), residual U-Net `capacity: small`,",
        f"  patch {list(PATCH)}, batch 2, Adam lr 2e-3 (warm-up 25, cosine), {ITERATIONS} iterations, one torch",
        "  thread, percentile normalisation, flips / transposes / intensity augmentation, seeds "
        + ", ".join(map(str, SEEDS)) + ".",
        f"  Decoder thresholds tuned by `blockseg train` on the validation slab (grid {spec['tune']}, best",
        f"  AP-50 then AP-75, edges widened; size thresholds {spec['params']}).",
        "* Why this arm, said plainly: 3-label + cpv had the best mean test AP-50 of the six arms of",
        "  `aux_task_real.md` and the best transfer in `cross_real.md` — results on these same test",
        "  sets. The choice of representation is therefore *not* blind to them; the training run, the",
        "  seed choice and the thresholds are.",
        "* Selection: the seed with the highest validation AP-50 (ties: validation avAP). Only that model",
        "  is tested.",
        "* Test, once, through the user's path (blockwise `predict` with the checkpoint's normalisation",
        "  and voxel size, then `segment` with the thresholds the checkpoint recommends):",
        f"  1. GoNuclear test slab z {b}–{nz} (the slab's image alone, as `aux_task_real.py`), predict's defaults",
        "     (the image's voxel size is the checkpoint's: no resampling);",
        "  2. the whole BBBC050 crop (8 nuclei, another microscope and organism, nuclei ~6× larger in µm)",
        "     with `predict --diameter D`, D = the median equivalent-sphere diameter of BBBC050's labels",
        "     (one number from the test labels, a stand-in for the user's estimate, as `cross_real.py`);",
        "  3. reported beside, not part of the verdict: BBBC050 with predict's defaults (resampling to the",
        "     checkpoint's voxel size only, which makes its nuclei ~6× too large for the network).",
        "* Baselines on the same test data: Otsu + distance watershed tuned on the same GoNuclear",
        "  validation slab (the grid and criterion of `real_volumes_train.py`); on BBBC050 applied",
        "  unscaled and size-matched (µm lengths × d_test / d_train, as `cross_real.py`); and with its",
        "  defaults. Beside them, the current shipped `fluo` (synthetic only) with its own thresholds",
        "  (and `--diameter D` on BBBC050).",
        "* Scores: `blockseg.evaluate` avAP (IoU 0.1–0.9) and COCO AP-50; nuclei cut by the slab face",
        "  count as their part inside it.",
        "* Verdict: the claim holds if the candidate's avAP **and** AP-50 exceed every baseline arm's",
        "  (tuned, size-matched where it applies, default) on the GoNuclear test slab and on BBBC050",
        "  (item 2). If it holds and the file is ≤ 5 MiB, the candidate becomes the shipped `fluo`;",
        "  otherwise nothing is shipped and the result is reported as it is.",
        "",
    ])  # fmt: skip


def train_seed(job: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    keep, data, seed = job
    return train_row(slab_config(data, ARMS[ARM], Path(keep) / f"run_s{seed}", ITERATIONS, seed=seed, validate_every=0))


def train_all(jobs: int) -> dict:
    KEEP.mkdir(parents=True, exist_ok=True)
    data = prepare(KEEP, SOURCE)
    out = {"arm": ARM, "iterations": ITERATIONS, "machine": platform.platform(), "load_start": os.getloadavg()}
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        out["seeds"] = list(ex.map(train_seed, [(str(KEEP), data, s) for s in SEEDS]))
    out["wall_s"], out["load_end"] = round(time.perf_counter() - t0, 1), os.getloadavg()
    best = max(out["seeds"], key=lambda r: (r["validation"]["AP50"], r["validation"]["AP"]))
    out["selected"] = best["seed"]
    return out


def test_selected(trained: dict) -> dict:
    import torch

    from blockseg.segment.baseline import otsu_watershed
    from blockseg.models import read_checkpoint, shipped_checkpoint_path
    from blockseg.predict.resample import nucleus_diameter_um

    torch.set_num_threads(1)
    ckpt = next(r["checkpoint"] for r in trained["seeds"] if r["seed"] == trained["selected"])
    old = str(shipped_checkpoint_path("fluo_synth"))  # the synthetic-only network shipped as fluo before
    g, t = np.load(REAL / DATASETS[SOURCE]), np.load(REAL / DATASETS[TARGET])
    g_vs, t_vs = [tuple(float(v) for v in d["voxel_size_zyx"]) for d in (g, t)]
    a, b = slabs(g["image"].shape[0])
    d_train = nucleus_diameter_um(g["labels"][:a], g_vs)
    d_test = nucleus_diameter_um(t["labels"], t_vs)
    out = {"checkpoint": ckpt, "bytes": os.path.getsize(ckpt), "metadata_voxel_size": read_checkpoint(ckpt)["metadata"]["voxel_size"],
           "d_train_um": d_train, "d_test_um": d_test, "machine": platform.platform(), "load_start": os.getloadavg()}  # fmt: skip
    bp, bval = tune_baseline(g["image"][a:b], g["labels"][a:b], g_vs)
    k = d_test / d_train
    matched = {**bp, "sigma_um": bp["sigma_um"] * k, "min_distance_um": bp["min_distance_um"] * k,
               "min_size": max(1, int(round(bp["min_size"] * k**3 * np.prod(g_vs) / np.prod(t_vs))))}  # fmt: skip
    out["baseline_params"], out["baseline_validation"], out["baseline_size_matched_params"] = bp, bval, matched
    g_img, g_gt = np.ascontiguousarray(g["image"][b:]), np.ascontiguousarray(g["labels"][b:])
    t_img, t_gt = t["image"], t["labels"]
    res = {
        "gonuclear_test": {"baseline_tuned": scores(g_gt, otsu_watershed(g_img, g_vs, **bp)),
                           "baseline_default": scores(g_gt, otsu_watershed(g_img, g_vs))},
        "bbbc050": {"baseline_tuned": scores(t_gt, otsu_watershed(t_img, t_vs, **bp)),
                    "baseline_size_matched": scores(t_gt, otsu_watershed(t_img, t_vs, **matched)),
                    "baseline_default": scores(t_gt, otsu_watershed(t_img, t_vs))},
    }  # fmt: skip
    runs = [("gonuclear_test", "candidate", ckpt, g_img, g_gt, g_vs, None), ("bbbc050", "candidate_diameter", ckpt, t_img, t_gt, t_vs, d_test),
            ("gonuclear_test", "fluo_shipped", old, g_img, g_gt, g_vs, None), ("bbbc050", "fluo_shipped_diameter", old, t_img, t_gt, t_vs, d_test),
            ("bbbc050", "candidate_default", ckpt, t_img, t_gt, t_vs, None)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for where, tag, c, img, gt, vs, diam in runs:
            t0 = time.perf_counter()
            seg, info = run_checkpoint(c, img, vs, tmp, f"{where}_{tag}", diameter=diam)
            res[where][tag] = {**scores(gt, seg), **info, "seconds": round(time.perf_counter() - t0, 1)}
            print(where, tag, json.dumps(res[where][tag], default=str), flush=True)
    out["results"] = res
    base = {"gonuclear_test": ("baseline_tuned", "baseline_default"), "bbbc050": ("baseline_tuned", "baseline_size_matched", "baseline_default")}
    cand = {"gonuclear_test": "candidate", "bbbc050": "candidate_diameter"}
    out["claim_holds"] = all(res[w][cand[w]][m] > res[w][x][m] for w in base for x in base[w] for m in ("avAP", "AP50"))
    out["ships"] = out["claim_holds"] and out["bytes"] <= MAX_BYTES
    out["load_end"] = os.getloadavg()
    return out


def results_text(trained: dict, tested: dict) -> str:
    r = tested["results"]
    lines = ["## Results", "",
             f"Training: `--train` on {trained['machine']}, {trained['wall_s'] / 60:.1f} min wall, load average "
             f"{tuple(round(x, 2) for x in trained['load_start'])} at start, {tuple(round(x, 2) for x in trained['load_end'])} at end.",
             "", *seed_table(trained["seeds"], trained["selected"])]  # fmt: skip
    lines += ["", f"Test: `--test`, load average {tuple(round(x, 2) for x in tested['load_start'])} at start, "
              f"{tuple(round(x, 2) for x in tested['load_end'])} at end; median nucleus diameter GoNuclear train slab "
              f"{tested['d_train_um']:.2f} µm, BBBC050 {tested['d_test_um']:.2f} µm; checkpoint {tested['bytes'] / 2**20:.2f} MiB.", "",
              "| test data | method | avAP | AP-50 | predicted / true |", "|---|---|---|---|---|"]  # fmt: skip
    names = {"candidate": "**candidate** (defaults)", "candidate_diameter": "**candidate**, `--diameter D`",
             "candidate_default": "candidate, predict's defaults (not in the verdict)", "fluo_shipped": "`fluo_synth` (the synthetic-only `fluo` shipped before)",
             "fluo_shipped_diameter": "`fluo_synth`, `--diameter D`", "baseline_tuned": "Otsu + watershed, tuned on GoNuclear validation",
             "baseline_size_matched": "Otsu + watershed, tuned, size-matched", "baseline_default": "Otsu + watershed, defaults"}  # fmt: skip
    for w, label in (("gonuclear_test", "GoNuclear test slab"), ("bbbc050", "BBBC050 whole crop")):
        for tag, s in r[w].items():
            lines.append(f"| {label} | {names[tag]} | {score_cells(s)} |")
    lines += ["", f"**Verdict: the claim {'holds' if tested['claim_holds'] else 'does not hold'}"
              f"{'; the candidate is shipped as `fluo`' if tested['ships'] else '; nothing is shipped'}.**", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", action="store_true")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent: the real crops are needed", file=sys.stderr)
        return 1
    md, tj, sj = OUT / f"{STEM}.md", OUT / f"{STEM}_train.json", OUT / f"{STEM}.json"
    if args.protocol:
        md.write_text(protocol_text())
    if args.train:
        tj.write_text(json.dumps(train_all(args.jobs), indent=1, default=str))
    if args.test:
        trained = json.loads(tj.read_text())
        tested = test_selected(trained)
        sj.write_text(json.dumps(tested, indent=1, default=str))
        md.write_text(protocol_text() + "\n" + results_text(trained, tested))
        print(results_text(trained, tested))
    return 0


if __name__ == "__main__":
    sys.exit(main())
