"""Would ONNX Runtime run blockseg's networks faster than torch eager on a CPU worker?

Issue 17 allows an optimised CPU runtime behind a flag if it wins in a measurement.
``bench_runtime.py --onnx`` measured it once, for ``demo`` on its inference patch inside a
predict run; this one asks the same of several networks, forward only: for each network (the benchmark's residual U-Net and the two shipped
checkpoints, each on a typical inference patch), one forward pass of one patch, torch eager
against ONNX Runtime's CPU provider (exported with ``torch.onnx.export``, all graph
optimisations on), both on one thread as a predict worker runs them, in paired repeats
(alternating which goes first). Reports the median time per forward and the median of the
paired ratios, and the largest absolute difference of the raw outputs.

Needs ``onnxruntime`` and ``onnx`` (the ``bench`` extra: ``pip install -e ".[bench]"``).

    PYTHONPATH=.:benchmarks python experiments/bench_onnx_runtime.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # bench_unet, bench_predict
import bench_unet  # noqa: E402  (registers "bench_resunet")
from bench_runtime import forward_rate, onnx_rate, onnx_session  # noqa: E402

from blockseg.models import load_checkpoint, resolve_checkpoint  # noqa: E402

CASES = (("bench_resunet", None, (72, 72, 72)), ("demo", "demo", (32, 128, 128)), ("fluo", "fluo", (32, 96, 96)))


def measure(name: str, model: torch.nn.Module, patch, repeats: int, forwards: int, work: str) -> dict:
    """Paired repeats of eager vs ONNX Runtime forwards of one patch (:mod:`bench_runtime`'s timers)."""
    model = model.eval()
    t = time.perf_counter()
    session = onnx_session(model, patch, 1, f"{work}/{name}.onnx")
    export_s = time.perf_counter() - t
    x = np.random.default_rng(0).standard_normal((1, 1, *patch)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = session.run(None, {"x": x})[0]
    voxels = math.prod(patch)
    runs = []
    for r in range(repeats):
        timers = (("eager", lambda: forward_rate(model, patch, 1, forwards)),
                  ("onnxruntime", lambda: onnx_rate(session, patch, 1, forwards)))  # fmt: skip
        run = {k: voxels / f() for k, f in (timers if r % 2 == 0 else timers[::-1])}  # seconds per forward
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
        f"Command: `PYTHONPATH=.:benchmarks python experiments/bench_onnx_runtime.py --repeats {res['repeats']} "
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
    with tempfile.TemporaryDirectory() as work:
        for name, ckpt, patch in CASES:
            model = bench_unet.BenchResUNet(input_patch=patch) if ckpt is None else load_checkpoint(resolve_checkpoint(ckpt))[0]
            cases.append(measure(name, model, patch, args.repeats, args.forwards, work))
    res = {"repeats": args.repeats, "forwards": args.forwards, "torch": torch.__version__,
           "onnxruntime": onnxruntime.__version__, "cases": cases}  # fmt: skip
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=2))
    Path(f"{args.out}.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
