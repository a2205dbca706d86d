"""Object storage end to end: predict, segment, evaluate and run on ``s3://`` URLs.

A local S3 server (moto's server mode, in a subprocess) is started on loopback by the tests; they skip when
``moto[server]`` or ``s3fs`` is missing (both are in the ``test`` extra). The endpoint and
credentials reach zarr / s3fs through the standard AWS environment variables, as they would
on a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from blockseg.io.volume import import_volume, open_volume
from blockseg.models import IdentityNet, save_checkpoint

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")  # moto[server]: the S3 server the tests start


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with bucket ``bsbucket``; AWS_* variables point at it."""
    import s3fs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # its own process (moto's server mode), so the server does not share the tests' GIL
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.skip("moto's S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("bsbucket")
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def on_s3(s3, tmp_path_factory):
    """A synthetic image and its ground truth imported to s3://bsbucket/ (and kept locally too)."""
    from blockseg.synth import preset_params, synthesize

    d = tmp_path_factory.mktemp("s3src")
    synthesize(str(d / "s.zarr"), preset_params("nucmm-z", shape=(16, 32, 32), seed=3), chunks=(8, 16, 16), progress=False)
    import_volume(d / "s.zarr", "s3://bsbucket/img.zarr", chunks=(8, 16, 16), pyramid_levels=1)
    import_volume(d / "s.zarr" / "labels" / "nuclei", "s3://bsbucket/gt.zarr", chunks=(8, 16, 16), labels=True,
                  pyramid_levels=1)
    ckpt = d / "sdt.pt"
    save_checkpoint(ckpt, IdentityNet(("sdt",), input_patch=(8, 16, 16)), normalisation={"offset": 100.0, "scale": 30.0})
    return d, str(ckpt)


@pytest.mark.slow  # a moto S3 server in a subprocess, every stage
def test_predict_resume_segment_evaluate_on_s3(s3, on_s3):
    from blockseg.evaluate import evaluate, write_report
    from blockseg.predict import predict
    from blockseg.io.predictions import DONE_ARRAY
    from blockseg.segment import make_decoder, segment

    d, ckpt = on_s3
    pred = "s3://bsbucket/run/pred.zarr"
    first = predict("s3://bsbucket/img.zarr", ckpt, pred, block_shape=(8, 16, 32), progress=False, pyramid_levels=2)
    assert first.computed == 4
    full = open_volume(f"{pred}/sdt")[...]
    assert open_volume(f"{pred}/sdt", level=1).shape == (8, 16, 16)  # 0.48 x 0.51 x 0.51 um: every axis halves
    # an interrupted run: two blocks lost their done-marker and their data; a rerun redoes them only
    done = zarr.open_array(f"{pred}/{DONE_ARRAY}", mode="r+")
    done[0, 0, 0] = 0
    done[1, 1, 0] = 0
    vol = open_volume(f"{pred}/sdt", mode="r+")
    vol[0:8, 0:16, :] = 0
    vol[8:16, 16:32, :] = 0
    again = predict("s3://bsbucket/img.zarr", ckpt, pred, block_shape=(8, 16, 32), progress=False, pyramid_levels=2)
    assert (again.computed, again.skipped) == (2, 2)
    np.testing.assert_array_equal(open_volume(f"{pred}/sdt")[...], full)

    seg = "s3://bsbucket/run/seg.zarr"
    report = segment(pred, seg, make_decoder("sdt", min_size=1, min_seed_size=1), block_shape=(8, 16, 32))
    assert report.n_instances > 0
    assert s3.exists("bsbucket/run/seg.zarr/instances.csv") and not s3.exists("bsbucket/run/seg.zarr.work")
    assert "image-label" in zarr.open_group(seg, mode="r").attrs["ome"]
    # the same prediction segmented locally gives the same labels
    local = str(d / "seg_local.zarr")
    segment(pred, local, make_decoder("sdt", min_size=1, min_seed_size=1), block_shape=(8, 16, 32))
    np.testing.assert_array_equal(open_volume(seg)[...], open_volume(local)[...])

    res = evaluate("s3://bsbucket/gt.zarr", seg)
    paths = write_report(res, "s3://bsbucket/run/evaluation", png=True)
    assert sorted(s3.ls("bsbucket/run/evaluation")) == [f"bsbucket/run/evaluation/{f}" for f in ("ap_vs_iou.png", "evaluation.json", "instances.csv")]
    with s3.open("bsbucket/run/evaluation/evaluation.json") as f:
        assert json.load(f)["n_true"] == res.summary()["n_true"] > 0
    assert paths["json"].startswith("s3://")
    assert not os.path.exists("s3:")  # nothing landed in a local folder named after the URL


@pytest.mark.slow  # a moto S3 server in a subprocess, every command and a run
def test_cli_and_run_read_s3(s3, on_s3, tmp_path, monkeypatch, capsys):
    import contextlib

    from blockseg.pipeline.config import parse_config
    from blockseg.pipeline.workflow import run
    from blockseg_cli.main import main

    d, ckpt = on_s3
    from blockseg_cli.main import build_parser

    build_parser()  # import every command first: `synth` binds dask_client at import, keep it unpatched
    monkeypatch.setattr("blockseg.runtime.cluster.dask_client", lambda *a, **k: contextlib.nullcontext(None))
    assert main(["info", "s3://bsbucket/img.zarr"]) == 0
    assert "voxel size 0.48x0.51x0.51 µm" in capsys.readouterr().out  # blockseg info's summary
    assert main(["predict", "s3://bsbucket/img.zarr", ckpt, "s3://bsbucket/cli/pred.zarr", "--no-progress"]) == 0
    assert main(["segment", "s3://bsbucket/cli/pred.zarr", "s3://bsbucket/cli/seg.zarr", "--decoder", "sdt", "-p", "min_size=1",
                 "-p", "min_seed_size=1", "--no-progress"]) == 0  # fmt: skip
    assert main(["evaluate", "--gt", "s3://bsbucket/gt.zarr", "--pred", "s3://bsbucket/cli/seg.zarr", "--out", "s3://bsbucket/cli/ev",
                 "--no-png", "--no-progress"]) == 0  # fmt: skip
    assert s3.exists("bsbucket/cli/ev/evaluation.json")
    # --scores reads segment's table where segment wrote it, on s3, as it reads a local copy of it
    local = tmp_path / "instances.csv"
    s3.get("bsbucket/cli/seg.zarr/instances.csv", str(local))
    for name, table in (("ev_s3", "s3://bsbucket/cli/seg.zarr/instances.csv"), ("ev_local", str(local))):
        assert main(["evaluate", "--gt", "s3://bsbucket/gt.zarr", "--pred", "s3://bsbucket/cli/seg.zarr", "--scores", table,
                     "--out", f"s3://bsbucket/cli/{name}", "--no-png", "--no-progress"]) == 0  # fmt: skip
    coco = [json.loads(s3.cat(f"bsbucket/cli/{name}/evaluation.json"))["coco"] for name in ("ev_s3", "ev_local")]
    assert coco[0] == coco[1] and coco[0]

    cfg = parse_config({
        "run_dir": str(tmp_path / "r"),
        "data": {"image": "s3://bsbucket/img.zarr", "ground_truth": "s3://bsbucket/gt.zarr", "pyramid_levels": 1},
        "model": {"checkpoint": ckpt},
        "segment": {"decoder": "sdt", "params": {"min_size": 1, "min_seed_size": 1}},
        "evaluate": {"png": False},
    })  # fmt: skip
    res = run(cfg, client=None, log=lambda m: None)
    assert res.ran == ["data", "predict", "segment", "evaluate"] and res.evaluation["n_true"] > 0
    np.testing.assert_array_equal(open_volume(res.layout.labels)[...], open_volume("s3://bsbucket/cli/seg.zarr")[...])


@pytest.mark.slow  # a moto S3 server in a subprocess
def test_overwrite_on_s3_follows_the_local_rules(s3, on_s3):
    """--overwrite on object storage: own outputs only; the new output is written complete
    beside the old one before the old one goes; an interrupted replacement leaves the old
    output, or -- once the new one was marked ready -- is rolled forward by the next attempt."""
    from blockseg.errors import BlocksegError
    from blockseg.predict import predict
    from blockseg.io.safety import NEW_TAG, READY_TAG, _sibling, prepare_output
    from blockseg.segment import make_decoder, segment

    d, ckpt = on_s3
    pred = "s3://bsbucket/ow/pred.zarr"
    predict("s3://bsbucket/img.zarr", ckpt, pred, block_shape=(8, 16, 32), progress=False, pyramid_levels=1)
    seg = "s3://bsbucket/ow/seg.zarr"
    dec = make_decoder("sdt", min_size=1, min_seed_size=1)
    segment(pred, seg, dec, block_shape=(8, 16, 32))
    first = open_volume(seg)[...]
    with pytest.raises(BlocksegError, match="already exists"):
        segment(pred, seg, dec, block_shape=(8, 16, 32))
    s3.pipe("bsbucket/ow/seg.zarr/zarr.json.note", b"mine")  # a stray object is kept or replaced with the output
    segment(pred, seg, make_decoder("sdt", min_size=2, min_seed_size=1), block_shape=(8, 16, 32), overwrite=True)
    assert not s3.exists("bsbucket/ow/seg.zarr/zarr.json.note")  # replaced as a whole, not merged
    assert [p for p in s3.ls("bsbucket/ow") if "blockseg-" in p] == []  # no sibling left behind
    second = open_volume(seg)[...]
    assert second.shape == first.shape and s3.exists("bsbucket/ow/seg.zarr/instances.csv")

    # a foreign prefix is never replaced, even with overwrite
    s3.pipe("bsbucket/ow/theirs/notes.txt", b"my thesis")
    with pytest.raises(BlocksegError, match="not written by blockseg"):
        segment(pred, "s3://bsbucket/ow/theirs", dec, block_shape=(8, 16, 32), overwrite=True)
    assert s3.cat("bsbucket/ow/theirs/notes.txt") == b"my thesis"

    # killed while writing the new output: the old output stays, the half-written sibling goes
    dead = 999_999_999
    half = _sibling(seg, NEW_TAG, dead)
    s3.pipe(half.replace("s3://", "") + "/zarr.json", b"{}")
    out = prepare_output(seg, [pred], overwrite=True)
    assert out.action == "replace" and not s3.exists(half.replace("s3://", ""))
    out.release()  # prepared, never written: its lock goes
    np.testing.assert_array_equal(open_volume(seg)[...], second)

    # killed after the new output was complete and marked ready: the next attempt finishes the swap
    segment(pred, "s3://bsbucket/ow/other.zarr", dec, block_shape=(8, 16, 32))
    ready_new = _sibling(seg, NEW_TAG, dead).replace("s3://", "")
    s3.copy("bsbucket/ow/other.zarr/", ready_new, recursive=True)
    s3.pipe(_sibling(seg, READY_TAG, dead).replace("s3://", ""), b"{}")
    s3.rm("bsbucket/ow/seg.zarr", recursive=True)  # the old output was already deleted when it died
    with pytest.raises(BlocksegError, match="already exists"):
        prepare_output(seg, [pred])  # rolled forward: the output is there again
    np.testing.assert_array_equal(open_volume(seg)[...], open_volume("s3://bsbucket/ow/other.zarr")[...])
    assert [p for p in s3.ls("bsbucket/ow") if "blockseg-" in p] == []


@pytest.mark.slow  # a moto S3 server in a subprocess
def test_one_writer_per_output_on_s3(s3):
    """The lock of an output on object storage is an object beside it, made by an exclusive
    put; a second writer is refused naming the holder, a dead holder's lock on this host is
    taken over, and the lock object goes with the lock."""
    import socket

    from blockseg.errors import BlocksegError
    from blockseg.io.safety import lock_file, prepare_output

    url = "s3://bsbucket/lock/o.zarr"
    key = lock_file(url).replace("s3://", "")
    assert key == "bsbucket/lock/.o.zarr.blockseg-lock"
    out = prepare_output(url)
    s3.invalidate_cache()
    assert json.loads(s3.cat(key))["pid"] == os.getpid()
    code = f"from blockseg.io.safety import prepare_output\nprepare_output({url!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"{url} is being written by another blockseg command (pid {os.getpid()}" in proc.stderr.splitlines()[-1]
    out.release()
    s3.invalidate_cache()
    assert not s3.exists(key)
    # a lock left by a process of this host that is gone: taken over
    s3.pipe(key, json.dumps({"host": socket.gethostname(), "pid": 999_999_999, "started": "then"}).encode())
    out = prepare_output(url)
    s3.invalidate_cache()
    assert json.loads(s3.cat(key))["pid"] == os.getpid()
    out.release()
    # one of another host cannot be judged from here: refused, naming it and the object to delete
    s3.pipe(key, json.dumps({"host": "elsewhere", "pid": 12, "started": "then"}).encode())
    with pytest.raises(BlocksegError, match=r"pid 12 on elsewhere, since then\); wait for it to finish, or delete "):
        prepare_output(url)
    s3.rm(key)


@pytest.mark.slow  # a moto S3 server in a subprocess
def test_a_table_round_trips_on_s3(s3, tmp_path):
    from blockseg import BlocksegError
    from blockseg.io.tables import read_table, write_table

    table = {"id": np.arange(1, 4, dtype=np.uint32), "score": np.array([0.5, 0.25, 1.0]), "z": np.array([1.5, 2.0, 3.25])}
    write_table(table, "s3://bsbucket/tables/t.csv", formats={"z": "%.3f"})
    write_table(table, tmp_path / "t.csv", formats={"z": "%.3f"})
    assert s3.cat("bsbucket/tables/t.csv") == (tmp_path / "t.csv").read_bytes()  # the same bytes on s3 as on disk
    back = read_table("s3://bsbucket/tables/t.csv")
    assert list(back) == ["id", "score", "z"] and all(np.array_equal(back[k], table[k]) for k in table)
    with pytest.raises(BlocksegError, match="missing.csv: no such file"):
        read_table("s3://bsbucket/tables/missing.csv")
