"""Predict benchmark: engine-only throughput vs the zarr ceiling; raw forward vs blockseg predict (zarr -> zarr) vs MONAI sliding window.

Engine section: the parameter-free identity network (three probability channels, uint8 out)
makes every second engine overhead. In each paired repeat, with the same fresh 2-worker
cluster settings (``engine_run.py`` subprocesses): the zarr ceiling (read the image + write
three uint8 volumes of the same chunks), this engine with ``--patch auto`` and ``--patch
train``, and the engine of ``--baseline-rev`` (today's main) with its defaults.

Model section: one model (benchmarks/bench_unet.py, a small residual U-Net, random weights), one
synthetic EM volume (blockseg.synth), one patch size. Reports voxels of the volume per second
(for the raw forward: output voxels of in-memory patches per second) and, separately, the peak
RSS per worker of blockseg predict on a larger volume for two block sizes.

    PYTHONPATH=.:benchmarks python benchmarks/bench_predict.py --size 288 --repeats 3 --rss-size 512
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_unet  # noqa: E402  (registers "bench_resunet")
from measure import RssSampler  # noqa: E402

from blockseg.runtime.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.io.volume import open_volume  # noqa: E402
from blockseg.models import TinyConvNet, save_checkpoint  # noqa: E402
from blockseg.predict import compile_model, predict  # noqa: E402
from blockseg.synth import SynthParams, synthesize  # noqa: E402

NORM = {"offset": 128.0, "scale": 64.0}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_volume(path: str, size: int, client) -> np.ndarray:
    params = SynthParams(shape=(size, size, size), voxel_size=(0.5, 0.5, 0.5), seed=1)
    synthesize(path, params, chunks=(48, 96, 96) if size % 48 == 0 else (64, 128, 128), client=client,
               overwrite=True, progress=False)  # fmt: skip
    return open_volume(path).array


def raw_forward(model, patch, batch, repeats, channels_last=True) -> float:
    """Output voxels per second of ``model`` on in-memory random patches (this process's threads;
    the first, untimed forward compiles a compiled model)."""
    x = torch.randn(batch, 1, *patch)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model.postprocess(model(x))
        dt = time.perf_counter() - t
    return batch * repeats * math.prod(patch) / dt


def raw_forward_worker(patch, batch, repeats) -> float:
    """:func:`raw_forward` of the benchmark network inside a dask worker (1 torch thread, the
    default memory layout: what blockseg's CPU workers run)."""
    torch.set_num_threads(1)
    model = bench_unet.BenchResUNet(input_patch=patch).eval()
    return raw_forward(model, patch, batch, repeats, channels_last=False)


def monai_run(model, image: np.ndarray, patch, batch) -> tuple[float, np.ndarray]:
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(((image.astype(np.float32) - NORM["offset"]) / NORM["scale"])[None, None])
    t = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(x, patch, batch, lambda p: model.postprocess(model(p)), overlap=0.25, mode="gaussian")
    return time.perf_counter() - t, out[0].numpy()


def blockseg_run(img, ckpt, out, block, workers, threads, batch, rss=False, chunks=None, patch="auto", warm=True,
                 runtime="eager"):  # fmt: skip
    """One timed predict on a fresh cluster; ``warm``: after an untimed run on the same cluster, as
    the raw forward and MONAI run an already warmed-up network (each worker's one-off start --
    loading the network, the first forward of a new shape, compiled kernels -- is not per voxel).
    Returns ``(wall, cpu, peak RSS, report, wall of the warm-up run or None)``."""
    cfg = ClusterConfig(n_workers=workers, threads_per_worker=threads, dashboard=False, memory_limit="8GiB")
    with dask_client(cfg, quiet=True) as client:
        client.run(importlib.import_module, "bench_unet")
        pids = list(client.run(os.getpid).values())
        sampler = RssSampler(pids)
        sampler.start()
        kw = dict(block_shape=block, client=client, overwrite=True, batch_size=batch, device="cpu", progress=False,
                  chunks=chunks, patch=patch, runtime=runtime)  # fmt: skip
        cold = None
        if warm:
            t = time.perf_counter()
            predict(img, ckpt, f"{out}.warmup", **kw)
            cold = time.perf_counter() - t
        cpu0 = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
        t = time.perf_counter()
        rep = predict(img, ckpt, out, **kw)
        wall = time.perf_counter() - t
        cpu = sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids) - cpu0
        sampler.stop.set()
    return wall, cpu, max(sampler.peak.values()), rep, cold


def run_engine(mode: str, pythonpath: str, image: str, ckpt: str, out: str, block, patch=None) -> dict:
    """One :mod:`engine_run` subprocess (its own cluster); its JSON result."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve().parent / "engine_run.py"), mode, image, ckpt, out,
           "--block", *map(str, block), "--workers", "2"]  # fmt: skip
    if patch:
        cmd += ["--patch", str(patch)]
    env = {**os.environ, "PYTHONPATH": pythonpath}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{mode} run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def engine_section(args, work: Path) -> dict:
    """Engine-only throughput (identity network) vs the zarr ceiling and vs ``--baseline-rev``."""
    import subprocess

    from blockseg.io.volume import create_volume
    from blockseg.models import IdentityNet

    shape = tuple(args.engine_shape)
    vol = create_volume(work / "eimg.zarr", shape, np.uint8, chunks=tuple(args.engine_chunks))
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], args.engine_chunks[0]):  # slab by slab: bounded memory
        vol.array[z : z + args.engine_chunks[0]] = rng.integers(0, 256, (min(args.engine_chunks[0], shape[0] - z), *shape[1:]), dtype=np.uint8)
    ckpt = str(work / "identity.pt")
    save_checkpoint(ckpt, IdentityNet(("B", "C", "gauss"), input_patch=tuple(args.engine_train_patch)), normalisation=NORM)
    here = str(Path(__file__).resolve().parents[1])
    base = work / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", here, "archive", args.baseline_rev, "blockseg"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    img = str(vol.path)
    runs = []
    for r in range(args.repeats):
        run = {"load_before": load()}
        run["ceiling"] = run_engine("ceiling", here, img, "-", str(work / "ceil.zarr"), args.engine_block)
        run["network"] = run_engine("network", here, img, ckpt, str(work / "net.zarr"), args.engine_block)
        run["auto"] = run_engine("predict", here, img, ckpt, str(work / "e_auto.zarr"), args.engine_block, "auto")
        run["train"] = run_engine("predict", here, img, ckpt, str(work / "e_train.zarr"), args.engine_block, "train")
        run["baseline"] = run_engine("predict", str(base), img, ckpt, str(work / "e_base.zarr"), args.engine_block)
        run["load_after"] = load()
        for k in ("network", "auto", "train", "baseline"):
            run[f"{k}_over_ceiling"] = run["ceiling"]["wall"] / run[k]["wall"]
        for k in ("auto", "train", "baseline"):
            run[f"{k}_over_network"] = run["network"]["wall"] / run[k]["wall"]
        run["auto_over_baseline"] = run["baseline"]["wall"] / run["auto"]["wall"]
        run["train_over_baseline"] = run["baseline"]["wall"] / run["train"]["wall"]
        print(f"[engine {r}] ceiling {run['ceiling']['wall']:.2f} s, network {run['network']['wall']:.2f} s, auto {run['auto']['wall']:.2f} s, "
              f"train {run['train']['wall']:.2f} s, baseline {run['baseline']['wall']:.2f} s, load {load()}", flush=True)  # fmt: skip
        runs.append(run)
    # the stores agree: auto vs train within one storage step (different lattices, same identity)
    from blockseg.io.predictions import open_predictions

    a, t = open_predictions(str(work / "e_auto.zarr")), open_predictions(str(work / "e_train.zarr"))
    diff = max(int(np.abs(a[c].array[:16].astype(int) - t[c].array[:16].astype(int)).max()) for c in a)
    med = statistics.median
    n = math.prod(shape)
    return {
        "shape": list(shape), "block": list(args.engine_block), "chunks": list(args.engine_chunks),
        "train_patch": list(args.engine_train_patch), "auto_patch": runs[-1]["auto"]["patch"],
        "baseline_rev": args.baseline_rev, "runs": runs, "max_abs_diff_auto_vs_train_uint8": diff,
        "mvox_per_s": {k: n / med(r[k]["wall"] for r in runs) / 1e6 for k in ("ceiling", "network", "auto", "train", "baseline")},
        "mvox_per_s_cold": {k: n / med(r[k].get("wall_cold", r[k]["wall"]) for r in runs) / 1e6
                            for k in ("ceiling", "network", "auto", "train", "baseline")},
        "ratios": {k: med(r[k] for r in runs) for k in ("network_over_ceiling", "auto_over_ceiling", "train_over_ceiling",
                                                         "baseline_over_ceiling", "auto_over_network", "train_over_network",
                                                         "baseline_over_network", "auto_over_baseline", "train_over_baseline")},
    }  # fmt: skip


def model_section(args, work: Path, res: dict) -> None:
    """Raw forward vs blockseg predict vs MONAI on the benchmark U-Net (fills ``res``)."""
    patch = (args.patch,) * 3
    model = bench_unet.BenchResUNet(input_patch=patch).eval()
    ckpt = str(work / "unet.pt")
    save_checkpoint(ckpt, model, normalisation=NORM)
    model = model.to(memory_format=torch.channels_last_3d)
    res["model"] = {"architecture": "bench_resunet", "params": sum(p.numel() for p in model.parameters()), "patch": patch}
    n = args.size**3
    with dask_client(ClusterConfig(n_workers=2, dashboard=False), quiet=True) as client:
        image = make_volume(str(work / "img.zarr"), args.size, client)[...]
    # the inference patch blockseg chooses (patch="auto", or --infer-patch): the raw forward runs the same patch
    infer = "auto" if not args.infer_patch else (args.infer_patch,) * 3
    ipatch = predict(str(work / "img.zarr"), ckpt, str(work / "pred.zarr"), block_shape=args.block, dry_run=True,
                     batch_size=args.batch, device="cpu", progress=False, patch=infer).lattice.patch  # fmt: skip
    res["model"]["inference_patch"] = list(ipatch)
    runs: list[dict] = []
    for r in range(args.repeats):
        run: dict = {"load_before": load()}
        torch.set_num_threads(os.cpu_count() or 1)
        run["raw_1p"] = raw_forward(model, ipatch, args.batch, max(2, 8 // args.batch))
        with dask_client(ClusterConfig(n_workers=2, threads_per_worker=1, dashboard=False), quiet=True) as c:
            c.run(importlib.import_module, "bench_unet")
            run["raw_2p"] = sum(c.run(raw_forward_worker, ipatch, args.batch, max(2, 8 // args.batch)).values())
        print(f"[{r}] raw forward {run['raw_1p'] / 1e6:.3f} (1 process x 2 threads) / {run['raw_2p'] / 1e6:.3f} "
              f"(2 processes x 1 thread) Mvox/s, load {load()}", flush=True)  # fmt: skip
        wall, cpu, peak, rep, cold = blockseg_run(str(work / "img.zarr"), ckpt, str(work / "pred.zarr"), args.block, 2, 1,
                                                  args.batch, patch=infer)  # fmt: skip
        run["blockseg"] = {"wall": wall, "cpu": cpu, "peak": peak, "patches": rep.patches, "cold": cold}
        print(f"[{r}] blockseg 2 workers x 1 thread {wall:.1f} s, load {load()}", flush=True)
        if args.compile:
            # the same network compiled (--runtime compile): in memory, then blockseg, each
            # against its eager twin measured just before
            torch.set_num_threads(os.cpu_count() or 1)
            compiled = compile_model(bench_unet.BenchResUNet(input_patch=patch).eval())
            compiled.load_state_dict(model.state_dict())
            compiled = compiled.to(memory_format=torch.channels_last_3d)
            run["raw_1p_compiled"] = raw_forward(compiled, ipatch, args.batch, max(2, 8 // args.batch))
            wall, cpu, peak, rep_c, cold = blockseg_run(str(work / "img.zarr"), ckpt, str(work / "predc.zarr"), args.block, 2,
                                                        1, args.batch, patch=infer, runtime="compile")  # fmt: skip
            run["blockseg_compiled"] = {"wall": wall, "cpu": cpu, "peak": peak, "patches": rep_c.patches, "cold": cold}
            run["ratio_compiled_blockseg"] = run["blockseg"]["wall"] / wall
            run["ratio_compiled_raw"] = run["raw_1p_compiled"] / run["raw_1p"]
            print(f"[{r}] compiled: raw {run['raw_1p_compiled'] / 1e6:.3f} Mvox/s, blockseg {wall:.1f} s "
                  f"(first run on the cluster {cold:.1f} s), load {load()}", flush=True)  # fmt: skip
        if args.one_worker:
            wall, cpu, peak, rep1, _ = blockseg_run(str(work / "img.zarr"), ckpt, str(work / "pred1.zarr"), args.block, 1, 2, args.batch)
            run["blockseg_1w2t"] = {"wall": wall, "cpu": cpu, "peak": peak, "patches": rep1.patches}
            print(f"[{r}] blockseg 1 worker x 2 threads {wall:.1f} s, load {load()}", flush=True)
        torch.set_num_threads(os.cpu_count() or 1)
        wall, mon = monai_run(model, image, patch, args.batch)
        run["monai"] = wall
        run["load_after"] = load()
        print(f"[{r}] MONAI {wall:.1f} s, load {load()}", flush=True)
        run["ratio_monai"] = run["monai"] / run["blockseg"]["wall"]
        run["ratio_raw_1p"] = n / run["blockseg"]["wall"] / run["raw_1p"]
        run["ratio_raw_2p"] = n / run["blockseg"]["wall"] / run["raw_2p"]
        runs.append(run)
    # agreement of blockseg (uint8) with MONAI (different lattice, overlap): informative only
    from blockseg.io.predictions import open_predictions, read_channels

    pred = read_channels(open_predictions(str(work / "pred.zarr"), ["B"]), (slice(None),) * 3)["B"]
    res["blockseg_vs_monai_B_mean_abs_diff"] = float(np.abs(pred - mon[0]).mean())
    med = statistics.median
    res["runs"] = runs
    res["throughput_vox_per_s"] = {
        "raw_forward": med(r["raw_1p"] for r in runs),
        "raw_forward_2proc": med(r["raw_2p"] for r in runs),
        "blockseg": n / med(r["blockseg"]["wall"] for r in runs),
        "monai": n / med(r["monai"] for r in runs),
    }
    res["ratios"] = {
        "blockseg_over_monai": med(r["ratio_monai"] for r in runs),
        "blockseg_over_raw": med(r["ratio_raw_1p"] for r in runs),
        "blockseg_over_raw_2proc": med(r["ratio_raw_2p"] for r in runs),
    }
    if args.compile:
        res["compiled"] = {
            "raw_compiled_over_eager": med(r["ratio_compiled_raw"] for r in runs),
            "blockseg_compiled_over_eager": med(r["ratio_compiled_blockseg"] for r in runs),
            "blockseg_compiled_over_monai": med(r["monai"] / r["blockseg_compiled"]["wall"] for r in runs),
            "blockseg_compiled_over_raw_eager_1p": med(n / r["blockseg_compiled"]["wall"] / r["raw_1p"] for r in runs),
            "first_run_s": med(r["blockseg_compiled"]["cold"] for r in runs),
            "first_run_eager_s": med(r["blockseg"]["cold"] for r in runs),
        }
    res["plan"] = rep.plan.to_dict()
    res["monai_compute_factor"] = (math.ceil((args.size - args.patch) / (0.75 * args.patch)) + 1) ** 3 * args.patch**3 / n
    res["load_after_main"] = load()
    if args.rss_size:
        size = args.rss_size
        with dask_client(ClusterConfig(n_workers=2, dashboard=False), quiet=True) as client:
            make_volume(str(work / "big.zarr"), size, client)
        tiny = TinyConvNet(("B", "C", "D"), width=4, valid=False, input_patch=patch).eval()
        tck = str(work / "tiny.pt")
        save_checkpoint(tck, tiny, normalisation=NORM)
        res["rss"] = {}
        for block in ((128, 128, 128), (128, 256, 256)):
            wall, cpu, peak, rep, _ = blockseg_run(str(work / "big.zarr"), tck, str(work / "bigpred.zarr"), block, 2, 1,
                                                   args.batch, warm=False)  # fmt: skip
            res["rss"][f"{block}"] = {"volume": size, "wall": wall, "peak_rss_per_worker_gib": peak / 2**30,
                                      "estimate_gib": rep.plan.memory_bytes["total"] / 2**30}  # fmt: skip
            print("rss", block, peak / 2**30, load(), flush=True)
    res["load_after"] = load()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=288)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1, help="patches per forward, all three methods (1 was fastest here)")
    ap.add_argument("--block", type=int, nargs=3, default=[144, 192, 192], help="8 blocks at 288³: enough to keep 2 workers busy")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs of every measurement (medians reported)")
    ap.add_argument("--compile", action="store_true", help="also run the network compiled (--runtime compile), raw and in blockseg")
    ap.add_argument("--one-worker", action="store_true", help="also run blockseg on 1 worker x 2 threads")
    ap.add_argument("--rss-size", type=int, default=512, help="volume edge of the peak-RSS measurement (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/predict")
    ap.add_argument("--infer-patch", type=int, default=0, help="blockseg's (and the raw forward's) inference patch edge (0: --patch auto)")
    ap.add_argument("--engine-shape", type=int, nargs=3, default=[128, 512, 512], help="engine section volume (0 0 0: skip)")
    ap.add_argument("--engine-block", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--engine-chunks", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--engine-train-patch", type=int, nargs=3, default=[32, 64, 64], help="identity network's training patch")
    ap.add_argument("--baseline-rev", default="6df69af", help="git revision of the engine to compare with (today's main)")
    ap.add_argument("--skip-model", action="store_true", help="engine section only")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                             "python": platform.python_version()},
                 "load_before": load(), "args": vars(args)}  # fmt: skip
    try:
        if any(args.engine_shape):
            res["engine"] = engine_section(args, work)
        if not args.skip_model:
            model_section(args, work, res)
        res["load_after"] = load()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2, default=str))
    Path(args.out + ".md").write_text(report(res))
    print(json.dumps({k: res[k] for k in ("throughput_vox_per_s", "ratios", "engine") if k in res}, indent=2, default=str))


def engine_report(res: dict) -> list[str]:
    """Markdown lines of the engine section."""
    e, a = res["engine"], res["args"]
    mv, ra = e["mvox_per_s"], e["ratios"]
    lines = [
        f"# predict engine benchmark (identity network, {tuple(e['shape'])}, CPU, {a['repeats']} paired repeats)",
        "",
        f"Command: `PYTHONPATH=.:benchmarks python benchmarks/bench_predict.py --skip-model --repeats {a['repeats']} "
        f"--engine-shape {' '.join(map(str, e['shape']))}`  ",
        f"Machine: {res['machine']['cpus']} CPUs (shared), 1-min load before {res['load_before']}, after {res.get('load_after')}.  ",
        f"Identity network (`B`, `C`, `gauss`: three probability channels, uint8 out), training patch "
        f"{tuple(e['train_patch'])}; blocks {tuple(e['block'])}, chunks {tuple(e['chunks'])}, 2 workers x 1 thread, "
        f"fresh cluster per run (start-up not timed), pyramid off; each runs twice on its cluster and the "
        f"second (warm) run is timed: the first also pays each worker's one-off start (model, compiled-kernel cache, first "
        f"memory touches), reported as *cold*. Ceiling: every block task reads its core and writes "
        f"it to three uint8 volumes of the same chunks and codec, without zarr's empty-chunk check as the engine writes "
        f"(since 2026-11-29 evening; before, with it, the ceiling was ~77 M voxels/s). Baseline: the engine at `{e['baseline_rev']}` "
        "(its defaults).",
        "",
        "Network floor: the ceiling plus the identity network's own work on each block's core in memory (normalise, one "
        "forward of the whole core, quantise each channel), with no halo, overlap, blending or exchange: the least any "
        "engine running this network must do (`engine_run.py network`).",
        "",
        "| | M voxels/s (median) | / ceiling | / network floor (medians of paired ratios) |",
        "|---|---|---|---|",
        f"| zarr ceiling (read + write 3 x uint8) | {mv['ceiling']:.1f} | 1 | – |",
        f"| network floor (ceiling + forward + quantise, no halo) | {mv['network']:.1f} | {ra['network_over_ceiling']:.2f} | 1 |",
        f"| this engine, `--patch auto` {tuple(e['auto_patch'])} | {mv['auto']:.1f} | {ra['auto_over_ceiling']:.2f} | "
        f"{ra['auto_over_network']:.2f} |",
        f"| this engine, `--patch train` | {mv['train']:.1f} | {ra['train_over_ceiling']:.2f} | {ra['train_over_network']:.2f} |",
        f"| baseline engine ({e['baseline_rev']}) | {mv['baseline']:.1f} | {ra['baseline_over_ceiling']:.2f} | "
        f"{ra['baseline_over_network']:.2f} |",
        "",
        "Cold first runs, M voxels/s (median): " + ", ".join(f"{k} {v:.1f}" for k, v in e.get("mvox_per_s_cold", {}).items()) + ".",
        "",
        f"**Speed-up over the baseline engine (median of paired ratios): {ra['auto_over_baseline']:.1f}x with "
        f"`--patch auto`, {ra['train_over_baseline']:.1f}x with the training patch.** Max |auto - train| over the "
        f"first 16 z-slices: {e['max_abs_diff_auto_vs_train_uint8']} uint8 step(s) (different lattices).",
        "",
        "| repeat | load | ceiling (s) | network floor (s) | auto (s) | train (s) | baseline (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(e["runs"]):
        lines.append(f"| {i} | {r['load_before']} -> {r['load_after']} | {r['ceiling']['wall']:.2f} | {r['network']['wall']:.2f} | "
                     f"{r['auto']['wall']:.2f} | "
                     f"{r['train']['wall']:.2f} | {r['baseline']['wall']:.2f} |")  # fmt: skip
    return lines + [""]


def report(res: dict) -> str:
    """Markdown summary of a run (``<out>.md``)."""
    head = engine_report(res) if "engine" in res else []
    if "throughput_vox_per_s" not in res:
        return "\n".join(head) + "\n"
    return "\n".join(head) + model_report(res)


def model_report(res: dict) -> str:
    """Markdown lines of the model section."""
    a, tp, ra, plan = res["args"], res["throughput_vox_per_s"], res["ratios"], res["plan"]
    lines = [
        f"# predict benchmark ({a['size']}³, CPU, {a['repeats']} paired repeats)",
        "",
        f"Command: `PYTHONPATH=.:benchmarks python benchmarks/bench_predict.py --engine-shape {' '.join(map(str, a['engine_shape']))} "
        f"--size {a['size']} --block {' '.join(map(str, a['block']))} --repeats {a['repeats']} --rss-size {a['rss_size']}"
        + (f" --infer-patch {a['infer_patch']}" if a.get("infer_patch") else "") + (" --compile" if a.get("compile") else "")
        + "`  ",
        f"Machine: {res['machine']['cpus']} CPUs, {res['machine']['platform']}, torch {res['machine']['torch']}; "
        f"1-min load before {res['load_before']}, after {res['load_after']}.  ",
        f"Model: `bench_resunet` ({res['model']['params']:,} parameters, random weights), training patch {a['patch']}³, "
        f"blockseg's inference patch ({'`--patch auto`' if not a.get('infer_patch') else '`--infer-patch`'}) "
        f"{tuple(res['model']['inference_patch'])}: the raw forward runs that "
        "patch too, MONAI the training patch; "
        f"batch {a['batch']} for all three; synthetic EM volume. The in-process runs (raw 1p, MONAI) use the "
        "channels-last layout (faster with 2 torch threads here), blockseg's workers and raw 2p the default layout. "
        "blockseg's timed run is the second on its fresh cluster (since 2026-11-29 evening): the first, untimed, warms "
        "each worker up, as the raw forward's untimed first forward and MONAI's already warm network are.",
        "",
        "| | voxels/s (median) | compute factor |",
        "|---|---|---|",
        f"| raw forward, in memory, 1 process x 2 torch threads | {tp['raw_forward'] / 1e6:.3f} M | 1 |",
        f"| raw forward, in memory, 2 processes x 1 thread (machine ceiling) | {tp['raw_forward_2proc'] / 1e6:.3f} M | 1 |",
        f"| blockseg predict, zarr -> zarr, 2 workers x 1 thread, blocks {tuple(a['block'])} | {tp['blockseg'] / 1e6:.3f} M "
        f"| {plan['compute_factor']} |",
        f"| MONAI `sliding_window_inference`, gaussian, overlap 0.25, in memory | {tp['monai'] / 1e6:.3f} M "
        f"| {res['monai_compute_factor']:.2f} |",
        "",
        "Per repeat (each ratio from runs made back to back):",
        "",
        "| repeat | load | raw 1p (M/s) | raw 2p (M/s) | blockseg (s) | MONAI (s) | blockseg / MONAI | blockseg / raw 1p | blockseg / raw 2p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["runs"]):
        lines.append(
            f"| {i} | {r['load_before']} -> {r['load_after']} | {r['raw_1p'] / 1e6:.3f} | {r['raw_2p'] / 1e6:.3f} | "
            f"{r['blockseg']['wall']:.1f} | {r['monai']:.1f} | {r['ratio_monai']:.2f}x | {r['ratio_raw_1p']:.2f} | "
            f"{r['ratio_raw_2p']:.2f} |"
        )
    lines += [
        "",
        f"**Medians: blockseg / MONAI {ra['blockseg_over_monai']:.2f}x; blockseg / raw forward "
        f"{ra['blockseg_over_raw']:.2f} (1 process) and {ra['blockseg_over_raw_2proc']:.2f} (2 processes).**",
        "",
        f"blockseg computes each of the {plan['patches_total']} lattice tiles once ({plan['compute_factor']} output "
        "voxels per volume voxel); MONAI's overlap 0.25 computes "
        f"{res['monai_compute_factor']:.2f}. Mean |blockseg B - MONAI B| = {res['blockseg_vs_monai_B_mean_abs_diff']:.4f} "
        "(different lattices; informative only).",
    ]
    if "compiled" in res:
        c = res["compiled"]
        lines += [
            "", "`--runtime compile` (torch.compile, inductor), each run right after its eager twin:", "",
            "| repeat | raw 1p compiled (M/s) | raw compiled / eager | blockseg compiled (s) | blockseg compiled / eager "
            "| first run on the cluster, compiled / eager (s) |",
            "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for i, r in enumerate(res["runs"]):
            bc = r["blockseg_compiled"]
            lines.append(f"| {i} | {r['raw_1p_compiled'] / 1e6:.3f} | {r['ratio_compiled_raw']:.2f}x | {bc['wall']:.1f} | "
                         f"{r['ratio_compiled_blockseg']:.2f}x | {bc['cold']:.1f} / {r['blockseg']['cold']:.1f} |")  # fmt: skip
        lines += [
            "",
            f"**Medians: compiled / eager {c['raw_compiled_over_eager']:.2f}x (raw forward) and "
            f"{c['blockseg_compiled_over_eager']:.2f}x (blockseg, warm); blockseg compiled / MONAI (eager) "
            f"{c['blockseg_compiled_over_monai']:.2f}x; blockseg compiled / raw eager forward "
            f"{c['blockseg_compiled_over_raw_eager_1p']:.2f}. The first run on a fresh cluster, which compiles, took "
            f"{c['first_run_s']:.1f} s against {c['first_run_eager_s']:.1f} s eager.**",
        ]
    if "rss" in res:
        lines += ["", "Peak RSS per worker (untrained tiny network, 2 workers):", "",
                  "| volume | block | peak RSS per worker (GiB) | plan estimate (GiB) |", "|---|---|---|---|"]  # fmt: skip
        for block, v in res["rss"].items():
            lines.append(f"| {v['volume']}³ | {block} | {v['peak_rss_per_worker_gib']:.2f} | {v['estimate_gib']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
