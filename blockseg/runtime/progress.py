"""Progress of block stages, in blocks and voxels, with rate and ETA.

Every stage that runs blocks (:func:`blockseg.runtime.cluster.run_blocks`) reports through
:func:`block_progress`. How it is shown is chosen once per command (:func:`progress_settings`):

``auto``   a bar on a terminal; otherwise (a log file, a SLURM job, a notebook) a line every
           :data:`AUTO_LINES_INTERVAL` seconds while a stage runs, with rate and ETA, and a
           closing line for stages that printed one (the default);
``bar``    a bar: blocks done / total, voxels done / total, voxels per second, ETA;
``lines``  one plain line on stderr every few seconds and at the end (logs, batch jobs);
``json``   one JSON object a line on stderr (scripts): ``{"event": "progress", "stage": ...,
           "blocks_done", "blocks_total", "voxels_done", "voxels_total", "voxels_per_s",
           "elapsed_s", "eta_s"}``, ``"event": "done"`` at the end;
``none``   nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import threading
import time
from typing import Callable, Iterator, Sequence

PROGRESS_MODES = ("auto", "bar", "lines", "json", "none")

_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("blockseg_progress_mode", default="auto")
#: seconds between two ``lines`` / ``json`` updates
INTERVAL = {"lines": 5.0, "json": 1.0}
#: seconds between two lines of ``auto`` progress outside a terminal (a log stays readable)
AUTO_LINES_INTERVAL = 30.0


@contextlib.contextmanager
def progress_settings(mode: str) -> Iterator[None]:
    """Show progress in ``mode`` (one of :data:`PROGRESS_MODES`) inside the block."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode() -> str:
    """The mode in force: ``auto`` resolved to ``bar`` on a terminal, else ``lines``."""
    mode = _MODE.get()
    if mode == "auto":
        return "bar" if _is_terminal() else "lines"
    return mode


def _is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def human_voxels(n: float) -> str:
    """``1234567`` -> ``1.23 M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Counter:
    """Blocks and voxels done, rate and ETA of one stage."""

    def __init__(self, name: str, voxels: Sequence[int] | None, n_blocks: int):
        self.name = name
        self.blocks_total = n_blocks
        self.voxels_total = int(sum(voxels)) if voxels is not None else None
        self.blocks_done = 0
        self.voxels_done = 0
        self.t0 = time.perf_counter()

    def advance(self, voxels: int) -> None:
        self.blocks_done += 1
        self.voxels_done += int(voxels)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float | None:
        """Voxels (or, without voxel counts, blocks) per second."""
        done = self.voxels_done if self.voxels_total is not None else self.blocks_done
        return done / self.elapsed if done and self.elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        if not self.rate:
            return None
        left = (self.voxels_total - self.voxels_done) if self.voxels_total is not None else (self.blocks_total - self.blocks_done)
        return left / self.rate

    def line(self) -> str:
        text = f"{self.name}: {self.blocks_done}/{self.blocks_total} blocks"
        if self.voxels_total is not None:
            text += f", {human_voxels(self.voxels_done)}/{human_voxels(self.voxels_total)} voxels"
            if self.rate:
                text += f", {human_voxels(self.rate)} voxels/s"
        elif self.rate:
            text += f", {self.rate:.2f} blocks/s"
        done = self.blocks_done == self.blocks_total
        return text + (f", {human_seconds(self.elapsed)} elapsed" if done else f", ETA {human_seconds(self.eta)}")

    def record(self, event: str) -> dict:
        rate = self.rate
        return {
            "event": event, "stage": self.name, "blocks_done": self.blocks_done, "blocks_total": self.blocks_total,
            "voxels_done": self.voxels_done if self.voxels_total is not None else None, "voxels_total": self.voxels_total,
            "voxels_per_s": round(rate, 1) if rate and self.voxels_total is not None else None,
            "elapsed_s": round(self.elapsed, 2), "eta_s": None if self.eta is None else round(self.eta, 1),
        }  # fmt: skip


@contextlib.contextmanager
def block_progress(name: str, n_blocks: int, voxels: Sequence[int] | None = None, mode: str | None = None):
    """Yield ``advance(i)``: block number ``i`` (its position in ``voxels``) is done.

    Parameters
    ----------
    name : str
        Stage name shown.
    n_blocks : int
        Blocks of the stage.
    voxels : sequence of int, optional
        Voxels of each block (same order as the positions passed to ``advance``); without
        them progress is counted in blocks only.
    mode : str, optional
        Override the mode in force (:func:`progress_settings`).
    """
    auto = mode is None and _MODE.get() == "auto"  # lines outside a terminal: sparser, quiet when short
    mode = mode or current_mode()
    counter = _Counter(name, voxels, n_blocks)
    size: Callable[[int], int] = (lambda i: voxels[i]) if voxels is not None else (lambda i: 0)
    if mode == "none":
        yield lambda i: counter.advance(size(i))
        return
    if mode == "bar":
        with _rich_bar(counter, size) as advance:
            yield advance
        return
    emit = (lambda ev: print(json.dumps(counter.record(ev)), file=sys.stderr, flush=True)) if mode == "json" else (
        lambda ev: print(f"blockseg: {counter.line()}", file=sys.stderr, flush=True))  # fmt: skip
    interval = AUTO_LINES_INTERVAL if auto else INTERVAL[mode]
    said = [False]
    if mode == "json":
        emit("start")
    # a line every `interval` seconds while the stage runs, blocks finished or not: a log shows
    # the job alive, its rate and ETA even while one long block computes
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(interval):
            if counter.blocks_done < counter.blocks_total:
                said[0] = True
                emit("progress")

    ticker = threading.Thread(target=tick, name=f"blockseg-progress-{name}", daemon=True)
    ticker.start()
    try:
        yield lambda i: counter.advance(size(i))
    finally:
        stop.set()
        ticker.join()
    if counter.blocks_done == counter.blocks_total and (said[0] or not auto):
        emit("done")


@contextlib.contextmanager
def _rich_bar(counter: _Counter, size: Callable[[int], int]):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
        console=Console(stderr=True),  # stdout keeps the results (--json)
    ) as prog:
        total = counter.voxels_total if counter.voxels_total is not None else counter.blocks_total
        task = prog.add_task(counter.name, total=max(total, 1), info=counter.line().split(": ", 1)[1])

        def advance(i: int) -> None:
            counter.advance(size(i))
            done = counter.voxels_done if counter.voxels_total is not None else counter.blocks_done
            prog.update(task, completed=done, info=counter.line().split(": ", 1)[1])

        yield advance


def reuse_summary(blocks: int, computed: int, voxels: int, computed_voxels: int, reused_pass1: int = 0) -> str:
    """What a (resumed) run reused and computed, in words.

    ``reuse_summary(4, 1, 4096, 1024)`` ->
    ``"resumed: reused 3 of 4 blocks (3.07 k of 4.1 k voxels) done before; computed 1 block (1.02 k voxels)"``.

    ``reused_pass1``: blocks among the ``computed`` ones whose network pass an interrupted run
    had finished (only their exchange with neighbours was left): said, not counted as network work.
    """
    reused, reused_vox = blocks - computed, voxels - computed_voxels
    plural = lambda n: "block" if n == 1 else "blocks"  # noqa: E731
    done = f"computed {computed} {plural(computed)} ({human_voxels(computed_voxels)} voxels)"
    if reused_pass1:
        done += f", reusing the network outputs of {reused_pass1} of them from the interrupted run"
    if reused == 0 and not reused_pass1:
        return done
    if computed == 0:
        return f"nothing to do: all {blocks} {plural(blocks)} ({human_voxels(voxels)} voxels) were done before"
    return (
        f"resumed: reused {reused} of {blocks} {plural(blocks)} ({human_voxels(reused_vox)} of {human_voxels(voxels)} "
        f"voxels) done before; {done}"
    )


__all__: Sequence[str] = ["PROGRESS_MODES", "block_progress", "current_mode", "progress_settings", "reuse_summary"]
