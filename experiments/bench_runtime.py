"""predict's network runtimes: torch eager vs ``--runtime compile`` (torch.compile, inductor).

One checkpoint (default: the shipped ``demo``), one synthetic volume, 2 workers x 1 thread. In
each paired repeat: the raw forward of the inference patch in one process with one thread, eager
then compiled (the compiled one after its untimed compiling forward); then blockseg predict,
eager then compiled, each timed as the second run on its own fresh cluster (the first run, which
loads -- and compiles -- the network in every worker, is reported separately). The compiled
prediction is compared with the eager one channel by channel (storage steps).

``--onnx`` adds ONNX Runtime (CPU execution provider, one thread, all graph optimisations) to the
raw-forward pair: the network exported with ``torch.onnx.export`` and timed on the same patch
right after eager (needs ``onnxruntime``; predict does not offer it -- it was slower here).

    PYTHONPATH=.:benchmarks python experiments/bench_runtime.py --checkpoint demo --shape 64 256 256 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # bench_unet, bench_predict
from bench_predict import blockseg_run, load  # noqa: E402

from blockseg.runtime.cluster import ClusterConfig, dask_client  # noqa: E402
from blockseg.models import load_checkpoint, resolve_checkpoint  # noqa: E402
from blockseg.predict import compile_model, predict  # noqa: E402
from blockseg.io.predictions import open_predictions  # noqa: E402
from blockseg.synth import SynthParams, synthesize  # noqa: E402


def forward_rate(model, patch, batch: int, repeats: int) -> float:
    """Input voxels per second of ``model`` on random patches, one thread (after one untimed forward)."""
    x = torch.randn(batch, 1, *patch)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(repeats):
            model(x)
        dt = time.perf_counter() - t
    return batch * repeats * math.prod(patch) / dt


def onnx_session(model, patch, batch: int, path: str):
    """An ONNX Runtime session (1 thread) of ``model`` exported for ``(batch, 1, *patch)`` inputs."""
    import onnxruntime as ort

    x = torch.randn(batch, 1, *patch)
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def onnx_rate(session, patch, batch: int, repeats: int) -> float:
    """Input voxels per second of an ONNX Runtime session (after one untimed run)."""
    x = np.random.default_rng(0).standard_normal((batch, 1, *patch)).astype(np.float32)
    session.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(repeats):
        session.run(None, {"x": x})
    return batch * repeats * math.prod(patch) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--block", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx", action="store_true", help="also time ONNX Runtime on the raw forward")
    ap.add_argument("--out", default="experiments/results/predict_runtime")
    args = ap.parse_args()
    ckpt = resolve_checkpoint(args.checkpoint)
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    res: dict = {"machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "platform": platform.platform(),
                             "torch": torch.__version__},
                 "args": vars(args), "load_before": load(), "runs": []}  # fmt: skip
    try:
        img = str(work / "img.zarr")
        with dask_client(ClusterConfig(n_workers=2, dashboard=False), quiet=True) as client:
            synthesize(img, SynthParams(shape=tuple(args.shape), seed=3), chunks=tuple(args.block), client=client,
                       overwrite=True, progress=False)  # fmt: skip
        plan = predict(img, ckpt, str(work / "p.zarr"), block_shape=args.block, dry_run=True, batch_size=args.batch,
                       device="cpu", progress=False)  # fmt: skip
        patch = plan.lattice.patch
        res["inference_patch"], res["compute_factor"] = list(patch), round(plan.compute_factor, 3)
        eager, _ = load_checkpoint(ckpt)
        eager.eval()
        compiled = compile_model(copy.deepcopy(eager))
        torch.set_num_threads(1)
        session = onnx_session(eager, patch, args.batch, str(work / "net.onnx")) if args.onnx else None
        if session is not None:
            x = np.random.default_rng(1).standard_normal((args.batch, 1, *patch)).astype(np.float32)
            with torch.inference_mode():
                ref = eager(torch.from_numpy(x)).numpy()
            res["onnx_max_abs_diff"] = float(np.abs(session.run(None, {"x": x})[0] - ref).max())
        n = math.prod(args.shape)
        for r in range(args.repeats):
            run: dict = {"load_before": load()}
            run["raw_eager"] = forward_rate(eager, patch, args.batch, 3)
            run["raw_compiled"] = forward_rate(compiled, patch, args.batch, 3)
            if session is not None:
                run["raw_onnx"] = onnx_rate(session, patch, args.batch, 3)
                run["ratio_onnx"] = run["raw_onnx"] / run["raw_eager"]
            for name in ("eager", "compile"):
                wall, cpu, peak, rep, cold = blockseg_run(img, ckpt, str(work / f"{name}.zarr"), tuple(args.block), 2, 1,
                                                          args.batch, runtime=name)  # fmt: skip
                run[name] = {"wall": wall, "cpu": cpu, "first_run": cold, "peak_rss": peak}
            run["load_after"] = load()
            run["ratio_raw"] = run["raw_compiled"] / run["raw_eager"]
            run["ratio_blockseg"] = run["eager"]["wall"] / run["compile"]["wall"]
            run["ratio_blockseg_cpu"] = run["eager"]["cpu"] / run["compile"]["cpu"]
            print(f"[{r}] raw {run['raw_eager'] / 1e6:.3f} -> {run['raw_compiled'] / 1e6:.3f} Mvox/s; blockseg "
                  f"{run['eager']['wall']:.1f} -> {run['compile']['wall']:.1f} s (first runs {run['eager']['first_run']:.1f} / "
                  f"{run['compile']['first_run']:.1f} s), load {load()}", flush=True)  # fmt: skip
            res["runs"].append(run)
        a, b = open_predictions(str(work / "eager.zarr")), open_predictions(str(work / "compile.zarr"))
        res["max_abs_storage_steps"] = {c: int(np.abs(a[c].array[...].astype(int) - b[c].array[...].astype(int)).max())
                                        for c in a if a[c].array.dtype == np.uint8}  # fmt: skip
        res["equal_fraction"] = {c: float((a[c].array[...] == b[c].array[...]).mean()) for c in a}
        med = statistics.median
        res["median"] = {
            "raw_compiled_over_eager": med(r["ratio_raw"] for r in res["runs"]),
            "blockseg_compiled_over_eager": med(r["ratio_blockseg"] for r in res["runs"]),
            "blockseg_compiled_over_eager_cpu": med(r["ratio_blockseg_cpu"] for r in res["runs"]),
            "blockseg_eager_s": med(r["eager"]["wall"] for r in res["runs"]),
            "blockseg_compiled_s": med(r["compile"]["wall"] for r in res["runs"]),
            "first_run_eager_s": med(r["eager"]["first_run"] for r in res["runs"]),
            "first_run_compiled_s": med(r["compile"]["first_run"] for r in res["runs"]),
            "blockseg_eager_vox_per_s": n / med(r["eager"]["wall"] for r in res["runs"]),
        }
        if args.onnx:
            res["median"]["raw_onnx_over_eager"] = med(r["ratio_onnx"] for r in res["runs"])
        res["load_after"] = load()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=2, default=str))
    Path(args.out + ".md").write_text(report(res))
    print(report(res))


def report(res: dict) -> str:
    a, m = res["args"], res["median"]
    lines = [
        f"# predict runtimes: torch eager vs torch.compile ({a['checkpoint']}, {tuple(a['shape'])}, CPU)",
        "",
        f"Command: `PYTHONPATH=.:benchmarks python experiments/bench_runtime.py --checkpoint {a['checkpoint']} --shape "
        f"{' '.join(map(str, a['shape']))} --block {' '.join(map(str, a['block']))} --batch {a['batch']} --repeats {a['repeats']}"
        + (" --onnx" if a.get("onnx") else "") + "`  ",
        f"Machine: {res['machine']['cpus']} CPUs, {res['machine']['platform']}, torch {res['machine']['torch']}; 1-min load "
        f"before {res['load_before']}, after {res['load_after']}.  ",
        f"Inference patch {tuple(res['inference_patch'])} (`--patch auto`), batch {a['batch']}, "
        f"{res['compute_factor']} output voxels per voxel; blockseg on 2 workers x 1 thread, timed as the second run on "
        "its fresh cluster; raw forward in one process, one thread.",
        "",
        "| repeat | load | raw eager (M vox/s) | raw compiled | compiled / eager | blockseg eager (s) | blockseg compiled (s) "
        "| compiled / eager | workers' CPU s eager / compiled | first run eager / compiled (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["runs"]):
        lines.append(
            f"| {i} | {r['load_before']} -> {r['load_after']} | {r['raw_eager'] / 1e6:.3f} | {r['raw_compiled'] / 1e6:.3f} | "
            f"{r['ratio_raw']:.2f}x | {r['eager']['wall']:.1f} | {r['compile']['wall']:.1f} | {r['ratio_blockseg']:.2f}x | "
            f"{r['eager']['cpu']:.1f} / {r['compile']['cpu']:.1f} | {r['eager']['first_run']:.1f} / {r['compile']['first_run']:.1f} |"
        )
    lines += [
        "",
        f"**Medians: compiled / eager {m['raw_compiled_over_eager']:.2f}x (raw forward), "
        f"{m['blockseg_compiled_over_eager']:.2f}x (blockseg predict, warm: {m['blockseg_eager_s']:.1f} -> "
        f"{m['blockseg_compiled_s']:.1f} s; workers' CPU time {m['blockseg_compiled_over_eager_cpu']:.2f}x). The first run on a fresh cluster, which compiles the network in each worker: "
        f"{m['first_run_compiled_s']:.1f} s against {m['first_run_eager_s']:.1f} s eager.**",
        "",
        *(["ONNX Runtime (raw forward, same patch, 1 thread), per repeat: "
           + ", ".join(f"{r['ratio_onnx']:.2f}x" for r in res["runs"]) + f" of eager; **median {m['raw_onnx_over_eager']:.2f}x** "
           f"(largest |ONNX - eager| output difference {res['onnx_max_abs_diff']:.1e}).", ""] if "raw_onnx_over_eager" in m else []),
        f"Compiled vs eager store: largest difference {res['max_abs_storage_steps']} uint8 storage steps; equal voxels "
        + ", ".join(f"{c} {v:.4f}" for c, v in res["equal_fraction"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
