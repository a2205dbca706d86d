"""Cross-dataset: models trained on GoNuclear's slabs, tested on the whole BBBC050 crop.

The two crops differ 6x in voxel size *and* 4x in nucleus size, so resampling to the network's
voxel size alone cannot make one look like the other. This measures nucleus-size matching
(Cellpose's "diameter"): ``predict --scale`` by

    f_axis = (d_train / d_test) * (image voxel_axis / network voxel_axis)

where d is the median equivalent-sphere diameter of the nuclei (µm), so a test nucleus covers as
many network voxels as a training one. The protocol is written into
``experiments/results/cross_real.md`` by ``--protocol`` before the first run::

    PYTHONPATH=. python experiments/cross_real.py --protocol
    PYTHONPATH=. python experiments/cross_real.py --run --models runs/aux_task_real

``--source bbbc050`` runs the other direction (models of ``aux_task_real.py --dataset bbbc050``
on the whole GoNuclear crop) into ``cross_real_bbbc050.{md,json}``.

The models are the 18 GoNuclear models of ``experiments/aux_task_real.py`` (6 arms x 3 seeds,
trained on GoNuclear z 0-50, tuned on z 50-70); BBBC050 was never shown to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_task_real import STEM as MODELS_STEM  # noqa: E402
from real_volumes_train import BASE_GRID, DATASETS, OUT, REAL, crop_name, scores, slabs, tune_baseline  # noqa: E402

from blockseg.predict.resample import nucleus_diameter_um  # noqa: E402

NAMES = {"gonuclear": "GoNuclear", "bbbc050": "BBBC050"}


def target_of(source: str) -> str:
    return next(n for n in DATASETS if n != source)


def protocol_text() -> str:
    return "\n".join([
        "# Cross-dataset: GoNuclear-trained models on the whole BBBC050 crop",
        "",
        "## Protocol (written before the first run, 2026-11-29)",
        "",
        "* Models: the 18 GoNuclear models of `experiments/aux_task_real.py` (3-label, sdt, BCD, each with",
        "  and without cpv, 3 seeds; trained on GoNuclear z 0–50, thresholds tuned on z 50–70). None saw",
        "  BBBC050. Test: the whole BBBC050 crop (51×120×122, 8 nuclei).",
        "* Size matching: `predict(scale=f)` with f per axis = (d_train / d_test) × (BBBC050 voxel /",
        "  GoNuclear voxel), d the median equivalent-sphere diameter of the nuclei (µm): d_train from the",
        "  GoNuclear training slab's labels, d_test from BBBC050's labels — a stand-in for the user's",
        "  estimate of the nucleus size (one number taken from the test labels; said so in the results).",
        "  The decoder's size thresholds follow (predict rescales them by 1 / (fz·fy·fx)).",
        "* Without size matching: `scale=1` (the crop as it is, the earlier cross-dataset setting).",
        "  Voxel-size resampling alone (scale = voxel ratio, 6.2× per axis, 184 M voxels) is not run: it",
        "  makes BBBC050's nuclei 4× *larger* than the training ones, and costs ~10 min per model here.",
        "* Baseline: Otsu + distance watershed tuned on the GoNuclear validation slab (the grid of",
        f"  `real_volumes_train.py`, {BASE_GRID}), applied with its µm parameters scaled by d_test / d_train",
        "  and its size filter by the same factor in volume (in BBBC050's voxels)",
        "  (size-matched, same information as the models get) and unscaled; and its defaults.",
        "* Scores: `blockseg.evaluate` avAP and COCO AP-50 on the whole crop; per model, then mean ± s.d. per arm.",
        "",
    ])


def protocol_text_reverse() -> str:
    return "\n".join([
        "# Cross-dataset: BBBC050-trained models on the whole GoNuclear crop",
        "",
        "## Protocol (written before the first run, 2026-11-29 evening)",
        "",
        "* Models: the 9 BBBC050 models of `experiments/aux_task_real.py --dataset bbbc050 --arms",
        "  3label,3label+cpv,bcd` (3 seeds each; trained on BBBC050 z 0–26, thresholds tuned on z 26–36;",
        "  the same budget, network and grids as the GoNuclear models). None saw GoNuclear. Test: the",
        "  whole GoNuclear crop (100×100×100, 54 nuclei). Three arms, not six, to fit the session: 3-label",
        "  and 3-label + cpv (the best pair on GoNuclear) and BCD (the NucMM representation); chosen before",
        "  the run.",
        "* Size matching, unscaled and the baseline exactly as in the GoNuclear -> BBBC050 direction",
        "  (`cross_real.md`), with the roles of the crops swapped: f per axis = (d_train / d_test) ×",
        "  (GoNuclear voxel / BBBC050 voxel), d_train from the BBBC050 training slab's labels, d_test from",
        "  GoNuclear's labels; the baseline tuned on the BBBC050 validation slab, lengths scaled by",
        "  d_test / d_train (size-matched) or not (unscaled), and its defaults.",
        "* Scores: `blockseg.evaluate` avAP and COCO AP-50 on the whole crop; per model, then mean ± s.d. per arm.",
        "",
    ])


def run(models_dir: Path, source: str = "gonuclear") -> dict:
    import torch

    from blockseg.segment.baseline import otsu_watershed
    from blockseg.io.volume import create_volume
    from blockseg.models import read_checkpoint
    from blockseg.predict import predict
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.segment import segment_array
    from blockseg.segment.params import choose_decoder, store_decoder

    torch.set_num_threads(1)
    # g: the crop the models were trained on, b: the crop they are tested on
    g = np.load(REAL / DATASETS[source])
    b = np.load(REAL / DATASETS[target_of(source)])
    g_vs, b_vs = [tuple(float(v) for v in d["voxel_size_zyx"]) for d in (g, b)]
    a, v_end = slabs(g["image"].shape[0])
    d_train = nucleus_diameter_um(g["labels"][:a], g_vs)
    d_test = nucleus_diameter_um(b["labels"], b_vs)
    img, gt = b["image"], b["labels"]
    out = {"source": source, "target": target_of(source), "machine": platform.platform(), "load_start": os.getloadavg(),
           "d_train_um": d_train, "d_test_um": d_test, "n_test": int(len(np.unique(gt)) - (gt == 0).any()), "rows": []}  # fmt: skip
    bp, bval = tune_baseline(g["image"][a:v_end], g["labels"][a:v_end], g_vs)
    k = d_test / d_train
    # lengths scale by k, the size filter (voxels) by k³ in volume, converted to the test crop's voxels
    scaled = {**bp, "sigma_um": bp["sigma_um"] * k, "min_distance_um": bp["min_distance_um"] * k,
              "min_size": max(1, int(round(bp["min_size"] * k**3 * np.prod(g_vs) / np.prod(b_vs))))}
    out["baseline"] = {"params": bp, "size_matched": scores(gt, otsu_watershed(img, b_vs, **scaled)),
                       "unscaled": scores(gt, otsu_watershed(img, b_vs, **bp)), "default": scores(gt, otsu_watershed(img, b_vs))}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/{target_of(source)}.zarr"
        create_volume(path, img.shape, img.dtype, b_vs).array[...] = img
        for run_dir in sorted(models_dir.glob("run_*")):
            ckpt = run_dir / "checkpoint.pt"
            if not ckpt.exists():
                continue
            net_vs = read_checkpoint(ckpt)["metadata"]["voxel_size"]
            factors = tuple(float((d_train / d_test) * (iv / nv)) for iv, nv in zip(b_vs, net_vs))
            row = {"model": run_dir.name, "factors": factors}
            for tag, scale in (("size_matched", factors), ("unscaled", 1.0)):
                pred = f"{tmp}/{run_dir.name}_{tag}.pred"
                predict(path, str(ckpt), pred, scale=scale, progress=False, pyramid_levels=1)
                dec = choose_decoder(stored=store_decoder(pred)).decoder
                seg = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), dec)
                row[tag] = {**scores(gt, seg), "decoder": dec.params()}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    out["load_end"] = os.getloadavg()
    return out


def results_text(res: dict) -> str:
    arms: dict[str, list] = {}
    for r in res["rows"]:
        arm = r["model"][len("run_"):].rsplit("_s", 1)[0].replace("_cpv", " + cpv")
        arms.setdefault(arm, []).append(r)
    f = lambda xs: f"{np.mean(xs):.3f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0:.3f}"  # noqa: E731
    b = res["baseline"]
    src, dst = NAMES[res.get("source", "gonuclear")], NAMES[res.get("target", "bbbc050")]
    flag = "" if res.get("source", "gonuclear") == "gonuclear" else f" --source {res['source']} --models runs/{crop_name(MODELS_STEM, res['source'])}"
    lines = ["## Results", "",
             f"`PYTHONPATH=. python experiments/cross_real.py --run{flag}` on {res['machine']}; load average "
             f"{tuple(round(x, 2) for x in res['load_start'])} at start, {tuple(round(x, 2) for x in res['load_end'])} at end.",
             f"Median nucleus diameter: {src} training slab {res['d_train_um']:.2f} µm, {dst} {res['d_test_um']:.2f} µm "
             f"(from its labels); scale factors {tuple(round(x, 2) for x in res['rows'][0]['factors']) if res['rows'] else '–'}.",
             "", f"Whole {dst} crop ({res.get('n_test', 8)} nuclei), mean ± s.d. over 3 seeds:", "",
             f"| arm (trained on {src}) | size-matched avAP | AP-50 | unscaled avAP | AP-50 |", "|---|---|---|---|---|"]  # fmt: skip
    for arm, rs in arms.items():
        lines.append(f"| {arm} | {f([r['size_matched']['avAP'] for r in rs])} | {f([r['size_matched']['AP50'] for r in rs])} "
                     f"| {f([r['unscaled']['avAP'] for r in rs])} | {f([r['unscaled']['AP50'] for r in rs])} |")  # fmt: skip
    lines += [f"| Otsu, tuned on {src} validation ({b['params']}) | {b['size_matched']['avAP']:.3f} | {b['size_matched']['AP50']:.3f} "
              f"| {b['unscaled']['avAP']:.3f} | {b['unscaled']['AP50']:.3f} |",
              f"| Otsu, defaults | {b['default']['avAP']:.3f} | {b['default']['AP50']:.3f} | (same) | |", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", action="store_true")
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--models", default=None, help="the source crop's models (default runs/aux_task_real[_SOURCE])")
    ap.add_argument("--source", default="gonuclear", choices=sorted(DATASETS), help="the crop the models were trained on")
    args = ap.parse_args(argv)
    if not REAL.is_dir():
        print(f"{REAL} is absent", file=sys.stderr)
        return 1
    name = crop_name("cross_real", args.source)
    md, js = OUT / f"{name}.md", OUT / f"{name}.json"
    proto = protocol_text() if args.source == "gonuclear" else protocol_text_reverse()
    models = args.models or f"runs/{crop_name(MODELS_STEM, args.source)}"
    if args.protocol:
        md.write_text(proto)
    if args.run:
        res = run(Path(models), args.source)
        js.write_text(json.dumps(res, indent=1, default=str))
        md.write_text(proto + "\n" + results_text(res))
        print(results_text(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
