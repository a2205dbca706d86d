"""Every stage has one shape (issue 30 goal 1): a plan and a dry run that writes nothing, and
blockwise passes described by one record (:class:`blockseg.grid.BlockTask`) run by one runner
(:func:`blockseg.runtime.cluster.run_task`)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import pytest
from _helpers import CLI_DIR

import blockseg_cli
from blockseg import BlocksegError
from blockseg.evaluate.core import EvaluatePlan, EvaluationResult, evaluate
from blockseg.grid import BlockGrid, BlockTask
from blockseg.io.predictions import save_predictions
from blockseg.io.volume import create_volume
from blockseg.runtime.cluster import run_task
from blockseg.segment import segment
from blockseg.segment.pipeline import SegmentPlan
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.train.targets import bcd_targets

# test this checkout's cli/ even when another checkout's is installed as blockseg_cli
blockseg_cli.__path__.insert(0, str(CLI_DIR))
seg_cmd = importlib.import_module("blockseg_cli.segment")
eval_cmd = importlib.import_module("blockseg_cli.evaluate")
train_cmd = importlib.import_module("blockseg_cli.train")

SHAPE = (24, 32, 32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A prediction store of synthetic nuclei and their labels as a volume."""
    root = tmp_path_factory.mktemp("stage")
    c, r = random_nuclei(SHAPE, 6, (6.0, 8.0), seed=2)
    labels = rasterise(SHAPE, c, r)
    save_predictions(root / "p.zarr", bcd_targets(labels), chunks=(8, 16, 16))
    create_volume(root / "gt.zarr", SHAPE, labels.dtype, chunks=(8, 16, 16))[...] = labels
    return root


def _written(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cli(module, name: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    return parser.parse_args([name, *argv])


def test_block_task_regions_todo_and_runner():
    task = BlockTask("t", BlockGrid((10, 10, 10), 5), abs, halo=(7, 0, 2), check=lambda b: b in (1, 2),
                     select=lambda b: b != 0)  # fmt: skip
    assert task.write_region(0) == (slice(0, 5),) * 3
    # a halo larger than the block is allowed (predict's, segment's); the read region is clipped
    assert task.read_region(0) == (slice(0, 10), slice(0, 5), slice(0, 7))
    assert task.read_region(7) == (slice(0, 10), slice(5, 10), slice(3, 10))
    assert task.todo() == [3, 4, 5, 6, 7]
    assert task.todo([0, 2, 6]) == [6]
    assert run_task(task, progress=False) == [3, 4, 5, 6, 7]
    assert run_task(task, [1, 0], progress=False) == [1, 0]  # given blocks run as given
    retried: list[int] = []
    assert run_task(BlockTask("n", BlockGrid((4,), 2), lambda b: -b), progress=False, retried=retried) == [0, -1]
    assert retried == []


@pytest.mark.slow
def test_plan_predict_is_the_dry_run(tmp_path):
    from blockseg.predict.engine import plan_predict, predict
    from blockseg.synth import SynthParams, synthesize

    image, out = str(tmp_path / "img.zarr"), str(tmp_path / "pred.zarr")
    synthesize(image, SynthParams(shape=(16, 48, 48), seed=1), chunks=(16, 48, 24), progress=False)
    before = _written(tmp_path)
    plan = plan_predict(image, "demo", out, device="cpu", block_shape=(16, 48, 24))
    assert plan.to_dict() == predict(image, "demo", out, device="cpu", block_shape=(16, 48, 24), dry_run=True).to_dict()
    assert len(plan.grid) == 2 and plan.todo == [0, 1] and _written(tmp_path) == before


@pytest.mark.slow
def test_segment_dry_run_writes_nothing_and_matches_the_run(store, tmp_path):
    out = tmp_path / "seg.zarr"
    before = _written(tmp_path)
    plan = segment(store / "p.zarr", out, block_shape=(8, 16, 16), halo=4, dry_run=True)
    assert isinstance(plan, SegmentPlan) and _written(tmp_path) == before
    text = plan.describe()
    assert "blocks: 12 of (8, 16, 16) (grid (3, 2, 2))" in text and "halo (4, 4, 4)" in text
    assert "a new run" in text and "work space" in text
    report = segment(store / "p.zarr", out, block_shape=(8, 16, 16), halo=4)
    assert report.block_shape == list(plan.grid.block_shape) and report.halo == list(plan.halo)
    assert report.n_instances > 0


def test_segment_cli_dry_run(store, tmp_path, capsys):
    args = _cli(seg_cmd, "segment", [str(store / "p.zarr"), str(tmp_path / "o.zarr"), "--block-shape", "8", "16", "16",
                                     "--halo", "2", "--dry-run", "--no-progress"])  # fmt: skip
    assert seg_cmd.run(args) == 0
    printed = capsys.readouterr().out
    assert "blocks: 12 of (8, 16, 16)" in printed and "halo (2, 2, 2)" in printed
    assert list(tmp_path.iterdir()) == []


def test_evaluate_dry_run_reads_no_block(store, monkeypatch):
    from blockseg.evaluate import core

    def no_block(*args, **kwargs):
        raise AssertionError("a dry run read a block")

    monkeypatch.setattr(core, "_block_table", no_block)
    plan = evaluate(str(store / "gt.zarr"), str(store / "gt.zarr"), points="centroids", block_voxels=8 * 16 * 16,
                    dry_run=True)  # fmt: skip
    assert isinstance(plan, EvaluatePlan)
    vol = plan.volumes[0]
    assert vol["shape"] == SHAPE and vol["blocks"] == 12 and tuple(vol["block_shape"]) == (8, 16, 16)
    assert "centroids" in vol["detection"] and "12 blocks of (8, 16, 16)" in plan.describe()
    monkeypatch.undo()
    result = evaluate(str(store / "gt.zarr"), str(store / "gt.zarr"), block_voxels=8 * 16 * 16)
    assert isinstance(result, EvaluationResult) and result.av_ap == 1.0


def test_evaluate_dry_run_refuses_what_the_run_refuses(store, tmp_path):
    zeros = np.zeros((2, 2, 2), np.uint32)
    with pytest.raises(BlocksegError, match="IoU thresholds"):
        evaluate(zeros, zeros, thresholds=[1.5], dry_run=True)
    create_volume(tmp_path / "small.zarr", (8, 16, 16), np.uint32, chunks=(8, 16, 16))
    with pytest.raises(BlocksegError, match="differs from prediction shape"):
        evaluate(str(store / "gt.zarr"), str(tmp_path / "small.zarr"), dry_run=True)


def test_evaluate_cli_dry_run_writes_nothing(store, tmp_path, capsys):
    out = tmp_path / "reports"
    args = _cli(eval_cmd, "evaluate", ["--gt", str(store / "gt.zarr"), "--pred", str(store / "gt.zarr"), "--out", str(out),
                                       "--dry-run", "--no-progress"])  # fmt: skip
    assert eval_cmd.run(args) == 0
    assert "volume 0:" in capsys.readouterr().out
    assert not out.exists()


def test_train_dry_run_writes_nothing(tmp_path):
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train import parse_config, train
    from blockseg.train.trainer import TrainPlan

    volume, out = str(tmp_path / "vol.zarr"), tmp_path / "run"
    synthesize(volume, SynthParams(shape=(16, 48, 48), seed=2), progress=False)
    cfg = parse_config({"data": {"train": [volume]}, "output": str(out), "iterations": 2, "patch": [8, 24, 24],
                        "batch_size": 1, "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8]}}})  # fmt: skip
    plan = train(cfg, dry_run=True)
    assert isinstance(plan, TrainPlan) and plan.start == 0 and plan.iterations == 2 and plan.parameters > 0
    assert plan.voxel_size == pytest.approx((0.48, 0.51, 0.51)) and not plan.resampled
    assert "a new run" in plan.describe() and not out.exists()
    with pytest.raises(BlocksegError, match="cannot resume"):
        train(cfg, resume=True, dry_run=True)


def test_train_cli_dry_run(tmp_path, capsys):
    import yaml

    from blockseg.synth import SynthParams, synthesize

    volume, out = str(tmp_path / "vol.zarr"), tmp_path / "run"
    synthesize(volume, SynthParams(shape=(16, 48, 48), seed=2), progress=False)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"train": [volume]}, "output": str(out), "iterations": 2, "patch": [8, 24, 24],
                                      "batch_size": 1, "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8]}}}))  # fmt: skip
    assert train_cmd.run(_cli(train_cmd, "train", [str(config), "--dry-run"])) == 0
    assert "a new run, to iteration 2" in capsys.readouterr().out and not out.exists()
