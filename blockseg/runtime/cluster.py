"""Dask runtime: an embedded LocalCluster by default, or any existing scheduler.

Every stage runs its blocks as plain dask tasks through :func:`run_blocks`: one task per block
id, the function and its (small) parameters shipped once, arrays read and written by the task
itself from zarr. GPU tasks ask for the ``GPU`` worker resource, so they land only on workers
started with ``--resources GPU=1`` (``LocalCUDACluster`` / dask-jobqueue setups) or, locally,
on the one-worker-per-GPU cluster :func:`dask_client` builds when GPUs are present.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from functools import partial
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import psutil

from ..errors import BlocksegError
from ..io.access import explain
from ..io.safety import chunk_errors
from .costs import format_bytes, settle, task_cost
from .preflight import connect, preflight
from .progress import block_progress

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


#: memory a dask worker holds before its first block (measured on Linux with torch 2.13 CPU: ~75 MiB
#: once numpy, zarr and blockseg are imported, ~310 MiB once torch is, as predict's workers do)
WORKER_BASE_BYTES = 80 * 2**20
TORCH_WORKER_BYTES = 320 * 2**20
#: restarts of dask workers for exceeding their memory limit tolerated in one stage: one more ends it
MAX_MEMORY_RESTARTS = 2
#: seconds every worker may stay paused (over dask's pause fraction of its memory limit) before the
#: stage ends: a paused worker takes no new task, so the run would wait forever
PAUSED_SECONDS = 60.0


def parse_memory_limit(value, option: str = "--memory-limit") -> str | int:
    """``"auto"``, or bytes per worker (0: no limit) from ``4GiB``, ``500MB``, ``2e9``, an int, ``none``.

    Raises
    ------
    BlocksegError
        One line for text that is no size (``lots``) or a size below one byte.
    """
    if value is None:
        return "auto"
    given = value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        if text.lower() in ("none", "0", "unlimited"):
            return 0
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(text.replace(" ", ""))
        except (ValueError, TypeError, KeyError):
            raise BlocksegError(
                f"{option} {value!r} is not a size; give bytes with a unit such as 4GiB, 500MB or 2e9 (or auto, or none: "
                "no limit)"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 1:
        raise BlocksegError(f"{option} must be a size of at least 1 byte such as 4GiB (or auto, or none), got {given!r}")
    return int(value)


def memory_fraction() -> float:
    """Fraction of its memory limit a dask worker may use before it is paused (no new tasks), or
    else terminated (dask's ``distributed.worker.memory.pause`` / ``terminate``)."""
    import dask
    import distributed  # noqa: F401  (loads distributed's defaults into dask's config)

    for key in ("distributed.worker.memory.pause", "distributed.worker.memory.terminate"):
        value = dask.config.get(key, None)
        if value:
            return float(value)
    return 1.0


def worker_memory_limit(client) -> int | None:
    """The smallest memory limit among ``client``'s workers (None: no worker has one)."""
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info().get("workers", {}).values()]
    limits = [int(v) for v in limits if v]
    return min(limits) if limits else None


def check_task_memory(estimate: int, limit: int | None, task: str, base: int = WORKER_BASE_BYTES, detail: str = "") -> None:
    """Refuse, before submission, a task whose estimated peak cannot fit a worker's memory limit.

    A worker over dask's pause fraction of its limit (:func:`memory_fraction`) takes no new task
    and over the terminate fraction is restarted: a task that needs more would loop forever.

    Parameters
    ----------
    estimate : int
        Peak bytes of the task's own data.
    limit : int or None
        Bytes per worker (None or 0: no limit, nothing to check).
    task : str
        Names the task in the message (``"predict block 0 (core 64x256x256)"``).
    base : int
        Bytes a worker holds before the task (:data:`WORKER_BASE_BYTES`, :data:`TORCH_WORKER_BYTES`).
    detail : str
        What the estimate is made of, put in parentheses.

    Raises
    ------
    BlocksegError
        Naming the task, the estimate, the limit and what to change.
    """
    if not limit:
        return
    fraction = memory_fraction()
    need = estimate + base
    if need <= fraction * limit:
        return
    enough = -(-need / fraction // 2**20) * 2**20
    raise BlocksegError(
        f"{task} needs about {format_bytes(estimate)} (estimate{': ' + detail if detail else ''}) on top of the "
        f"~{format_bytes(base)} a worker holds at rest, more than {fraction:.0%} of the {format_bytes(limit)} "
        f"memory limit per worker (dask pauses or restarts a worker beyond it, and the run would never end); raise "
        f"--memory-limit to at least {format_bytes(enough)} (fewer --workers leave each more of this machine's "
        "memory) or use a smaller block shape (--block-shape)"
    )


def local_memory_limit(memory_limit, n_workers: int, base: int = WORKER_BASE_BYTES,
                       option: str = "--memory-limit") -> int:  # fmt: skip
    """Bytes per local worker (0: no limit) for ``memory_limit`` (:func:`parse_memory_limit`) shared
    by ``n_workers``; refuse, before any worker starts, a limit that a worker exceeds at rest (it
    would be restarted over and over)."""
    limit = parse_memory_limit(memory_limit, option)
    if limit == "auto":
        return default_memory_limit(n_workers)
    fraction = memory_fraction()
    if limit and base > fraction * limit:
        enough = -(-base / fraction // 2**20) * 2**20
        raise BlocksegError(
            f"a memory limit of {format_bytes(limit)} per worker (--memory-limit; cluster.memory_limit in a config) is "
            f"less than a dask worker running blockseg holds at rest "
            f"(~{format_bytes(base)}; dask pauses or restarts a worker beyond {fraction:.0%} of its limit, and the run "
            f"would never end); give at least {format_bytes(enough)}, more for the blocks themselves (or leave it out: "
            "90% of this machine's memory shared among the workers)"
        )
    return limit


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

    The cluster passes :func:`blockseg.runtime.preflight.preflight` before the client is handed out:
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

    import dask

    n_workers, resources, memory_limit = _local_workers(config)
    environ = _local_environ(config.quiet_logs)
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


def _local_workers(config: ClusterConfig) -> tuple[int, dict | None, int | str | None]:
    """``(workers, resources, memory limit per worker)`` of a LocalCluster for ``config``: one
    worker per GPU (with the GPU resource) or per core unless given; the limit checked."""
    resources = None
    n_workers = config.n_workers
    if config.gpu:
        n_gpus = count_gpus()
        if n_gpus == 0:
            raise BlocksegError("gpu=True but no CUDA device is visible")
        n_workers = n_workers or n_gpus
        resources = {"GPU": 1}
    n_workers = n_workers or max(1, os.cpu_count() or 1)
    # a size that does not parse, or one a worker exceeds at rest, ends here in one line
    # (a value from the command line was checked as --memory-limit already: this one is a config's)
    memory_limit = local_memory_limit(config.memory_limit, n_workers, option="cluster.memory_limit") or None
    return n_workers, resources, memory_limit


def _local_environ(quiet_logs: bool) -> dict:
    """The environment the LocalCluster's worker processes start with (quiet logs muted)."""
    environ = worker_environ()
    if quiet_logs:
        environ["DASK_LOGGING__DISTRIBUTED"] = "critical"
        # the nannies live in this process: a worker restarted for memory is reported by
        # run_blocks (MemoryWatch) in one line, not by a warning per restart
        nanny_log = logging.getLogger("distributed.nanny")
        _MUTED.setdefault("distributed.nanny", nanny_log.level)
        nanny_log.setLevel(logging.CRITICAL)
    return environ


_MUTED: dict = {}


@contextlib.contextmanager
def _silent_shutdown(quiet: bool):
    """Mute dask's loggers in this process while the cluster closes (after the work, an error or
    Ctrl-C): cancelled tasks and slow workers killed on close are not news to the user."""
    try:
        yield
    finally:
        if quiet:
            for name in ("distributed", "tornado"):
                log = logging.getLogger(name)
                _MUTED.setdefault(name, log.level)
                log.setLevel(logging.CRITICAL + 1)


def _restore_logs() -> None:
    for name, level in list(_MUTED.items()):
        logging.getLogger(name).setLevel(level)
        del _MUTED[name]


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Worker processes started inside ignore SIGINT: Ctrl-C in a terminal reaches the whole
    process group, and the driver alone should handle it (cancel, close the cluster, one line)."""
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
    settings; see docs/guide/predict.md (*Clusters*) to apply the same there.
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
        Report progress (in the mode :func:`blockseg.runtime.progress.progress_settings` chose).
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
    ids = [int(b) for b in block_ids]
    settle([task_cost(len(ids), name)])  # millions of tasks: refused before submission
    if voxels is not None and len(voxels) != len(ids):
        raise ValueError(f"voxels has {len(voxels)} entries for {len(ids)} blocks")
    position = {b: i for i, b in enumerate(ids)}
    bar = block_progress(name, len(ids), voxels, mode=None if progress else "none")
    results: dict[int, Any] = {}
    with bar as advance:

        def done(b: int, value) -> None:
            results[b] = value
            advance(position[b])

        if client is None:
            _run_here(func, name, ids, retries, retried, done)
        else:
            _run_on(client, func, name, ids, resources, retries, retried, done)
    return [results[b] for b in ids]


def _run_here(func, name: str, ids: list[int], retries: int, retried: list[int] | None, done) -> None:
    """:func:`run_blocks` in this process, one block after the other, retried as dask would."""
    for b in ids:
        for attempt in range(retries + 1):  # as dask would: a failed task runs again
            try:
                value = _named_task(func, name, b)
                break
            except (BlocksegError, MemoryError):
                raise  # the input or the settings are wrong: running again cannot help
            except Exception:
                if attempt == retries:
                    raise
                if retried is not None:
                    retried.append(b)
        done(b, value)


def _run_on(client, func, name: str, ids: list[int], resources, retries: int, retried: list[int] | None, done) -> None:
    """:func:`run_blocks` on a dask cluster: results as they complete, the first failure cancels the rest."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]  # keys unique per call: a rerun never meets stale tasks
    futures = client.map(
        partial(_named_task, func, name), ids, key=[f"{name}-{token}-{b}" for b in ids],
        resources=resources, retries=retries, pure=False,
    )  # fmt: skip
    index = {f.key: b for f, b in zip(futures, ids)}
    # workers restarted for memory over and over, or paused for good, end the stage
    watch = MemoryWatch(client, futures, index, name)
    try:
        with watch:
            for fut in as_completed(futures):
                try:
                    value = fut.result()
                except Exception as exc:
                    _annotate(exc, f"{name} block {index[fut.key]}", None)
                    raise
                done(index[fut.key], value)
    except BaseException as exc:
        client.cancel(futures)
        if not isinstance(exc, KeyboardInterrupt):
            watch.raise_for_memory(exc)  # a task lost to memory restarts: one line saying so
        raise
    if retried is not None:
        retried.extend(sorted(index[k] for k in _rerun_keys(client, list(index))))


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


class MemoryWatch:
    """Ends a stage whose dask workers cannot hold its tasks, instead of waiting forever.

    A worker over the terminate fraction of its memory limit is restarted by its nanny, and the
    task it ran goes to the next worker, where the same happens; a worker over the pause fraction
    takes no new task. A thread polls the scheduler every ``interval`` seconds (its log of memory
    restarts; the workers' states every fifth time) and, after more than ``restarts`` memory
    restarts since the stage began, or with every worker paused for ``paused_seconds``, cancels
    the stage's tasks; :meth:`raise_for_memory` then
    raises one line naming the block, the memory it held and the limit.
    """

    def __init__(self, client, futures, index: dict, name: str, restarts: int | None = None,
                 paused_seconds: float | None = None, interval: float = 1.0):  # fmt: skip
        self.client, self.futures, self.index, self.name = client, futures, index, name
        self.restarts = MAX_MEMORY_RESTARTS if restarts is None else restarts
        self.paused_seconds = PAUSED_SECONDS if paused_seconds is None else paused_seconds
        self.interval = interval
        self.error: BlocksegError | None = None
        self.limit = None
        self._t0 = float("-inf")  # scheduler time of the last restart event before the stage
        self._paused_since: float | None = None
        self._ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blockseg-memory-watch", daemon=True)

    def __enter__(self) -> "MemoryWatch":
        try:
            self.limit = worker_memory_limit(self.client)
            self._t0 = max((t for t, _ in self.client.get_events("worker-restart-memory")), default=self._t0)
        except Exception:  # the scheduler will say what is wrong through the tasks
            self.limit = None
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # scheduler gone or closing: the main loop sees it
                return
            if self.error is not None:
                self.client.cancel(self.futures)
                return

    def _restart_events(self) -> list[dict]:
        return [m for t, m in self.client.get_events("worker-restart-memory") if t > self._t0]

    def check(self) -> None:
        """Set :attr:`error` when the workers were restarted for memory too often or stay paused."""
        events = self._restart_events()
        if len(events) > self.restarts:
            self.error = self._restarted(events)
            return
        self._ticks += 1
        if self._ticks % 5:  # the workers' states (a larger answer) every 5th poll
            return
        workers = self.client.scheduler_info().get("workers", {})
        if workers and all(w.get("status") == "paused" for w in workers.values()):
            self._paused_since = self._paused_since or time.time()
            if time.time() - self._paused_since >= self.paused_seconds:
                held = max((w.get("metrics", {}).get("memory", 0) for w in workers.values()), default=0)
                limit = f" of its {format_bytes(self.limit)} memory limit" if self.limit else ""
                self.error = BlocksegError(
                    f"{self.name}: every dask worker stayed paused for {self.paused_seconds:.0f} s, holding "
                    f"{format_bytes(held)}{limit} (dask pauses a worker beyond "
                    f"{memory_fraction():.0%}, and a paused worker takes no new block); raise --memory-limit (fewer "
                    "--workers leave each more of this machine's memory) or use a smaller block shape (--block-shape)"
                )
        else:
            self._paused_since = None

    def _blocks_on(self, address: str) -> list[int]:
        """Blocks of this stage the worker at ``address`` was running when it was removed."""
        blocks: set[int] = set()
        for _, msg in self.client.get_events(address):
            if isinstance(msg, dict) and msg.get("action") == "remove-worker":
                blocks.update(self.index[k] for k in msg.get("processing-tasks", ()) if k in self.index)
        return sorted(blocks)

    def _restarted(self, events: list[dict]) -> BlocksegError:
        blocks: list[int] = []
        for msg in events:
            blocks += [b for b in self._blocks_on(msg.get("worker", "")) if b not in blocks]
        if blocks:
            what = f"{self.name} block {blocks[0]}" + (f" (and {len(blocks) - 1} more)" if len(blocks) > 1 else "")
            when = ""
        else:  # restarted while running none of this stage's blocks: at rest, or on another task
            what, when = self.name, " while running none of its blocks"
        rss = max(int(m.get("rss", 0)) for m in events)
        limit = f" of its {format_bytes(self.limit)} limit" if self.limit else ""
        return BlocksegError(
            f"{what}: dask workers were restarted {len(events)} times for exceeding their memory limit{when} (a "
            f"worker held {format_bytes(rss)}{limit}); raise --memory-limit (fewer --workers leave each more of this "
            "machine's memory) or use a smaller block shape (--block-shape)"
        )

    def raise_for_memory(self, exc: BaseException | None = None) -> None:
        """Raise the memory error if there is one: the watch's, or a task dask gave up on
        (``KilledWorker``) after workers were restarted for memory."""
        if self.error is None:
            try:
                events = self._restart_events()
                if events and (len(events) > self.restarts or type(exc).__name__ == "KilledWorker"):
                    self.error = self._restarted(events)
            except Exception:  # the scheduler is gone: keep the original error
                return
        if self.error is not None:
            raise self.error from None


def block_voxels(grid, block_ids: Iterable[int]) -> list[int]:
    """Voxels of each block of ``grid`` (a :class:`blockseg.grid.BlockGrid`): progress in voxels."""
    return [math.prod(grid[int(b)].shape) for b in block_ids]


def run_task(task, block_ids: Iterable[int] | None = None, client=None, progress: bool = True,
             retried: list[int] | None = None) -> list[Any]:  # fmt: skip
    """Run a :class:`blockseg.grid.BlockTask`: ``task.process`` for each block of ``block_ids``
    (default: :meth:`~blockseg.grid.BlockTask.todo`, the selected blocks not done yet) through
    :func:`run_blocks`, with the task's name and resources and progress in voxels.

    Examples
    --------
    >>> from blockseg.grid import BlockGrid, BlockTask
    >>> task = BlockTask("double", BlockGrid((10, 10, 10), 5), process=abs, check=lambda b: b < 6)
    >>> run_task(task, progress=False)
    [6, 7]
    """
    ids = task.todo() if block_ids is None else [int(b) for b in block_ids]
    return run_blocks(task.process, ids, client, name=task.name, resources=task.resources, progress=progress,
                      voxels=block_voxels(task.grid, ids), retried=retried)  # fmt: skip


def _named_task(func: Callable[[int], Any], name: str, block_id: int) -> Any:
    """``func(block_id)`` on a worker; an exception leaves with the task and the worker named, a
    chunk zarr cannot decode with the array and key named (:func:`blockseg.io.safety.chunk_errors`)."""
    try:
        with chunk_errors():
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
    memory_limit = parse_memory_limit(memory_limit)  # one line for a size that does not parse
    return ClusterConfig(scheduler=scheduler, n_workers=workers, memory_limit=memory_limit, gpu=gpu)


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
    "parse_memory_limit",
    "check_task_memory",
    "local_memory_limit",
    "worker_memory_limit",
    "MemoryWatch",
]
