import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from blockseg import BlocksegError, open_volume
from blockseg.runtime.cluster import ClusterConfig, dask_client, has_gpu_workers, run_blocks
from blockseg.synth import SynthParams, synthesize


def _square(block_id, offset=0):
    return block_id * block_id + offset


def _where(block_id):
    import os

    return os.getpid()


@pytest.mark.slow  # the shared LocalCluster
def test_run_blocks_on_local_cluster_returns_results_in_id_order(local_client):
    ids = [5, 0, 3, 9, 1]
    assert run_blocks(partial(_square, offset=1), ids, client=local_client, progress=False) == [26, 1, 10, 82, 2]
    # worker processes, not this one
    assert os.getpid() not in set(run_blocks(_where, range(8), client=local_client, progress=False))
    assert not has_gpu_workers(local_client)


def test_run_blocks_without_client_runs_in_process():
    assert run_blocks(_square, [2, 3], progress=False) == [4, 9]


@pytest.mark.slow  # the shared LocalCluster
def test_failing_block_raises_its_error(local_client):
    def boom(b):
        raise RuntimeError(f"block {b} failed")

    with pytest.raises(RuntimeError, match="block 0 failed"):
        run_blocks(boom, [0], client=local_client, progress=False, retries=0)


@pytest.mark.slow  # waits for a connection timeout
def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(BlocksegError, match="cannot reach the dask scheduler"):
        with dask_client(ClusterConfig(scheduler="tcp://127.0.0.1:1")):
            pass


def _dask_cli(*args):
    exe = Path(sys.executable).with_name("dask")
    return [str(exe) if exe.exists() else shutil.which("dask") or "dask", *args]


@pytest.fixture
def external_cluster(tmp_path):
    """A real scheduler and one GPU-declared worker, as separate processes on 127.0.0.1."""
    sched_file = tmp_path / "scheduler.json"
    # scheduler and worker unpickle this module's functions: let them import it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    procs = [
        subprocess.Popen(
            _dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
    ]  # fmt: skip
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        else:
            pytest.fail("dask scheduler did not start")
        procs.append(
            subprocess.Popen(
                _dask_cli("worker", "--scheduler-file", str(sched_file), "--nthreads", "1", "--resources", "GPU=1",
                          "--no-dashboard", "--host", "127.0.0.1"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            )
        )  # fmt: skip
        import json

        address = json.loads(sched_file.read_text())["address"]
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.slow  # a dask scheduler and worker in subprocesses
def test_job_through_an_external_scheduler_address(tmp_path, external_cluster):
    with dask_client(ClusterConfig(scheduler=external_cluster), quiet=True) as client:
        client.wait_for_workers(1, timeout=60)
        assert has_gpu_workers(client)
        # GPU-annotated tasks run on the worker that declares the resource
        assert run_blocks(_square, [1, 2, 3], client=client, resources={"GPU": 1}, progress=False) == [1, 4, 9]
        params = SynthParams(shape=(16, 48, 48), seed=4)
        synthesize(str(tmp_path / "ext.zarr"), params, chunks=(8, 16, 16), client=client, progress=False)
    synthesize(str(tmp_path / "ref.zarr"), params, chunks=(16, 48, 48), progress=False)
    for sub in ("", "/labels/nuclei"):
        assert np.array_equal(open_volume(f"{tmp_path}/ext.zarr{sub}")[:], open_volume(f"{tmp_path}/ref.zarr{sub}")[:])


# ------------------------------------------------------------------------------ preflight
# Real `dask scheduler` / `dask worker` processes on 127.0.0.1, the blockseg CLI as a user runs it.


def _env(pythonpath: list[str]) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}


def _start_scheduler(folder: Path, env: dict) -> tuple[subprocess.Popen, str]:
    import json

    sched_file = folder / "scheduler.json"
    proc = subprocess.Popen(
        _dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=folder,
    )  # fmt: skip
    for _ in range(300):
        if sched_file.exists() and sched_file.stat().st_size:
            return proc, json.loads(sched_file.read_text())["address"]
        time.sleep(0.1)
    proc.terminate()
    pytest.fail("dask scheduler did not start")


def _start_worker(address: str, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _dask_cli("worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1", "--nworkers", "1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
    )  # fmt: skip


def _wait_for_a_worker(address: str) -> None:
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(1, timeout=180)


def _stop(procs):
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def _blockseg(*argv, cwd, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "blockseg_cli.main", *argv], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        env=_env(sys.path),
    )  # fmt: skip
    return proc


def _one_error_line(proc, code=2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def blind_worker_cluster(tmp_path):
    """A scheduler, and one worker whose Python cannot import blockseg (a shadowing package that
    fails on import comes first on its path, as an environment without blockseg would)."""
    shadow = tmp_path / "shadow" / "blockseg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'blockseg'\")\n")
    (tmp_path / "sched").mkdir()
    sched, address = _start_scheduler(tmp_path / "sched", _env(sys.path))
    procs = [sched, _start_worker(address, _env([str(tmp_path / "shadow"), *sys.path]), tmp_path / "sched")]
    try:
        _wait_for_a_worker(address)  # the 60 s the test allows are blockseg's, not the worker's start-up
        yield address
    finally:
        _stop(procs)


@pytest.mark.slow  # a dask scheduler and worker in subprocesses
def test_worker_without_blockseg_is_one_line_within_60_s_and_leaves_no_output(tmp_path, blind_worker_cluster):
    from blockseg import create_volume

    work = tmp_path / "work"
    work.mkdir()
    create_volume(work / "img.zarr", (16, 32, 32), np.uint8, chunks=(16, 32, 32))
    from blockseg.models import demo_checkpoint_path

    before = sorted(p.name for p in work.iterdir())
    t0 = time.perf_counter()
    proc = _blockseg("predict", "img.zarr", demo_checkpoint_path(), "pred.zarr", "--scheduler", blind_worker_cluster,
                     cwd=work)  # fmt: skip
    seconds = time.perf_counter() - t0
    line = _one_error_line(proc)
    assert "cannot import blockseg" in line and "worker tcp://127.0.0.1:" in line, line
    assert seconds < 60
    assert sorted(p.name for p in work.iterdir()) == before  # no pred.zarr, no pred.zarr.work


@pytest.mark.slow  # waits for the scheduler's timeout
def test_scheduler_without_workers_times_out_with_one_line(tmp_path):
    sched, address = _start_scheduler(tmp_path, _env(sys.path))
    try:
        t0 = time.perf_counter()
        proc = _blockseg("synth", "s.zarr", "--shape", "8", "16", "16", "--scheduler", address, "--worker-timeout", "2",
                         cwd=tmp_path)  # fmt: skip
        assert time.perf_counter() - t0 < 60
    finally:
        _stop([sched])
    line = _one_error_line(proc)
    assert "0 dask worker(s) joined" in line and "within 2 s" in line, line
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word (not a dask scheduler)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []

    def accept():
        while True:
            try:
                conns.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.slow  # the CLI in a subprocess, waits for a timeout
@pytest.mark.parametrize("scheme", ["tcp", "http"])
def test_address_that_is_not_a_dask_scheduler_is_one_line(tmp_path, silent_server, scheme):
    t0 = time.perf_counter()
    proc = _blockseg("synth", "s.zarr", "--shape", "8", "16", "16", "--scheduler", f"{scheme}://127.0.0.1:{silent_server}",
                     cwd=tmp_path, timeout=90)  # fmt: skip
    line = _one_error_line(proc)
    assert time.perf_counter() - t0 < 45
    assert ("web address" if scheme == "http" else "is not a dask scheduler") in line, line
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow  # the CLI in a subprocess
def test_closed_port_is_one_line(tmp_path):
    line = _one_error_line(_blockseg("synth", "s.zarr", "--scheduler", "127.0.0.1:1", cwd=tmp_path))
    assert "cannot reach the dask scheduler" in line


@pytest.mark.slow  # a dask scheduler, a worker and the CLI in subprocesses
def test_relative_paths_work_on_workers_started_elsewhere(tmp_path):
    """The driver's relative paths reach workers (running in another folder) absolute."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "here").mkdir()
    env = _env([str(Path(__file__).parent), *sys.path])
    sched, address = _start_scheduler(tmp_path / "elsewhere", env)
    procs = [sched, _start_worker(address, env, tmp_path / "elsewhere")]
    try:
        proc = _blockseg("synth", "s.zarr", "--shape", "16", "32", "32", "--chunks", "8", "16", "16", "--scheduler",
                         address, "--quiet", cwd=tmp_path / "here")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        proc = _blockseg("evaluate", "--gt", "s.zarr/labels/nuclei", "--pred", "s.zarr/labels/nuclei", "--out", "ev",
                         "--no-png", "--scheduler", address, "--quiet", cwd=tmp_path / "here")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        _stop(procs)
    assert open_volume(tmp_path / "here" / "s.zarr").shape == (16, 32, 32)
    assert not (tmp_path / "elsewhere" / "s.zarr").exists()
    assert "avAP 1.0000" in proc.stdout


@pytest.mark.slow  # the shared LocalCluster
def test_preflight_names_a_path_workers_cannot_see(local_client, tmp_path):
    from blockseg.runtime.preflight import check_workers

    with pytest.raises(BlocksegError, match=r"worker tcp://.* cannot see .*/nowhere.zarr"):
        check_workers(local_client, inputs=[str(tmp_path / "nowhere.zarr")])
    with pytest.raises(BlocksegError, match="no worker offers the GPU resource"):
        check_workers(local_client, gpu=True)
    with pytest.raises(BlocksegError, match=r"runs blockseg .* but this driver runs 0\.0\.0-other"):
        check_workers(local_client, version="0.0.0-other")
    assert check_workers(local_client, inputs=[str(tmp_path)], outputs=[str(tmp_path / "a" / "b.zarr")]).n_workers == 2


@pytest.mark.slow  # the shared LocalCluster
def test_task_error_names_the_task_and_the_worker(local_client):
    from blockseg.runtime.cluster import task_failure

    def full(b):
        raise OSError(28, "No space left on device", f"/data/out.zarr/{b}")

    with pytest.raises(OSError) as info:
        run_blocks(full, [7], client=local_client, name="predict", progress=False, retries=0)
    line = task_failure(info.value)
    assert line.startswith("predict block 7 on worker tcp://") and line.endswith("No space left on device: /data/out.zarr/7")


@pytest.mark.slow  # predict in a subprocess, interrupted, then rerun
def test_ctrl_c_during_predict_is_one_line_exit_130_and_the_rerun_resumes(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C (the local workers get it too)."""
    import signal

    import zarr

    from blockseg import create_volume
    from blockseg.models import demo_checkpoint_path
    from blockseg.io.predictions import DONE_ARRAY

    rng = np.random.default_rng(0)
    shape = (16, 64, 96)  # six blocks: one done, then Ctrl-C
    create_volume(tmp_path / "img.zarr", shape, np.uint8, chunks=(16, 32, 32))[:] = rng.integers(0, 255, shape, dtype=np.uint8)
    argv = [sys.executable, "-m", "blockseg_cli.main", "predict", "img.zarr", demo_checkpoint_path(), "pred.zarr",
            "--block", "16", "32", "32", "--workers", "1", "--pyramid-levels", "1", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(sys.path), start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if zarr.open_array(str(tmp_path / "pred.zarr" / DONE_ARRAY), mode="r")[...].any():
                    break
            except Exception:  # not created yet
                pass
            time.sleep(0.2)
        assert proc.poll() is None, "predict finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # warnings may precede the interruption (a noise image is unlike the demo's training data, and
    # at 1 µm voxels it is resampled 2x for the network): the interruption is the one other line
    lines = [line for line in err.strip().splitlines() if not line.startswith("blockseg: warning: ")]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "interrupted" in lines[0] and "resume" in lines[0], err
    done = zarr.open_array(str(tmp_path / "pred.zarr" / DONE_ARRAY), mode="r")[...]
    assert 0 < done.sum() < done.size
    rerun = _blockseg(*argv[3:-1], cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: reused {int(done.sum())} of {done.size} blocks" in rerun.stderr, rerun.stderr


@pytest.mark.slow  # the CLI and its LocalCluster in a subprocess
def test_worker_side_error_is_one_line_naming_the_task_and_leaves_no_output(tmp_path):
    from blockseg import create_volume
    from blockseg.models import demo_checkpoint_path

    img = np.zeros((16, 32, 32), np.float32)
    img[3, 4, 5] = np.nan
    create_volume(tmp_path / "img.zarr", img.shape, np.float32, chunks=(16, 32, 32))[:] = img
    proc = _blockseg("predict", "img.zarr", demo_checkpoint_path(), "pred.zarr", "--workers", "1", "--quiet", cwd=tmp_path)
    line = _one_error_line(proc)
    # the NaN is found by the first task that reads the image: the normalisation's statistics
    # (before the prediction store exists), named by its task
    assert "block 0" in line and "NaN" in line, line
    assert not (tmp_path / "pred.zarr").exists()


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.slow  # a LocalCluster
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_gpu_cluster_passes_the_gpu_preflight():
    from blockseg.runtime.preflight import check_workers

    with dask_client(ClusterConfig(gpu=True, n_workers=1, dashboard=False), quiet=True) as client:
        assert has_gpu_workers(client)
        found = check_workers(client, gpu=True)
        assert all(w.get("cuda") for w in found.workers.values())
