"""Reliability: the driver of ``blockseg run`` killed (SIGKILL) mid-stage, then rerun.

The run is started as a real ``blockseg run`` subprocess in its own process group, so that the
kill takes its LocalCluster (nanny and worker processes) with it, as a crashed login node or an
OOM-killed job would. The rerun must redo only what was not finished and write the same bytes
as an undisturbed run of the same config.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
import zarr

from blockseg import BlocksegError
from blockseg.pipeline.config import load_config
from blockseg.io.volume import open_volume
from blockseg.pipeline.workflow import plan, run

from _helpers import CLI_DIR, REPO

N_PREDICT_BLOCKS = 2 * 2 * 2  # 32x128x128 in blocks of 16x64x64
CHANNELS = ("B", "C", "D", "cpv_z", "cpv_y", "cpv_x")


def _write_config(path: Path, run_dir: Path) -> Path:
    raw = {
        "run_dir": str(run_dir),
        "data": {"synth": {"shape": [32, 128, 128], "seed": 21}, "chunks": [16, 64, 64]},
        "model": {"checkpoint": "demo"},
        "predict": {"block_shape": [16, 64, 64], "channels": "all"},
        "segment": {"block_shape": [16, 64, 64], "halo": 8},
        "evaluate": {"png": False},
        "cluster": {"workers": 2, "memory_limit": "2GiB"},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli_env(tmp: Path) -> dict:
    """PYTHONPATH that imports this checkout's library and CLI (whatever is installed)."""
    shim = tmp / "clipath"
    shim.mkdir(exist_ok=True)
    if not (shim / "blockseg_cli").exists():
        (shim / "blockseg_cli").symlink_to(CLI_DIR)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run_until(cmd: list[str], env: dict, ready, timeout: float = 240.0) -> None:
    """Start ``cmd`` in a new process group; SIGKILL the whole group once ``ready()`` is true."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill point: {proc.stderr.read().decode()[-2000:]}")
            if time.time() - t0 > timeout:
                pytest.fail("the kill point was not reached in time")
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its LocalCluster
        proc.wait()
        proc.stderr.close()
    # nothing of the killed run survives to write into the run directory afterwards
    deadline = time.time() + 10
    while time.time() < deadline:
        left = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == proc.pid:
                    left.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                pass
        if not left:
            return
        time.sleep(0.1)
    pytest.fail(f"processes of the killed run are still alive: {left}")


def _done_markers(run_dir: Path) -> int:
    try:
        return int(np.count_nonzero(zarr.open_array(str(run_dir / "predictions.zarr" / "_done"), mode="r")[:]))
    except Exception:  # not created yet, or being created
        return 0


def _record(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / f"{stage}.json").read_text())


def _outputs(run_dir: Path) -> dict:
    """Every output a run leaves: arrays as bytes, tables as text, the evaluation without timings."""
    out = {}
    for c in CHANNELS:
        a = open_volume(run_dir / "predictions.zarr" / c).array[:]
        out[f"predictions/{c}"] = (a.dtype.str, a.tobytes())
    labels = open_volume(run_dir / "image.zarr/labels/blockseg").array[:]
    out["labels"] = (labels.dtype.str, labels.tobytes())
    out["instances.csv"] = (run_dir / "image.zarr/labels/blockseg/instances.csv").read_text()
    ev = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    ev.pop("timings_s", None)
    ev["config"].pop("inputs")  # paths of this run directory
    out["evaluation.json"] = ev
    out["evaluation/instances.csv"] = (run_dir / "evaluation" / "instances.csv").read_text()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, local_client):
    """An undisturbed run of the config: (its run directory, its outputs)."""
    root = tmp_path_factory.mktemp("calm")
    cfg = load_config(_write_config(root / "run.yaml", root / "run"))
    res = run(cfg, client=local_client, log=lambda m: None)
    assert res.stages["predict"]["result"]["computed"] == N_PREDICT_BLOCKS
    out = _outputs(root / "run")
    assert int(np.frombuffer(out["labels"][1], out["labels"][0]).max()) > 5  # nuclei were found
    return root / "run", out


@pytest.mark.slow
def test_driver_killed_mid_predict_resumes_only_unfinished_blocks(tmp_path, reference, local_client):
    run_dir = tmp_path / "run"
    cfg_file = _write_config(tmp_path / "run.yaml", run_dir)
    cmd = [sys.executable, "-m", "blockseg_cli.main", "run", str(cfg_file)]
    _run_until(cmd, _cli_env(tmp_path), lambda: _done_markers(run_dir) >= 1)

    finished = _done_markers(run_dir)
    assert 1 <= finished < N_PREDICT_BLOCKS, finished
    assert _record(run_dir, "data")["status"] == "done"
    assert _record(run_dir, "predict")["status"] == "running"
    assert not (run_dir / "stages" / "segment.json").exists()
    cfg = load_config(cfg_file)
    assert plan(cfg) == {"data": "skip", "predict": "resume", "segment": "run", "evaluate": "run"}
    with pytest.raises(BlocksegError, match="not complete"):
        plan(cfg, only="segment")  # an interrupted stage is never taken as an input

    res = run(cfg, client=local_client, log=lambda m: None)
    pred = res.stages["predict"]
    assert pred["action"] == "resume" and pred["status"] == "done"
    assert pred["result"]["skipped"] == finished
    assert pred["result"]["computed"] == N_PREDICT_BLOCKS - finished
    assert res.stages["data"]["action"] == "skipped"
    assert _outputs(run_dir) == reference[1]


@pytest.mark.slow
def test_driver_killed_mid_segment_redoes_the_stage(tmp_path, reference, local_client, monkeypatch):
    """Segment keeps no per-block progress: a killed segment stage is redone whole, and its
    half-written output is never taken for a finished one."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)  # a finished run
    cfg_file = _write_config(tmp_path / "run.yaml", run_dir)
    cfg = load_config(cfg_file)

    # 1. SIGKILL while the seed pass writes its chunks
    cmd = [sys.executable, "-m", "blockseg_cli.main", "run", str(cfg_file), "--from", "segment"]
    labels_dir = run_dir / "image.zarr/labels"  # a redo writes beside the old output, then swaps
    _run_until(cmd, _cli_env(tmp_path), lambda: any(labels_dir.glob("*blockseg*.work/seeds/c")))
    assert _record(run_dir, "segment")["status"] == "running"
    assert _record(run_dir, "evaluate")["status"] == "done"  # the previous run's record ...
    assert plan(cfg) == {"data": "skip", "predict": "skip", "segment": "resume", "evaluate": "run"}  # ... is not trusted
    with pytest.raises(BlocksegError, match="segment is not complete"):
        plan(cfg, only="evaluate")
    res = run(cfg, client=local_client, log=lambda m: None)
    assert res.stages["segment"]["action"] == "resume" and res.ran == ["segment", "evaluate"]
    assert _outputs(run_dir) == reference[1]

    # 2. the latest possible crash: the label volume fully written, the instance table not yet
    from blockseg.segment import pipeline

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # what a driver dying here leaves behind

    monkeypatch.setattr(pipeline, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, from_stage="segment", client=local_client, log=lambda m: None)
    labels = open_volume(run_dir / "image.zarr/labels/blockseg").array[:]
    assert labels.max() > 0  # the output is there ...
    assert _record(run_dir, "segment")["status"] == "running"  # ... but not finished
    assert plan(cfg)["segment"] == "resume" and plan(cfg)["evaluate"] == "run"
    monkeypatch.undo()
    res = run(cfg, client=local_client, log=lambda m: None)
    assert res.ran == ["segment", "evaluate"]
    assert _outputs(run_dir) == reference[1]


@pytest.mark.slow
def test_interrupted_before_the_markers_existed_restarts_predict(tmp_path, reference, local_client):
    """A driver killed after creating the prediction store but before its done-marker array:
    the resumed stage starts predict afresh instead of failing on an unresumable store."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    cfg = load_config(_write_config(tmp_path / "run.yaml", run_dir))
    shutil.rmtree(run_dir / "predictions.zarr" / "_done")
    rec = _record(run_dir, "predict")
    rec["status"] = "running"
    (run_dir / "stages" / "predict.json").write_text(json.dumps(rec))
    assert plan(cfg)["predict"] == "resume"
    res = run(cfg, client=local_client, log=lambda m: None)
    assert res.stages["predict"]["action"] == "resume"
    assert res.stages["predict"]["result"]["computed"] == N_PREDICT_BLOCKS
    assert _outputs(run_dir) == reference[1]
