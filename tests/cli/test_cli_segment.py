"""The ``segment`` subcommand, driven through argparse without editing cli/main.py."""

from __future__ import annotations

import argparse
import json

import pytest

from blockseg import BlocksegError
from blockseg.io.volume import open_volume
from blockseg.io.predictions import save_predictions
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.train.targets import bcd_targets
import importlib

import blockseg_cli

from _helpers import CLI_DIR

# test this checkout's cli/ even when another checkout's is installed as blockseg_cli
blockseg_cli.__path__.insert(0, str(CLI_DIR))
seg_cmd = importlib.import_module("blockseg_cli.segment")


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    seg_cmd.register(sub)
    return parser.parse_args(["segment", *argv])


def test_cli_segment_runs_in_process(tmp_path, capsys, no_cluster):
    c, r = random_nuclei((24, 32, 32), 6, (6.0, 8.0), seed=2)
    save_predictions(tmp_path / "p.zarr", bcd_targets(rasterise((24, 32, 32), c, r)), chunks=(8, 16, 16))
    args = parse([str(tmp_path / "p.zarr"), str(tmp_path / "o.zarr"), "--block-shape", "8", "16", "16",
                  "--halo", "8", "-p", "seed_d=0.3", "-p", "min_size=32", "--json", "--no-progress"])  # fmt: skip
    assert seg_cmd.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    labels = open_volume(tmp_path / "o.zarr").array[:]
    assert report["n_instances"] == labels.max() > 0


def test_cli_segment_bad_parameter(tmp_path):
    c, r = random_nuclei((8, 16, 16), 1, (3.0, 4.0), seed=2)
    save_predictions(tmp_path / "p.zarr", bcd_targets(rasterise((8, 16, 16), c, r)))
    args = parse([str(tmp_path / "p.zarr"), str(tmp_path / "o.zarr"), "-p", "nonsense=1"])
    with pytest.raises(BlocksegError, match="unknown parameter"):
        seg_cmd.run(args)
    for bad, words in (("fg_b=1.5", "fg_b must be between 0 and 1, got 1.5"), ("min_size=-4", "min_size must be >= 0"),
                       ("min_seed_size=2.5", "whole number")):  # fmt: skip
        with pytest.raises(BlocksegError, match=words):
            seg_cmd.run(parse([str(tmp_path / "p.zarr"), str(tmp_path / "o.zarr"), "--set", bad]))
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(SystemExit):
        parse(["a", "b", "-p", "fg_b"])


def test_segment_refuses_to_start_without_the_work_space_it_needs(tmp_path, monkeypatch):
    """Seed code, height and every block's saved solution must fit beside OUT: a full disk is a
    one-line refusal before anything is written, not a failure halfway through a large volume."""
    import shutil
    from collections import namedtuple

    from blockseg.grid import BlockGrid
    from blockseg.segment import segment
    from blockseg.segment.pipeline import work_bytes

    c, r = random_nuclei((16, 32, 32), 3, (4.0, 6.0), seed=2)
    save_predictions(tmp_path / "p.zarr", bcd_targets(rasterise((16, 32, 32), c, r)), chunks=(8, 16, 16))
    need = work_bytes(BlockGrid((16, 32, 32), (8, 16, 16), 0, (8, 16, 16)), (8, 8, 8))
    # 5 bytes per voxel of the volume + 12 per voxel of each of the 8 blocks' core + halo regions
    # (clipped at the volume: 16 x 24 x 24), padded by 2 on each side, and a quarter more of
    # those for later rounds' deltas and compaction (uncompressed: an upper bound)
    assert need == 5 * 16 * 32 * 32 + 12 * 8 * (16 + 4) * (24 + 4) * (24 + 4) * 5 // 4
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - need + 1, need - 1))
    with pytest.raises(BlocksegError, match=r"segment needs about .* GiB of work space beside .*o\.zarr .* GiB free"):
        segment(tmp_path / "p.zarr", tmp_path / "o.zarr", block_shape=(8, 16, 16), halo=8)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.work").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12 - need, need))
    assert segment(tmp_path / "p.zarr", tmp_path / "o.zarr", block_shape=(8, 16, 16), halo=8).n_instances > 0
