"""Dask workers as SLURM jobs, through dask-jobqueue (optional: ``pip install blockseg[slurm]``).

A :class:`SlurmSettings` describes one batch job; each job runs ``processes`` dask workers that
share its cores and memory. GPU jobs ask SLURM for ``gpus`` GPUs (``--gres=gpu:N``) and start
one worker per GPU with the ``GPU`` resource, so blockseg's GPU tasks land only there.

``blockseg cluster slurm`` starts such a cluster and prints the scheduler address for the other
commands' ``--scheduler``; ``blockseg cluster slurm --dry-run`` prints the job script without
submitting anything (no SLURM installation needed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from ..errors import BlocksegError


@dataclass
class SlurmSettings:
    """One SLURM batch job of dask workers.

    Attributes
    ----------
    cores : int
        CPU cores per job (``--cpus-per-task``).
    memory : str
        Memory per job, e.g. ``"64GB"`` (``--mem``); shared by the job's workers.
    processes : int, optional
        Dask workers per job (default: one per GPU with ``gpus``, else one per job).
    gpus : int
        GPUs per job (``--gres=gpu:N``); every worker then gets one and the ``GPU`` resource.
    queue, account : str, optional
        SLURM partition (``-p``) and account (``-A``).
    walltime : str
        Job time limit, ``HH:MM:SS``.
    python : str
        Python of the workers (default: this one; blockseg must be importable there).
    local_directory : str, optional
        Workers' spill folder (node-local disk such as ``$TMPDIR``).
    log_directory : str, optional
        Where SLURM writes the jobs' stdout/stderr.
    job_extra_directives : list of str
        More ``#SBATCH`` lines, e.g. ``["--constraint=a100"]``.
    job_script_prologue : list of str
        Shell lines run before the workers start, e.g. ``["module load cuda", "source venv/bin/activate"]``.
    """

    cores: int = 8
    memory: str = "32GB"
    processes: int | None = None
    gpus: int = 0
    queue: str | None = None
    account: str | None = None
    walltime: str = "01:00:00"
    python: str = field(default_factory=lambda: sys.executable)
    local_directory: str | None = None
    log_directory: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """One line for settings SLURM or dask would refuse later."""
        if self.cores < 1:
            raise BlocksegError(f"slurm cores must be at least 1, got {self.cores}")
        if self.gpus < 0:
            raise BlocksegError(f"slurm gpus must be >= 0, got {self.gpus}")
        procs = self.n_processes
        if procs < 1 or procs > self.cores:
            raise BlocksegError(f"slurm processes must be between 1 and cores ({self.cores}), got {procs}")
        if self.gpus and procs != self.gpus:
            raise BlocksegError(f"a job with {self.gpus} GPU(s) runs one worker per GPU; processes {procs} != gpus")
        parts = self.walltime.split(":")
        if not (1 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
            raise BlocksegError(f"slurm walltime must look like HH:MM:SS, got {self.walltime!r}")
        from dask.utils import parse_bytes

        try:
            parse_bytes(self.memory)
        except (ValueError, TypeError):
            raise BlocksegError(f"slurm memory must look like 32GB, got {self.memory!r}") from None

    @property
    def n_processes(self) -> int:
        return self.processes if self.processes is not None else max(self.gpus, 1)

    def cluster_kwargs(self) -> dict:
        """Keyword arguments of :class:`dask_jobqueue.SLURMCluster`."""
        directives = list(self.job_extra_directives)
        if self.gpus:
            directives.append(f"--gres=gpu:{self.gpus}")
        # each worker of a GPU job takes one GPU: blockseg picks cuda:N by the worker name's
        # trailing number (dask-jobqueue names a job's workers NAME-0, NAME-1, ...)
        worker_args = ["--resources", "GPU=1"] if self.gpus else []
        return {
            "cores": self.cores,
            "memory": self.memory,
            "processes": self.n_processes,
            "queue": self.queue,
            "account": self.account,
            "walltime": self.walltime,
            "python": self.python,
            "local_directory": self.local_directory,
            "log_directory": self.log_directory,
            "job_extra_directives": directives,
            "job_script_prologue": list(self.job_script_prologue),
            "worker_extra_args": worker_args,
            "job_name": "blockseg-worker",
        }


def _jobqueue():
    try:
        import dask_jobqueue
    except ImportError:
        raise BlocksegError("SLURM clusters need dask-jobqueue: pip install 'blockseg[slurm]'") from None
    return dask_jobqueue


def make_slurm_cluster(settings: SlurmSettings, scheduler_options: dict | None = None):
    """A :class:`dask_jobqueue.SLURMCluster` for ``settings`` (no job submitted until scaled).

    Its scheduler runs in this process; ``cluster.scale(jobs=N)`` submits N jobs.
    """
    settings.validate()
    jq = _jobqueue()
    opts = {"dashboard_address": ":0", **(scheduler_options or {})}
    return jq.SLURMCluster(scheduler_options=opts, **settings.cluster_kwargs())


def job_script(settings: SlurmSettings) -> str:
    """The batch script one worker job runs (builds the cluster, reads the script, closes it)."""
    cluster = make_slurm_cluster(settings, {"host": "127.0.0.1", "port": 0})
    try:
        return cluster.job_script()
    finally:
        cluster.close()


__all__: Sequence[str] = ["SlurmSettings", "job_script", "make_slurm_cluster"]
