"""Reliability: a worker killed (SIGKILL) while blocks are in flight changes nothing.

Each test runs a stage twice on its own LocalCluster (worker processes with nannies): once
undisturbed, once while a watcher thread kills a worker process as soon as the stage is
under way. The disturbed run must complete and its output must be bitwise identical.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr

from blockseg.runtime.cluster import ClusterConfig, dask_client
from blockseg.io.volume import create_volume, open_volume
from blockseg.models import demo_checkpoint_path


def _kill_a_worker_when(client, ready, timeout=120.0):
    """Start a thread that SIGKILLs one worker process once ``ready()`` is true."""
    pids = client.run(os.getpid)  # {worker address: pid}
    state = {"killed": None}

    def watch():
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if ready():
                    pid = sorted(pids.values())[0]
                    os.kill(pid, signal.SIGKILL)
                    state["killed"] = pid
                    return
            except Exception:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, state


def _done_count(path):
    try:
        return int(np.count_nonzero(zarr.open_array(f"{path}/_done", mode="r")[:]))
    except Exception:
        return 0


@pytest.mark.slow
def test_predict_survives_worker_loss(tmp_path):
    from blockseg.predict import predict

    rng = np.random.default_rng(0)
    img = create_volume(tmp_path / "img.zarr", (32, 128, 128), np.uint8, (0.48, 0.51, 0.51), (16, 32, 32))
    img.array[:] = rng.integers(60, 200, size=img.shape, dtype=np.uint8)
    kw = dict(block_shape=(16, 64, 64), progress=False, batch_size=2, channels="all")
    cfg = ClusterConfig(n_workers=2, memory_limit="2GiB", dashboard=False)
    with dask_client(cfg, quiet=True) as client:
        predict(tmp_path / "img.zarr", demo_checkpoint_path(), tmp_path / "calm.zarr", client=client, **kw)
        blocks = len(open_volume(tmp_path / "img.zarr").grid((16, 64, 64)))
        out = tmp_path / "hit.zarr"
        thread, state = _kill_a_worker_when(client, lambda: _done_count(out) >= 1)
        report = predict(tmp_path / "img.zarr", demo_checkpoint_path(), out, client=client, **kw)
        thread.join(1)
    assert state["killed"] is not None, "the worker was not killed while blocks were in flight"
    assert report.computed == blocks and _done_count(out) == blocks
    for ch in ("B", "C", "D", "cpv_z", "cpv_y", "cpv_x"):
        a = open_volume(tmp_path / "calm.zarr" / ch).array[:]
        b = open_volume(out / ch).array[:]
        assert a.dtype == b.dtype and np.array_equal(a, b), ch


def _busy(client):
    """True once some worker is processing a task."""
    return lambda: any(client.processing().values())


@pytest.fixture(scope="module")
def perfect_predictions(tmp_path_factory):
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train.targets import write_bcd_targets

    root = tmp_path_factory.mktemp("rel")
    synthesize(str(root / "s.zarr"), SynthParams(shape=(64, 128, 128), seed=4), chunks=(16, 32, 32), progress=False)
    write_bcd_targets(str(root / "s.zarr/labels/nuclei"), str(root / "pred.zarr"), block_shape=(32, 64, 64))
    return root


@pytest.mark.slow
def test_segment_and_evaluate_survive_worker_loss(perfect_predictions, tmp_path):
    from blockseg.evaluate import evaluate
    from blockseg.segment import segment

    pred = str(perfect_predictions / "pred.zarr")
    gt = str(perfect_predictions / "s.zarr/labels/nuclei")
    kw = dict(block_shape=(16, 32, 32), halo=8)
    cfg = ClusterConfig(n_workers=2, memory_limit="2GiB", dashboard=False)
    with dask_client(cfg, quiet=True) as client:
        segment(pred, str(tmp_path / "calm.zarr"), client=client, **kw)
        thread, state = _kill_a_worker_when(client, _busy(client))
        segment(pred, str(tmp_path / "hit.zarr"), client=client, **kw)
        thread.join(1)
        assert state["killed"] is not None
        a, b = open_volume(tmp_path / "calm.zarr").array[:], open_volume(tmp_path / "hit.zarr").array[:]
        assert a.max() > 10 and np.array_equal(a, b)
        assert (tmp_path / "calm.zarr/instances.csv").read_text() == (tmp_path / "hit.zarr/instances.csv").read_text()

        calm = evaluate(gt, str(tmp_path / "calm.zarr"), client=client, block_voxels=16 * 32 * 32).summary()
        thread, state = _kill_a_worker_when(client, _busy(client))
        hit = evaluate(gt, str(tmp_path / "calm.zarr"), client=client, block_voxels=16 * 32 * 32).summary()
        thread.join(1)
        assert state["killed"] is not None
    for s in (calm, hit):
        s.pop("timings_s")
    assert calm == hit and calm["n_true"] > 10
