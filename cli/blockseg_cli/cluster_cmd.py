"""``blockseg cluster slurm``: start dask workers as SLURM jobs (dask-jobqueue), print the address."""

from __future__ import annotations

import argparse
import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="start a Dask cluster on a batch system (SLURM) for the other commands' --scheduler",
        description="Start a Dask scheduler here and dask workers as batch jobs, print the scheduler's address "
        "and keep the cluster up until Ctrl-C (which cancels the jobs). Other commands then run on it with "
        "--scheduler ADDRESS. Needs dask-jobqueue: pip install 'blockseg[slurm]'.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True, help="batch system (slurm)")
    s = kinds.add_parser(
        "slurm",
        help="workers as SLURM jobs (dask_jobqueue.SLURMCluster)",
        description="Each SLURM job runs --processes dask workers sharing --cores and --memory; with --gpus N a "
        "job gets N GPUs (--gres=gpu:N) and one worker per GPU with the GPU resource. --dry-run prints the job "
        "script and submits nothing.",
    )
    s.add_argument("--jobs", type=int, default=1, metavar="N", help="SLURM jobs to submit (default 1)")
    s.add_argument("--cores", type=int, default=8, metavar="N", help="CPU cores per job (default 8)")
    s.add_argument("--memory", default="32GB", metavar="SIZE", help="memory per job (default 32GB)")
    s.add_argument("--processes", type=int, metavar="N", help="dask workers per job (default: one per GPU, else 1)")
    s.add_argument("--gpus", type=int, default=0, metavar="N", help="GPUs per job (--gres=gpu:N; default 0)")
    s.add_argument("--queue", "--partition", dest="queue", metavar="NAME", help="SLURM partition")
    s.add_argument("--account", metavar="NAME", help="SLURM account to charge")
    s.add_argument("--walltime", default="01:00:00", metavar="HH:MM:SS", help="time limit per job (default 01:00:00)")
    s.add_argument("--local-directory", metavar="DIR", help="workers' spill folder, e.g. node-local $TMPDIR")
    s.add_argument("--log-directory", metavar="DIR", help="folder for the jobs' SLURM logs")
    s.add_argument(
        "--directive", action="append", default=[], metavar="TEXT",
        help="extra #SBATCH directive, repeatable, e.g. --directive=--constraint=a100",
    )  # fmt: skip
    s.add_argument(
        "--prologue", action="append", default=[], metavar="LINE",
        help="shell line run before the workers start, repeatable, e.g. --prologue 'module load cuda'",
    )  # fmt: skip
    s.add_argument("--python", metavar="PATH", help="python of the workers (default: this one; it must import blockseg)")
    s.add_argument("--scheduler-file", metavar="PATH", help="also write the scheduler's address to this JSON file")
    s.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")
    p.set_defaults(func=run)


def settings(args: argparse.Namespace):
    from blockseg.runtime.slurm import SlurmSettings

    kw = dict(
        cores=args.cores, memory=args.memory, processes=args.processes, gpus=args.gpus, queue=args.queue,
        account=args.account, walltime=args.walltime, local_directory=args.local_directory,
        log_directory=args.log_directory, job_extra_directives=args.directive, job_script_prologue=args.prologue,
    )  # fmt: skip
    if args.python:
        kw["python"] = args.python
    out = SlurmSettings(**kw)
    out.validate()
    return out


def run(args: argparse.Namespace) -> int:
    from blockseg import BlocksegError
    from blockseg.runtime.slurm import job_script, make_slurm_cluster

    cfg = settings(args)
    if args.dry_run:
        print(job_script(cfg))
        return 0
    if args.jobs < 1:
        raise BlocksegError(f"--jobs must be at least 1, got {args.jobs}")
    cluster = make_slurm_cluster(cfg)
    try:
        cluster.scale(jobs=args.jobs)
        address = cluster.scheduler_address
        if args.scheduler_file:
            import json

            with open(args.scheduler_file, "w") as f:
                json.dump({"address": address}, f)
        print(address, flush=True)
        print(
            f"blockseg cluster: {args.jobs} SLURM job(s) submitted; run commands with --scheduler {address}; "
            f"dashboard {cluster.dashboard_link}; Ctrl-C stops the cluster and cancels the jobs",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.close()
