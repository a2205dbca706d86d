"""The ``blockseg`` command. Thin: parses options, calls the library, reports errors.

Each subcommand lives in its own module of this package with two functions:
``register(subparsers)`` adds its parser (every option with a help text) and sets
``func=run``; ``run(args) -> int`` does the work through :mod:`blockseg`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from blockseg import BlocksegError, __version__

#: subcommand modules, in the order ``blockseg --help`` lists them
COMMANDS = ["demo", "run", "synth", "import_cmd", "info", "train", "predict", "tune", "segment", "evaluate", "export", "export_model",
            "cluster_cmd"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockseg",
        description="Blockwise, seamless 3D nuclei segmentation of large zarr volumes on Dask. "
        "Axes are (z, y, x) everywhere; voxel sizes are in micrometres.",
    )
    parser.add_argument("--version", action="version", version=f"blockseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"blockseg_cli.{name}").register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--missing-chunks",
            choices=("auto", "error", "fill"),
            help="chunks missing from a zarr input: auto (default) refuses them in images and reads them "
            "as the fill value in label images (zarr omits empty chunks), error refuses them, fill reads "
            "them as the fill value; both readings are reported",
        )
    return parser


def _one_line_warnings() -> None:
    """blockseg's own warnings (e.g. a voxel size taken as 1 µm) as one line on stderr."""
    import warnings

    from blockseg.errors import BlocksegWarning

    plain = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if issubclass(category, BlocksegWarning):
            return f"blockseg: warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def _fail(args: argparse.Namespace, line: str, code: int) -> int:
    """One line on stderr (and the traceback first with --debug); the same exit code either way."""
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exc()
    print(f"blockseg {args.command}: {line}", file=sys.stderr, flush=True)
    return code


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or pre-emption, ``kill``), SIGHUP (the terminal went
    away) or SIGUSR1 (a scheduler's warning before a limit), raised in the main thread: handled
    exactly as Ctrl-C is (tasks cancelled, half-written replacements dropped, a new output left
    to resume)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    import signal

    signal.signal(signum, signal.SIG_IGN)  # a second one while cleaning up changes nothing
    raise Terminated(signum)


@contextlib.contextmanager
def _terminate_like_interrupt():
    """SIGTERM, SIGHUP and SIGUSR1 end the command as SIGINT does, for the duration (main thread only);
    SIGINT raises KeyboardInterrupt."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGHUP", "SIGUSR1")  # SIGUSR1: the pre-emption warning schedulers are often asked for
    wanted = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.signal(s, _raise_terminated) for s in wanted}
    # SIGINT: Python's own KeyboardInterrupt, whatever an imported library installed process-wide
    # (dask_jobqueue's runner module, for one, makes it a bare sys.exit())
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    from blockseg.io.access import explain
    from blockseg.runtime.cluster import task_failure

    _one_line_warnings()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # an unknown option of a subcommand: that subcommand's usage, not the top level's
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        from blockseg.io.chunks import set_policy
        from blockseg.io.safety import chunk_errors

        set_policy(getattr(args, "missing_chunks", None))
        with _terminate_like_interrupt(), chunk_errors():  # a corrupt chunk: one line naming it
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP, SIGUSR1: one line, exit 128 + the signal
        import signal

        signum = getattr(exc, "signum", signal.SIGINT)
        hint = " (rerun the same command to resume)" if getattr(args, "resumable", False) else ""
        return _fail(args, f"interrupted by {signal.Signals(signum).name}; running tasks cancelled{hint}", 128 + int(signum))
    except BlocksegError as exc:
        line = task_failure(exc) or str(exc)
        return _fail(args, f"error: {line}", 2)
    except OSError as exc:  # disk full, permission denied, ... while reading or writing
        line = task_failure(exc) or explain(exc)
        if line is None:
            where = f": {exc.filename}" if getattr(exc, "filename", None) else _writing(exc)
            line = f"{exc.strerror or exc}{where}"
        return _fail(args, f"error: {line}", 2)
    except Exception as exc:
        why = explain(exc)  # object storage refused (here or on a worker), a metadata file that does not parse
        line = task_failure(exc) or _killed_worker(exc) or why
        if line is None:  # a bug: keep the traceback
            raise
        return _fail(args, f"error: {line}", 2 if why is not None else 1)
    finally:
        from blockseg.io.safety import release_all_locks

        release_all_locks()  # the outputs this command claimed (blockseg.io.safety.acquire_lock)


def _writing(exc: OSError) -> str:
    """For a write error that names no file (a full disk, a quota, a read-only mount): the
    outputs the command was writing, which it still holds (blockseg.io.safety.acquire_lock)."""
    import errno

    from blockseg.io.safety import held_locks

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return ""
    outputs = held_locks()
    return f" (while writing {', '.join(outputs)})" if outputs else ""


def _killed_worker(exc: Exception) -> str | None:
    """One line for dask's KilledWorker (a worker died running a task), else None."""
    if type(exc).__name__ != "KilledWorker":
        return None
    text = " ".join(str(exc).split())
    return f"a dask worker died running a task: {text}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
