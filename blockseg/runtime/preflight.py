"""Cluster preflight: check a Dask cluster before blockseg submits its first task.

A cluster blockseg did not start can fail in ways dask itself only logs on the worker (a
worker that cannot import blockseg dies on its first task and the driver waits forever). So
before any output is created, the driver checks, each failure one line naming the culprit:

1. the address is a dask scheduler (:func:`check_address`: a web address, a closed port or a
   server that does not speak dask's protocol are refused within seconds);
2. at least one worker has joined (:func:`wait_for_workers`, with a timeout);
3. the scheduler and every worker import blockseg at the driver's version, see every input
   path, can write where the outputs go, and have a CUDA device when GPU tasks are asked for
   (:func:`check_workers`).

The probe that runs on the workers is shipped by value (it never imports blockseg to be
unpickled), so it reports a missing blockseg instead of dying of it.
"""

from __future__ import annotations

import os
import socket
import types
from dataclasses import dataclass, field
from typing import Iterable, Sequence
from urllib.parse import urlsplit

from .._version import __version__
from ..errors import BlocksegError
from ..io.storage import has_scheme

#: schemes a dask scheduler address may have
DASK_SCHEMES = ("tcp", "tls", "inproc", "ws", "wss", "ucx")


def absolute_path(path: str | os.PathLike | None) -> str | None:
    """``path`` made absolute against this process's folder; URLs and None pass through.

    Workers run in their own folder: a relative path must not reach them. A ``#level=..``
    selection fragment is kept.
    """
    if path is None:
        return None
    path = os.fspath(path)
    if has_scheme(path):
        return path
    bare, sep, fragment = path.partition("#")
    return os.path.abspath(os.path.expanduser(bare)) + sep + fragment


def _local(path: str) -> str | None:
    """The file-system part of a local path (no fragment), None for a URL."""
    return None if has_scheme(path) else str(path).partition("#")[0]


def check_address(address: str, timeout: float = 5.0) -> str:
    """Refuse, in at most ``timeout`` seconds, an address that cannot be a dask scheduler.

    Returns the address with an explicit scheme (``host:8786`` -> ``tcp://host:8786``).

    Raises
    ------
    BlocksegError
        For a web address (``http://``: a dashboard, not a scheduler), an unknown scheme, a
        missing port, or a host/port nobody listens on.
    """
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        raise BlocksegError(
            f"{address} is a web address (a dashboard?), not a dask scheduler; scheduler addresses look like "
            "tcp://HOST:8786 (the scheduler prints it as 'Scheduler at:')"
        )
    if scheme not in DASK_SCHEMES:
        raise BlocksegError(f"{address}: unknown scheme {scheme!r}; a dask scheduler address looks like tcp://HOST:8786")
    full = f"{scheme}://{rest}"
    if scheme not in ("tcp", "tls"):
        return full
    parts = urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise BlocksegError(f"{address}: expected a scheduler address with a port, such as tcp://HOST:8786")
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=timeout)
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise BlocksegError(f"cannot reach the dask scheduler at {address}: {why}") from None
    if scheme == "tcp":
        with sock:
            _expect_dask_greeting(sock, address, timeout)
    else:
        sock.close()
    return full


def _expect_dask_greeting(sock: socket.socket, address: str, timeout: float) -> None:
    """A dask server speaks first: a frame header (a small little-endian uint64 length) arrives
    right after the connection. Silence, a closed connection or other bytes (a web server's or
    an SSH banner) mean another service listens there."""
    sock.settimeout(timeout)
    head = b""
    try:
        while len(head) < 8:
            part = sock.recv(8 - len(head))
            if not part:
                break
            head += part
    except OSError:
        pass
    length = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < length < 1 << 24:
        why = "it said nothing" if not head else "it answered in another protocol"
        raise BlocksegError(
            f"{address} is not a dask scheduler ({why} within {timeout:g} s); a scheduler address looks like "
            "tcp://HOST:8786, as 'dask scheduler' prints it"
        )


def connect(address: str, timeout: float = 10.0):
    """A :class:`distributed.Client` of the scheduler at ``address``, or one line saying why not.

    A server that accepts the connection but does not answer dask's handshake (any other TCP
    service) is refused after ``timeout`` seconds.
    """
    from distributed import Client

    full = check_address(address, timeout=min(timeout, 5.0))
    try:
        return Client(full, timeout=f"{timeout}s")
    except Exception as exc:  # OSError, TimeoutError, CommClosedError, protocol errors, ...
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BlocksegError(
            f"{address} did not answer as a dask scheduler within {timeout:g} s ({why}); is it the scheduler's "
            "address (tcp://HOST:8786), not another service?"
        ) from None


def wait_for_workers(client, n: int = 1, timeout: float = 60.0, address: str | None = None) -> int:
    """Wait until ``n`` workers have joined; return how many there are.

    Raises
    ------
    BlocksegError
        When fewer than ``n`` joined within ``timeout`` seconds.
    """
    try:
        client.wait_for_workers(n, timeout=timeout)
    except (TimeoutError, OSError):
        have = len(client.scheduler_info().get("workers", {}))
        where = address or client.scheduler.address
        raise BlocksegError(
            f"{have} dask worker(s) joined the scheduler at {where} within {timeout:g} s, {n} needed; start workers "
            f"with 'dask worker {where}' (or raise --worker-timeout)"
        ) from None
    return len(client.scheduler_info().get("workers", {}))


# ------------------------------------------------------------------------------ the probe
def _probe(version: str, inputs: list, outputs: list, gpu: bool) -> dict:  # pragma: no cover - runs remotely
    """What a worker (or the scheduler) sees. Runs where blockseg may be missing: stdlib only."""
    # imports stay here: the probe is shipped by value (_by_value) and runs without this module
    import importlib
    import os
    import socket
    import sys

    out = {"host": socket.gethostname(), "python": sys.version.split()[0], "cwd": os.getcwd()}
    try:
        # the package as the worker has it, looked up by name: what is probed, not a dependency
        blockseg = importlib.import_module("blockseg")
        out["blockseg"] = getattr(blockseg, "__version__", "unknown")
        out["blockseg_file"] = getattr(blockseg, "__file__", None)
    except Exception as exc:  # ImportError, or any error while importing it
        out["blockseg"] = None
        out["import_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    out["missing"] = [p for p in inputs if not os.path.exists(p)]
    out["unwritable"] = [p for p in outputs if not (os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK))]
    if gpu:
        try:
            import torch

            out["cuda"] = bool(torch.cuda.is_available())
        except Exception:
            out["cuda"] = False
    return out


def _by_value(func):
    """A copy of ``func`` whose module cannot be imported, so cloudpickle ships its code."""
    glob = {"__builtins__": __builtins__, "__name__": "_blockseg_preflight_probe"}
    copy = types.FunctionType(func.__code__, glob, func.__name__, func.__defaults__, func.__closure__)
    copy.__module__ = "_blockseg_preflight_probe"
    return copy


def _existing_parent(path: str) -> str:
    """The nearest folder at or above ``path`` that exists here (where an output will go)."""
    cur = os.path.abspath(path)
    while not os.path.isdir(cur):
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    return cur


@dataclass
class WorkerCheck:
    """What :func:`check_workers` found: the probe's answer per worker address."""

    workers: dict = field(default_factory=dict)
    scheduler: dict | None = None

    @property
    def n_workers(self) -> int:
        return len(self.workers)


def _who(addr: str, info: dict) -> str:
    name = info.get("name")
    host = info.get("host")
    label = f"worker {addr}"
    if name is not None and str(name) != addr:
        label += f" (name {name})"
    if host:
        label += f" on {host}"
    return label


def check_workers(
    client,
    inputs: Iterable[str] = (),
    outputs: Iterable[str] = (),
    gpu: bool = False,
    version: str | None = None,
) -> WorkerCheck:
    """Run the probe on the scheduler and on every worker; raise one line for the first problem.

    Parameters
    ----------
    client : distributed.Client
    inputs : iterable of str
        Paths the tasks read (absolute; URLs are not checked here).
    outputs : iterable of str
        Paths the tasks write: the nearest existing folder above each must be writable there.
    gpu : bool
        Tasks ask for the ``GPU`` resource: some worker must offer it, and see a CUDA device.
    version : str, optional
        blockseg version the workers must run (default: this process's).

    Raises
    ------
    BlocksegError
        Naming the worker and what it lacks.
    """
    if version is None:
        version = __version__
    ins = sorted({p for p in (_local(absolute_path(q)) for q in inputs if q) if p})
    outs = sorted({_existing_parent(p) for p in (_local(absolute_path(q)) for q in outputs if q) if p})
    infos = client.scheduler_info().get("workers", {})
    gpu_workers = [a for a, w in infos.items() if (w.get("resources") or {}).get("GPU", 0) > 0]
    if gpu and not gpu_workers:
        raise BlocksegError(
            "GPU tasks were asked for but no worker offers the GPU resource; start GPU workers with "
            "'dask worker ADDRESS --resources GPU=1' (one per GPU), or leave out --gpu"
        )
    probe = _by_value(_probe)
    result = WorkerCheck()
    try:
        result.scheduler = client.run_on_scheduler(probe, version, [], [], False)
    except Exception as exc:
        raise BlocksegError(f"the dask scheduler cannot run blockseg's preflight check: {_one_line(exc)}") from None
    if result.scheduler.get("blockseg") is None:
        raise BlocksegError(
            f"the dask scheduler at {client.scheduler.address} cannot import blockseg "
            f"({result.scheduler.get('import_error')}); install blockseg {version} in its environment"
        )
    answers = client.run(probe, version, ins, outs, False, on_error="return")
    if gpu:
        for addr, ans in client.run(probe, version, [], [], True, workers=gpu_workers, on_error="return").items():
            if isinstance(ans, dict) and isinstance(answers.get(addr), dict):
                answers[addr]["cuda"] = ans.get("cuda")
    problems = []
    for addr in sorted(answers):
        ans = answers[addr]
        who = _who(addr, {**infos.get(addr, {}), **({"host": ans.get("host")} if isinstance(ans, dict) else {})})
        problem = _worker_problem(who, ans, version, gpu and addr in gpu_workers)
        if problem:
            problems.append(problem)
        else:
            result.workers[addr] = ans
    if problems:
        more = f" (and {len(problems) - 1} more worker problem(s))" if len(problems) > 1 else ""
        raise BlocksegError(problems[0] + more)
    if not result.workers:
        raise BlocksegError(f"no dask worker answered the preflight check at {client.scheduler.address}")
    return result


def _worker_problem(who: str, ans, version: str, needs_cuda: bool) -> str | None:
    """What one worker's preflight answer lacks, in one line (None: nothing)."""
    if not isinstance(ans, dict):
        return f"{who} failed the preflight check: {_one_line(ans)}"
    if ans.get("blockseg") is None:
        return f"{who} cannot import blockseg ({ans.get('import_error')}); install blockseg {version} in the workers' environment"
    if ans["blockseg"] != version:
        return f"{who} runs blockseg {ans['blockseg']} but this driver runs {version}; install the same version everywhere"
    if ans.get("missing"):
        more = f" (and {len(ans['missing']) - 1} more path(s))" if len(ans["missing"]) > 1 else ""
        return (f"{who} cannot see {ans['missing'][0]}{more}; workers need the same file system as this driver "
                "(or give URLs such as s3://...)")  # fmt: skip
    if ans.get("unwritable"):
        return f"{who} cannot write to {ans['unwritable'][0]}, where the output goes"
    if needs_cuda and not ans.get("cuda"):
        return f"{who} offers the GPU resource but sees no CUDA device"
    return None


def _one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def preflight(
    client,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
    gpu: bool = False,
    n_workers: int = 1,
    timeout: float = 60.0,
) -> WorkerCheck:
    """Every check before the first task: workers joined, then :func:`check_workers`."""
    wait_for_workers(client, n_workers, timeout)
    return check_workers(client, inputs, outputs, gpu)


__all__: Sequence[str] = [
    "absolute_path",
    "check_address",
    "check_workers",
    "connect",
    "preflight",
    "wait_for_workers",
    "WorkerCheck",
]
