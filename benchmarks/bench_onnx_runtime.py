"""Would ONNX Runtime run blockseg's networks faster than torch eager on a CPU worker?

Issue 17 allows an optimised CPU runtime behind a flag if it wins in a measurement. This is
that measurement: for each network (the benchmark's residual U-Net and the two shipped
checkpoints, each on a typical inference patch), one forward pass of one patch, torch eager
against ONNX Runtime's CPU provider (exported with ``torch.onnx.export``, all graph
optimisations on), both on one thread as a predict worker runs them, in paired repeats
(alternating which goes first). Reports the median time per forward and the median of the
paired ratios, and the largest absolute difference of the raw outputs.

Needs ``onnxruntime`` and ``onnx`` (not blockseg dependencies: ``pip install onnxruntime onnx``).

    PYTHONPATH=.:benchmarks python benchmarks/bench_onnx_runtime.py --repeats 5
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_unet  # noqa: E402  (registers "bench_resunet")

from blockseg.models import load_checkpoint, resolve_checkpoint  # noqa: E402

CASES = (("bench_resunet", None, (72, 72, 72)), ("demo", "demo", (32, 128, 128)), ("fluo", "fluo", (32, 96, 96)))


def _timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def measure(name: str, model: torch.nn.Module, patch, repeats: int, forwards: int) -> dict:
    import onnxruntime as ort

    model = model.eval()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, *patch), dtype=np.float32))
    buf = io.BytesIO()
    t = time.perf_counter()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    export_s = time.perf_counter() - t
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    with torch.inference_mode():
        want = model(x).numpy()
    got = session.run(None, {"x": xn})[0]  # also the warm-up of both

    def eager():
        with torch.inference_mode():
            model(x)

    def onnx():
        session.run(None, {"x": xn})

    runs = []
    for r in range(repeats):
        order = (("eager", eager), ("onnxruntime", onnx)) if r % 2 == 0 else (("onnxruntime", onnx), ("eager", eager))
        run = {k: _timed(f, forwards) for k, f in order}
        run["ratio"] = run["eager"] / run["onnxruntime"]
        run["load"] = [round(v, 2) for v in os.getloadavg()]
        runs.append(run)
        print(f"[{name} {r}] eager {run['eager']:.3f} s, onnxruntime {run['onnxruntime']:.3f} s, "
              f"eager / ort {run['ratio']:.2f}, load {run['load']}", flush=True)  # fmt: skip
    med = statistics.median
    return {"network": name, "patch": list(patch), "params": sum(p.numel() for p in model.parameters()),
            "export_s": export_s, "eager_s": med(r["eager"] for r in runs), "onnxruntime_s": med(r["onnxruntime"] for r in runs),
            "eager_over_onnxruntime": med(r["ratio"] for r in runs), "max_abs_diff": float(np.abs(got - want).max()),
            "runs": runs}  # fmt: skip


def report(res: dict) -> str:
    lines = [
        "# ONNX Runtime against torch eager on a CPU worker (issue 17's optional runtime)",
        "",
        f"Command: `PYTHONPATH=.:benchmarks python benchmarks/bench_onnx_runtime.py --repeats {res['repeats']} "
        f"--forwards {res['forwards']}`  ",
        f"torch {res['torch']}, onnxruntime {res['onnxruntime']} (CPU provider, all graph optimisations), one thread each "
        f"(as predict's workers run); {res['repeats']} paired repeats of {res['forwards']} forwards of one patch, "
        "alternating which runs first; random input, networks in eval mode (the benchmark U-Net with random weights, the "
        "shipped checkpoints as shipped).",
        "",
        "| network | parameters | patch | torch eager (s / forward) | ONNX Runtime (s / forward) | eager / ORT (median of paired ratios) | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        lines.append(f"| {c['network']} | {c['params']:,} | {tuple(c['patch'])} | {c['eager_s']:.3f} | {c['onnxruntime_s']:.3f} | "
                     f"{c['eager_over_onnxruntime']:.2f} | {c['max_abs_diff']:.1e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--forwards", type=int, default=3, help="forwards per timing")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "onnx_runtime"))
    args = ap.parse_args()
    import onnxruntime

    torch.set_num_threads(1)
    cases = []
    for name, ckpt, patch in CASES:
        model = bench_unet.BenchResUNet(input_patch=patch) if ckpt is None else load_checkpoint(resolve_checkpoint(ckpt))[0]
        cases.append(measure(name, model, patch, args.repeats, args.forwards))
    res = {"repeats": args.repeats, "forwards": args.forwards, "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__, "cases": cases}  # fmt: skip
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=2))
    Path(f"{args.out}.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
