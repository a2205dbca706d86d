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
from blockseg.cluster import ClusterConfig, dask_client, has_gpu_workers, run_blocks
from blockseg.synth import SynthParams, synthesize


def _square(block_id, offset=0):
    return block_id * block_id + offset


def _where(block_id):
    import os

    return os.getpid()


def test_run_blocks_on_local_cluster_returns_results_in_id_order(local_client):
    ids = [5, 0, 3, 9, 1]
    assert run_blocks(partial(_square, offset=1), ids, client=local_client, progress=False) == [26, 1, 10, 82, 2]
    # worker processes, not this one
    assert os.getpid() not in set(run_blocks(_where, range(8), client=local_client, progress=False))
    assert not has_gpu_workers(local_client)


def test_run_blocks_without_client_runs_in_process():
    assert run_blocks(_square, [2, 3], progress=False) == [4, 9]


def test_failing_block_raises_its_error(local_client):
    def boom(b):
        raise RuntimeError(f"block {b} failed")

    with pytest.raises(RuntimeError, match="block 0 failed"):
        run_blocks(boom, [0], client=local_client, progress=False, retries=0)


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
