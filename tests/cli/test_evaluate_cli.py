"""``blockseg evaluate`` command: option parsing, one-line errors, reports."""

from __future__ import annotations

import argparse
import importlib
import json

import numpy as np
import pytest

from blockseg.errors import BlocksegError
from blockseg.io.volume import create_volume


def _cli_module():
    try:
        return importlib.import_module("blockseg_cli.evaluate")
    except ImportError:  # not installed (or installed from a tree without it): use the source folder
        return importlib.import_module("cli.evaluate")


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    _cli_module().register(sub)
    return parser.parse_args(["evaluate", *argv])


def _volume(path, arr):
    create_volume(path, arr.shape, arr.dtype, chunks=(4, 8, 8))[...] = arr
    return str(path)


@pytest.fixture()
def volumes(tmp_path):
    gt = np.zeros((6, 16, 16), np.uint16)
    gt[1:4, 2:7, 2:7] = 1
    gt[1:5, 9:14, 8:13] = 2
    pred = np.zeros_like(gt)
    pred[1:4, 2:7, 3:8] = 5
    return {
        "gt": _volume(tmp_path / "gt.zarr", gt),
        "pred": _volume(tmp_path / "pred.zarr", pred),
        "other": _volume(tmp_path / "other.zarr", np.zeros((6, 16, 8), np.uint16)),
        "float": _volume(tmp_path / "float.zarr", gt.astype(np.float32)),
        "neg": _volume(tmp_path / "neg.zarr", np.where(gt == 2, -3, gt).astype(np.int16)),
        "tmp": tmp_path,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gt", "missing.zarr", "--pred", "{pred}"], "no such file"),
        (["--gt", "{gt}", "--pred", "{other}"], "differs from prediction shape"),
        (["--gt", "{gt}", "--pred", "{pred}", "--mask", "{other}"], "mask shape"),
        (["--gt", "{gt}", "--pred", "{float}"], "must be integers"),
        (["--gt", "{gt}", "--pred", "{pred}", "{pred}"], "--pred volume"),
        (["--gt", "{gt}", "--pred", "{pred}", "--size-ranges", "9,3"], "size-ranges"),
        (["--gt", "{gt}", "--pred", "{pred}", "--scores", "nope.csv"], "no such file"),
    ],
)
def test_bad_input_raises_one_line_error(volumes, argv, message):
    args = _parse([a.format(**volumes) for a in argv])
    with pytest.raises(BlocksegError, match=message):
        args.func(args)


def test_negative_labels_raise(volumes):
    from blockseg.evaluate import evaluate

    with pytest.raises(BlocksegError, match="non-negative"):
        evaluate(volumes["neg"], volumes["gt"])


@pytest.mark.slow  # evaluates through the CLI and draws the reports
def test_cli_run_writes_reports(volumes, capsys):
    out = volumes["tmp"] / "report"
    scores = volumes["tmp"] / "scores.csv"
    scores.write_text("id,score\n5,0.9\n")
    args = _parse(
        ["--gt", volumes["gt"], "--pred", volumes["pred"], "--out", str(out), "--workers", "1", "--no-progress",
         "--scores", str(scores), "--thresholds", "0.5,0.6", "--centroid-points"]  # fmt: skip
    )
    assert args.func(args) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert [m["tp"] for m in summary["matching"]] == [1, 1]
    assert summary["n_true"] == 2 and summary["n_pred"] == 1
    assert (out / "instances.csv").exists() and (out / "ap_vs_iou.png").exists()
    assert summary["detection"]["inside_nearest"]["tp"] == 1
    assert "avAP" in capsys.readouterr().out


def test_wired_into_main():
    main = pytest.importorskip("blockseg_cli.main")
    if "evaluate" not in main.COMMANDS:
        pytest.skip("evaluate is not yet listed in blockseg_cli.main.COMMANDS")
    parser = main.build_parser()
    args = parser.parse_args(["evaluate", "--gt", "a", "--pred", "b"])
    assert args.func.__module__.endswith("evaluate")
