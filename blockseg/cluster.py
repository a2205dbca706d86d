"""Dask runtime: an embedded LocalCluster by default, or any existing scheduler.

Every stage runs its blocks as plain dask tasks through :func:`run_blocks`: one task per block
id, the function and its (small) parameters shipped once, arrays read and written by the task
itself from zarr. GPU tasks ask for the ``GPU`` worker resource, so they land only on workers
started with ``--resources GPU=1`` (``LocalCUDACluster`` / dask-jobqueue setups) or, locally,
on the one-worker-per-GPU cluster :func:`dask_client` builds when GPUs are present.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import psutil

from .errors import BlocksegError


@dataclass
class ClusterConfig:
    """Where blocks run.

    Attributes
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``). None starts a LocalCluster.
    n_workers : int, optional
        Local worker processes (default: one per core, or one per GPU when ``gpu``).
    threads_per_worker : int
        Threads per local worker (1: blocks are CPU-bound numpy/numba work).
    memory_limit : str or int
        Per-worker memory limit: ``"auto"`` divides 90 % of the machine's memory among the
        workers, or give bytes / a string such as ``"4GiB"``.
    gpu : bool
        Local workers each get one GPU and the ``GPU`` resource.
    dashboard : bool
        Serve the dashboard (on a free port) and print its link.
    processes : bool
        Local workers as processes (default) or threads of this process (tests, debugging).
    """

    scheduler: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    gpu: bool = False
    dashboard: bool = True
    processes: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_memory_limit(n_workers: int) -> int:
    """Bytes per worker: 90 % of this machine's available memory, shared evenly."""
    return int(psutil.virtual_memory().total * 0.9 / max(n_workers, 1))


def count_gpus() -> int:
    """Visible CUDA devices (0 when torch or CUDA is absent)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def dask_client(config: ClusterConfig | None = None, quiet: bool = False) -> Iterator["distributed.Client"]:  # noqa: F821
    """Connect to ``config.scheduler`` or start a LocalCluster; close what was started on exit.

    Raises
    ------
    BlocksegError
        If the scheduler address cannot be reached, or GPUs are asked for but none is visible.
    """
    from distributed import Client, LocalCluster

    config = config or ClusterConfig()
    if config.scheduler:
        try:
            client = Client(config.scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise BlocksegError(f"cannot reach the dask scheduler at {config.scheduler}: {exc}") from None
        if not quiet:
            n = len(client.scheduler_info().get("workers", {}))
            _log(f"blockseg: connected to {config.scheduler} ({n} workers); dashboard {client.dashboard_link}")
        try:
            yield client
        finally:
            client.close()
        return

    resources = None
    n_workers = config.n_workers
    if config.gpu:
        n_gpus = count_gpus()
        if n_gpus == 0:
            raise BlocksegError("gpu=True but no CUDA device is visible")
        n_workers = n_workers or n_gpus
        resources = {"GPU": 1}
    n_workers = n_workers or max(1, os.cpu_count() or 1)
    memory_limit = config.memory_limit
    if memory_limit == "auto":
        memory_limit = default_memory_limit(n_workers)
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=memory_limit,
            resources=resources,
            dashboard_address=":0",  # a free port (None would still try 8787)
            **config.extra,
        )
    client = Client(cluster)
    if not quiet:
        link = f"; dashboard {client.dashboard_link}" if config.dashboard else ""
        _log(f"blockseg: LocalCluster with {n_workers} worker(s) x {config.threads_per_worker} thread(s){link}")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def worker_environ() -> dict:
    """Environment of the worker processes blockseg starts: dask's, without ``MALLOC_TRIM_THRESHOLD_``.

    dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers to hand freed memory back to the
    OS sooner. Setting it turns off glibc's adaptive mmap threshold, so every large tensor
    torch allocates becomes a fresh ``mmap`` whose pages are faulted in again on each forward
    pass: on this project's 2-core machine the same U-Net ran at 0.80 M voxels/s on two
    workers with it and 1.26 M without (``benchmarks/bench_predict.py``). Thread counts
    (``OMP_NUM_THREADS=1``...) are kept. Clusters blockseg does not start keep their own
    settings; see the README to apply the same there.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def has_gpu_workers(client) -> bool:
    """Whether any worker of ``client`` offers the ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())


def run_blocks(
    func: Callable[[int], Any],
    block_ids: Iterable[int],
    client=None,
    name: str = "blocks",
    resources: dict[str, float] | None = None,
    progress: bool = True,
    retries: int = 1,
) -> list[Any]:
    """Run ``func(block_id)`` for every block id as dask tasks; return results in id order.

    Parameters
    ----------
    func : callable
        Pickle-able function of a block id (typically a ``functools.partial`` carrying paths
        and parameters, never arrays). It reads its own input and writes its own core.
    block_ids : iterable of int
        Blocks to run.
    client : distributed.Client, optional
        Where to run. None runs the tasks in this process, one after the other (debugging).
    name : str
        Task name prefix, shown on the dashboard and the progress bar.
    resources : dict, optional
        Worker resources each task needs, e.g. ``{"GPU": 1}``.
    progress : bool
        Show a progress bar on stderr.
    retries : int
        Times a failed task is retried (a lost worker is always recovered by dask).
    """
    ids = [int(b) for b in block_ids]
    bar = _progress(name, len(ids)) if progress else contextlib.nullcontext(None)
    results: dict[int, Any] = {}
    with bar as advance:
        if client is None:
            for b in ids:
                results[b] = func(b)
                if advance:
                    advance()
        else:
            from distributed import as_completed

            token = uuid.uuid4().hex[:8]  # keys unique per call: a rerun never meets stale tasks
            futures = client.map(
                func, ids, key=[f"{name}-{token}-{b}" for b in ids], resources=resources, retries=retries, pure=False
            )
            index = {f.key: b for f, b in zip(futures, ids)}
            try:
                for fut in as_completed(futures):
                    results[index[fut.key]] = fut.result()
                    if advance:
                        advance()
            except BaseException:
                client.cancel(futures)
                raise
    return [results[b] for b in ids]


@contextlib.contextmanager
def _progress(name: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
        console=None,
    ) as prog:
        task = prog.add_task(name, total=total)
        yield lambda: prog.advance(task)


def cluster_config_from_args(
    scheduler: str | None = None, workers: int | None = None, memory_limit: str | None = None, gpu: bool = False
) -> ClusterConfig:
    """Build a :class:`ClusterConfig` from CLI-style options."""
    if workers is not None and workers < 1:
        raise BlocksegError(f"--workers must be at least 1, got {workers}")
    return ClusterConfig(scheduler=scheduler, n_workers=workers, memory_limit=memory_limit or "auto", gpu=gpu)


__all__: Sequence[str] = [
    "ClusterConfig",
    "dask_client",
    "run_blocks",
    "has_gpu_workers",
    "count_gpus",
    "default_memory_limit",
    "cluster_config_from_args",
]
