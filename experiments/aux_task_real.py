"""The auxiliary-task table on a real crop: 3-label, sdt and BCD, each with and without cpv.

The cpv paper's Table 1 asks whether the centre-point-vector auxiliary task helps a
segmentation representation. Here every arm has the same data, budget, network and decoder
tuning protocol, and several seeds, so the with/without difference can be read against the
spread between seeds. The protocol is written into ``experiments/results/aux_task_real.md`` by
``--protocol`` before the first run::

    PYTHONPATH=. python experiments/aux_task_real.py --protocol
    PYTHONPATH=. python experiments/aux_task_real.py --run [--seeds 0,1,2] [--jobs 2] [--keep runs/aux]

``--dataset bbbc050`` (with ``--arms``) trains the same arms on the other crop, into
``aux_task_real_bbbc050.{md,json}``: the models of the BBBC050 -> GoNuclear cross-dataset test.

Splits, budget, data preparation, test scoring and the Otsu baseline are those of
``experiments/real_volumes_train.py`` (one crop, z-slabs train / validation / test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_volumes_train import DATASETS, OUT, PATCH, REAL, crop_name, prepare, scores, slab_config, slabs, test_model, train_timed, tune_baseline  # noqa: E402

CROP_NAMES = {"gonuclear": "GoNuclear 1135 mini", "bbbc050": "BBBC050 QCANet 8-cell"}
STEM = "aux_task_real"

ITERATIONS = 250
SIZES = {"min_seed_size": 4, "min_size": 64}
BASE = {
    "3label": {"representations": ["3label"], "decoder": "3label", "params": SIZES, "tune": {"fg_t": [0.3, 0.5, 0.7], "seed_t": [0.5, 0.7, 0.9]}},
    "sdt": {"representations": ["sdt"], "decoder": "sdt", "params": SIZES, "tune": {"fg_t": [-0.1, 0.05, 0.2], "seed_t": [-0.5, -0.3, -0.1]}},
    "bcd": {"representations": ["B", "C", "D"], "decoder": "bcd", "params": SIZES,
            "tune": {"fg_b": [0.5, 0.7, 0.85], "seed_b": [0.8, 0.9], "seed_c": [0.3, 0.5], "seed_d": [0.2, 0.3, 0.4]}},
}  # fmt: skip
#: every base representation alone and with the cpv auxiliary task (same decoder: cpv is only trained)
ARMS = {**{k: v for k, v in BASE.items()}, **{f"{k}+cpv": {**v, "representations": v["representations"] + ["cpv"]} for k, v in BASE.items()}}


def protocol_text(seeds: list[int], iterations: int, dataset: str = "gonuclear", arms: list[str] | None = None) -> str:
    d = np.load(REAL / DATASETS[dataset])
    nz = d["image"].shape[0]
    a, b = slabs(nz)
    why = (["  (the split of `experiments/real_volumes_train.py`). BBBC050 is left out: its test slab holds 2",
            "  nucleus pieces, too few to rank six arms."] if dataset == "gonuclear" else
           ["  (the split of `experiments/real_volumes_train.py`). Purpose: the models of the cross-dataset test",
            "  BBBC050 -> whole GoNuclear crop (`experiments/cross_real.py --source bbbc050`); the test slab here",
            "  holds 2 nucleus pieces, so its scores are reported, not ranked."])  # fmt: skip
    arms_line = [] if arms is None or set(arms) == set(ARMS) else [f"* Arms run: {', '.join(arms)} (of the six below)."]
    return "\n".join([
        "# The auxiliary-task table on a real crop (cpv paper, Table 1)",
        "",
        "## Protocol (written before the first run, 2026-11-29)",
        "",
        f"* Crop: {CROP_NAMES[dataset]} {tuple(d['image'].shape)}; train z 0–{a}, validation z {a}–{b}, test z {b}–{nz}",
        *why,
        *arms_line,
        "* Arms: 3-label, sdt and BCD, each alone and with the cpv auxiliary task (cpv is trained, not",
        "  decoded: each arm uses its base representation's decoder). cpv in the default relative units,",
        "  no `loss_weights` (sdt's loss is ×100 with cpv, as in the paper).",
        f"* Same for every arm: residual U-Net `capacity: small`, patch {list(PATCH)}, batch 2, Adam lr 2e-3",
        f"  (warm-up 25, cosine), {iterations} iterations, one torch thread, percentile normalisation (the",
        "  training default), flips / transposes / intensity augmentation; seeds "
        f"{', '.join(map(str, seeds))} (the seed sets the initial weights and the crops).",
        "* Decoder thresholds: tuned by `blockseg train` on the validation slab only (best AP-50, then",
        "  AP-75; the grid widens itself past a picked edge). Grids: "
        + "; ".join(f"{k}: {v['tune']}" for k, v in BASE.items()) + ".",
        "* Test: each trained model once on the test slab; `blockseg.evaluate` avAP and COCO AP-50.",
        "  Reported per seed, and as the mean ± s.d. over seeds; the cpv effect of a representation is",
        "  the mean over seeds of (with cpv − without), paired by seed.",
        "* Baseline beside it: Otsu + distance watershed tuned on the same validation slab.",
        "",
    ])


def train_arm(job: tuple) -> dict:
    import torch

    torch.set_num_threads(1)
    tmp, data, arm, seed, iterations = job
    b = data["val"][1]
    cfg = slab_config(data, ARMS[arm], Path(tmp) / f"run_{arm.replace('+', '_')}_s{seed}", iterations, seed=seed, validate_every=0)
    res, cpu, wall = train_timed(cfg)
    te = test_model(res.checkpoint, data["image"][b:], data["labels"][b:])
    row = {"arm": arm, "seed": seed, **te, "validation": res.validation, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}
    print(json.dumps(row, default=str), flush=True)
    return row


def run(seeds: list[int], iterations: int, jobs: int, keep: str, dataset: str = "gonuclear", arms: list[str] | None = None) -> dict:
    from blockseg.segment.baseline import otsu_watershed

    tmp = Path(keep)
    tmp.mkdir(parents=True, exist_ok=True)
    data = prepare(tmp, dataset)
    a, b = data["val"]
    out = {"dataset": dataset, "iterations": iterations, "seeds": seeds, "machine": platform.platform(),
           "load_start": os.getloadavg(), "rows": []}  # fmt: skip
    bp, bs = tune_baseline(data["image"][a:b], data["labels"][a:b], data["vs"])
    out["baseline"] = {**scores(data["labels"][b:], otsu_watershed(data["image"][b:], data["vs"], **bp)), "params": bp}
    job_list = [(str(tmp), data, arm, s, iterations) for s in seeds for arm in (arms or list(ARMS))]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        out["rows"] = list(ex.map(train_arm, job_list))
    out["load_end"] = os.getloadavg()
    return out


def results_text(res: dict) -> str:
    rows, seeds = res["rows"], res["seeds"]
    get = {(r["arm"], r["seed"]): r for r in rows}
    lines = ["## Results", "",
             f"`PYTHONPATH=. python experiments/aux_task_real.py --run --seeds {','.join(map(str, seeds))}"
             + ("" if res.get("dataset", "gonuclear") == "gonuclear" else f" --dataset {res['dataset']} --arms {','.join(res['arms'])}")
             + f"` on {res['machine']};",
             f"load average {tuple(round(x, 2) for x in res['load_start'])} at start, {tuple(round(x, 2) for x in res['load_end'])} at end.",
             "", "Test slab, per seed (avAP / AP-50):", "",
             "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean avAP ± s.d. | mean AP-50 ± s.d. | CPU-min per model |",
             "|---|" + "---|" * (len(seeds) + 3)]  # fmt: skip
    for arm in ARMS:
        rs = [get[(arm, s)] for s in seeds if (arm, s) in get]
        if not rs:
            continue
        av, ap = np.array([r["avAP"] for r in rs]), np.array([r["AP50"] for r in rs])
        cells = [f"{r['avAP']:.3f} / {r['AP50']:.3f}" for r in rs]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {av.mean():.3f} ± {av.std(ddof=1) if len(av) > 1 else 0:.3f} "
                     f"| {ap.mean():.3f} ± {ap.std(ddof=1) if len(ap) > 1 else 0:.3f} | {np.mean([r['cpu_s'] for r in rs]) / 60:.1f} |")  # fmt: skip
    b = res["baseline"]
    lines += [f"| Otsu + distance watershed (tuned) | {b['avAP']:.3f} / {b['AP50']:.3f} (deterministic) |" + " |" * (len(seeds) + 2), "",
              "cpv effect, paired by seed (with cpv − without):", "",
              "| representation | Δ avAP per seed | mean Δ avAP | Δ AP-50 per seed | mean Δ AP-50 |", "|---|---|---|---|---|"]  # fmt: skip
    for k in BASE:
        pairs = [(get[(k + "+cpv", s)], get[(k, s)]) for s in seeds if (k, s) in get and (k + "+cpv", s) in get]
        if pairs:
            dav = [w["avAP"] - o["avAP"] for w, o in pairs]
            dap = [w["AP50"] - o["AP50"] for w, o in pairs]
            lines.append(f"| {k} | {', '.join(f'{x:+.3f}' for x in dav)} | {np.mean(dav):+.3f} | {', '.join(f'{x:+.3f}' for x in dap)} | {np.mean(dap):+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", action="store_true")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=ITERATIONS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", default=None, help="where the runs are kept (default runs/aux_task_real[_DATASET])")
    ap.add_argument("--dataset", default="gonuclear", choices=sorted(DATASETS))
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (default: all six)")
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent", file=sys.stderr)
        return 1
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    name = crop_name(STEM, args.dataset)
    md, js = OUT / f"{name}.md", OUT / f"{name}.json"
    keep = args.keep or f"runs/{name}"
    proto = protocol_text(seeds, args.iterations, args.dataset, arms)
    if args.protocol:
        md.write_text(proto)
    if args.run:
        res = run(seeds, args.iterations, args.jobs, keep, args.dataset, arms)
        res["arms"] = arms
        js.write_text(json.dumps(res, indent=1, default=str))
        md.write_text(proto + "\n" + results_text(res))
        print(results_text(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
