"""Bad input: one line naming the problem, exit code 2, no traceback, nothing existing modified.

Each case runs the real CLI in-process on a small workspace of valid and invalid volumes, and
compares a digest of every file in the workspace before and after.
"""

import errno
import os

import numpy as np
import pytest
import yaml

from blockseg.io.volume import create_label_volume, create_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg_cli.main import main

from _helpers import tree_digest


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    shape, chunks = (16, 32, 32), (16, 32, 32)
    img = create_volume(root / "img.zarr", shape, np.uint8, (1.0, 0.5, 0.5), chunks)
    img.array[:] = 100
    gt = create_label_volume(root / "img.zarr", "gt", shape, np.uint32, (1.0, 0.5, 0.5), chunks=chunks)
    gt.array[4:10, 4:20, 4:20] = 1
    other = create_volume(root / "other.zarr", (16, 32, 48), np.uint32, None, chunks)
    other.array[:] = 0
    flt = create_volume(root / "float.zarr", shape, np.float32, None, chunks)
    flt.array[:] = 0.5
    neg = create_volume(root / "neg.zarr", shape, np.int32, None, chunks)
    neg.array[:] = -1
    nan = create_volume(root / "nan.zarr", shape, np.float32, None, chunks)
    nan.array[:] = np.nan
    np.save(root / "flat.npy", np.zeros((16, 16), np.uint8))
    np.save(root / "empty.npy", np.zeros((0, 16, 16), np.uint8))
    np.save(root / "small.npy", np.ones((4, 8, 8), np.uint8))
    (root / "note.txt").write_text("not a volume\n")
    save_checkpoint(root / "cpv.pt", IdentityNet(("cpv",), input_patch=(8, 16, 16)))
    save_checkpoint(root / "bcd.pt", IdentityNet(("B", "C", "D"), input_patch=(8, 16, 16)))
    (root / "bad_key.yaml").write_text(yaml.safe_dump({"run_dir": str(root / "r1"), "data": {"image": str(root / "img.zarr")}, "segmnt": {}}))
    (root / "bad_type.yaml").write_text(yaml.safe_dump({"run_dir": str(root / "r2"), "data": {"image": str(root / "img.zarr")}, "segment": {"halo": "wide"}}))
    (root / "wrong_rep.yaml").write_text(
        yaml.safe_dump({"run_dir": str(root / "r3"), "data": {"image": str(root / "img.zarr")}, "model": {"checkpoint": str(root / "cpv.pt")}})
    )
    return root


CASES = {
    # name: (argv with {ws} placeholders, words the message must contain)
    "missing path": (["info", "{ws}/nothere.zarr"], "no such file"),
    "not a zarr": (["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/note.txt", "--out", "{ws}/ev"], "not a zarr"),
    "wrong ndim": (["import", "{ws}/flat.npy", "{ws}/flat.zarr"], "3D"),
    "gt/pred shape mismatch": (["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/other.zarr", "--out", "{ws}/ev"], "shape"),
    "mask shape mismatch": (
        ["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/img.zarr/labels/gt", "--mask", "{ws}/other.zarr", "--out", "{ws}/ev"],
        "shape",
    ),
    "non-integer labels": (["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/float.zarr", "--out", "{ws}/ev"], "integers"),
    "negative labels": (["evaluate", "--gt", "{ws}/img.zarr/labels/gt", "--pred", "{ws}/neg.zarr", "--out", "{ws}/ev"], "non-negative"),
    "NaN in image": (["predict", "{ws}/nan.zarr", "{ws}/bcd.pt", "{ws}/nan_pred.zarr", "--workers", "1"], "NaN"),
    "empty volume": (["import", "{ws}/empty.npy", "{ws}/empty.zarr"], "volume shape must be ≥ 1"),
    "block not a multiple of chunks": (["info", "{ws}/img.zarr", "--block", "10", "10", "10"], "multiple of the chunk"),
    "checkpoint missing": (["predict", "{ws}/img.zarr", "{ws}/none.pt", "{ws}/p.zarr"], "does not exist"),
    "checkpoint wrong format": (["predict", "{ws}/img.zarr", "{ws}/note.txt", "{ws}/p.zarr"], "not a blockseg checkpoint"),
    "wrong representation for the decoder": (["run", "{ws}/wrong_rep.yaml"], "needs channel"),
    "unknown config key": (["run", "{ws}/bad_key.yaml"], "segmnt: unknown key"),
    "wrong type in config": (["run", "{ws}/bad_type.yaml"], "segment.halo"),
    "output exists": (["import", "{ws}/small.npy", "{ws}/img.zarr"], "exists"),
    "output parent is a file": (["synth", "{ws}/note.txt/x.zarr", "--shape", "8", "16", "16"], "parent directory"),
    "not a prediction store": (["segment", "{ws}/img.zarr", "{ws}/s.zarr"], "prediction"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_modified(ws, capsys, name):
    argv, words = CASES[name]
    before = tree_digest(ws)
    rc = main([a.replace("{ws}", str(ws)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err, err
    # the error is one line, the last one (a cluster may have said where it runs before)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"blockseg {argv[0]}: error: ")
    assert words.lower() in errors[0].lower(), err
    after = tree_digest(ws)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing existing modified


def test_unreachable_scheduler(ws, capsys):
    rc = main(["synth", str(ws / "s.zarr"), "--shape", "8", "16", "16", "--scheduler", "tcp://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot reach the dask scheduler" in err and err.count("\n") == 0


def test_disk_full_is_one_line(ws, capsys, monkeypatch):
    """A write failing with ENOSPC (simulated) ends in one line and exit 2, not a traceback."""
    import zarr.storage

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ws / "full.zarr"))

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    before = tree_digest(ws)
    rc = main(["import", str(ws / "small.npy"), str(ws / "full.zarr")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "No space left on device" in err and err.count("\n") == 0, err
    assert {k: v for k, v in tree_digest(ws).items() if k in before} == before
