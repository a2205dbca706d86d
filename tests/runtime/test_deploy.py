"""Deployment on a shared machine (issue 33): a read-only install, tight worker memory, costly geometry.

The read-only test runs the installed CLI inside a private mount namespace (``unshare -m``) where
the checkout / site-packages and ``HOME`` are bind-mounted read-only; it skips where the
namespace or the mounts are not permitted (not root, no ``unshare``, a container without the
capability).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blockseg
from blockseg_cli.main import main

#: exit status of the namespace script when a mount is refused (the test then skips)
NO_MOUNT = 77


def _outermost(paths) -> list[str]:
    """``paths`` without those inside another one of them."""
    paths = sorted({os.path.realpath(p) for p in paths}, key=len)
    out: list[str] = []
    for p in paths:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _read_only_run(tmp_path: Path, command: str, env: dict, read_only=()) -> subprocess.CompletedProcess:
    """Run ``command`` (shell) in a private mount namespace where blockseg's install, the
    interpreter's prefix and ``read_only`` are mounted read-only."""
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs Linux with unshare and mount")
    install = _outermost([Path(blockseg.__file__).parents[1], sys.prefix, *read_only])
    tmp = os.path.realpath(tmp_path)
    if any(tmp == p or tmp.startswith(p + "/") for p in install if p not in map(os.path.realpath, read_only)):
        pytest.skip("the test's temporary folder lies inside the install")
    mounts = "".join(f"mount --bind '{p}' '{p}' && mount -o remount,bind,ro '{p}' '{p}' || exit {NO_MOUNT}\n" for p in install)
    script = f"set -u\n{mounts}cd '{tmp}'\n{command}\n"
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    except OSError as exc:
        pytest.skip(f"unshare cannot run here: {exc}")
    if proc.returncode == NO_MOUNT or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"a private mount namespace is not permitted here: {proc.stderr.strip()[:200]}")
    return proc


def _env(home: Path, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.mark.slow
def test_runs_from_a_read_only_install_without_a_writable_home(tmp_path):
    from blockseg.io.volume import create_volume

    vol = create_volume(tmp_path / "tiny.zarr", (8, 16, 16), "uint8", chunks=(8, 16, 16))
    vol[:] = np.arange(8 * 16 * 16, dtype=np.uint32).reshape(8, 16, 16) % 251
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    cli = Path(sys.executable).parent / "blockseg"
    cli_cmd = f"'{cli}'" if cli.exists() else f"'{sys.executable}' -m blockseg_cli.main"
    # a compiled kernel really runs (decorated at import, compiled on first call)
    kernel = (
        f"'{sys.executable}' -c 'import numpy as np; from blockseg.segment.stats import partial_stats; "
        "from blockseg.runtime._jit import cache_dir; "
        "t = partial_stats(np.array([[[0, 1], [2, 2]]], np.uint32), np.ones((1, 2, 2), np.float32), (0, 0, 0)); "
        "print(\"stats\", t[\"count\"].tolist(), \"cache\", repr(cache_dir()))'"
    )
    temps = _outermost([p for p in (str(tmp), str(tmp_path), "/tmp", "/var/tmp", "/usr/tmp", "/dev/shm") if os.path.isdir(p)])
    # nowhere to write: a kernel outside blockseg.segment (whose own kernels need a cache folder)
    nowhere = (
        f"'{sys.executable}' -c 'import numpy as np; from blockseg.predict.kernels import quantise; "
        "from blockseg.runtime._jit import cache_dir; "
        "print(\"quantised\", quantise(np.array([[[0.0, 1.0]]], np.float32), \"prob\").ravel().tolist(), \"cache\", repr(cache_dir()))'"
    )
    command = (
        f"touch '{Path(blockseg.__file__).parent}/.probe' 2>/dev/null && echo WRITABLE-INSTALL; "
        f"touch '{home}/.probe' 2>/dev/null && echo WRITABLE-HOME; "
        f"{cli_cmd} --help > help.txt || echo HELP-FAILED $?; "
        f"{cli_cmd} info '{tmp_path / 'tiny.zarr'}' || echo INFO-FAILED $?; "
        f"{kernel} || echo KERNEL-FAILED $?; "
        # nowhere to cache at all (every temporary folder read-only too): kernels compile uncached
        + "".join(f"mount --bind '{p}' '{p}' && mount -o remount,bind,ro '{p}' '{p}' || exit {NO_MOUNT}; " for p in temps)
        + f"{nowhere} || echo KERNEL-FAILED $?"
    )
    proc = _read_only_run(tmp_path, command, _env(home, tmp), read_only=[str(home)])
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert "WRITABLE" not in out, out  # the install and HOME really were read-only
    assert "FAILED" not in out, out + err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    assert "usage: blockseg" in (tmp_path / "help.txt").read_text()
    assert "shape 8x16x16 uint8" in out
    stats = [line for line in out.splitlines() if line.startswith("stats")]
    assert len(stats) == 1 and "[1, 2]" in stats[0], out
    assert f"{tmp}/blockseg-numba-" in stats[0], stats  # cached in the private per-user folder under TMPDIR
    quantised = [line for line in out.splitlines() if line.startswith("quantised")]
    assert len(quantised) == 1 and quantised[0].endswith("[0, 255] cache None"), out  # compiled, cached nowhere
    cache = next(tmp.glob("blockseg-numba-*"))
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert any(cache.rglob("*.nbi")), "no kernel was cached in the per-user folder"


def test_cache_folder_shared_with_others_is_not_used(tmp_path, monkeypatch):
    """numba's index files are pickles: a cache folder others can write is never used."""
    from blockseg.runtime import _jit

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not _jit._private_dir(str(shared))
    mine = tmp_path / "mine"
    assert _jit._private_dir(str(mine)) and (mine.stat().st_mode & 0o777) == 0o700
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert not _jit._private_dir(str(link))


# ------------------------------------------------------------------ worker memory limits (goal 2)
@pytest.fixture
def image(tmp_path):
    from blockseg.io.volume import create_volume

    vol = create_volume(tmp_path / "img.zarr", (32, 64, 64), "uint8", voxel_size=(0.48, 0.51, 0.51), chunks=(32, 64, 64))
    vol[:] = np.random.default_rng(0).integers(0, 255, (32, 64, 64), dtype=np.uint8)
    return str(tmp_path / "img.zarr")


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"blockseg {command}: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("text", ["lots", "-1GB", "12 parsecs", "0.5"])
def test_memory_limit_that_is_no_size_is_one_line(tmp_path, image, capsys, text):
    import time

    out = tmp_path / "pred.zarr"
    t0 = time.perf_counter()
    assert main(["predict", image, "demo", str(out), f"--memory-limit={text}"]) == 2
    err = _one_line_error(capsys, "predict")
    assert "--memory-limit" in err and repr(text) in err
    assert time.perf_counter() - t0 < 5  # before the network or a cluster is loaded
    assert not out.exists()


def test_parse_memory_limit():
    from blockseg.runtime.cluster import parse_memory_limit

    assert parse_memory_limit("4GiB") == 4 * 2**30
    assert parse_memory_limit("500 MB") == 500 * 10**6
    assert parse_memory_limit(None) == parse_memory_limit("auto") == "auto"
    assert parse_memory_limit("none") == 0
    assert parse_memory_limit(2e9) == 2 * 10**9
    with pytest.raises(blockseg.BlocksegError, match="not a size"):
        parse_memory_limit("lots")


@pytest.mark.slow  # a LocalCluster of 2 workers
def test_memory_limit_too_small_for_a_predict_block_ends_at_once(tmp_path, image, capsys):
    """The issue's command looped forever (the nanny restarting workers); now the plan refuses it
    before any worker starts, naming the block, the estimate, the limit and the fix."""
    import time

    out = tmp_path / "pred.zarr"
    t0 = time.perf_counter()
    assert main(["predict", image, "demo", str(out), "--workers", "2", "--memory-limit", "60MB", "--no-progress"]) == 2
    seconds = time.perf_counter() - t0
    err = _one_line_error(capsys, "predict")
    assert "predict block 0 (core 32x64x64 voxels) needs about" in err
    assert "57.2 MiB memory limit per worker" in err and "--memory-limit to at least" in err and "--block" in err
    assert seconds < 60, seconds
    assert not out.exists()
    # the dry run says the same as a warning, and still describes the plan
    assert main(["predict", image, "demo", str(out), "--workers", "2", "--memory-limit", "60MB", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "blockseg: warning: predict block 0" in captured.err and "memory per task" in captured.out
    assert not out.exists()


@pytest.mark.slow  # a LocalCluster
def test_memory_limit_below_a_resting_worker_is_refused_before_workers_start(tmp_path, capsys):
    from blockseg.runtime.cluster import ClusterConfig, dask_client

    with pytest.raises(blockseg.BlocksegError, match=r"a memory limit of 9.5 MiB per worker \(--memory-limit; cluster.memory_limit in a config\) is less than a dask worker"):
        with dask_client(ClusterConfig(n_workers=1, memory_limit="10MB", dashboard=False), quiet=True):
            pass


def _hog(block_id):  # a block task that holds far more than its worker may
    import time

    held = np.ones(600 * 2**20 // 8)
    time.sleep(2)
    return float(held[0])


@pytest.mark.slow
def test_workers_restarted_for_memory_end_the_stage_in_one_line():
    """A task that exceeds the worker's limit at run time (no estimate could say so): dask restarts
    the worker and hands the task on; after MAX_MEMORY_RESTARTS + 1 restarts the stage ends."""
    import time

    from blockseg.runtime.cluster import MAX_MEMORY_RESTARTS, ClusterConfig, dask_client, run_blocks

    with dask_client(ClusterConfig(n_workers=1, memory_limit="300MB", dashboard=False), quiet=True) as client:
        t0 = time.perf_counter()
        with pytest.raises(blockseg.BlocksegError) as info:
            run_blocks(_hog, [0], client, name="hog", progress=False)
        seconds = time.perf_counter() - t0
    msg = str(info.value)
    assert msg.startswith(f"hog block 0: dask workers were restarted {MAX_MEMORY_RESTARTS + 1} times"), msg
    assert "limit" in msg and "--memory-limit" in msg and "--block" in msg and "\n" not in msg
    assert seconds < 90, seconds


# ------------------------------------------------------------------ costly geometry (goal 5)
def test_one_voxel_chunks_are_refused_before_any_file_is_written(tmp_path, capsys):
    """Importing a 64^3 volume with 1-voxel chunks wrote 262,144 chunk files in 246 s."""
    import time

    src = tmp_path / "v.npy"
    np.save(src, np.random.default_rng(0).integers(0, 255, (64, 64, 64), dtype=np.uint8))
    out = tmp_path / "v.zarr"
    t0 = time.perf_counter()
    assert main(["import", str(src), str(out), "--chunks", "1", "--voxel-size", "1"]) == 2
    err = _one_line_error(capsys, "import")
    assert "chunks of 1x1x1 voxels (1 B each) make 262,144 chunk files for 64x64x64 voxels" in err
    assert "--chunks 64 128 128" in err
    assert time.perf_counter() - t0 < 20
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


def test_chunk_and_task_thresholds():
    from blockseg.runtime.costs import MANY_TASKS, MAX_TASKS, chunk_cost, settle, task_cost

    assert chunk_cost((64, 64, 64), (8, 8, 8), 1) is None  # few chunks: small ones do not matter
    assert chunk_cost((512, 2048, 2048), (64, 128, 128), 1) is None  # 1 MiB chunks
    warned = chunk_cost((256, 1024, 1024), (16, 32, 32), 2)  # 32 KiB chunks, 16,384 of them
    assert warned is not None and not warned.refuse and "16,384 chunk files" in warned.message
    refused = chunk_cost((256, 1024, 1024), (8, 8, 8), 4)  # 2 KiB chunks
    assert refused is not None and refused.refuse and "smaller than a file-system block" in refused.message
    assert task_cost(MANY_TASKS, "segment") is None
    assert not task_cost(MANY_TASKS + 1, "segment").refuse
    assert task_cost(MAX_TASKS + 1, "segment", (8, 8, 8)).refuse
    with pytest.warns(UserWarning, match="16,384 chunk files"):
        settle([warned, None])
    with pytest.raises(blockseg.BlocksegError, match="smaller than a file-system block"):
        settle([warned, refused])
    with pytest.warns(UserWarning, match=r"\(refused when run\)"):
        settle([refused], dry_run=True)


def test_millions_of_tasks_are_refused_before_submission():
    from blockseg.runtime.cluster import run_blocks
    from blockseg.runtime.costs import MAX_TASKS

    ran = []
    with pytest.raises(blockseg.BlocksegError, match=f"{MAX_TASKS + 1:,} block tasks"):
        run_blocks(ran.append, range(MAX_TASKS + 1), None, name="segment", progress=False)
    assert ran == []


@pytest.mark.slow  # plans millions of blocks
def test_millions_of_predict_blocks_are_refused_before_the_plan_lays_them_out(tmp_path, capsys):
    import time

    from blockseg.io.volume import create_volume

    vol = create_volume(tmp_path / "img.zarr", (128, 128, 128), "uint8", chunks=(64, 128, 128))
    vol[:] = np.random.default_rng(0).integers(0, 255, (128, 128, 128), dtype=np.uint8)
    out = tmp_path / "pred.zarr"
    t0 = time.perf_counter()
    code = main(["predict", str(tmp_path / "img.zarr"), "demo", str(out), "--block", "1", "--chunks", "1", "--dry-run"])
    assert code == 2
    err = _one_line_error(capsys, "predict")
    assert "predict: 4,194,304 block tasks of 1x1x1 voxels" in err and "--block" in err
    assert time.perf_counter() - t0 < 30
    assert not out.exists()


@pytest.fixture
def lazy_image(tmp_path):
    """An image of more than 2^31 voxels declared but never written (no chunk stored)."""
    from blockseg.io.volume import create_volume

    create_volume(tmp_path / "lazy.zarr", (2048, 1024, 1040), "uint8", chunks=(64, 128, 128))
    return str(tmp_path / "lazy.zarr")


@pytest.mark.slow  # plans a huge image
def test_huge_image_holding_no_data_is_named_in_the_dry_run_and_refused(tmp_path, lazy_image, capsys):
    import time

    out = tmp_path / "pred.zarr"
    t0 = time.perf_counter()
    # the dry run warns (the CLI prints "blockseg: warning: ..."; pytest collects warnings itself)
    with pytest.warns(UserWarning, match=r"holds no data: none of its chunks is stored, so each of its "
                      r"2,181,038,080 voxels .*\(refused when run\)"):  # fmt: skip
        assert main(["predict", lazy_image, "demo", str(out), "--dry-run", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", lazy_image, "demo", str(out), "--no-progress"]) == 2
    line = _one_line_error(capsys, "predict")
    assert "holds no data" in line and "2,181,038,080 voxels (2048x1024x1040)" in line
    assert time.perf_counter() - t0 < 90  # no network ran over it
    assert not out.exists()


class _FakeScheduler:
    """What MemoryWatch asks a dask client: event logs and the workers' states."""

    def __init__(self, events=None, workers=None):
        self.events = events or {}
        self.workers = workers or {}
        self.cancelled = []

    def get_events(self, topic):
        return tuple(self.events.get(topic, ()))

    def scheduler_info(self):
        return {"workers": self.workers}

    def cancel(self, futures):
        self.cancelled.extend(futures)


def test_memory_watch_names_the_block_the_restarted_workers_ran():
    from blockseg.runtime.cluster import MemoryWatch

    restarts = [(10.0 + i, {"worker": f"tcp://w:{i}", "pid": i, "rss": 900 * 2**20}) for i in range(3)]
    removed = {f"tcp://w:{i}": [(10.5 + i, {"action": "remove-worker", "processing-tasks": {"predict-x-7"}})] for i in range(3)}
    client = _FakeScheduler({"worker-restart-memory": restarts, **removed}, {"tcp://w:3": {"memory_limit": 2**30}})
    watch = MemoryWatch(client, ["f7"], {"predict-x-7": 7}, "predict", restarts=2)
    watch.limit = 2**30
    watch.check()
    assert str(watch.error) == (
        "predict block 7: dask workers were restarted 3 times for exceeding their memory limit (a worker held 900 MiB of "
        "its 1 GiB limit); raise --memory-limit (fewer --workers leave each more of this machine's memory) or use a "
        "smaller block shape (--block-shape)"
    )
    with pytest.raises(blockseg.BlocksegError, match="predict block 7"):
        watch.raise_for_memory(RuntimeError("cancelled"))
    # two restarts and a task dask gave up on (KilledWorker): memory is named too
    two = MemoryWatch(_FakeScheduler({"worker-restart-memory": restarts[:2], **removed}), [], {"predict-x-7": 7}, "predict")
    two.raise_for_memory(RuntimeError("another error"))  # not KilledWorker, under the limit: left alone
    KilledWorker = type("KilledWorker", (Exception,), {})
    with pytest.raises(blockseg.BlocksegError, match="restarted 2 times"):
        two.raise_for_memory(KilledWorker("all those workers died"))


def test_memory_watch_ends_a_stage_whose_workers_all_stay_paused():
    from blockseg.runtime.cluster import MemoryWatch

    workers = {a: {"status": "paused", "memory_limit": 2**30, "metrics": {"memory": 850 * 2**20}} for a in ("a", "b")}
    client = _FakeScheduler(workers=workers)
    watch = MemoryWatch(client, [], {}, "segment", paused_seconds=0)
    for _ in range(5):  # the workers' states are asked every fifth poll
        watch.check()
    assert watch.error is not None and str(watch.error).startswith("segment: every dask worker stayed paused")
    assert "850 MiB" in str(watch.error) and "--memory-limit" in str(watch.error)
    workers["b"]["status"] = "running"
    watch = MemoryWatch(client, [], {}, "segment", paused_seconds=0)
    for _ in range(10):
        watch.check()
    assert watch.error is None


def test_empty_image_is_told_from_a_written_one(tmp_path):
    import h5py
    import zarr

    from blockseg.runtime.costs import EMPTY_VOXELS, empty_image_cost
    from blockseg.io.volume import open_volume

    big = (1024, 1024, 1024)
    lazy = zarr.create_array(str(tmp_path / "lazy.zarr"), shape=big, chunks=(128, 128, 128), dtype="u1")
    cost = empty_image_cost(lazy, big, "lazy.zarr")
    assert cost is not None and cost.refuse and "1,073,741,824 voxels (1024x1024x1024)" in cost.message
    lazy[:1, :1, :1] = 7  # one chunk written: it holds data
    assert empty_image_cost(lazy, big, "lazy.zarr") is None
    assert empty_image_cost(np.zeros((4, 4, 4)), big, "array") is None  # cannot tell: no refusal
    with h5py.File(tmp_path / "lazy.h5", "w") as f:
        f.create_dataset("raw", shape=big, chunks=(64, 64, 64), dtype="u1")
    vol = open_volume(str(tmp_path / "lazy.h5"), key="raw")
    assert empty_image_cost(vol.array, vol.shape, "lazy.h5").refuse
    small = zarr.create_array(str(tmp_path / "small.zarr"), shape=(64, 64, 64), chunks=(32, 32, 32), dtype="u1")
    assert 64**3 <= EMPTY_VOXELS and empty_image_cost(small, small.shape, "small.zarr") is None


def _sleepy(block_id):
    import time

    time.sleep(30)
    return block_id


@pytest.mark.slow  # the shared LocalCluster
def test_memory_watch_cancels_a_stage_that_would_wait_forever(local_client, monkeypatch):
    """Workers restarted for memory while no task fails (dask would keep handing the tasks on):
    the watch cancels the stage, and run_blocks raises its one line within seconds."""
    import time

    from blockseg.runtime.cluster import MemoryWatch, run_blocks

    t0 = time.time()

    def restarts(self):
        if time.time() - t0 < 2:
            return []
        return [{"worker": "tcp://gone:1", "pid": i, "rss": 500 * 2**20} for i in range(3)]

    monkeypatch.setattr(MemoryWatch, "_restart_events", restarts)
    with pytest.raises(blockseg.BlocksegError, match=r"^segment: dask workers were restarted 3 times for exceeding their memory limit while running none"):
        run_blocks(_sleepy, [0, 1, 2, 3], local_client, name="segment", progress=False)
    assert time.time() - t0 < 20
