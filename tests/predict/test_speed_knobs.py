"""Results independent of speed knobs (issue 34, goal 4).

Batch size, worker count (in this process or two dask worker processes), torch threads and
block shape never change predict's output beyond one storage step (uint8: one quantisation
step). The shipped ``demo`` checkpoint on a tiny volume.

The batch size used to size the automatic patch (CLI batch 2 vs the run config's 4 gave other
patches, hence other outputs). The memory budget is set here so that, sized by the run's own
batch, batch 1 would get a larger patch than batch 3: the test fails if the batch leaks into
the choice again. ``--patch auto`` aligns its stride with the block shape by design; the runs
with other block shapes pass the patch the reference chose (as a user reproducing a store
would: ``blockseg info`` prints it), which fixes the lattice whatever the blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.defaults import DEFAULT_BATCH_SIZE
from blockseg.io.volume import create_volume

SHAPE = (16, 32, 32)
BLOCK = (16, 32, 32)  # the reference's blocks (auto's patch is aligned with them)


def _budget_between_batches(monkeypatch):
    """A forward budget that the larger auto patch (18, 64, 64) fits for a batch of 2 but not 3."""
    from blockseg.predict import patch as patch_mod
    from blockseg.models import read_checkpoint, resolve_checkpoint
    from blockseg.models.base import build_model
    from blockseg.predict.engine import _activations_per_voxel

    payload = read_checkpoint(resolve_checkpoint("demo"))
    model = build_model(payload["architecture"], **payload["config"])
    apv = _activations_per_voxel(model, len(model.channels))
    budget = patch_mod.patch_memory((18, 64, 64), DEFAULT_BATCH_SIZE, apv)
    assert patch_mod.patch_memory((18, 64, 64), 3, apv) > budget  # sized by batch 3, auto would fall back to (16, 64, 64)
    monkeypatch.setattr(patch_mod, "device_budget", lambda device: budget)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    rng = np.random.default_rng(7)
    vol = create_volume(root / "img.zarr", SHAPE, np.uint8, (1, 1, 1), (8, 16, 16))
    vol.array[:] = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    return root / "img.zarr"


def _predict(image, out, **kw):
    from blockseg.predict import predict
    from blockseg.io.predictions import open_predictions

    rep = predict(image, "demo", out, progress=False, scale=1, pyramid_levels=1, **kw)
    return rep, {c: v.array[...] for c, v in open_predictions(out).items()}


@pytest.fixture(scope="module")
def reference(image, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        _budget_between_batches(mp)
        rep, arrays = _predict(image, tmp_path_factory.mktemp("ref") / "p.zarr", block_shape=BLOCK)
    finally:
        mp.undo()
    assert rep.plan.patch_choice.mode == "auto" and tuple(rep.plan.lattice.patch) == (18, 64, 64)
    return tuple(rep.plan.lattice.patch), arrays


@pytest.mark.parametrize("block", [BLOCK, (8, 16, 16), (16, 16, 32)])
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("batch", [1, 3])
def test_predict_output_does_not_depend_on_speed_knobs(image, reference, tmp_path, monkeypatch, request, batch, workers, block):
    patch, ref = reference
    _budget_between_batches(monkeypatch)
    client = request.getfixturevalue("local_client") if workers else None
    threads = 2 if block == (16, 16, 32) else 1
    rep, got = _predict(image, tmp_path / "p.zarr", block_shape=block, batch_size=batch, client=client,
                        torch_threads=threads, patch="auto" if block == BLOCK else patch)  # fmt: skip
    assert tuple(rep.plan.lattice.patch) == patch  # auto picks the same patch for every batch size
    assert set(got) == set(ref)
    for c in ref:
        step = np.abs(got[c].astype(np.int16) - ref[c].astype(np.int16)).max()
        assert step <= 1, (c, int(step))  # within one storage step


def test_the_doors_share_one_default_batch_size():
    import inspect

    import blockseg_cli.predict as cli_predict
    from blockseg.pipeline.config import PredictConfig
    from blockseg.predict import predict
    from blockseg.predict.infer import InferenceOptions, predict_array

    assert PredictConfig().batch_size == DEFAULT_BATCH_SIZE
    assert inspect.signature(predict).parameters["batch_size"].default == DEFAULT_BATCH_SIZE
    assert inspect.signature(predict_array).parameters["batch_size"].default == DEFAULT_BATCH_SIZE
    assert InferenceOptions().batch_size == DEFAULT_BATCH_SIZE
    import argparse

    parser = argparse.ArgumentParser()
    cli_predict.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["predict"]
    assert sub.parse_args(["i.zarr", "demo", "o.zarr"]).batch_size == DEFAULT_BATCH_SIZE


def test_changing_a_speed_knob_redoes_no_run_stage(tmp_path):
    from blockseg.pipeline.config import parse_config
    from blockseg.pipeline.workflow import RunLayout, fingerprints

    def fps(**predict):
        cfg = parse_config({"run_dir": str(tmp_path / "r"), "data": {"synth": {"shape": [16, 32, 32]}}, "predict": predict})
        return fingerprints(cfg, RunLayout.of(cfg))

    assert fps(batch_size=7) == fps() == fps(batch_size=DEFAULT_BATCH_SIZE)
    assert fps(tta=True)["predict"] != fps()["predict"]  # a setting that changes the output does
