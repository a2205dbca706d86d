"""``blockseg run CONFIG``: data → predict → segment → evaluate, resumable."""

from __future__ import annotations

import argparse
import json

import yaml

from blockseg import BlocksegError
from blockseg.pipeline.config import STAGES, load_config
from blockseg.pipeline.workflow import ap_table, plan, run as run_workflow

from .options import add_cluster_options, cluster_config, progress_mode


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline from a YAML config (resumable)",
        description="Run data (synthesise/import) → predict → segment → evaluate as configured. "
        "Stages already complete for this config are skipped; an interrupted stage resumes.",
    )
    add_run_options(p, config=True)
    p.set_defaults(func=run)


def add_run_options(p: argparse.ArgumentParser, config: bool) -> None:
    if config:
        p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--run-dir", metavar="DIR", help="override the config's run_dir")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set segment.halo=32 (VALUE is YAML); repeatable",
    )  # fmt: skip
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="redo this stage and the ones after it")
    p.add_argument("--only", choices=STAGES, help="run only this stage (earlier ones must be complete)")
    p.add_argument("--dry-run", action="store_true", help="print what each stage would do, run nothing")
    p.add_argument("--overwrite", action="store_true", help="redo every stage; take over a non-empty run_dir")
    p.add_argument("--json", action="store_true", help="print the evaluation summary as JSON")
    add_cluster_options(p)


def overrides(args: argparse.Namespace) -> dict:
    out = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BlocksegError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise BlocksegError(f"--set {key}: value {value!r} is not valid YAML") from None
    if args.run_dir:
        out["run_dir"] = args.run_dir
    from .options import absolute

    for key in _PATH_KEYS:  # relative to this folder, and absolute before workers see them
        if isinstance(out.get(key), str) and out[key] != "demo":
            out[key] = absolute(out[key])
    return out


#: --set keys holding paths (a config file's own paths are anchored at its folder)
_PATH_KEYS = ("run_dir", "data.image", "data.ground_truth", "data.mask", "model.checkpoint", "segment.tune.labels")


def execute(cfg, args: argparse.Namespace) -> int:
    if args.dry_run:
        from blockseg.pipeline.runcheck import check_config

        check_config(cfg)  # the same checks as a real run, before the plan
        for stage, action in plan(cfg, args.from_stage, args.only).items():
            print(f"{stage:<9} {action}")
        return 0
    from blockseg.runtime.progress import progress_settings

    args.resumable = True
    log = (lambda msg: None) if args.quiet else None
    with progress_settings(progress_mode(args)):
        result = run_workflow(cfg, from_stage=args.from_stage, only=args.only, overwrite=args.overwrite,
                              cluster=cluster_options(cfg, args), log=log)  # fmt: skip
    if result.evaluation is not None:
        if args.json:
            print(json.dumps(result.evaluation, indent=2))
        else:
            print(ap_table(result.evaluation))
    print(f"outputs in {result.layout.root}")
    return 0


def cluster_options(cfg, args: argparse.Namespace):
    """The config's cluster section with the cluster options given on the command line on top."""
    from blockseg.pipeline.workflow import _cluster_config

    base = _cluster_config(cfg)
    given = cluster_config(args)
    for name, value in (
        ("scheduler", args.scheduler), ("n_workers", args.workers), ("memory_limit", args.memory_limit),
        ("threads_per_worker", args.threads_per_worker), ("worker_timeout", args.worker_timeout),
    ):  # fmt: skip
        if value is not None:
            setattr(base, name, getattr(given, name))
    base.gpu = base.gpu or args.gpu
    base.quiet_logs = given.quiet_logs
    return base


def run(args: argparse.Namespace) -> int:
    return execute(load_config(args.config, overrides(args)), args)
