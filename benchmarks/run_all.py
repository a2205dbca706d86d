"""Run every benchmark and write RESULTS.md, PNG plots and one JSON of raw numbers (``make bench``).

Each benchmark runs as its own subprocess (its own Dask cluster, its own peak-memory
measurement); the 1-minute load average is recorded before and after each one because the
machine may be shared. Peer comparisons are ratios of paired runs made in the same benchmark
run (medians over ``--repeats``), never comparisons of absolute times across runs.

    PYTHONPATH=.:benchmarks python benchmarks/run_all.py                # full run (~35 min on 2 cores)
    PYTHONPATH=.:benchmarks python benchmarks/run_all.py --quick --out-dir /tmp/b   # tiny sizes

Outputs (``--out-dir``, default ``benchmarks/``): ``RESULTS.md``, ``plots/*.png``,
``results/bench.json`` (everything: machine, versions, commands, load averages, each
benchmark's raw JSON, the headline ratios), ``results/raw/*.json`` and ``results/logs/*.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import loadavg, median  # noqa: E402

NUCMM = (397, 1450, 2000)
STAGES = ("predict", "predict_scaling", "segment", "segment_scaling", "cc", "seams", "evaluate")
PACKAGES = ("numpy", "scipy", "torch", "dask", "distributed", "zarr", "scikit-image", "monai", "stardist", "dask-image",
            "connected-components-3d", "fastremap", "numba", "matplotlib")  # fmt: skip


# ----------------------------------------------------------------------------- plan
def predict_args(quick: bool, repeats: int) -> list[str]:
    """Arguments for bench_predict.py, keeping only the options its ``--help`` lists today
    (the script is maintained elsewhere and may change)."""
    want = {"--size": "64" if quick else "288", "--repeats": str(repeats), "--rss-size": "0"}
    if quick:
        want.update({"--patch": "32", "--block": "64 64 64", "--engine-shape": "32 256 256", "--engine-block": "32 128 128"})
    try:
        helptext = subprocess.run([sys.executable, str(HERE / "bench_predict.py"), "--help"], capture_output=True,
                                  text=True, env=_env(), timeout=300).stdout  # fmt: skip
    except subprocess.SubprocessError:
        helptext = ""
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", helptext))
    out = []
    for k, v in want.items():
        if k in known:
            out += [k, *v.split()]
    return out


def plan(args) -> dict[str, list[tuple[str, list[str]]]]:
    """Stage -> list of (step name, argv after the interpreter)."""
    q, r = args.quick, args.repeats
    b = lambda name: str(HERE / name)  # noqa: E731
    raw = lambda name: str(Path(args.out_dir) / "results" / "raw" / name)  # noqa: E731
    steps: dict[str, list[tuple[str, list[str]]]] = {}
    steps["predict"] = [("predict", [b("bench_predict.py"), *predict_args(q, r), "--out", raw("predict")])]
    steps["predict_scaling"] = [("predict_scaling", [b("bench_predict_scaling.py"), "--sizes", *(["64"] if q else ["128", "192"]),
                                 *(["--patch", "32"] if q else []), "--out", raw("predict_scaling")])]  # fmt: skip
    main_size, block, halo = ("96", "64", "8") if q else ("512", "256", "24")
    steps["segment"] = [("segment", [b("bench_segment.py"), "--size", main_size, "--block", block, "--halo", halo,
                                     "--repeats", str(r), *(["--resolution-halo", "0"] if q else []), "--out", raw("segment")])]  # fmt: skip
    seg = []
    for s in ["64"] if q else ["128", "256"]:
        seg.append((f"segment_{s}", [b("bench_segment.py"), "--size", s, "--block", block, "--halo", halo, "--repeats", "1",
                                     "--resolution-halo", "0", "--skip-whole", "--out", raw(f"segment_{s}")]))  # fmt: skip
    seg.append((f"segment_{main_size}_1worker", [b("bench_segment.py"), "--size", main_size, "--block", block, "--halo", halo,
                "--repeats", "1", "--resolution-halo", "0", "--skip-whole", "--workers", "1",
                "--out", raw(f"segment_{main_size}_1worker")]))  # fmt: skip
    if not (q or args.skip_nucmm):
        seg.append(("segment_nucmm_z", [b("bench_segment.py"), "--shape", *map(str, NUCMM), "--block", block, "--halo", halo,
                    "--repeats", "1", "--resolution-halo", "0", "--skip-whole", "--out", raw("segment_nucmm_z")]))  # fmt: skip
    steps["segment_scaling"] = seg
    steps["cc"] = [("cc", [b("bench_cc.py"), "--size", main_size, "--block", block, "--repeats", str(r), "--out", raw("cc")])]
    steps["seams"] = [("seams", [b("bench_seams.py"), *(["--size", "128", "--block", "64", "--halo", "16"] if q else
                                 ["--size", "256", "--block", "128", "--halo", "24"]), "--out", raw("seams")])]  # fmt: skip
    ev = ["--sizes", "64", "96"] if q else ["--sizes", "128", "256", "512"]
    steps["evaluate"] = [("evaluate", [b("bench_evaluate.py"), *ev, "--repeats", str(r),
                                       *(["--skip-nucmm"] if q or args.skip_nucmm else []), "--out", raw("evaluate")])]  # fmt: skip
    return {k: v for k, v in steps.items() if k in args.stages}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_step(name: str, argv: list[str], out_dir: Path) -> dict:
    log = out_dir / "results" / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, *argv]
    rel = lambda a: os.path.relpath(a, ROOT) if os.path.isabs(a) and Path(a).is_relative_to(ROOT) else a  # noqa: E731
    rec = {"command": "PYTHONPATH=.:benchmarks python " + " ".join(shlex.quote(rel(a)) for a in argv), "loadavg_before": loadavg()}
    print(f"[bench] {name}: {rec['command']}  (load {rec['loadavg_before']})", flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT).returncode
    rec.update(returncode=rc, wall_s=round(time.perf_counter() - t, 1), loadavg_after=loadavg())
    raw = Path(argv[argv.index("--out") + 1] + ".json")
    rec["data"] = json.loads(raw.read_text()) if rc == 0 and raw.exists() else None
    if rec["data"] is None:
        rec["error"] = f"exit code {rc}; see {os.path.relpath(log, out_dir)}"
    print(f"[bench] {name}: rc {rc}, {rec['wall_s']} s (load {rec['loadavg_after']})", flush=True)
    return rec


# ----------------------------------------------------------------------------- facts
def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=ROOT).stdout.strip()  # fmt: skip
        out["blockseg_commit"] = commit + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        out["blockseg_commit"] = "unknown"
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))  # noqa: E741
    except (OSError, StopIteration):
        pass
    import torch

    return {"cpus": os.cpu_count(), "cpu_model": cpu, "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}  # fmt: skip


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def headline(steps: dict) -> dict:
    """The peer ratios (> 1: blockseg faster / better), recomputed from the raw runs."""
    h: dict = {}
    p = _get(steps, "predict", "data")
    if p:
        for k, v in (p.get("ratios") or {}).items():
            h[f"predict {k}"] = v
        for k, v in ((p.get("engine") or {}).get("ratios") or {}).items():
            h[f"predict engine {k}"] = v
    s = _get(steps, "segment", "data")
    if s and "wall_ratio_whole_over_blockseg_per_repeat" in s:
        h["segment wall, whole-volume skimage / blockseg"] = median(s["wall_ratio_whole_over_blockseg_per_repeat"])
    c = _get(steps, "cc", "data")
    if c:
        h["CC labelling wall, dask-image / blockseg"] = median(r["dask_image"]["seconds"] / r["blockseg"]["seconds"] for r in c["runs"])
    e = _get(steps, "evaluate", "data")
    if e:
        for name, case in e["cases"].items():
            runs = [r for r in case["runs"] if "stardist_s" in r]
            if runs:
                h[f"evaluate {name} in memory, StarDist / blockseg"] = median(r["stardist_s"] / r["blockseg_in_memory_s"] for r in runs)
    return h


# ----------------------------------------------------------------------------- plots
def _amdahl(t1: float, t2: float, n: np.ndarray) -> np.ndarray:
    """Speed-up at ``n`` workers from the measured 1 -> 2 speed-up (parallel fraction clipped to [0, 1])."""
    p = float(np.clip(2 * (1 - t2 / t1), 0, 1))
    return 1 / ((1 - p) + p / n)


def scaling_points(steps: dict) -> tuple[dict, dict]:
    """(throughput vs voxels at the default worker count, throughput vs workers) per stage."""
    size: dict = {"predict": [], "segment": [], "evaluate": []}
    workers: dict = {}
    ps = _get(steps, "predict_scaling", "data")
    if ps:
        for r in ps["runs"]:
            if r["workers"] == 2:
                size["predict"].append((r["size"] ** 3, r["throughput_vox_per_s"]))
        big = max(r["size"] for r in ps["runs"])
        t = {r["workers"]: r["seconds"] for r in ps["runs"] if r["size"] == big}
        if 1 in t and 2 in t:
            workers["predict"] = {"voxels": big**3, "seconds": t}
    p = _get(steps, "predict", "data")
    tp = (p or {}).get("throughput_vox_per_s") or {}
    blockseg_tp = tp.get("blockseg", tp.get("blockseg_2w1t"))
    if blockseg_tp and _get(p, "args", "size"):
        size["predict"].append((p["args"]["size"] ** 3, blockseg_tp))
    one_worker = None
    for name, rec in steps.get("segment_scaling_runs", {}).items():
        d = rec.get("data")
        if not d:
            continue
        vox = float(np.prod(d["volume"]["shape"]))
        if d["blockseg"]["workers"] == 2:
            size["segment"].append((vox, d["blockseg"]["throughput_vox_per_s"]))
        elif d["blockseg"]["workers"] == 1:
            one_worker = (vox, d["blockseg"]["median_seconds"])
    s = _get(steps, "segment", "data")
    if s:
        vox = float(np.prod(s["volume"]["shape"]))
        size["segment"].append((vox, vox / s["blockseg"]["median_seconds"]))
        if one_worker and one_worker[0] == vox:
            workers["segment"] = {"voxels": vox, "seconds": {1: one_worker[1], 2: s["blockseg"]["median_seconds"]}}
    e = _get(steps, "evaluate", "data")
    if e:
        for case in e["cases"].values():
            size["evaluate"].append((case["voxels"], case["throughput_vox_per_s"]))
        ws = e.get("workers_scaling", {})
        t = {int(k): v for k, v in ws.items() if k.isdigit()}
        if 1 in t and 2 in t:
            workers["evaluate"] = {"voxels": float(np.prod(ws["shape"])), "seconds": t}
    return {k: sorted(v) for k, v in size.items() if v}, workers


def make_plots(steps: dict, out_dir: Path, head: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    size, workers = scaling_points(steps)
    made = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for stage, pts in size.items():
        x, y = zip(*pts)
        ax.plot(x, np.asarray(y) / 1e6, "o-", label=stage)
    ax.axvline(float(np.prod(NUCMM)), color="grey", ls=":", lw=1)
    ax.text(float(np.prod(NUCMM)), ax.get_ylim()[1] if size else 1, " NucMM-Z", va="top", fontsize=8, color="grey")
    ax.set(xscale="log", yscale="log", xlabel="volume (voxels)", ylabel="throughput (M voxels / s)",
           title="Throughput vs volume size (2 workers, measured)")  # fmt: skip
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "scaling_size.png", dpi=110)
    plt.close(fig)
    made.append("plots/scaling_size.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    n_ext = np.array([2, 4, 8, 16])
    for i, (stage, w) in enumerate(workers.items()):
        t = w["seconds"]
        thr = {n: w["voxels"] / s for n, s in t.items()}
        (line,) = ax.plot(sorted(thr), [thr[n] / 1e6 for n in sorted(thr)], "o-", label=f"{stage} (measured)")
        # anchored at the measured 2-worker point (a slower 2-worker run extrapolates flat)
        ax.plot(n_ext, thr[2] * _amdahl(t[1], t[2], n_ext) / _amdahl(t[1], t[2], np.array([2.0]))[0] / 1e6, "--", color=line.get_color(), alpha=0.7,
                label=f"{stage} (extrapolated, Amdahl)")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="dask workers (1 thread each)", ylabel="throughput (M voxels / s)",
           title="Throughput vs workers: 1, 2 measured; 4-16 extrapolated")  # fmt: skip
    ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4*", "8*", "16*"])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "scaling_workers.png", dpi=110)
    plt.close(fig)
    made.append("plots/scaling_workers.png")

    if head:
        fig, ax = plt.subplots(figsize=(7.5, 0.5 + 0.45 * len(head)))
        names, vals = list(head), [head[k] for k in head]
        ax.barh(range(len(vals)), vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
        ax.axvline(1, color="k", lw=1)
        ax.set_yticks(range(len(vals)), names, fontsize=7)
        ax.set(xscale="log", xlabel="ratio (> 1: blockseg faster)", title="blockseg vs peers (medians of paired runs)")
        fig.tight_layout()
        fig.savefig(plots / "peers.png", dpi=110)
        plt.close(fig)
        made.append("plots/peers.png")
    return made


# ----------------------------------------------------------------------------- report
def fmt(v, nd=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{nd}f}"


def _load(rec) -> str:
    return f"{rec['loadavg_before'][0]:.2f} → {rec['loadavg_after'][0]:.2f}"


#: RESULTS.md below this line is measured by hand: every run of this script keeps it as it is
KEEP = "<!-- make bench keeps everything below this line -->"


#: RESULTS.md opens with the current headline table (each figure with its date and commit), kept
#: between these two lines by hand: a run of this script keeps it and adds its own ratios below
CURRENT = ("<!-- current headline: updated by hand, make bench keeps it -->", "<!-- end of the current headline -->")


def kept_head(path: Path) -> str | None:
    """The current-headline block at the top of an existing RESULTS.md, markers included (None without it)."""
    if not path.exists():
        return None
    text = path.read_text()
    start, end = text.find(CURRENT[0]), text.find(CURRENT[1])
    return text[start:end + len(CURRENT[1])] if 0 <= start < end else None


def kept_tail(path: Path) -> str | None:
    """The part of an existing RESULTS.md from :data:`KEEP` on (None without the marker)."""
    if not path.exists():
        return None
    _, sep, tail = path.read_text().partition(KEEP)
    return sep + tail if sep else None


def report(res: dict, out_dir: Path) -> str:
    steps, head, L = res["steps"], res["headline"], []
    m, v = res["machine"], res["versions"]
    kept, current = kept_tail(out_dir / "RESULTS.md"), kept_head(out_dir / "RESULTS.md")
    L += ["# blockseg benchmarks", ""] + ([current, ""] if current else [])
    L += ["# This `make bench` run", "", f"Generated by `{res['command']}` on {res['date']} in {res['total_wall_s'] / 60:.1f} min"
          + (" (**--quick: tiny sizes, for testing the pipeline only; not results**)" if res["quick"] else "") + ".", "",
          "Every peer comparison is a **ratio of paired runs made in this run** (median over the repeats); absolute times "
          "drift on this shared machine, so compare ratios, not seconds, across runs. > 1 means blockseg is faster.", ""]  # fmt: skip
    if kept:
        L += ["Measurements made by hand since (each with its command and date) follow this run's report, under "
              "*Measured by hand*; this script keeps them.", ""]
    commit = str(res.get("versions", {}).get("blockseg_commit", "unknown"))[:7]
    L += [f"## Headline ratios of this run ({res['date']}, commit {commit})", "", "| comparison | median ratio |", "|---|---|"]
    L += [f"| {k} | {fmt(val)}x |" for k, val in head.items()]
    sm = _get(steps, "seams", "data")
    if sm:
        L.append(f"| seams: wrongly merged GT pairs, contact stitching vs blockseg | {sm['contact']['merged_gt_pairs']} vs "
                 f"{sm['blockseg']['merged_gt_pairs']} |")  # fmt: skip
    L += ["", "![peers](plots/peers.png)", ""] if head else [""]
    L += ["## Machine and versions", "",
          f"- {m['cpus']} CPU cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['platform']}; GPU: {m['gpu'] or 'none'}",
          f"- 1/5/15-min load average before the run {res['loadavg_before']}, after {res['loadavg_after']}; "
          "per benchmark in the table below (the machine is shared with other users)",
          "- " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
          "| benchmark | exact command | exit | wall (s) | 1-min load before → after |", "|---|---|---|---|---|"]  # fmt: skip
    for name, rec in res["runs"].items():
        L.append(f"| {name} | `{rec['command']}` | {rec['returncode']} | {rec['wall_s']} | {_load(rec)} |")
    L += ["", "Raw numbers of every run: `results/bench.json` (and `results/raw/*.json`); logs: `results/logs/`.", ""]

    L += ["## Predict: blockseg vs MONAI sliding window vs raw forward", ""]
    p = _get(steps, "predict", "data")
    if p:
        L += [f"Same model (`{_get(p, 'model', 'architecture')}`, {_get(p, 'model', 'params')} parameters, random weights), "
              f"patch {_get(p, 'model', 'patch')}, volume {_get(p, 'args', 'size')}³, CPU; `benchmarks/bench_predict.py` "
              f"(maintained with the predict engine), medians over {_get(p, 'args', 'repeats')} runs. MONAI: "
              "`sliding_window_inference`, gaussian, overlap 0.25.", "", "| method | volume voxels / s |", "|---|---|"]  # fmt: skip
        L += [f"| {k} | {fmt(val / 1e6, 3)} M |" for k, val in (p.get("throughput_vox_per_s") or {}).items()]
        L += ["", "(raw_forward: output voxels of in-memory patches per second in one process with 2 torch threads; "
              "raw_forward_2proc: the same in 2 processes x 1 thread at once, the machine's ceiling; blockseg: zarr in -> "
              f"zarr out, 2 workers x 1 thread, blocks {tuple(_get(p, 'args', 'block') or ())}; ratios are medians of "
              f"per-repeat ratios. Per-repeat table: `results/raw/predict.md`.)"]
        L += ["", "Ratios: " + ", ".join(f"{k} **{fmt(val)}**" for k, val in (p.get("ratios") or {}).items()) + ".", ""]
    else:
        L += [f"Not measured: {_get(steps, 'predict', 'error') or 'stage not selected'}.", ""]
    if p and p.get("engine"):
        from bench_predict import engine_report

        L += ["### Predict engine only (identity network) vs the zarr ceiling", ""]
        L += [line for line in engine_report(p)[1:] if not line.startswith("Command:")] + [""]
    profile = HERE / "results" / "predict_engine.md"
    if profile.exists():  # the per-step profile (experiments/profile_predict.py), kept by hand
        L += [profile.read_text().strip(), ""]

    L += ["## Segment", "", "### (a) blockseg (2 workers) vs whole-volume skimage watershed", ""]
    s = _get(steps, "segment", "data")
    if s:
        L += [f"Volume {'×'.join(map(str, s['volume']['shape']))}, {s['volume']['nuclei_generated']} random touching nuclei, "
              f"perfect BCD predictions (uint8); blocks {s['blockseg']['block']}³, halo {s['blockseg']['halo']}; the whole-volume "
              "reference decodes with the same decoder, labels seeds with cc3d and floods with `skimage.segmentation.watershed` "
              "in one process.", "", "| repeat | blockseg (s) | whole volume (s) | ratio | 1-min load |", "|---|---|---|---|---|"]  # fmt: skip
        for i, (r, w, x) in enumerate(zip(s["blockseg"]["runs"], s["whole_volume_skimage"]["runs"],
                                          s["wall_ratio_whole_over_blockseg_per_repeat"])):  # fmt: skip
            L.append(f"| {i} | {r['seconds']:.1f} | {w['seconds']:.1f} | {x:.2f}x | {r['loadavg_before'][0]:.2f} |")
        L += ["", f"Median wall ratio **{fmt(head.get('segment wall, whole-volume skimage / blockseg'))}x**, CPU-time ratio "
              f"{fmt(s['cpu_ratio_whole_over_blockseg_median'])}x. Peak RSS: blockseg {s['blockseg']['peak_rss_per_worker_bytes_max'] / 2**30:.2f} GiB "
              f"per worker, whole volume {s['whole_volume_skimage'].get('peak_rss_bytes_max', 0) / 2**30:.2f} GiB. "
              f"Voxels differing from the whole-volume run of the same flood: {s['agreement_vs_own_whole_volume']['voxels_differing']} "
              f"(vs skimage's own tie rule: {s['agreement_vs_skimage']['voxels_differing']} of {s['agreement_vs_skimage']['foreground_voxels']}).", ""]  # fmt: skip
    else:
        L += [f"Not measured: {_get(steps, 'segment', 'error') or 'stage not selected'}.", ""]
    L += ["### (b) connected-components stitching: blockseg vs dask-image `ndmeasure.label`", ""]
    c = _get(steps, "cc", "data")
    if c:
        L += [f"Same uint8 seed mask zarr ({'×'.join(map(str, c['volume']['shape']))}, the BCD decoder's seeds, zarr chunks "
              f"{c['volume']['chunks']}), 26-connectivity, {c['workers']} workers, blocks = dask chunks = {c['block']}³, zarr → zarr.",
              "", "| repeat | blockseg `segment.label` (s) | dask-image (s) | ratio | 1-min load |", "|---|---|---|---|---|"]  # fmt: skip
        for i, r in enumerate(c["runs"]):
            L.append(f"| {i} | {r['blockseg']['seconds']:.2f} | {r['dask_image']['seconds']:.2f} | {r['ratio']:.2f}x | "
                     f"{r['blockseg']['loadavg_before'][0]:.2f} |")  # fmt: skip
        L += ["", f"Median ratio **{fmt(head.get('CC labelling wall, dask-image / blockseg'))}x**. Components: "
              + ", ".join(f"{k} {val}" for k, val in c["n_components"].items())
              + f". Equal partitions: blockseg vs dask-image {fmt(c['partition_equal']['blockseg_vs_dask_image'])}, "
              f"blockseg vs whole-volume cc3d {fmt(c['partition_equal']['blockseg_vs_cc3d'])}.", ""]  # fmt: skip
    else:
        L += [f"Not measured: {_get(steps, 'cc', 'error') or 'stage not selected'}.", ""]
    L += ["### (c) seam quality: blockseg vs contact stitching (Cellpose's Dask mode)", ""]
    if sm:
        L += [f"`blockseg synth` volume {'×'.join(map(str, sm['volume']['shape']))} (NucMM-Z look, clustered touching nuclei, "
              f"radius {sm['volume']['radius_um']} µm), perfect BCD predictions, same decoder everywhere; blocks {sm['block']}³, "
              f"halo {sm['halo']} for both block methods; {sm['gt_nuclei_cut_by_block_faces']} GT nuclei are cut by a block face. "
              "Merge: a predicted instance holding the majority of ≥ 2 GT nuclei; split: a GT nucleus with ≥ 2 pieces of ≥ 25 %.",
              "", "| method | predicted | merged instances | merged GT pairs | split GT nuclei |", "|---|---|---|---|---|"]  # fmt: skip
        for k, label in (("whole_volume", "whole volume (no blocks; the decoder's own errors)"), ("blockseg", "blockseg"),
                         ("contact", "contact stitching")):  # fmt: skip
            d = sm[k]
            L.append(f"| {label} | {d['pred_instances']} / {d['gt_instances']} GT | {d['merged_instances']} | {d['merged_gt_pairs']} | {d['split_gt_nuclei']} |")
        L.append("")
    else:
        L += [f"Not measured: {_get(steps, 'seams', 'error') or 'stage not selected'}.", ""]

    L += ["## Evaluate: blockseg vs StarDist `matching_dataset`", ""]
    e = _get(steps, "evaluate", "data")
    if e:
        L += [f"Synthetic GT/prediction pairs ({e['synthetic']}); thresholds {e['thresholds']}. blockseg end to end = "
              "zarr → result with a fresh 2-worker cluster (start-up included); in memory = the same arrays StarDist gets, "
              "one process. Peak RSS is the whole process tree (input arrays included).", "",
              "| case | GT / pred | blockseg end to end (s) | blockseg in memory (s) | StarDist (s) | ratio in memory | peak RSS blockseg / StarDist (GB) | TP/FP/FN equal |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, cs in e["cases"].items():
            if cs.get("stardist") == "run":
                L.append(f"| {'×'.join(map(str, cs['shape']))} | {cs['n_true']} / {cs['n_pred']} | {fmt(cs['blockseg_median_s'])} | "
                         f"{fmt(cs['blockseg_in_memory_median_s'], 3)} | {fmt(cs['stardist_median_s'])} | **{fmt(cs['ratio_in_memory_median'])}x** | "
                         f"{fmt(cs['blockseg_in_memory_peak_rss_gb'])} / {fmt(cs['stardist_peak_rss_gb'])} | {fmt(cs['counts_equal'])} |")  # fmt: skip
            else:
                L.append(f"| {'×'.join(map(str, cs['shape']))} | {cs['n_true']} / {cs['n_pred']} | {fmt(cs['blockseg_median_s'])} | "
                         f"{fmt(cs.get('blockseg_in_memory_median_s'), 3)} | {cs['stardist']} | – | {fmt(cs['blockseg_peak_rss_gb'])} / – | – |")  # fmt: skip
        L.append("")
    else:
        L += [f"Not measured: {_get(steps, 'evaluate', 'error') or 'stage not selected'}.", ""]

    L += ["## Scaling", "", "![throughput vs size](plots/scaling_size.png)", "", "![throughput vs workers](plots/scaling_workers.png)", "",
          "Throughput = volume voxels / wall seconds of the stage (cluster start-up excluded for predict and segment, included "
          "for evaluate's end-to-end runs). Predict with a real U-Net runs at about 0.5 M voxels/s on these 2 cores, so its "
          "size curve stops at 288³; segment and evaluate go to NucMM-Z size (397×1450×2000, one run each)"
          + (" — not in this run (--quick / --skip-nucmm)" if res["quick"] or res["skip_nucmm"] else "") + ". "
          "Workers: 1 and 2 are measured (this machine has 2 cores); 4-16 (marked *) are **extrapolated** with Amdahl's law "
          "from the measured 1 → 2 speed-up, assuming one free core per worker and the same I/O bandwidth: not measured.", ""]  # fmt: skip
    size, workers = scaling_points(steps)
    L += ["| stage | volume voxels | throughput (M voxels/s) |", "|---|---|---|"]
    for stage, pts in size.items():
        L += [f"| {stage} | {int(x):,} | {y / 1e6:.3f} |" for x, y in pts]
    L += ["", "| stage | volume voxels | 1 worker (s) | 2 workers (s) | speed-up |", "|---|---|---|---|---|"]
    for stage, w in workers.items():
        L.append(f"| {stage} | {int(w['voxels']):,} | {w['seconds'][1]:.1f} | {w['seconds'][2]:.1f} | {w['seconds'][1] / w['seconds'][2]:.2f}x |")
    L += ["", "## GPU", "", "Not measured: no GPU available on this machine (predict throughput with AMP and the patch-size sweep "
          "need one)." if not m["gpu"] else f"GPU present ({m['gpu']}) but no GPU benchmark is implemented yet.", ""]
    failed = [n for n, r in res["runs"].items() if r["returncode"] != 0]
    if failed:
        L += ["## Failures", "", *[f"- {n}: {res['runs'][n].get('error')}" for n in failed], ""]
    text = "\n".join(L)
    if kept:
        text = text.rstrip("\n") + "\n\n" + kept
    (out_dir / "RESULTS.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: tests the pipeline (about 4 min)")
    ap.add_argument("--repeats", type=int, help="paired repeats of the headline comparisons (default 3; 1 with --quick)")
    ap.add_argument("--out-dir", default=str(HERE), help="where RESULTS.md, plots/ and results/ go")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="benchmarks to run (default all)")
    ap.add_argument("--skip-nucmm", action="store_true", help="no NucMM-Z-size runs (segment and evaluate scaling)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    out_dir = Path(args.out_dir)
    (out_dir / "results" / "raw").mkdir(parents=True, exist_ok=True)
    res = {"command": "PYTHONPATH=.:benchmarks python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "quick": args.quick, "skip_nucmm": args.skip_nucmm,
           "repeats": args.repeats, "machine": machine(), "versions": versions(), "loadavg_before": loadavg(), "runs": {}}  # fmt: skip
    t0 = time.perf_counter()
    steps: dict = {}
    for stage, items in plan(args).items():
        for name, argv_ in items:
            res["runs"][name] = run_step(name, argv_, out_dir)
            if stage == "segment_scaling":
                steps.setdefault("segment_scaling_runs", {})[name] = res["runs"][name]
            else:
                steps[stage] = res["runs"][name]
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    res["loadavg_after"] = loadavg()
    res["steps"] = steps
    res["headline"] = headline(steps)
    res["plots"] = make_plots(steps, out_dir, res["headline"])
    report(res, out_dir)
    stored = {k: v for k, v in res.items() if k != "steps"}  # steps = runs, by stage: stored once
    (out_dir / "results" / "bench.json").write_text(json.dumps(stored, indent=2, default=str))
    print(f"[bench] wrote {out_dir / 'RESULTS.md'} in {res['total_wall_s'] / 60:.1f} min", flush=True)
    return 1 if any(r["returncode"] for r in res["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
