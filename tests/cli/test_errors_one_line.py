"""Failures from outside blockseg end in one line (issue 33): damaged metadata, object storage.

Each case runs the real CLI in-process and asserts exit status 2, exactly one stderr line
``blockseg CMD: error: ...`` naming the problem, and that nothing was written (a digest of the
local workspace; the bucket's listing). The object-storage cases start moto's S3 server on
loopback (as tests/io/test_s3.py does) and never contact any other address: instance metadata and
credential files are switched off in the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.io.volume import create_label_volume, create_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg_cli.main import main

from _helpers import tree_digest


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def _one_line(err: str, command: str) -> str:
    """The only error line, last on stderr, no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"blockseg {command}: error: "), err
    return errors[0]


def _edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Valid volumes, a prediction store, a checkpoint, and copies with damaged metadata."""
    from blockseg.predict import predict

    root = tmp_path_factory.mktemp("garbled")
    shape, chunks = (16, 32, 32), (16, 32, 32)
    img = create_volume(root / "img.zarr", shape, np.uint8, (1.0, 0.5, 0.5), chunks)
    img.array[:] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    gt = create_label_volume(root / "img.zarr", "gt", shape, np.uint32, (1.0, 0.5, 0.5), chunks=chunks)
    gt.array[4:10, 4:20, 4:20] = 1
    save_checkpoint(root / "sdt.pt", IdentityNet(("sdt",), input_patch=(8, 16, 16)))
    predict(str(root / "img.zarr"), str(root / "sdt.pt"), str(root / "pred.zarr"), progress=False)

    def damaged(name: str, source: str, damage) -> None:
        shutil.copytree(root / source, root / name)
        damage(root / name)

    damaged("group_not_utf8.zarr", "img.zarr", lambda d: (d / "zarr.json").write_bytes(b"\xff\xfe\x00garbage\x81"))
    damaged("level_truncated.zarr", "img.zarr", lambda d: (d / "0" / "zarr.json").write_text('{"zarr_format": 3, "node_ty'))
    damaged("level_list.zarr", "img.zarr", lambda d: (d / "0" / "zarr.json").write_text("[1, 2, 3]"))
    damaged("multiscales_str.zarr", "img.zarr",
            lambda d: _edit_json(d / "zarr.json", lambda m: m["attributes"]["ome"].update(multiscales="oops")))  # fmt: skip
    damaged("scale_text.zarr", "img.zarr", lambda d: _edit_json(
        d / "zarr.json",
        lambda m: m["attributes"]["ome"]["multiscales"][0]["datasets"][0].update(coordinateTransformations=[{"type": "scale", "scale": ["a", "b", "c"]}]),
    ))  # fmt: skip
    damaged("pred_channel.zarr", "pred.zarr", lambda d: (d / "sdt" / "zarr.json").write_bytes(b"\x89PNG\r\n"))
    damaged("pred_group.zarr", "pred.zarr", lambda d: (d / "zarr.json").write_text("{'single': 'quotes'}"))
    damaged("pred_attr_list.zarr", "pred.zarr",
            lambda d: _edit_json(d / "zarr.json", lambda m: m["attributes"]["blockseg"].update(predictions=[1])))  # fmt: skip
    damaged("pred_attr_decoder.zarr", "pred.zarr",
            lambda d: _edit_json(d / "zarr.json", lambda m: m["attributes"]["blockseg"]["predictions"].update(decoder=5)))  # fmt: skip
    damaged("gt_damaged.zarr", "img.zarr", lambda d: (d / "labels" / "gt" / "0" / "zarr.json").write_bytes(b"\x00\x01"))
    v2 = zarr.create_array(root / "v2.zarr", shape=shape, dtype="uint8", chunks=chunks, zarr_format=2)
    v2[:] = 1
    (root / "v2.zarr" / ".zarray").write_text('{"chunks": [16, 32')
    (root / "garbled.npy").write_bytes(b"\x93NUMPY\x09\x00garbage")
    (root / "garbled.tif").write_bytes(b"II*\x00" + b"\x00" * 12)
    (root / "run_damaged").mkdir()
    (root / "run_damaged" / "run.json").write_text('{"config": {"name": "x"')  # a run record cut short
    return root


GARBLED = {
    # name: (argv with {ws}, words the line must contain)
    "group metadata not UTF-8": (["info", "{ws}/group_not_utf8.zarr"], "group_not_utf8.zarr/zarr.json: metadata is not UTF-8"),
    "level metadata truncated": (["info", "{ws}/level_truncated.zarr"], "level_truncated.zarr/0/zarr.json: metadata is not valid JSON"),
    "level metadata not an object": (["info", "{ws}/level_list.zarr"], "level_list.zarr/0/zarr.json: metadata is JSON but not an object"),
    "zarr v2 .zarray truncated": (["info", "{ws}/v2.zarr"], "v2.zarr/.zarray: metadata is not valid JSON"),
    "multiscales of the wrong type": (["info", "{ws}/multiscales_str.zarr"], "OME-Zarr metadata is malformed"),
    "scale that is text": (["info", "{ws}/scale_text.zarr"], "OME-Zarr metadata is malformed"),
    "npy header garbled": (["info", "{ws}/garbled.npy"], "not a readable .npy file"),
    "tiff garbled": (["info", "{ws}/garbled.tif"], "not a readable .tif file"),
    "run record damaged": (["info", "{ws}/run_damaged"], "run_damaged/run.json: the run record does not parse"),
    "predict: image metadata": (["predict", "{ws}/level_truncated.zarr", "{ws}/sdt.pt", "{ws}/out_p.zarr"], "level_truncated.zarr/0/zarr.json"),
    "segment: prediction group metadata": (["segment", "{ws}/pred_group.zarr", "{ws}/out_s.zarr"], "pred_group.zarr/zarr.json: metadata is not valid JSON"),
    "segment: prediction channel metadata": (["segment", "{ws}/pred_channel.zarr", "{ws}/out_s.zarr"], "pred_channel.zarr/sdt/zarr.json: metadata is not UTF-8"),
    "info: prediction store attribute of the wrong type": (
        ["info", "{ws}/pred_attr_list.zarr"], "damaged prediction store metadata: blockseg.predictions is list, not an object",
    ),
    "segment: prediction store decoder of the wrong type": (
        ["segment", "{ws}/pred_attr_decoder.zarr", "{ws}/out_s.zarr"], "blockseg.predictions.decoder is int, not an object",
    ),
    "evaluate: ground truth metadata": (
        ["evaluate", "--gt", "{ws}/gt_damaged.zarr/labels/gt", "--pred", "{ws}/img.zarr/labels/gt", "--out", "{ws}/out_e"],
        "gt_damaged.zarr/labels/gt/0/zarr.json",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GARBLED))
def test_damaged_metadata_is_one_line_exit_2_nothing_written(ws, capsys, name):
    argv, words = GARBLED[name]
    before = tree_digest(ws)
    rc, err = _run(capsys, [a.replace("{ws}", str(ws)) for a in argv])
    assert rc == 2, err
    line = _one_line(err, argv[0])
    assert words in line, line
    assert tree_digest(ws) == before  # nothing written, nothing changed


def test_debug_keeps_the_traceback(ws, capsys):
    rc, err = _run(capsys, ["--debug", "info", str(ws / "group_not_utf8.zarr")])
    assert rc == 2
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("blockseg info: error: ") and "metadata is not UTF-8" in err.splitlines()[-1]


def test_training_log_line_cut_short_does_not_break_the_plot(tmp_path):
    """A run killed while appending to train_log.jsonl leaves half a line; the loss plot drawn at
    the end of a resumed run skips it instead of failing after training finished."""
    from blockseg.train.trainer import plot_log

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"iteration": 1, "loss": 0.5}\n{"iteration": 2, "lo\n[1]\n{"iteration": 3, "loss": 0.4}\n')
    plot_log(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_storage_failure_lines_from_service_errors():
    """s3fs raises OSErrors from botocore's ClientError; the code decides the line (no server needed)."""
    botocore = pytest.importorskip("botocore.exceptions")
    from blockseg.io.access import explain, storage_failure

    def raised(code: str, wrap=PermissionError) -> BaseException:
        inner = botocore.ClientError({"Error": {"Code": code, "Message": "The message.", "BucketName": "bk"}}, "GetObject")
        outer = wrap("The message.")
        outer.__cause__ = inner
        return outer

    assert storage_failure(raised("AccessDenied"), "s3://bk/x").startswith("access denied by object storage (s3://bk/x) (AccessDenied)")
    assert "rejected the credentials" in storage_failure(raised("SignatureDoesNotMatch"))
    assert storage_failure(raised("NoSuchBucket", FileNotFoundError)) == "bucket 'bk' does not exist"
    assert "no credentials" in storage_failure(botocore.NoCredentialsError())
    assert "cannot reach object storage at http://10.9.9.9:9000" in storage_failure(
        botocore.EndpointConnectionError(endpoint_url="http://10.9.9.9:9000/bk/x.zarr")
    )  # fmt: skip
    assert storage_failure(PermissionError("local file")) is None  # a local error is not the store's
    assert storage_failure(KeyError("x")) is None
    assert "a JSON file blockseg reads does not parse (Expecting value" in explain(json.JSONDecodeError("Expecting value", "x", 0))


def test_worker_without_credentials_names_the_block_and_exits_2(ws, capsys, monkeypatch):
    """Credentials the driver has but a dask worker lacks: the task's failure names the block,
    the worker and what to set, exit 2 (the environment's fault, not a bug)."""
    botocore = pytest.importorskip("botocore.exceptions")
    import importlib

    from blockseg.runtime.cluster import task_failure

    exc = botocore.NoCredentialsError()
    exc.blockseg_task, exc.blockseg_worker = "predict block 3", "tcp://10.0.0.5:4567"
    assert task_failure(exc).startswith("predict block 3 on worker tcp://10.0.0.5:4567 failed: no credentials for object storage: set AWS_")

    def no_credentials(*args, **kwargs):
        raise exc

    monkeypatch.setattr(importlib.import_module("blockseg.predict"), "predict", no_credentials)
    rc, err = _run(capsys, ["predict", str(ws / "img.zarr"), str(ws / "sdt.pt"), str(ws / "never.zarr")])
    assert rc == 2, err
    assert "predict block 3 on worker tcp://10.0.0.5:4567 failed: no credentials" in _one_line(err, "predict")


# ----------------------------------------------------------------------------- object storage
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_moto(env_extra: dict) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {**os.environ, **env_extra}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.skip("moto's S3 server did not start")
            time.sleep(0.2)


def _admin(port: int):
    """A filesystem with explicit test credentials, unaffected by the environment the cases change."""
    import s3fs

    return s3fs.S3FileSystem(key="test", secret="test", client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
                             skip_instance_cache=True)  # fmt: skip


@pytest.fixture(scope="module")
def servers(ws):
    """Two local S3 servers: ``open`` accepts any credentials (bucket ``bsb`` holds img.zarr),
    ``strict`` checks them (moto's IAM: the key ``test`` is unknown there). Skipped without
    s3fs or moto[server] (both in the ``test`` extra)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    open_server, open_port = _start_moto({})
    strict_server, strict_port = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    denied_server, denied_port = _start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        fs = _admin(open_port)
        fs.call_s3("create_bucket", Bucket="bsb")
        fs.put(str(ws / "img.zarr"), "bsb/img.zarr", recursive=True)
        yield {"open": open_port, "strict": strict_port, "denied": denied_port, "denied_key": _user_without_rights(denied_port), "fs": fs}
    finally:
        for s in (open_server, strict_server, denied_server):
            s.terminate()
            s.wait(timeout=30)


def _user_without_rights(port: int) -> tuple[str, str]:
    """On a server that checks after 3 free requests: a bucket, then a user with a key and no policy."""
    boto3 = pytest.importorskip("boto3")
    kw = {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    boto3.client("s3", **kw).create_bucket(Bucket="bsb")
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """Set the AWS environment of one case: ``aws(port, credentials=True|False|"wrong")``.

    Credential files, profiles and instance metadata are switched off, so nothing but the
    local server is ever asked; s3fs's and blockseg's per-process caches are cleared."""
    s3fs = pytest.importorskip("s3fs")

    import blockseg.io.access

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    def setup(port: int, credentials=True) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        if credentials:
            key, secret = credentials if isinstance(credentials, tuple) else ("test", "test")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        s3fs.S3FileSystem.clear_instance_cache()
        blockseg.io.access._probed.clear()

    yield setup
    s3fs.S3FileSystem.clear_instance_cache()
    blockseg.io.access._probed.clear()


S3_CASES = {
    # name: (server, credentials, argv with {ws}, words the line must contain)
    "no credentials, s3 input": ("open", False, ["info", "s3://bsb/img.zarr"], "no credentials for object storage (s3://bsb/img.zarr)"),
    "no credentials, s3 output": (
        "open", False, ["predict", "{ws}/img.zarr", "{ws}/sdt.pt", "s3://bsb/out.zarr"], "no credentials for object storage (s3://bsb/out.zarr)",
    ),
    "no credentials, segment input": ("open", False, ["segment", "s3://bsb/pred.zarr", "{ws}/out_s.zarr"], "no credentials"),
    "no credentials, evaluate report": (
        "open", False, ["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/img.zarr/labels/gt", "--out", "s3://bsb/ev"], "no credentials",
    ),
    "wrong credentials, s3 input": ("strict", True, ["info", "s3://bsb/img.zarr"], "object storage rejected the credentials (s3://bsb/img.zarr) (InvalidAccessKeyId"),
    "wrong credentials, s3 output": (
        "strict", True, ["predict", "{ws}/img.zarr", "{ws}/sdt.pt", "s3://bsb/out.zarr"], "rejected the credentials",
    ),
    "credentials without permission, s3 input": ("denied", "denied_key", ["info", "s3://bsb/img.zarr"], "access denied by object storage (s3://bsb/img.zarr)"),
    "credentials without permission, s3 output": (
        "denied", "denied_key", ["predict", "{ws}/img.zarr", "{ws}/sdt.pt", "s3://bsb/out.zarr"], "access denied by object storage",
    ),
    "no such bucket, output": (
        "open", True, ["predict", "{ws}/img.zarr", "{ws}/sdt.pt", "s3://nobucket/out.zarr"], "bucket 'nobucket' does not exist",
    ),
    "no such bucket, input": ("open", True, ["info", "s3://nobucket/img.zarr"], "bucket 'nobucket' does not exist"),
    "unreachable endpoint": ("closed", True, ["info", "s3://bsb/img.zarr"], "cannot reach object storage (s3://bsb/img.zarr) at http://127.0.0.1:"),
}  # fmt: skip


@pytest.mark.slow  # three moto S3 servers in subprocesses
@pytest.mark.parametrize("name", list(S3_CASES))
def test_object_storage_failure_is_one_line_exit_2_nothing_written(ws, servers, aws, capsys, name):
    server, credentials, argv, words = S3_CASES[name]
    port = _free_port() if server == "closed" else servers[server]
    aws(port, servers[credentials] if isinstance(credentials, str) else credentials)
    before, listing = tree_digest(ws), sorted(servers["fs"].find("bsb"))
    rc, err = _run(capsys, [a.replace("{ws}", str(ws)) for a in argv])
    assert rc == 2, err
    line = _one_line(err, argv[0])
    assert words in line, line
    assert tree_digest(ws) == before
    servers["fs"].invalidate_cache()
    assert sorted(servers["fs"].find("bsb")) == listing  # nothing written to the bucket either
    assert not os.path.exists("s3:")


@pytest.mark.slow  # three moto S3 servers in subprocesses
def test_object_storage_with_credentials_still_works(ws, servers, aws, capsys):
    """The probe does not get in the way: the same commands with credentials succeed."""
    aws(servers["open"], True)
    rc, err = _run(capsys, ["info", "s3://bsb/img.zarr"])
    assert rc == 0, err
