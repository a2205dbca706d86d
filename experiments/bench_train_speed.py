"""Training speed on CPU: the data loader's share of an iteration, targets computed per crop vs cached.

Paired, interleaved repeats in one process (medians), one torch thread, machine load recorded::

    PYTHONPATH=. python experiments/bench_train_speed.py [--repeats 3] [--batches 8]

Uses the GoNuclear crop of ../shared/data/real (skips when absent): the benchmark's training
volume (z 0-70), BCD targets, residual U-Net ``capacity: small``, patch 16x48x48, batch 2.
Writes ``experiments/results/train_speed.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "gonuclear_1135_mini.npz"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=8)
    args = ap.parse_args(argv)
    if not REAL.exists():
        print(f"{REAL} is absent", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    from blockseg.train.losses import MultiLoss
    from blockseg.train import CropSampler, parse_config
    from blockseg.train.config import AugmentConfig
    from blockseg.predict.normalise import image_statistics
    from blockseg.train.trainer import make_model
    from blockseg.train.training_data import import_pair

    reps = ["B", "C", "D"]
    patch = (16, 48, 48)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        d = np.load(REAL)
        np.save(f"{tmp}/i.npy", d["image"][:70])
        np.save(f"{tmp}/l.npy", d["labels"][:70])
        vol = f"{tmp}/t.zarr"
        import_pair(f"{tmp}/i.npy", f"{tmp}/l.npy", vol, voxel_size=tuple(d["voxel_size_zyx"]))
        norm = image_statistics([vol])
        samplers = {m: CropSampler([vol], reps, patch, norm, AugmentConfig(), cache_mb=mb) for m, mb in (("computed", 0), ("cached", 1024))}
        cfg = parse_config({"data": {"train": [vol]}, "model": {"representations": reps, "capacity": "small", "params": {"anisotropic": 1}},
                            "output": f"{tmp}/o", "iterations": 1, "patch": list(patch)})  # fmt: skip
        model = make_model(cfg).to(memory_format=torch.channels_last_3d).train()
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        loss_fn = MultiLoss(reps)
        rows = {"computed": [], "cached": [], "step": []}
        t0 = time.process_time()
        rng = np.random.default_rng(0)
        while len(samplers["cached"]._cache) < 16:  # fill the cache: 16 in-plane transforms of one view
            samplers["cached"].batch(rng, 2)
        fill_s = time.process_time() - t0
        for _ in range(3):  # warm-up (numba compilation)
            samplers["computed"].batch(np.random.default_rng(0), 2)
        x, t = samplers["cached"].batch(np.random.default_rng(0), 2)
        for r in range(args.repeats):
            for m in ("computed", "cached"):
                rng = np.random.default_rng(100 + r)
                t0 = time.process_time()
                for _ in range(args.batches):
                    samplers[m].batch(rng, 2)
                rows[m].append((time.process_time() - t0) / args.batches)
            t0 = time.process_time()
            for _ in range(args.batches):
                raw = model(torch.from_numpy(x).to(memory_format=torch.channels_last_3d))
                loss, _ = loss_fn(raw, {k: torch.from_numpy(v) for k, v in t.items()})
                opt.zero_grad()
                loss.backward()
                opt.step()
            rows["step"].append((time.process_time() - t0) / args.batches)
        cache_entries = len(samplers["cached"]._cache)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    res = {"cpu_s_per_batch": med, "repeats": rows, "batches": args.batches, "load_start": load0, "load_end": os.getloadavg(),
           "cache_entries": cache_entries, "cache_fill_cpu_s": fill_s, "data_share_computed": med["computed"] / (med["computed"] + med["step"]),
           "data_share_cached": med["cached"] / (med["cached"] + med["step"]),
           "speedup_iteration": (med["computed"] + med["step"]) / (med["cached"] + med["step"])}  # fmt: skip
    out = ROOT / "experiments" / "results" / "train_speed.json"
    out.write_text(json.dumps(res, indent=1))
    print("| targets | data CPU-s / batch | network step CPU-s / batch | data share | iterations / CPU-s |")
    print("|---|---|---|---|---|")
    for m in ("computed", "cached"):
        it = med[m] + med["step"]
        print(f"| {m} | {med[m]:.3f} | {med['step']:.3f} | {med[m] / it:.0%} | {1 / it:.2f} |")
    print(f"load average start {tuple(round(x, 2) for x in load0)}, end {tuple(round(x, 2) for x in res['load_end'])}; "
          f"iteration speed-up {res['speedup_iteration']:.2f}x; filling the cache once: {fill_s:.1f} CPU-s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
