"""RESULTS.md and the docs section of the few-annotation study from results/*.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MM = HERE.parent / "modality_models" / "results"

PAIRS = {"em_r2_to_r3": ("EM", "roi2", "roi3", "em_zfish_roi3"), "em_r3_to_r2": ("EM", "roi3", "roi2", "em_zfish_roi2"),
         "xct_b5_to_b6": ("micro-CT", "box5", "box6", "xray_zfish_box6")}  # fmt: skip
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
    summary = ["| pair | baseline (tuned on test) | (a) start as is | (b) tune: smallest N | (c) fine-tune + tune: smallest N |",
               "|---|---|---|---|---|"]  # fmt: skip
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
        seeds = sorted({r["seed"] for r in rows() if r["pair"] == pair and r["arm"] == "finetune"})
        lines += ["", f"avAP / AP-50 on the whole {te} crop; ✓ beats the baseline on both. Fine-tune: mean ± s.d. over seeds "
                  f"{', '.join(map(str, seeds))}. Reference (not an arm): the recipe trained with only {te} left out "
                  f"(LOVO, it saw all of {tr}): {lovo(test)}.", ""]  # fmt: skip
        summary.append(f"| {mod} {tr} → {te} | {base['avAP']:.3f} / {base['AP50']:.3f} | {fmt(c['start']['0'])}"
                       f"{' ✓' if beats(c['start']['0'], base) else ''} | {smallest(c.get('tune', {}), base, budgets)} | "
                       f"{smallest(c.get('finetune', {}), base, budgets)} |")  # fmt: skip
    return summary + [""] + lines


def results_text() -> str:
    return "\n".join(["# Few annotations per modality: results", "", "Protocol: `PROTOCOL.md` (see its commit in git log).", ""]
                     + tables("##"))  # fmt: skip


if __name__ == "__main__":
    print(results_text())
