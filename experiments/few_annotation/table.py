"""RESULTS.md and the docs section of the few-annotation study from results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MM = HERE.parent / "modality_models" / "results"

PAIRS = {"em_r2_to_r3": ("EM", "roi2", "roi3", "em_zfish_roi3"), "em_r3_to_r2": ("EM", "roi3", "roi2", "em_zfish_roi2"),
         "xct_b5_to_b6": ("micro-CT", "box5", "box6", "xray_zfish_box6"),
         "fluo_gon_top_to_bottom": ("fluorescence (suppl.: one crop split)", "GoNuclear top half", "GoNuclear bottom half", "gonuclear_bottom")}  # fmt: skip
ARM_NAMES = {"start": "(a) start model as is", "tune": "(b) `blockseg tune` on the N", "finetune": "(c) fine-tune + tune on the N",
             "finetune_raw": "(c′) fine-tune, start's thresholds (suppl.)"}  # fmt: skip


def rows() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*_N*.json"))]


def cells(pair: str) -> tuple[dict, dict, list]:
    """{arm: {N: (avAP mean, sd, AP50 mean, sd, n seeds, annotated)}}, the baseline's test scores, budgets."""
    rs = [r for r in rows() if r["pair"] == pair]
    budgets = list(json.loads((RESULTS / "boxes.json").read_text())[pair])
    out: dict = {}
    for arm in ("start", "tune", "finetune", "finetune_raw"):
        src = "finetune" if arm == "finetune_raw" else arm
        key = "test_start_thresholds" if arm == "finetune_raw" else "test"
        for n in ["0"] + budgets:
            sel = [r for r in rs if r["arm"] == src and str(r["N"]) == n]
            if not sel:
                continue
            a = [r[key]["avAP"] for r in sel]
            b = [r[key]["AP50"] for r in sel]
            out.setdefault(arm, {})[n] = (float(np.mean(a)), float(np.std(a)), float(np.mean(b)), float(np.std(b)), len(sel),
                                          sel[0].get("annotated_nuclei", 0))  # fmt: skip
    base = next(r for r in rs if r["arm"] == "baseline")
    return out, base["test"], budgets


def fmt(c) -> str:
    if c[4] > 1:
        return f"{c[0]:.3f}±{c[1]:.3f} / {c[2]:.3f}±{c[3]:.3f}"
    return f"{c[0]:.3f} / {c[2]:.3f}"


def beats(c, base) -> bool:
    return c[0] > base["avAP"] and c[2] > base["AP50"]


def smallest(arm_cells: dict, base: dict, budgets: list) -> str:
    for n in ["0"] + budgets:
        if n in arm_cells and beats(arm_cells[n], base):
            return f"N = {n}" + (f" ({arm_cells[n][5]} nuclei)" if n == "all" else "")
    return "not within N ≤ all"


def from_on(arm_cells: dict, base: dict, budgets: list) -> str:
    """The smallest budget from which the arm beats the baseline at every larger budget too."""
    ns = [n for n in budgets if n in arm_cells]
    for i, n in enumerate(ns):
        if all(beats(arm_cells[m], base) for m in ns[i:]):
            return f"N = {n}"
    return "–"


def wide_baseline(test: str) -> dict | None:
    """modality_models' supplementary finer-grid baseline of the test crop (tuned on its labels), if any."""
    p = MM / "baseline_wide.json"
    if not p.exists():
        return None
    return json.loads(p.read_text()).get(test, {}).get("best")


def lovo(test: str) -> str:
    """The recipe with only the test crop left out (modality_models LOVO, seed mean), for reference."""
    arm = "em" if test.startswith("em") else "xct"
    rs = [json.loads(p.read_text()) for p in sorted(MM.glob(f"{arm}_{test}_s*.json"))]
    if not rs:
        return "–"
    a = np.mean([r["test_scores"]["avAP"] for r in rs])
    b = np.mean([r["test_scores"]["AP50"] for r in rs])
    return f"{a:.3f} / {b:.3f}"


def tables(level: str = "##") -> list[str]:
    lines = []
    summary = ["| pair | baseline (tuned on test) | (a) start as is (N = 0) | (b) tune: smallest N (beats at every N from) "
               "| (c) fine-tune + tune: smallest N (every N from) | suppl.: finer-grid baseline; arms × N beating it |",
               "|---|---|---|---|---|---|"]  # fmt: skip
    for pair, (mod, tr, te, test) in PAIRS.items():
        if not any(r["pair"] == pair for r in rows()):
            continue
        c, base, budgets = cells(pair)
        ann = {n: c.get("tune", {}).get(n, (0,) * 6)[5] for n in budgets}
        head = "| arm | N = 0 | " + " | ".join(f"N = {n}" + (f" ({ann[n]})" if n == "all" else "") for n in budgets) + " |"
        lines += [f"{level} {mod}: annotate {tr}, test on {te} (`{pair}`)", "", head, "|---" * (len(budgets) + 2) + "|"]
        for arm, name in ARM_NAMES.items():
            if arm not in c:
                continue
            row = [fmt(c[arm][n]) + (" ✓" if beats(c[arm][n], base) and arm != "finetune_raw" else "") if n in c[arm] else ""
                   for n in ["0"] + budgets]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        lines.append(f"| (d) baseline, tuned on {te}'s labels | {base['avAP']:.3f} / {base['AP50']:.3f} | " + " | ".join("" for _ in budgets) + " |")
        wide = wide_baseline(test)
        if wide:
            lines.append(f"| (d′) finer-grid baseline, tuned on {te}'s labels (suppl.) | {wide['avAP']:.3f} / {wide['AP50']:.3f} | "
                         + " | ".join("" for _ in budgets) + " |")  # fmt: skip
        seeds = sorted({r["seed"] for r in rows() if r["pair"] == pair and r["arm"] == "finetune"})
        lines += ["", f"avAP / AP-50 on the whole {te} crop; ✓ beats the baseline on both. Fine-tune: mean ± s.d. over seeds "
                  f"{', '.join(map(str, seeds))}. Reference (not an arm): the recipe trained with only {te} left out "
                  f"(LOVO, it saw all of {tr}): {lovo(test)}.", ""]  # fmt: skip
        wide = wide_baseline(test)
        if wide:
            tag = {"start": "(a)", "tune": "(b) N = ", "finetune": "(c) N = "}
            won = [tag[a] + ("" if a == "start" else n) for a in tag for n in c.get(a, {}) if beats(c[a][n], wide)]
            wtxt = f"{wide['avAP']:.3f} / {wide['AP50']:.3f}; " + (", ".join(won) if won else "none")
        else:
            wtxt = "–"
        t, f = c.get("tune", {}), c.get("finetune", {})
        summary.append(f"| {mod} {tr} → {te} | {base['avAP']:.3f} / {base['AP50']:.3f} | {fmt(c['start']['0'])}"
                       f"{' ✓' if beats(c['start']['0'], base) else ''} | {smallest(t, base, budgets)} ({from_on(t, base, budgets)}) | "
                       f"{smallest(f, base, budgets)} ({from_on(f, base, budgets)}) | {wtxt} |")  # fmt: skip
    return summary + [""] + lines


def results_text() -> str:
    return "\n".join(["# Few annotations per modality: results", "", "Protocol: `PROTOCOL.md` (see its commit in git log).", ""]
                     + tables("##"))  # fmt: skip


if __name__ == "__main__":
    print(results_text())


def docs_section(protocol_commit: str) -> str:
    """The "Few annotations" section of docs/results-modalities.md."""
    head = ["## Few annotations", "",
            "How many annotated nuclei does a user need to beat the classical baseline on another volume of the same",
            "modality: `blockseg tune` (decoder thresholds only) on the start model's predictions, or fine-tuning the",
            "start model (then tuning its thresholds) on the annotated sub-box? Protocol:",
            f"`experiments/few_annotation/PROTOCOL.md` (committed `{protocol_commit}` before the first scored run);",
            "numbers: `experiments/few_annotation/RESULTS.md` and `results/*.json`. Reproduce:",
            "`PYTHONPATH=. python experiments/few_annotation/run.py --boxes --start --score --table`.", "",
            "* **Start model** = the shipped recipe (`configs/train_em.yaml`, `configs/train_xct.yaml`) retrained with *both*",
            "  crops of the pair left out (the shipped `em` / `xct` weights saw every dev crop of their modality): for EM",
            "  that leaves synthetic EM only; for micro-CT, X-ray box2 + synthetic. Fluorescence: the shipped `fluo_synth`.",
            "* **N** = nuclei (≥ 20 voxels) painted in a sub-box grown from the annotated crop's centre until it holds N",
            "  (nuclei cut by the box face count: in these crops almost every nucleus touches a border, so whole nuclei",
            "  would need nearly the whole crop). `all` = the whole annotated crop.",
            "* **(c)** fine-tune: `blockseg train` with `model.init`, 200 iterations, lr 5e-4, patch 16³ (fluorescence",
            "  16 × 32 × 32), one thread, on the sub-box alone; then `tune` on the same sub-box. Mean ± s.d. over seeds.",
            "* **Baseline (d)**: Otsu + h-maxima watershed tuned on the *test* crop's own labels (optimistic). An arm beats",
            "  it when its avAP **and** AP-50 are both higher (✓). Cells: avAP / AP-50 on the whole test crop,",
            "  ground-truth pieces under 20 voxels ignored.", ""]  # fmt: skip
    return "\n".join(head + tables("###"))
