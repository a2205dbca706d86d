"""One writer per output (issue 34, goal 2).

A command claims its output with a lock file beside it (``.NAME.blockseg-lock``: host, pid,
start time, command) before anything at the path is looked at or written; a second command on
the same output is refused at once in one line naming the holder. Two ``segment`` runs started
together on one output always leave exactly one complete, correct output; the other is refused
and nothing half-written is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blockseg import BlocksegError
from blockseg.io.volume import open_volume
from blockseg.io.predictions import save_predictions
from blockseg.io.safety import acquire_lock, lock_file, prepare_output, release_lock
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.train.targets import bcd_targets

from _helpers import CLI_DIR, REPO

SHAPE = (16, 32, 32)
BUSY = "is being written by another blockseg command"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small prediction store and the labels one undisturbed segment makes of it."""
    from blockseg.segment import segment

    root = tmp_path_factory.mktemp("race")
    c, r = random_nuclei(SHAPE, 6, (4.0, 6.0), seed=4)
    save_predictions(root / "p.zarr", bcd_targets(rasterise(SHAPE, c, r)), chunks=(8, 16, 16))
    rep = segment(root / "p.zarr", root / "ref.zarr", block_shape=(8, 16, 16), halo=4)
    assert rep.n_instances > 3
    return root / "p.zarr", open_volume(root / "ref.zarr").array[:]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob(".*blockseg-*"))


@pytest.mark.slow  # a Python subprocess
def test_lock_file_names_the_holder_and_goes_with_it(tmp_path):
    out = tmp_path / "o.zarr"
    output = prepare_output(out)
    info = json.loads(Path(lock_file(out)).read_text())
    assert info["pid"] == os.getpid() and {"host", "started", "command"} <= set(info)
    code = f"from blockseg.io.safety import prepare_output\nprepare_output({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{out} {BUSY} (pid {os.getpid()} on {info['host']}, since {info['started']}" in last
    output.release()
    assert os.listdir(tmp_path) == []  # the lock file goes with the lock
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # a Python subprocess
def test_a_dead_holder_leaves_no_lock(tmp_path):
    """The holder killed (SIGKILL: no cleanup at all): its lock file stays, but the next
    command takes it over at once."""
    out = tmp_path / "o.zarr"
    code = (f"import os, signal\nfrom blockseg.io.safety import prepare_output\nprepare_output({str(out)!r})\n"
            "os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert proc.returncode == -9 and Path(lock_file(out)).exists()
    output = prepare_output(out)  # not refused
    assert json.loads(Path(lock_file(out)).read_text())["pid"] == os.getpid()
    output.release()
    assert not Path(lock_file(out)).exists()


def test_reentrant_in_a_thread_refused_in_another(tmp_path):
    out = tmp_path / "o.zarr"
    acquire_lock(out)
    acquire_lock(out)  # the CLI's early claim, then the library's
    errors = []
    t = threading.Thread(target=lambda: errors.append(_refusal(lambda: acquire_lock(out))))
    t.start()
    t.join()
    assert errors[0] is not None and BUSY in errors[0] and "another thread of this process" in errors[0]
    release_lock(out)
    assert Path(lock_file(out)).exists()  # one claim left
    release_lock(out)
    assert not Path(lock_file(out)).exists()


def _refusal(func) -> str | None:
    try:
        func()
    except BlocksegError as exc:
        return str(exc)
    return None


def _race(store_path: Path, out: Path, overwrite: bool) -> list:
    """Two segment runs on ``out`` started together (threads of this process)."""
    from blockseg.segment import segment

    barrier = threading.Barrier(2)
    results: list = [None, None]

    def one(k: int) -> None:
        barrier.wait()
        try:
            results[k] = segment(store_path, out, block_shape=(8, 16, 16), halo=4, overwrite=overwrite).n_instances
        except BlocksegError as exc:
            results[k] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("overwrite", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_segments_on_one_output_race_eight_times(store, tmp_path, overwrite):
    store_path, reference = store
    n_ref = int(reference.max())
    outcomes = []
    for attempt in range(8):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        out = folder / "o.zarr"
        if overwrite:  # an earlier output of blockseg's, replaced by both
            from blockseg.segment import segment

            segment(store_path, out, block_shape=(8, 16, 16), halo=4)
        results = _race(store_path, out, overwrite)
        won = [r for r in results if isinstance(r, int)]
        refused = [str(r) for r in results if isinstance(r, BlocksegError)]
        assert len(won) + len(refused) == 2, results
        assert won and all(n == n_ref for n in won), results
        if not overwrite:  # a new output: the one that came second is refused, whenever it came
            assert len(won) == 1 and len(refused) == 1, results
        for line in refused:
            assert "\n" not in line and (BUSY in line or "already exists" in line), line
        np.testing.assert_array_equal(open_volume(out).array[:], reference)  # complete and correct
        assert _leftovers(folder) == []  # no half-written sibling, no lock left
        assert sorted(os.listdir(folder)) == ["o.zarr"]
        outcomes.append("busy" if any(BUSY in r for r in refused) else "after")
    # the lock decided at least one of the races (the runs overlapped), not only the existence check
    assert "busy" in outcomes or overwrite, outcomes


@pytest.mark.slow
def test_two_segment_commands_race(store, tmp_path):
    """The race of the issue with real commands: two ``blockseg segment`` processes (clusters
    replaced by in-process runs to keep it fast), 8 tries."""
    store_path, reference = store
    script = (
        "import contextlib, sys\nimport blockseg.runtime.cluster\n"
        "blockseg.runtime.cluster.dask_client = lambda *a, **k: contextlib.nullcontext(None)\n"
        "from blockseg_cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    env = dict(os.environ)
    shim = tmp_path / "clipath"
    shim.mkdir()
    (shim / "blockseg_cli").symlink_to(CLI_DIR)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO), env.get("PYTHONPATH", "")])
    for attempt in range(8):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        out = folder / "o.zarr"
        argv = ["segment", str(store_path), str(out), "--block-shape", "8", "16", "16", "--halo", "4", "--no-progress"]
        procs = [subprocess.Popen([sys.executable, "-c", script, *argv], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], results
        refused = next(err for code, err in results if code == 2).strip().splitlines()
        assert len(refused) == 1 and refused[0].startswith("blockseg segment: error: "), refused
        assert BUSY in refused[0] or "already exists" in refused[0], refused
        np.testing.assert_array_equal(open_volume(out).array[:], reference)
        assert _leftovers(folder) == [] and sorted(os.listdir(folder)) == ["o.zarr"]
        for p in procs:
            p.stdout.close()
            p.stderr.close()


@pytest.mark.parametrize("command", ["predict", "segment", "evaluate", "run"])
def test_a_second_command_is_refused_at_once_naming_the_holder(store, tmp_path, capsys, command):
    """Another command (here: another thread of this process) holds the output: refused before
    a cluster starts, one line naming the holder, nothing written."""
    import importlib

    import blockseg_cli
    import yaml

    from blockseg.io.safety import output_lock

    if str(CLI_DIR) not in blockseg_cli.__path__:
        blockseg_cli.__path__.insert(0, str(CLI_DIR))
    main = importlib.import_module("blockseg_cli.main").main
    store_path, _ = store
    labels = str(store_path.parent / "ref.zarr")
    out = tmp_path / ("run" if command == "run" else "out.zarr")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"run_dir": str(out), "data": {"synth": {"shape": [16, 32, 32]}}}))
    argv = {
        "predict": ["predict", str(store_path / "B"), "demo", str(out)],
        "segment": ["segment", str(store_path), str(out)],
        "evaluate": ["evaluate", "--gt", labels, "--pred", labels, "--out", str(out)],
        "run": ["run", str(tmp_path / "c.yaml")],
    }[command]
    held, release = threading.Event(), threading.Event()

    def holder():
        with output_lock(out):
            held.set()
            release.wait(60)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    try:
        t0 = time.monotonic()
        code = main(argv)
        seconds = time.monotonic() - t0
    finally:
        release.set()
        t.join()
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("blockseg: warning: ")]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"blockseg {command}: error: {out} {BUSY} (pid {os.getpid()} "), err
    assert "another thread of this process" in err[0] and seconds < 20
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]  # nothing written; the holder's lock went with it
