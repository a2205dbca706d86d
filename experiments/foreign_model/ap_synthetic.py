"""A network blockseg did not build, trained for a few minutes (600 steps), through predict -> segment -> evaluate.

Issue 31 asks for the AP of a *foreign* network (a MONAI ``BasicUNet``, exported to TorchScript
with a sidecar) trained briefly on synthetic data. The training below is plain torch and knows
nothing of blockseg's trainer: random crops of a synthetic fluorescence volume, binary
cross-entropy on B and C, mean squared error on D (tanh of the logits), Adam. Only the targets
come from ``blockseg.train.targets`` (the NucMM U3D-BCD definitions). The network is then traced,
given a sidecar (``margin: auto``: blockseg measures the receptive field), and run by the engine
on a held-out synthetic volume (another seed) with 2 workers; ``segment`` uses the decoder the
channels imply (bcd), ``evaluate`` scores it against the generated labels.

    .venv/bin/python experiments/foreign_model/ap_synthetic.py --steps 600 --out /tmp/foreign_ap

Results go to ``experiments/foreign_model/results/ap_synthetic.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

import blockseg
from blockseg.synth import preset_params, render_region
from blockseg.train.targets import bcd_targets

HERE = Path(__file__).resolve().parent
PATCH = (32, 64, 64)


def network(arch: str) -> torch.nn.Module:
    if arch == "monai":
        from monai.networks.nets import BasicUNet

        return BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, features=(8, 8, 16, 32, 32, 8),
                         norm=("batch", {"affine": True}), dropout=0.0)  # fmt: skip
    raise SystemExit(f"unknown architecture {arch!r}")


def training_data(seed: int, shape=(48, 192, 192)):
    params = preset_params("fluo", shape=shape, seed=seed)
    vol = render_region(params, tuple(slice(0, s) for s in shape))
    targets = bcd_targets(vol["labels"], params.voxel_size)
    x = vol["image"].astype(np.float32) / 255.0
    y = np.stack([targets["B"], targets["C"], targets["D"]])
    return x, y, params


def train(net, x, y, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0, losses = time.perf_counter(), []
    for _ in range(steps):
        batch_x, batch_y = [], []
        for _ in range(2):
            o = [int(rng.integers(0, s - p + 1)) for s, p in zip(x.shape, PATCH)]
            sl = tuple(slice(a, a + p) for a, p in zip(o, PATCH))
            cx, cy = x[sl], y[(slice(None), *sl)]
            if rng.random() < 0.5:
                cx, cy = cx[:, :, ::-1], cy[:, :, :, ::-1]
            batch_x.append(cx[None].copy())
            batch_y.append(cy.copy())
        bx, by = torch.from_numpy(np.stack(batch_x)), torch.from_numpy(np.stack(batch_y))
        out = net(bx)
        loss = (F.binary_cross_entropy_with_logits(out[:, 0], by[:, 0])
                + F.binary_cross_entropy_with_logits(out[:, 1], by[:, 1])
                + F.mse_loss(torch.tanh(out[:, 2]), by[:, 2]))  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 1),
            "loss_first_20": round(float(np.mean(losses[:20])), 4), "loss_last_20": round(float(np.mean(losses[-20:])), 4)}  # fmt: skip


def export(net, params, folder: Path) -> Path:
    path = folder / "nuclei.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 1, *PATCH)).save(str(path))
    sidecar = {"outputs": ["B", "C", "D"], "activation": "logits", "patch": list(PATCH), "margin": "auto",
               "normalisation": {"offset": 0, "scale": 255}, "voxel_size": list(params.voxel_size),
               "name": "monai-basicunet-bcd (ap_synthetic.py)"}  # fmt: skip
    (folder / "nuclei.yaml").write_text(yaml.safe_dump(sidecar, sort_keys=False))
    return path


def score(test: Path, weights: str, folder: Path, client) -> dict:
    """predict (2 workers, 8 blocks) -> segment (the decoder the channels imply) -> evaluate."""
    folder.mkdir(parents=True, exist_ok=True)
    pred, seg = folder / "pred.zarr", folder / "seg.zarr"
    t0 = time.perf_counter()
    blockseg.predict(str(test), weights, str(pred), block_shape=(32, 128, 128), client=client, overwrite=True,
                     progress=False)  # fmt: skip
    t_pred = time.perf_counter() - t0
    seg_report = blockseg.segment(str(pred), str(seg), client=client, overwrite=True)
    rep = blockseg.evaluate(str(test / "labels" / "nuclei"), str(seg), client=client)
    at = {round(m["threshold"], 2): m for m in rep.matching}
    return {"predict_s": round(t_pred, 1), "decoder": seg_report.decoder.get("name") if isinstance(seg_report.decoder, dict) else None,
            "avAP": round(rep.av_ap, 4), "accuracy": {t: round(m["accuracy"], 4) for t, m in at.items()},
            "coco_AP": round(rep.coco["AP"], 4), "coco_AP50": round(rep.coco["AP50"], 4), "coco_AP75": round(rep.coco["AP75"], 4),
            "n_true": at[0.5]["n_true"], "n_pred": at[0.5]["n_pred"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps (batch 2 of 32x64x64 crops)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="monai")
    ap.add_argument("--out", default="/tmp/foreign_ap")
    ap.add_argument("--reuse", action="store_true", help="score the network already trained in --out again")
    ap.add_argument("--compare", nargs="*", default=["fluo_synth"], help="shipped checkpoints scored on the same volume")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, log_file = out / "nuclei.pt", out / "train.json"
    if args.reuse and model.exists() and log_file.exists():  # evaluate a network trained earlier again
        log = json.loads(log_file.read_text())
    else:
        x, y, params = training_data(seed=100 + args.seed)
        net = network(args.arch)
        log = train(net, x, y, args.steps, args.seed)
        model = export(net, params, out)
        log_file.write_text(json.dumps(log))

    test = out / "test.zarr"
    if not test.exists():
        blockseg.synthesize(str(test), preset_params("fluo", shape=(64, 192, 192), seed=7), chunks=(32, 64, 64), progress=False)
    from distributed import Client, LocalCluster

    runs = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        for name, weights in (("foreign", str(model)), *((c, c) for c in args.compare)):
            runs[name] = score(test, weights, out / name, client)
            print(name, json.dumps(runs[name]), flush=True)
    info = subprocess.run([str(Path(os.sys.executable).parent / "blockseg"), "info", str(model)],
                          capture_output=True, text=True).stdout  # fmt: skip
    result = {"arch": args.arch, "patch": PATCH, "train": log, "runs": runs, "info": info,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "ap_synthetic.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
