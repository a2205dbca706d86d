"""Schedulers' signals (issue 34, goal 3): SIGTERM -- what SLURM sends at a time limit or
pre-emption -- and SIGHUP end a command as Ctrl-C does: one line, a resumable state, exit
128 + the signal number."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import blockseg_cli

from _helpers import CLI_DIR

if str(CLI_DIR) not in blockseg_cli.__path__:  # this checkout's cli/, whatever is installed
    blockseg_cli.__path__.insert(0, str(CLI_DIR))
cli_main = importlib.import_module("blockseg_cli.main")


def _signal_self(signum):
    def run(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("the signal did not interrupt the command")

    return run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1])
def test_a_signal_ends_a_resumable_command_in_one_line(tmp_path, capsys, monkeypatch, signum):
    monkeypatch.setattr(importlib.import_module("blockseg.predict"), "predict", _signal_self(signum))
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.monotonic()
    code = cli_main.main(["predict", str(tmp_path / "img.zarr"), "demo", str(tmp_path / "p.zarr")])
    assert time.monotonic() - t0 < 5
    out, err = capsys.readouterr()
    name = signal.Signals(signum).name
    assert code == 128 + signum and out == ""
    assert err.strip().splitlines() == [
        f"blockseg predict: interrupted by {name}; running tasks cancelled (rerun the same command to resume)"
    ]
    assert os.listdir(tmp_path) == []  # nothing written, the output's claim released
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handlers are gone with it


@pytest.mark.slow
def test_sigterm_to_the_job_mid_predict_then_the_rerun_resumes(tmp_path):
    """SIGTERM to the whole process group, as SLURM sends it to a job step at its time limit."""
    import zarr

    from blockseg import create_volume
    from blockseg.io.predictions import DONE_ARRAY

    rng = np.random.default_rng(0)
    shape = (16, 64, 96)  # six blocks: one done, then SIGTERM
    create_volume(tmp_path / "img.zarr", shape, np.uint8, chunks=(16, 32, 32))[:] = rng.integers(0, 255, shape, dtype=np.uint8)
    argv = [sys.executable, "-m", "blockseg_cli.main", "predict", "img.zarr", "demo", "pred.zarr", "--block", "16",
            "32", "32", "--workers", "1", "--pyramid-levels", "1", "--scale", "1", "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if zarr.open_array(str(tmp_path / "pred.zarr" / DONE_ARRAY), mode="r")[...].any():
                    break
            except Exception:  # not created yet
                pass
            time.sleep(0.1)
        assert proc.poll() is None, "predict finished before it could be stopped"
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.strip().splitlines() if not line.startswith("blockseg: warning: ")]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert lines == ["blockseg predict: interrupted by SIGTERM; running tasks cancelled (rerun the same command to resume)"], err
    assert not (tmp_path / ".pred.zarr.blockseg-lock").exists()
    done = zarr.open_array(str(tmp_path / "pred.zarr" / DONE_ARRAY), mode="r")[...]
    assert 0 < done.sum() < done.size
    rerun = subprocess.run(argv[:-1], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed: reused {int(done.sum())} of {done.size} blocks" in rerun.stderr, rerun.stderr


def test_a_full_disk_names_the_output_being_written(tmp_path, capsys, monkeypatch):
    """ENOSPC raised by a write that names no file (as zarr's writes do): the line names the
    output the command holds."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importlib.import_module("blockseg.predict"), "predict", full)
    out = tmp_path / "p.zarr"
    code = cli_main.main(["predict", str(tmp_path / "img.zarr"), "demo", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"blockseg predict: error: No space left on device (while writing {out})"]
    assert os.listdir(tmp_path) == []
