"""``blockseg demo``: the whole pipeline on a synthetic volume with the shipped checkpoint."""

from __future__ import annotations

import argparse

from blockseg.pipeline.config import parse_config, set_dotted
from blockseg.pipeline.workflow import DEMO_CONFIG

from .run import add_run_options, execute, overrides


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="synthesise an EM-like volume and run the full pipeline on it (no data or GPU needed)",
        description="Generate a 128×512×512 synthetic EM-like volume, predict with the shipped demo "
        "checkpoint, segment blockwise, evaluate against the generated ground truth and print "
        "the AP table. Outputs go to --run-dir (default runs/demo).",
    )
    add_run_options(p, config=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = {"run_dir": "runs/demo", **DEMO_CONFIG}
    for key, value in overrides(args).items():
        raw = set_dotted(raw, key, value)
    return execute(parse_config(raw, "demo config"), args)
