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
from functools import partial
import sys
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import psutil

from .errors import BlocksegError

if TYPE_CHECKING:  # annotations only
    import distributed


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
    worker_timeout : float
        Seconds to wait for at least one worker of an existing scheduler.
    connect_timeout : float
        Seconds an address gets to answer as a dask scheduler.
    quiet_logs : bool
        Local workers log only critical events, and closing the cluster (after the work, a failure or Ctrl-C) prints
        nothing (blockseg reports it in one line); False keeps dask's warnings (``--debug``).
    """

    scheduler: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    gpu: bool = False
    dashboard: bool = True
    processes: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: seconds to wait for the first worker of an existing scheduler
    worker_timeout: float = 60.0
    #: seconds to wait for a scheduler to answer dask's handshake
    connect_timeout: float = 10.0
    #: local workers log only critical events (blockseg reports a failed task itself, in one line), and
    #: closing the cluster is silent; False keeps dask's warnings
    quiet_logs: bool = True


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
def dask_client(
    config: ClusterConfig | None = None,
    quiet: bool = False,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> Iterator["distributed.Client"]:
    """Connect to ``config.scheduler`` or start a LocalCluster, check it; close what was started on exit.

    The cluster passes :func:`blockseg.preflight.preflight` before the client is handed out:
    a worker has joined, every worker imports this blockseg version, sees ``inputs`` and can
    write where ``outputs`` go (and has a CUDA device with ``config.gpu``). Call it before
    creating any output, so that a failed check leaves nothing behind.

    Raises
    ------
    BlocksegError
        One line: the address is not a reachable dask scheduler, no worker joined in time, a
        worker fails the preflight check, or GPUs are asked for but none is visible.
    """
    from distributed import Client, LocalCluster

    from .preflight import connect, preflight

    config = config or ClusterConfig()
    if config.scheduler:
        client = connect(config.scheduler, timeout=config.connect_timeout)
        try:
            preflight(client, inputs, outputs, gpu=config.gpu, timeout=config.worker_timeout)
            if not quiet:
                n = len(client.scheduler_info().get("workers", {}))
                _log(f"blockseg: connected to {config.scheduler} ({n} workers); dashboard {client.dashboard_link}")
            with _silent_shutdown(config.quiet_logs):
                yield client
        finally:
            client.close()
            _restore_logs()
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

    environ = worker_environ()
    if config.quiet_logs:
        environ["DASK_LOGGING__DISTRIBUTED"] = "critical"
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _workers_ignore_sigint():
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=memory_limit,
            resources=resources,
            dashboard_address=":0",  # a free port (None would still try 8787)
            **config.extra,
        )
    try:
        client = Client(cluster)
        try:
            preflight(client, inputs, outputs, gpu=config.gpu, timeout=config.worker_timeout)
            if not quiet:
                link = f"; dashboard {client.dashboard_link}" if config.dashboard else ""
                _log(f"blockseg: LocalCluster with {n_workers} worker(s) x {config.threads_per_worker} thread(s){link}")
            with _silent_shutdown(config.quiet_logs):
                yield client
        finally:
            client.close()
    finally:
        cluster.close()
        _restore_logs()


_MUTED: dict = {}


@contextlib.contextmanager
def _silent_shutdown(quiet: bool):
    """Mute dask's loggers in this process while the cluster closes (after the work, an error or
    Ctrl-C): cancelled tasks and slow workers killed on close are not news to the user."""
    import logging

    try:
        yield
    finally:
        if quiet:
            for name in ("distributed", "tornado"):
                log = logging.getLogger(name)
                _MUTED.setdefault(name, log.level)
                log.setLevel(logging.CRITICAL + 1)


def _restore_logs() -> None:
    import logging

    for name, level in list(_MUTED.items()):
        logging.getLogger(name).setLevel(level)
        del _MUTED[name]


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Worker processes started inside ignore SIGINT: Ctrl-C in a terminal reaches the whole
    process group, and the driver alone should handle it (cancel, close the cluster, one line)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    voxels: Sequence[int] | None = None,
    retried: list[int] | None = None,
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
        Task name prefix, shown on the dashboard, the progress output and in error messages.
    resources : dict, optional
        Worker resources each task needs, e.g. ``{"GPU": 1}``.
    progress : bool
        Report progress (in the mode :func:`blockseg.progress.progress_settings` chose).
    retries : int
        Times a failed task is retried (a lost worker is always recovered by dask).
    voxels : sequence of int, optional
        Voxels of each block, in ``block_ids`` order: progress in voxels, rate and ETA.
    retried : list, optional
        Filled with the ids of the blocks whose task ran more than once (it failed, or its
        worker was lost, and ran again): a stage's report says so. Every block task is
        idempotent, so a retry never changes a result.

    Raises
    ------
    Exception
        The first task's exception, with ``blockseg_task`` (``"predict block 3"``) and
        ``blockseg_worker`` attributes (:func:`task_failure` makes one line of it); the other
        tasks are cancelled. KeyboardInterrupt cancels them too.
    """
    from .progress import block_progress

    ids = [int(b) for b in block_ids]
    if voxels is not None and len(voxels) != len(ids):
        raise ValueError(f"voxels has {len(voxels)} entries for {len(ids)} blocks")
    position = {b: i for i, b in enumerate(ids)}
    bar = block_progress(name, len(ids), voxels, mode=None if progress else "none")
    results: dict[int, Any] = {}
    with bar as advance:
        if client is None:
            for b in ids:
                for attempt in range(retries + 1):  # as dask would: a failed task runs again
                    try:
                        results[b] = _named_task(func, name, b)
                        break
                    except (BlocksegError, MemoryError):
                        raise  # the input or the settings are wrong: running again cannot help
                    except Exception:
                        if attempt == retries:
                            raise
                        if retried is not None:
                            retried.append(b)
                advance(position[b])
        else:
            from distributed import as_completed

            token = uuid.uuid4().hex[:8]  # keys unique per call: a rerun never meets stale tasks
            futures = client.map(
                partial(_named_task, func, name), ids, key=[f"{name}-{token}-{b}" for b in ids],
                resources=resources, retries=retries, pure=False,
            )  # fmt: skip
            index = {f.key: b for f, b in zip(futures, ids)}
            try:
                for fut in as_completed(futures):
                    try:
                        results[index[fut.key]] = fut.result()
                    except Exception as exc:
                        _annotate(exc, f"{name} block {index[fut.key]}", None)
                        raise
                    advance(position[index[fut.key]])
            except BaseException:
                client.cancel(futures)
                raise
            if retried is not None:
                retried.extend(sorted(index[k] for k in _rerun_keys(client, list(index))))
    return [results[b] for b in ids]


def _rerun_keys(client, keys: list[str]) -> set[str]:
    """The keys the scheduler sent to a worker more than once (a retry after an error, or a
    rerun after a lost worker), from its transition log."""
    starts: dict[str, int] = {}
    try:
        story = client.story(*keys, on_error="ignore")
    except Exception:  # a scheduler without the story API: report nothing rather than fail the run
        return set()
    wanted = set(keys)
    for event in story:  # (source, key, start, finish, ...): the scheduler's sends to a worker
        if len(event) > 3 and event[0] == "scheduler" and event[1] in wanted and event[3] == "processing":
            starts[event[1]] = starts.get(event[1], 0) + 1
    return {k for k, n in starts.items() if n > 1}


def block_voxels(grid, block_ids: Iterable[int]) -> list[int]:
    """Voxels of each block of ``grid`` (a :class:`blockseg.grid.BlockGrid`): progress in voxels."""
    import math

    return [math.prod(grid[int(b)].shape) for b in block_ids]


def _named_task(func: Callable[[int], Any], name: str, block_id: int) -> Any:
    """``func(block_id)`` on a worker; an exception leaves with the task and the worker named."""
    try:
        return func(block_id)
    except Exception as exc:
        try:
            from distributed import get_worker

            worker = get_worker().address
        except Exception:  # not on a worker (in-process run)
            worker = None
        _annotate(exc, f"{name} block {block_id}", worker)
        raise


def _annotate(exc: BaseException, task: str, worker: str | None) -> None:
    """Attach ``blockseg_task`` / ``blockseg_worker`` (kept by pickling: they live in ``__dict__``)."""
    try:
        if getattr(exc, "blockseg_task", None) is None:
            exc.blockseg_task = task
        if worker is not None and getattr(exc, "blockseg_worker", None) is None:
            exc.blockseg_worker = worker
    except AttributeError:  # exceptions without a __dict__
        pass


def task_failure(exc: BaseException) -> str | None:
    """One line for an exception raised by a block task (None for other exceptions).

    Names the task and the worker: ``predict block 3 on worker tcp://10.0.0.5:4567: No space
    left on device: /data/pred.zarr/...``. A worker that died (``KilledWorker``) is named by dask's
    own message.
    """
    task = getattr(exc, "blockseg_task", None)
    if task is None:
        return None
    worker = getattr(exc, "blockseg_worker", None)
    where = f"{task} on worker {worker}" if worker else task
    from .access import explain

    if explain(exc) is not None:  # object storage refused the worker, damaged metadata
        what = explain(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        what = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, BlocksegError):
        what = str(exc)
    else:
        lines = str(exc).strip().splitlines()
        what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return f"{where} failed: {what}"


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
    "task_failure",
    "block_voxels",
]
