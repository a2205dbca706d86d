"""Write safety: every zarr chunk a stage writes is written by exactly one task, inside that
task's block core; predict's done-marker of a block comes after all of the block's chunks; and
an existing output is never replaced without --overwrite.

The recorder wraps ``zarr.storage.LocalStore`` (``set``, ``set_if_not_exists``, ``delete``: an
empty chunk is deleted rather than written) and runs the stages on a real dask client whose
workers are threads of this process, so the wrapper sees every write. zarr performs its I/O on
its own event-loop thread; the dask task that asked for it is carried there in a context
variable set where zarr hands the coroutine over (``asyncio.run_coroutine_threadsafe`` copies
the caller's context).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import os
import threading
from collections import defaultdict

import numpy as np
import pytest
import zarr.storage

from blockseg.runtime.cluster import ClusterConfig, dask_client
from blockseg.grid import BlockGrid
from blockseg.io.volume import open_volume

from _helpers import in_process

_TASK: contextvars.ContextVar = contextvars.ContextVar("dask_task", default=None)

SHAPE, CHUNKS, BLOCK = (32, 64, 96), (16, 32, 32), (16, 32, 64)


class Recorder:
    """(sequence number, file path, dask task key or None for the driver) of every write."""

    def __init__(self):
        self.writes: list[tuple[int, str, str | None]] = []
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def add(self, store, key: str) -> None:
        with self._lock:
            self.writes.append((next(self._seq), os.path.join(str(store.root), key), _TASK.get()))

    def since(self, start: int) -> list[tuple[int, str, str | None]]:
        return [w for w in self.writes if w[0] >= start]

    @property
    def mark(self) -> int:
        return len(self.writes)


@pytest.fixture(scope="module")
def recorded():
    """A threads-only dask client with every LocalStore write recorded."""
    from distributed import get_worker

    mp = pytest.MonkeyPatch()
    rec = Recorder()
    handover = asyncio.run_coroutine_threadsafe

    def run_coroutine_threadsafe(coro, loop):
        try:
            task = get_worker().get_current_task()
        except Exception:  # not in a task thread (the driver, or dask's own loop)
            task = None
        token = _TASK.set(task)
        try:
            return handover(coro, loop)
        finally:
            _TASK.reset(token)

    def wrap(name):
        original = getattr(zarr.storage.LocalStore, name)

        async def recorded_call(self, key, *args, **kwargs):
            rec.add(self, key)
            return await original(self, key, *args, **kwargs)

        mp.setattr(zarr.storage.LocalStore, name, recorded_call)

    mp.setattr(asyncio, "run_coroutine_threadsafe", run_coroutine_threadsafe)
    for name in ("set", "set_if_not_exists", "delete"):
        wrap(name)
    # threads in this process: their "worker memory" is the whole test process, which holds
    # ~1.6 GiB by the end of the suite; a 2 GiB limit paused them and the memory watch ended the run
    cfg = ClusterConfig(n_workers=2, processes=False, memory_limit="8GiB", dashboard=False)
    try:
        with dask_client(cfg, quiet=True) as client:
            yield client, rec
    finally:
        mp.undo()


def _split(path: str) -> tuple[str, tuple[int, ...]] | None:
    """``ARRAY/c/i/j/k`` -> (ARRAY, (i, j, k)); None for metadata and other files."""
    head, sep, tail = path.rpartition("/c/")
    if not sep:
        return None
    idx = tail.split("/")
    if not idx or not all(i.isdigit() for i in idx):
        return None
    return head, tuple(int(i) for i in idx)


def _task_block(key: str) -> tuple[str, int]:
    """run_blocks keys are NAME-TOKEN-BLOCK: (NAME, BLOCK)."""
    rest, _, block = key.rpartition("-")
    return rest.rpartition("-")[0], int(block)


def check_writes(writes, grids: dict[str, BlockGrid]) -> dict[str, dict]:
    """Assert the write-safety rules; return per array ``{chunk: block}`` for further checks.

    ``grids`` maps an array path (suffix) to the BlockGrid of the stage that writes it.
    """
    owner: dict[tuple[str, tuple], set] = defaultdict(set)  # chunk -> {(pass, block, task)}
    seen_tasks = set()
    for _, path, task in writes:
        if task is None:
            continue  # the driver: creates arrays and writes metadata, never chunks (below)
        seen_tasks.add(task)
        chunk = _split(path)
        assert chunk is not None, f"task {task} wrote {path}, which is not a chunk"
        owner[chunk].add((*_task_block(task), task))
    assert seen_tasks, "no task writes were recorded"
    out: dict[str, dict] = defaultdict(dict)
    for (array, idx), writers in owner.items():
        blocks = {b for _, b, _ in writers}
        assert len(blocks) == 1, f"{array} chunk {idx} written by the tasks of several blocks: {writers}"
        per_pass = defaultdict(set)
        for name, _, task in writers:
            per_pass[name].add(task)
        assert all(len(t) == 1 for t in per_pass.values()), f"{array} chunk {idx}: two tasks of one pass {writers}"
        (block,) = blocks
        parts = array.split("/")
        if "_partial" in parts:  # predict's scratch (_partial/rows): a row per block, written only by its block
            assert idx[0] == block, f"{array} chunk {idx} written by block {block}"
            out[array][idx] = block
            continue
        suffix = next((s for s in grids if array.endswith(s)), None)
        assert suffix is not None, f"unexpected array {array}"
        grid = grids[suffix]
        origin = tuple(i * c for i, c in zip(idx, grid.chunk_shape))
        core = grid[block].core
        assert all(s.start <= o < s.stop for s, o in zip(core, origin)), f"{array} chunk {idx} is outside block {block}'s core"
        out[array][idx] = block
    for _, path, task in writes:  # the driver writes no chunk of an array the tasks write
        if task is None and _split(path) is not None:
            assert _split(path)[0] not in out, f"the driver wrote chunk {path}"
    return out


@pytest.mark.slow  # synth, predict and segment on a LocalCluster of 2 workers
def test_synth_predict_segment_write_each_chunk_from_one_task(recorded, tmp_path):
    from blockseg.models import IdentityNet, save_checkpoint
    from blockseg.predict import predict
    from blockseg.segment import BCDDecoder, segment
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train.targets import write_bcd_targets

    client, rec = recorded
    grid = BlockGrid(SHAPE, BLOCK, 0, CHUNKS)

    # synth: image and labels, block by block
    start = rec.mark
    synthesize(str(tmp_path / "s.zarr"), SynthParams(shape=SHAPE, seed=3), chunks=CHUNKS, block_shape=BLOCK,
               client=client, progress=False)  # fmt: skip
    owners = check_writes(rec.since(start), {"s.zarr/0": grid, "nuclei/0": grid})
    assert len(owners) == 2 and all(len(v) == 2 * 2 * 3 for v in owners.values())  # every chunk, once

    # predict: each channel's chunks (interior in pass 1, lower-face strips in pass 2), each
    # block's private scratch of partial sums, then the block's markers
    ckpt = tmp_path / "id.pt"
    save_checkpoint(ckpt, IdentityNet(("B", "C", "D"), input_patch=(16, 32, 32)), normalisation={"offset": 0.0, "scale": 255.0})
    start = rec.mark
    report = predict(str(tmp_path / "s.zarr"), str(ckpt), str(tmp_path / "p.zarr"), block_shape=BLOCK, client=client,
                     progress=False)  # fmt: skip
    assert report.computed == len(grid) == 8
    writes = rec.since(start)
    markers = BlockGrid(grid.grid_shape, (1, 1, 1), 0, (1, 1, 1))  # _done, _pass1: one chunk per block
    owners = check_writes(writes, {"p.zarr/B/0": grid, "p.zarr/C/0": grid, "p.zarr/D/0": grid, "p.zarr/_done": markers,
                                   "p.zarr/_pass1": markers})  # fmt: skip
    written = {a.rsplit("p.zarr/", 1)[1] for a in owners}
    assert {"B/0", "C/0", "D/0", "_done", "_pass1"} <= written
    assert {a for a in written if a.startswith("_partial/")}, "no partial sums were exchanged"
    names = {_task_block(t)[0] for _, _, t in writes if t}
    assert names == {"predict", "predict-strips"}
    last_data = defaultdict(int)
    marker_at = {}
    for seq, path, task in writes:
        if task is None:
            continue
        block = _task_block(task)[1]
        if path.rpartition("/c/")[0].endswith("_done"):
            marker_at[block] = seq
        else:
            last_data[block] = max(last_data[block], seq)
    assert sorted(marker_at) == list(range(len(grid)))
    for block, seq in marker_at.items():
        assert seq > last_data[block], f"block {block}'s done-marker was written before its data"

    # segment: every pass (seeds, watershed exchange rounds, statistics, relabel) on the work
    # arrays and the output; a small halo forces exchange rounds (blocks re-run)
    write_bcd_targets(str(tmp_path / "s.zarr/labels/nuclei"), str(tmp_path / "t.zarr"), block_shape=SHAPE)  # input only
    start = rec.mark
    sgrid = BlockGrid(SHAPE, BLOCK, 2, CHUNKS)
    rep = segment(str(tmp_path / "t.zarr"), str(tmp_path / "seg.zarr"), BCDDecoder(min_size=8, min_seed_size=4),
                  block_shape=BLOCK, halo=2, client=client)  # fmt: skip
    assert rep.n_instances > 5
    writes = rec.since(start)
    names = {_task_block(t)[0] for _, _, t in writes if t}
    labels = f".seg.zarr.blockseg-new-{os.getpid()}/0"  # written beside the output, renamed in last
    owners = check_writes(writes, {f"seg.zarr.work/{a}": sgrid for a in ("seeds", "height")} | {labels: sgrid})
    assert {"seeds", "relabel"} <= names
    assert any(a.endswith(labels) for a in owners) and any(a.endswith("work/seeds") for a in owners)
    # halo 2: later rounds re-run blocks; the rounds keep each block's solution in its own
    # folder of the work directory and write no chunk of any array (labels are written once,
    # by relabel, from the fixed point)
    assert len(rep.rounds) > 1, rep.rounds
    assert not any(n.startswith("watershed") or n == "statistics" for n in names), names


def test_existing_outputs_are_refused_without_overwrite(tmp_path, capsys):
    """segment, evaluate and run refuse an existing output (predict: test_predict; synth and
    import: test_cli / test_bad_input) and leave it untouched."""
    import yaml

    from blockseg.io.volume import create_label_volume, create_volume
    from blockseg_cli.main import main

    img = create_volume(tmp_path / "img.zarr", (16, 32, 32), np.uint8, (1.0, 0.5, 0.5), (16, 32, 32))
    img.array[:] = 100
    gt = create_label_volume(tmp_path / "img.zarr", "gt", (16, 32, 32), np.uint32, (1.0, 0.5, 0.5), chunks=(16, 32, 32))
    gt.array[4:10, 4:20, 4:20] = 1
    from blockseg.io.predictions import save_predictions
    from blockseg.train.targets import bcd_targets

    save_predictions(tmp_path / "p.zarr", bcd_targets(gt.array[:]), chunks=(16, 32, 32))
    seg = tmp_path / "seg.zarr"
    seg.mkdir()
    (seg / "keep.txt").write_text("mine")
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "evaluation.json").write_text("{}")
    run_dir = tmp_path / "rundir"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("mine")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(run_dir), "data": {"image": str(tmp_path / "img.zarr")}}))

    cases = [
        (["segment", str(tmp_path / "p.zarr"), str(seg)], "already exists"),
        (["evaluate", "--gt", str(tmp_path / "img.zarr/labels/gt"), "--pred", str(tmp_path / "img.zarr/labels/gt"),
          "--out", str(ev)], "already exists"),  # fmt: skip
        (["run", str(cfg)], "not a blockseg run directory"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
    assert os.listdir(seg) == ["keep.txt"] and (ev / "evaluation.json").read_text() == "{}"
    assert os.listdir(run_dir) == ["keep.txt"]
    # with --overwrite the evaluation goes through
    argv = cases[1][0] + ["--overwrite", "--workers", "1", "--no-progress", "--no-png"]
    with in_process():
        assert main(argv) == 0
    assert json.loads((ev / "evaluation.json").read_text())["n_true"] == 1


def _write_first_chunk(block_id: int, path: str) -> None:
    """A faulty block task: every block writes the volume's first chunk (and its own core)."""
    vol = open_volume(path, mode="r+")
    grid = BlockGrid(SHAPE, BLOCK, 0, CHUNKS)
    vol.array[grid[block_id].core] = block_id + 1
    vol.array[:16, :32, :32] = block_id + 1


@pytest.mark.slow  # a LocalCluster of 2 workers
def test_recorder_catches_a_chunk_written_by_two_tasks(recorded, tmp_path):
    from functools import partial

    from blockseg.runtime.cluster import run_blocks
    from blockseg.io.volume import create_volume

    client, rec = recorded
    create_volume(tmp_path / "v.zarr", SHAPE, np.uint8, None, CHUNKS)
    grid = BlockGrid(SHAPE, BLOCK, 0, CHUNKS)
    start = rec.mark
    run_blocks(partial(_write_first_chunk, path=str(tmp_path / "v.zarr")), [0, 5], client=client, progress=False)
    with pytest.raises(AssertionError, match="several blocks"):
        check_writes(rec.since(start), {"v.zarr/0": grid})
    start = rec.mark
    run_blocks(partial(_write_first_chunk, path=str(tmp_path / "v.zarr")), [5], client=client, progress=False)
    with pytest.raises(AssertionError, match="outside block 5"):
        check_writes(rec.since(start), {"v.zarr/0": grid})
