"""``blockseg train CONFIG.yaml``: train a network from zarr volumes (see :mod:`blockseg.train`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a network from zarr image/label volumes (YAML config)",
        description="Train the network described by CONFIG (a YAML file; see configs/train_demo.yaml). "
        "Writes OUTPUT/checkpoint.pt (weights + metadata: normalisation, voxel size, representations, "
        "training config, recommended decoder parameters), OUTPUT/resume.pt and OUTPUT/train_log.jsonl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("config", help="YAML training configuration")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/resume.pt")
    p.add_argument("--iterations", type=int, help="override the config's number of iterations")
    p.add_argument("--output", help="override the config's output folder")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the config's, else all cores)")
    p.add_argument(
        "--device", help="auto (CUDA where visible), cpu, cuda or cuda:N (default: the config's, else auto); training "
        "runs in this process, not on a Dask cluster",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.add_argument("--dry-run", action="store_true", help="print the plan (output, volumes, voxel size, network size); train nothing, write nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.pipeline.config import load_train_config
    from blockseg.train import parse_config, train

    cfg = load_train_config(args.config)
    over = {}
    if args.iterations is not None:
        over["iterations"] = args.iterations
    if args.output is not None:
        over["output"] = args.output
    if args.threads is not None:
        over["threads"] = args.threads
    if args.device is not None:
        over["device"] = args.device
    if over:
        cfg = parse_config({**cfg.model_dump(mode="json"), **over})
    if args.dry_run:
        plan = train(cfg, resume=args.resume, dry_run=True)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
        return 0
    progress = sys.stderr.isatty() and not args.no_progress
    if not progress:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = train(cfg, resume=args.resume, progress=progress)
    summary = {
        "checkpoint": result.checkpoint,
        "iterations": result.iteration,
        "final_loss": result.losses[-1] if result.losses else None,
        "validation": result.validation,
        "seconds": round(result.seconds, 1),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {result.checkpoint} after {result.iteration} iterations ({result.seconds:.0f} s)")
        if result.validation:
            v = result.validation
            print(f"validation: AP-50 {v['AP50']:.3f}  AP-75 {v['AP75']:.3f}  accuracy@0.5 {v['accuracy50']:.3f}")
    return 0
