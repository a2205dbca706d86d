"""Regenerate docs/guide/bad-input.md: what the user gets for each bad input from outside blockseg.

Every case runs the real CLI (``python -m blockseg_cli.main ...``, a fresh process, as a user
would) in a scratch workspace and records the exit status, how many lines it printed on stderr
and the last of them. The cases are damaged metadata, object storage that refuses (moto's S3
server on loopback; skipped without ``moto[server]``) and crafted files that would run code if
unpickled (a marker file must not appear)::

    PYTHONPATH=. python experiments/bad_input_table.py            # writes docs/guide/bad-input.md
    PYTHONPATH=. python experiments/bad_input_table.py --check    # also exit 1 if a case misbehaves

A case misbehaves when it exits other than 2, prints more than one line without ``--debug``,
writes anything or runs the planted code. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "guide" / "bad-input.md"


class RunsCode:
    """Unpickled, it runs ``exec`` -- here creating a marker file; any code could stand there."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# ----------------------------------------------------------------------------- workspace
def _edit_json(path: Path, change) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def build_workspace(ws: Path) -> None:
    """Valid volumes, a prediction store, a checkpoint, a training config; damaged and crafted copies."""
    import torch
    import yaml
    import zarr

    from blockseg.io.volume import create_label_volume, create_volume
    from blockseg.models import IdentityNet, save_checkpoint
    from blockseg.predict import predict
    from blockseg.synth import SynthParams, synthesize

    shape, chunks = (16, 32, 32), (16, 32, 32)
    img = create_volume(ws / "img.zarr", shape, np.uint8, (1.0, 0.5, 0.5), chunks)
    img.array[:] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    gt = create_label_volume(ws / "img.zarr", "gt", shape, np.uint32, (1.0, 0.5, 0.5), chunks=chunks)
    gt.array[4:10, 4:20, 4:20] = 1
    save_checkpoint(ws / "sdt.pt", IdentityNet(("sdt",), input_patch=(8, 16, 16)))
    predict(str(ws / "img.zarr"), str(ws / "sdt.pt"), str(ws / "pred.zarr"), progress=False)
    synthesize(str(ws / "vol.zarr"), SynthParams(shape=(16, 48, 48), seed=5), chunks=(16, 48, 48), progress=False)

    def damaged(name: str, source: str, damage) -> None:
        shutil.copytree(ws / source, ws / name)
        damage(ws / name)

    damaged("group_not_utf8.zarr", "img.zarr", lambda d: (d / "zarr.json").write_bytes(b"\xff\xfe\x00garbage\x81"))
    damaged("level_truncated.zarr", "img.zarr", lambda d: (d / "0" / "zarr.json").write_text('{"zarr_format": 3, "node_ty'))
    damaged("multiscales_str.zarr", "img.zarr",
            lambda d: _edit_json(d / "zarr.json", lambda m: m["attributes"]["ome"].update(multiscales="oops")))  # fmt: skip
    damaged("pred_channel.zarr", "pred.zarr", lambda d: (d / "sdt" / "zarr.json").write_bytes(b"\x89PNG\r\n"))
    damaged("pred_attr_decoder.zarr", "pred.zarr",
            lambda d: _edit_json(d / "zarr.json", lambda m: m["attributes"]["blockseg"]["predictions"].update(decoder=5)))  # fmt: skip
    (ws / "run_damaged").mkdir()
    (ws / "run_damaged" / "run.json").write_text('{"config": {"name": "x"')
    damaged("gt_damaged.zarr", "img.zarr", lambda d: (d / "labels" / "gt" / "0" / "zarr.json").write_bytes(b"\x00\x01"))
    v2 = zarr.create_array(ws / "v2.zarr", shape=shape, dtype="uint8", chunks=chunks, zarr_format=2)
    v2[:] = 1
    (ws / "v2.zarr" / ".zarray").write_text('{"chunks": [16, 32')
    (ws / "garbled.npy").write_bytes(b"\x93NUMPY\x09\x00garbage")
    (ws / "garbled.tif").write_bytes(b"II*\x00" + b"\x00" * 12)

    # crafted files: each would create its marker when unpickled the unsafe way
    marker = ws / "MARKER"
    torch.save({"iteration": 1, "optimizer": RunsCode(marker)}, ws / "crafted.pt")
    (ws / "crafted_raw.pt").write_bytes(pickle.dumps({"iteration": 1, "x": RunsCode(marker)}, protocol=5))
    objects = np.empty((2, 2, 2), dtype=object)
    objects[0, 0, 0] = RunsCode(marker)
    np.save(ws / "objects.npy", objects, allow_pickle=True)
    (ws / "objects.zarr").mkdir()
    (ws / "objects.zarr" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4, 4, 4], "chunks": [4, 4, 4], "dtype": "|O", "compressor": None, "fill_value": 0,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C",
    }))  # fmt: skip
    (ws / "objects.zarr" / "0.0.0").write_bytes(pickle.dumps(RunsCode(marker)))
    (ws / "tagged.yaml").write_text(f'run_dir: r\ndata:\n  image: !!python/object/apply:builtins.exec ["open({str(marker)!r}, \'w\').close()"]\n')

    def train_config(name: str, **model) -> None:
        cfg = {
            "data": {"train": ["vol.zarr"], "target_context": 4},
            "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}, **model},
            "output": f"{name}", "iterations": 2, "patch": [8, 24, 24], "batch_size": 1, "threads": 1,
        }  # fmt: skip
        (ws / f"{name}.yaml").write_text(yaml.safe_dump(cfg))

    for name, source in (("run_crafted", "crafted.pt"), ("run_raw", "crafted_raw.pt")):
        (ws / name).mkdir()
        shutil.copy(ws / source, ws / name / "resume.pt")
        train_config(name)
    train_config("run_init", init="crafted.pt")


# ----------------------------------------------------------------------------- object storage
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(extra_env: dict) -> tuple[subprocess.Popen, int] | None:
    """moto's S3 server on 127.0.0.1 (None without moto[server])."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return None
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **extra_env})  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    return None


def aws_env(port: int | None, credentials: bool) -> dict:
    """The environment of one object-storage case: only the local server is ever asked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                "AWS_CONFIG_FILE": "/nonexistent/config", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port or _free_port()}"})  # fmt: skip
    if credentials:
        key, secret = credentials if isinstance(credentials, tuple) else ("test", "test")
        env.update({"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    return env


def user_without_rights(port: int) -> tuple[str, str]:
    """On a server that checks after 3 free requests: a bucket, then a user with a key and no policy."""
    import boto3

    kw = {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1", "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    boto3.client("s3", **kw).create_bucket(Bucket="bsb")
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


# ----------------------------------------------------------------------------- cases
#: (group, case, argv, object storage: None | (server, credentials))
CASES = [
    ("Damaged metadata", "OME-Zarr group metadata is not UTF-8", ["info", "group_not_utf8.zarr"], None),
    ("Damaged metadata", "a pyramid level's zarr.json is cut short", ["info", "level_truncated.zarr"], None),
    ("Damaged metadata", "zarr v2 .zarray cut short", ["info", "v2.zarr"], None),
    ("Damaged metadata", "OME multiscales of the wrong type", ["info", "multiscales_str.zarr"], None),
    ("Damaged metadata", "npy header garbled", ["info", "garbled.npy"], None),
    ("Damaged metadata", "TIFF garbled", ["info", "garbled.tif"], None),
    ("Damaged metadata", "predict: image metadata damaged", ["predict", "level_truncated.zarr", "sdt.pt", "out.zarr"], None),
    ("Damaged metadata", "segment: a prediction channel's metadata damaged", ["segment", "pred_channel.zarr", "seg.zarr"], None),
    ("Damaged metadata", "segment: the store's decoder attribute of the wrong type", ["segment", "pred_attr_decoder.zarr", "seg.zarr"], None),
    ("Damaged metadata", "info: a run directory's run.json cut short", ["info", "run_damaged"], None),
    ("Damaged metadata", "evaluate: ground truth metadata damaged",
     ["evaluate", "--gt", "gt_damaged.zarr/labels/gt", "--pred", "img.zarr/labels/gt", "--out", "ev"], None),
    ("Damaged metadata", "the same with --debug (traceback kept)", ["--debug", "info", "group_not_utf8.zarr"], None),
    ("Object storage", "input, no credentials", ["info", "s3://bsb/img.zarr"], ("open", False)),
    ("Object storage", "output, no credentials", ["predict", "img.zarr", "sdt.pt", "s3://bsb/out.zarr"], ("open", False)),
    ("Object storage", "segment input, no credentials", ["segment", "s3://bsb/pred.zarr", "seg.zarr"], ("open", False)),
    ("Object storage", "evaluate report, no credentials",
     ["evaluate", "--gt", "img.zarr/labels/gt", "--pred", "img.zarr/labels/gt", "--out", "s3://bsb/ev"], ("open", False)),
    ("Object storage", "input, wrong credentials", ["info", "s3://bsb/img.zarr"], ("strict", True)),
    ("Object storage", "output, wrong credentials", ["predict", "img.zarr", "sdt.pt", "s3://bsb/out.zarr"], ("strict", True)),
    ("Object storage", "input, credentials without permission", ["info", "s3://bsb/img.zarr"], ("denied", "user")),
    ("Object storage", "output, credentials without permission", ["predict", "img.zarr", "sdt.pt", "s3://bsb/out.zarr"], ("denied", "user")),
    ("Object storage", "output in a bucket that does not exist", ["predict", "img.zarr", "sdt.pt", "s3://nobucket/out.zarr"], ("open", True)),
    ("Object storage", "endpoint unreachable", ["info", "s3://bsb/img.zarr"], ("closed", True)),
    ("Files that would run code", "train --resume: resume.pt holds a code-running object",
     ["train", "run_crafted.yaml", "--resume", "--no-progress"], None),
    ("Files that would run code", "train --resume: resume.pt is a plain pickle", ["train", "run_raw.yaml", "--resume", "--no-progress"], None),
    ("Files that would run code", "predict: crafted checkpoint", ["predict", "img.zarr", "crafted.pt", "out.zarr"], None),
    ("Files that would run code", "info: crafted checkpoint", ["info", "crafted.pt"], None),
    ("Files that would run code", "train: crafted model.init checkpoint", ["train", "run_init.yaml", "--no-progress"], None),
    ("Files that would run code", "zarr v2 array of pickled objects", ["info", "objects.zarr"], None),
    ("Files that would run code", "npy of pickled objects", ["info", "objects.npy"], None),
    ("Files that would run code", "run config with a !!python tag", ["run", "tagged.yaml"], None),
]  # fmt: skip


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cases(ws: Path, jobs: list[tuple[list[str], dict]], parallel: int = 2) -> list[dict]:
    """Run CLI invocations, each in a fresh process, ``parallel`` at a time.

    A runner process imports the CLI and its heavy dependencies once (doing no work), then forks
    one child per case: each starts from that pristine state (no caches, no threads), with its
    own environment and working directory, and its stderr captured at the file descriptor. The
    result is what separate ``blockseg`` processes print, without paying the imports every time.
    """
    spec = ws.parent / f"{ws.name}.jobs.json"
    spec.write_text(json.dumps({"ws": str(ws), "jobs": jobs, "parallel": parallel}))
    proc = subprocess.run([sys.executable, __file__, "--runner", str(spec)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"case runner failed: {proc.stderr[-2000:]}")
    return json.loads(spec.with_suffix(".out.json").read_text())


def _runner(spec_path: str) -> int:
    """The forking runner of :func:`run_cases` (``--runner SPEC``)."""
    import dask  # noqa: F401  - imported before forking, as blockseg would import them
    import distributed  # noqa: F401
    import tifffile  # noqa: F401
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import blockseg.evaluate  # noqa: F401
    import blockseg.segment  # noqa: F401
    from blockseg_cli.main import main as cli

    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    spec = json.loads(Path(spec_path).read_text())
    ws, jobs = Path(spec["ws"]), spec["jobs"]
    results: list = [None] * len(jobs)
    running: dict[int, tuple[int, str, float]] = {}

    def start(i: int) -> None:
        argv, env = jobs[i]
        err = str(ws.parent / f"{ws.name}.case{i}.err")
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the case: a fresh blockseg process in all but the imports
            rc = 70
            try:
                os.chdir(ws)
                os.environ.clear()
                os.environ.update(env)
                fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                try:
                    rc = int(cli(argv) or 0)
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 1
                except BaseException:  # a traceback, as the interpreter would print it
                    import traceback

                    traceback.print_exc()
                    rc = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        running[pid] = (i, err, t0)

    pending = list(range(len(jobs)))
    while pending or running:
        while pending and len(running) < spec["parallel"]:
            start(pending.pop(0))
        pid, status = os.wait()
        i, err, t0 = running.pop(pid)
        lines = [ln for ln in Path(err).read_text(errors="replace").splitlines() if ln.strip()]
        Path(err).unlink()
        results[i] = {"rc": os.waitstatus_to_exitcode(status), "lines": len(lines), "last": lines[-1] if lines else "",
                      "seconds": time.perf_counter() - t0}  # fmt: skip
    Path(spec_path).with_suffix(".out.json").write_text(json.dumps(results))
    return 0


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT), help="markdown file to write")
    ap.add_argument("--check", action="store_true", help="exit 1 if a case misbehaves")
    ap.add_argument("--runner", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runner:
        return _runner(args.runner)
    t_start = time.perf_counter()
    ws = Path(tempfile.mkdtemp(prefix="bad-input-")) / "ws"
    ws.mkdir()
    servers: dict = {}
    try:
        build_workspace(ws)
        base_env = {**aws_env(None, False), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        if any(c[3] for c in CASES):
            for name, extra in (("open", {}), ("strict", {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}), ("denied", {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})):
                started = start_moto(extra)
                if started is not None:
                    servers[name] = started
            if "open" in servers:
                import s3fs

                fs = s3fs.S3FileSystem(key="test", secret="test", skip_instance_cache=True,
                                       client_kwargs={"endpoint_url": f"http://127.0.0.1:{servers['open'][1]}", "region_name": "us-east-1"})  # fmt: skip
                fs.call_s3("create_bucket", Bucket="bsb")
                fs.put(str(ws / "img.zarr"), "bsb/img.zarr", recursive=True)
            user = user_without_rights(servers["denied"][1]) if "denied" in servers else None
        before = _digest(ws)

        jobs, index = [], []
        for group, name, argv, storage in CASES:
            if storage is None:
                env = base_env
            else:
                server, credentials = storage
                if server != "closed" and server not in servers:
                    index.append(None)  # no moto[server]: skipped
                    continue
                credentials = user if credentials == "user" else credentials
                env = {**aws_env(None if server == "closed" else servers[server][1], credentials), "PYTHONPATH": base_env["PYTHONPATH"]}
            index.append(len(jobs))
            jobs.append((argv, env))
        done = run_cases(ws, jobs)
        results = [None if k is None else done[k] for k in index]
        written = sorted(set(_digest(ws)) - set(before)) + sorted(k for k, v in before.items() if _digest(ws).get(k) != v)
        code_ran = (ws / "MARKER").exists()
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(ws.parent, ignore_errors=True)

    bad = []
    rows, group = [], None
    for (g, name, argv, storage), res in zip(CASES, results):
        if g != group:
            rows.append(f"| **{g}** | | | | |")
            group = g
        if res is None:
            rows.append(f"| {_cell(name)} | `blockseg {' '.join(argv)}` | skipped (no moto[server]) | | |")
            continue
        last = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", res["last"]).replace(f"{ws}/", "")  # as typed
        rows.append(f"| {_cell(name)} | `blockseg {_cell(' '.join(argv))}` | {res['rc']} | {res['lines']} | `{_cell(last)}` |")
        debug = argv[0] == "--debug"
        if res["rc"] != 2 or (res["lines"] != 1 and not debug) or ": error: " not in res["last"]:
            bad.append(f"{name}: exit {res['rc']}, {res['lines']} stderr lines, {res['last']!r}")
    if written:
        bad.append(f"files written or changed in the workspace: {written[:5]}")
    if code_ran:
        bad.append("a crafted file ran its code (the marker exists)")
    seconds = time.perf_counter() - t_start
    text = "\n".join([
        "# Bad input from outside blockseg: what the user gets",
        "",
        "Regenerated by `PYTHONPATH=. python experiments/bad_input_table.py` (do not edit by hand): each",
        "case runs the real CLI in a fresh process in a scratch workspace; *exit* is its status,",
        "*lines* the number of lines it printed on stderr, and the last column the last of them.",
        "Object storage is moto's S3 server on 127.0.0.1 (\"wrong credentials\": a server that checks",
        "them; \"without permission\": a user of that server with no policy); credential files and",
        "instance metadata are switched off. Relative paths are as typed.",
        "",
        f"After all cases: files written or changed in the workspace: {len(written)}; planted code ran: {'yes' if code_ran else 'no'}.",
        f"{len(CASES)} cases, {seconds:.0f} s on {os.cpu_count()} cores.",
        "",
        "| case | command | exit | lines | what the user gets |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "More bad inputs (paths, shapes, configs, outputs) are covered by `tests/cli/test_bad_input.py`,",
        "`tests/cli/test_errors_one_line.py` and `tests/io/test_untrusted.py`.",
        "",
    ])  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}: {len(CASES)} cases in {seconds:.0f} s", file=sys.stderr)
    for line in bad:
        print(f"MISBEHAVES: {line}", file=sys.stderr)
    return 1 if (bad and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
