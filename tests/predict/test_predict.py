"""Blockwise inference: lattice, equality with the whole-volume reference, resume, CLI."""

from __future__ import annotations

import itertools
import math
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from blockseg import BlocksegError
from blockseg.io.volume import create_volume
from blockseg.models import IdentityNet, TinyConvNet, save_checkpoint
from blockseg.predict import predict, predict_array
from blockseg.grid import BlockGrid
from blockseg.predict.engine import block_layout, strip_sources
from blockseg.predict.lattice import Lattice, reflect_index, window_1d
from blockseg.io.predictions import encode_channel, open_predictions

from _helpers import stored_channels

#: one torch thread for the module's tiny networks (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

NORM = {"offset": 128.0, "scale": 64.0}
SHAPE = (23, 37, 41)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)


@pytest.fixture
def image_zarr(tmp_path, image):
    vol = create_volume(tmp_path / "img.zarr", SHAPE, np.uint8, chunks=(4, 8, 8))
    vol.array[...] = image
    return str(vol.path)


def tiny(valid=True, margin=(0, 0, 0), reps=("B", "C", "D")):
    return TinyConvNet(reps, valid=valid, input_patch=(12, 20, 20), margin=margin).eval()


# ---------------------------------------------------------------------------- lattice
def test_reflect_index_matches_numpy_pad():
    x = np.arange(7)
    idx = np.arange(-15, 22)
    padded = np.pad(x, 15, mode="reflect")[: len(idx)]
    np.testing.assert_array_equal(x[reflect_index(idx, 7)], padded)


@pytest.mark.parametrize("blending", ["gaussian", "bump", "constant"])
def test_normalised_weights_sum_to_one_everywhere(blending):
    lat = Lattice.build((30, 17, 50), (10, 9, 12), (1, 0, 2), (2, 3, 0), (3, 0, 1), blending)
    for ax in lat.axes:
        total = np.zeros(ax.size + 2 * ax.pad + ax.out)
        for t, w in zip(ax.starts, ax.weights):
            total[t + ax.pad : t + ax.pad + ax.out] += w
        np.testing.assert_allclose(total[: ax.size + 2 * ax.pad], 1.0, rtol=1e-12)
        assert ax.starts[0] == -ax.pad and ax.starts[-1] + ax.out == ax.size + ax.pad
        assert np.all(np.diff(ax.starts) <= ax.stride)
    assert window_1d(9, blending).min() > 0


def test_tiles_overlapping_is_exact():
    lat = Lattice.build((40, 40, 40), (12, 12, 12), (2, 2, 2), (3, 3, 3))
    ax = lat.axes[0]
    for a, b in [(0, 5), (7, 19), (33, 40), (16, 17)]:
        got = list(ax.tiles_overlapping(a, b))
        want = [k for k, t in enumerate(ax.starts) if t < b and t + ax.out > a]
        assert got == want


@pytest.mark.parametrize(
    "shape,patch,crop,overlap,pad,block,chunk",
    [((30, 17, 50), (10, 9, 12), (1, 0, 2), (2, 3, 0), (3, 0, 1), (6, 4, 10), (3, 2, 5)),
     ((40, 40, 40), (12, 12, 12), (2, 2, 2), (3, 3, 3), (0, 0, 0), (16, 8, 24), (8, 8, 8)),
     ((9, 33, 21), (8, 8, 8), (0, 0, 0), (4, 1, 2), (5, 2, 0), (3, 11, 7), (3, 11, 7))],
)  # fmt: skip
def test_every_tile_is_owned_by_one_block_and_strips_tile_the_core(shape, patch, crop, overlap, pad, block, chunk):
    check_layouts(shape, patch, crop, overlap, pad, block, chunk)


@pytest.mark.slow  # many random lattices
def test_layout_invariants_hold_on_random_lattices():
    # random shapes, patches, pads, blocks and chunks, snapped and overhanging lattice ends
    rng = np.random.default_rng(17)
    for _ in range(30):
        shape = tuple(int(v) for v in rng.integers(5, 40, 3))
        patch = tuple(int(v) for v in rng.integers(4, 20, 3))
        crop = tuple(int(rng.integers(0, (p - 1) // 2)) if p > 4 else 0 for p in patch)
        out = [p - 2 * c for p, c in zip(patch, crop)]
        overlap = tuple(int(rng.integers(0, o)) for o in out)
        pad = tuple(int(v) for v in rng.integers(0, 12, 3))
        chunk = tuple(int(v) for v in rng.integers(2, 12, 3))
        block = tuple(c * int(k) for c, k in zip(chunk, rng.integers(1, 4, 3)))
        check_layouts(shape, patch, crop, overlap, pad, block, chunk, snap=bool(rng.integers(0, 2)))


@pytest.mark.parametrize(
    "shape,patch,pad,block,snap",
    [((128, 512, 512), (34, 72, 136), (6, 16, 16), (64, 256, 256), False),  # the demo network, --patch auto
     ((256, 256, 256), (136, 136, 136), (0, 0, 0), (128, 128, 128), True)],  # an explicit patch, last tile snapped
)  # fmt: skip
def test_tiles_are_shared_evenly_between_blocks(shape, patch, pad, block, snap):
    # a tile belongs to the block holding its output's centre: a lattice shifted by the reflect
    # pad, or a last tile snapped back, no longer piles every tile into the first block
    lat = Lattice.build(shape, patch, (0, 0, 0), (2, 8, 8), pad, snap=snap)
    grid = BlockGrid(shape, block, 0, (32, 128, 128))
    owned = [block_layout(lat, b.core, grid.chunk_shape).tiles for b in grid]
    assert sum(math.prod(len(r) for r in t) for t in owned) == math.prod(lat.n_tiles)
    for a in range(3):  # blocks of one size own as many tiles along each axis, give or take one
        per_axis = [len(t[a]) for t in owned]
        assert max(per_axis) - min(per_axis) <= 1 and min(per_axis) >= 1, (a, per_axis)
    # and the strips (what goes through the scratch) stay thin: a neighbour's tile reaches at
    # most half an output past its block's face (the start rule let whole tiles cross faces)
    for b in grid:
        lay = block_layout(lat, b.core, grid.chunk_shape)
        for i, c, ax in zip(lay.interior, b.core, lat.axes):
            assert i.start - c.start <= ax.out // 2 and c.stop - i.stop <= ax.out // 2, (b.core, lay.interior)


def check_layouts(shape, patch, crop, overlap, pad, block, chunk, snap=True):
    lat = Lattice.build(shape, patch, crop, overlap, pad, snap=snap)
    grid = BlockGrid(shape, block, 0, chunk)
    owners = np.zeros(lat.n_tiles, dtype=int)
    for b in grid:
        lay = block_layout(lat, b.core, chunk)
        owners[np.ix_(*[np.asarray(r, dtype=int) for r in lay.tiles])] += 1
        # interior + strips cover the core exactly once (exact boxes, not chunk-rounded)
        cover = np.zeros(b.shape, dtype=int)
        for box in [lay.interior] + lay.strips:
            rel = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box, b.core))
            cover[rel] += 1
        assert (cover == 1).all()
        # what is written: pass 1 whole chunks of the interior, pass 2 the rest of the core,
        # whole chunks too; together once over the core; the held boxes lie in the interior
        cover[...] = 0
        for box in [lay.written_box] + lay.finish:
            assert all((s.start - c.start) % k == 0 and ((s.stop - c.start) % k == 0 or s.stop == n)
                       for s, c, k, n in zip(box, b.core, chunk, shape) if s.stop > s.start)  # fmt: skip
            rel = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(box, b.core))
            cover[rel] += 1
        assert (cover == 1).all()
        assert bool(lay.finish) == bool(lay.strips)
        for box in lay.held:
            assert all(i.start <= s.start and s.stop <= i.stop for s, i in zip(box, lay.interior))
        # no tile of another block reaches the interior; every own tile lies in the region
        for k in itertools.product(*[range(n) for n in lat.n_tiles]):
            out = [slice(int(a.starts[i]), int(a.starts[i]) + a.out) for a, i in zip(lat.axes, k)]
            mine = all(i in r for i, r in zip(k, lay.tiles))
            hits = all(max(o.start, s.start) < min(o.stop, s.stop) for o, s in zip(out, lay.interior))
            assert mine or not hits
            inside = all(max(o.start, 0) < min(o.stop, n) for o, n in zip(out, shape))  # (overhanging tiles may not be)
            if mine and inside:
                assert all(max(o.start, 0) >= r.start and min(o.stop, n) <= r.stop
                           for o, r, n in zip(out, lay.region, shape))  # fmt: skip
    assert (owners == 1).all()
    # pass 2's sources: exactly the blocks whose region reaches the core (brute force over all blocks)
    regions = {b.id: block_layout(lat, b.core, chunk).region for b in grid}
    for b in grid:
        want = sorted(i for i, r in regions.items()
                      if all(max(x.start, c.start) < min(x.stop, c.stop) for x, c in zip(r, b.core)))  # fmt: skip
        assert sorted(i for i, _ in strip_sources(lat, grid, b.id)) == want


# ---------------------------------------------------------------------------- reference
@pytest.mark.parametrize("crop", [(0, 0, 0), (2, 3, 1)])
def test_identity_reproduces_input_in_memory(image, crop):
    model = IdentityNet(("cpv",), input_patch=(10, 16, 14), crop=crop, margin=(1, 2, 0)).eval()
    out = predict_array(model, image, overlap=0.3)
    for c in model.channels:
        np.testing.assert_array_equal(out[c], image.astype(np.float32))


def test_predict_array_corner_is_the_network_on_reflected_input():
    # tiles start at 0 and 4 on every axis (output 8x16x16, volume 12x20x20): the corner
    # [0, 4)^3 is covered by tile (0, 0, 0) alone, whose input is the volume reflect-padded by crop
    model = tiny(valid=True)
    img = np.random.default_rng(1).normal(size=(12, 20, 20)).astype(np.float32)
    out = predict_array(model, img)
    padded = np.pad(img, 2, mode="reflect")[:12, :20, :20]
    with torch.inference_mode():
        ref = model.postprocess(model(torch.from_numpy(padded)[None, None]))[0].numpy()
    for i, c in enumerate(model.channels):
        np.testing.assert_allclose(out[c][:4, :4, :4], ref[i][:4, :4, :4], atol=1e-5)
        assert not np.allclose(out[c][:4, :4, :4], ref[i][4:8, 4:8, 4:8], atol=1e-3)


# ---------------------------------------------------------------------------- blockwise
@pytest.mark.parametrize(
    "block,valid,margin",
    [((8, 16, 16), True, (0, 0, 0)), ((4, 8, 24), True, (1, 2, 2)), ((12, 24, 8), False, (2, 3, 3)), ((24, 40, 48), True, (0, 0, 0))],
)  # fmt: skip
def test_blockwise_equals_whole_volume(tmp_path, image, image_zarr, block, valid, margin):
    model = tiny(valid, margin)
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    rep = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=block, overlap=0.25,
                  progress=False, torch_threads=1)  # fmt: skip
    # the default inference patch is "auto": the reference runs the patch and lattice it chose
    ref = predict_array(model, image, normalisation=NORM, overlap=0.25, patch=rep.plan.lattice.patch,
                        snap=rep.plan.lattice_snap)  # fmt: skip
    assert rep.computed == rep.blocks and rep.skipped == 0
    got = stored_channels(tmp_path / "o.zarr")
    for c in model.channels:
        want = encode_channel(ref[c], model.kinds[c], np.uint8).astype(int)
        assert np.abs(got[c].astype(int) - want).max() <= 1, c
        assert (got[c] == want).mean() > 0.99
    assert open_predictions(tmp_path / "o.zarr")["B"].chunks == (4, 8, 8)
    # each tile ran once; the partial sums exchanged between blocks are gone once all are done
    assert rep.patches == rep.plan.patches_whole_volume
    assert list(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["_partial"].keys()) == []


@pytest.mark.slow  # predicts random crops blockwise
@pytest.mark.parametrize("crop,block", [((0, 0, 0), (8, 16, 16)), ((2, 3, 1), (4, 8, 24)), ((1, 0, 4), (12, 40, 8))])
def test_identity_blockwise_reproduces_input(tmp_path, image, image_zarr, crop, block):
    model = IdentityNet(("cpv", "B"), input_patch=(10, 16, 14), crop=crop)
    save_checkpoint(tmp_path / "i.pt", model)
    predict(image_zarr, tmp_path / "i.pt", tmp_path / "o.zarr", block_shape=block, dtype="float32", overlap=0.4,
            progress=False)  # fmt: skip
    got = stored_channels(tmp_path / "o.zarr")
    for c in ("cpv_z", "cpv_y", "cpv_x"):
        assert got[c].dtype == np.float32
        np.testing.assert_array_equal(got[c], image.astype(np.float32))


@pytest.mark.slow  # many random volumes, each predicted blockwise
def test_identity_blockwise_reproduces_input_on_random_volumes(tmp_path):
    # property: over random volume, block and chunk shapes, margins, crops and both patch modes,
    # every voxel's partial sums (own tiles, strips, spill, held values) add up to exactly the
    # input: a missing, doubled or misplaced box would show
    rng = np.random.default_rng(23)
    for case in range(6):
        shape = tuple(int(v) for v in rng.integers(9, 34, 3))
        chunk = tuple(int(v) for v in rng.integers(3, 9, 3))
        block = tuple(c * int(k) for c, k in zip(chunk, rng.integers(1, 4, 3)))
        crop = tuple(int(v) for v in rng.integers(0, 3, 3))
        margin = tuple(int(v) for v in rng.integers(0, 6, 3))
        img = rng.integers(0, 256, shape).astype(np.uint8)
        vol = create_volume(tmp_path / f"img{case}.zarr", shape, np.uint8, chunks=chunk)
        vol.array[...] = img
        model = IdentityNet(("cpv",), input_patch=(10, 16, 14), crop=crop, margin=margin)
        save_checkpoint(tmp_path / f"i{case}.pt", model)
        patch = "auto" if case % 2 else "train"
        predict(str(vol.path), tmp_path / f"i{case}.pt", tmp_path / f"o{case}.zarr", block_shape=block, dtype="float32",
                overlap=0.4, patch=patch, progress=False, torch_threads=1)  # fmt: skip
        got = stored_channels(tmp_path / f"o{case}.zarr")
        for c in ("cpv_z", "cpv_y", "cpv_x"):
            np.testing.assert_array_equal(got[c], img.astype(np.float32), err_msg=f"{shape} {block} {chunk} {crop} {margin} {patch}")


@pytest.mark.slow  # the shared LocalCluster
def test_blockwise_on_dask_cluster_equals_in_process(tmp_path, image_zarr, local_client):
    model = tiny()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    kw = dict(block_shape=(8, 16, 24), progress=False, torch_threads=1)
    predict(image_zarr, tmp_path / "m.pt", tmp_path / "a.zarr", **kw)
    predict(image_zarr, tmp_path / "m.pt", tmp_path / "b.zarr", client=local_client, **kw)
    a, b = stored_channels(tmp_path / "a.zarr"), stored_channels(tmp_path / "b.zarr")
    for c in model.channels:
        assert np.abs(a[c].astype(int) - b[c].astype(int)).max() <= 1


@pytest.mark.slow  # predicts, interrupts and resumes
def test_resume_skips_finished_blocks(tmp_path, image_zarr):
    model = tiny()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    kw = dict(block_shape=(8, 16, 16), progress=False, torch_threads=1)
    full = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    first = stored_channels(tmp_path / "o.zarr")
    # simulate an interrupted run: forget 5 blocks' markers and corrupt those blocks' chunks
    done = zarr.open_array(str(tmp_path / "o.zarr" / "_done"), mode="r+")
    pass1 = zarr.open_array(str(tmp_path / "o.zarr" / "_pass1"), mode="r+")
    assert done[...].all() and full.patches == full.plan.patches_whole_volume  # each tile ran once
    grid = full.plan.grid
    lost = [1, 4, 7, 11, 20]
    for b in lost:
        done[grid[b].index] = pass1[grid[b].index] = 0
        for c in model.channels:
            zarr.open_array(str(tmp_path / "o.zarr" / c / "0"), mode="r+")[grid[b].core] = 7
    rerun = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    assert (rerun.computed, rerun.skipped) == (len(lost), full.blocks - len(lost))
    again = stored_channels(tmp_path / "o.zarr")
    for c in model.channels:
        np.testing.assert_array_equal(again[c], first[c])
    # everything done: nothing computed
    assert predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw).computed == 0
    # other settings: refused rather than mixed
    with pytest.raises(BlocksegError, match="other settings.*overlap"):
        predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", overlap=0.5, **kw)

@pytest.mark.slow  # predicts, interrupts and resumes
def test_resume_between_the_passes_uses_the_scratch_rows(tmp_path, image_zarr, monkeypatch):
    # interrupted in pass 2: the partial sums of every block are in the scratch; the rerun
    # computes no tile again and writes what an uninterrupted run writes
    from blockseg.predict import engine

    model = tiny(margin=(1, 2, 2))
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    kw = dict(block_shape=(8, 16, 16), progress=False, torch_threads=1)
    predict(image_zarr, tmp_path / "m.pt", tmp_path / "ref.zarr", **kw)
    finish = engine.finish_block
    calls = []

    def crash_late(job, block_id):
        calls.append(block_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the driver stopped (a failing task would just run again)
        return finish(job, block_id)

    monkeypatch.setattr(engine, "finish_block", crash_late)
    with pytest.raises(KeyboardInterrupt):
        predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    monkeypatch.setattr(engine, "finish_block", finish)
    pass1 = zarr.open_array(str(tmp_path / "o.zarr" / "_pass1"), mode="r")[...]
    done = zarr.open_array(str(tmp_path / "o.zarr" / "_done"), mode="r")[...]
    assert (pass1 | done).all() and not done.all()
    rerun = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    assert rerun.patches == 0 and 0 < rerun.computed < rerun.blocks
    a, b = stored_channels(tmp_path / "ref.zarr"), stored_channels(tmp_path / "o.zarr")
    for c in model.channels:
        np.testing.assert_array_equal(b[c], a[c])
    assert list(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["_partial"].keys()) == []


def test_tta_and_mc_dropout_channels(tmp_path, image, image_zarr):
    model = tiny()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    rep = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=(12, 24, 24), mc_samples=3,
                  dtype="float32", progress=False, torch_threads=1)  # fmt: skip
    got = stored_channels(tmp_path / "o.zarr")
    assert set(got) == {"B", "C", "D", "B_var", "C_var", "D_var"} and rep.plan.kinds["D_var"] == "prob"
    assert all(got[f"{c}_var"].min() >= 0 and got[f"{c}_var"].max() > 0 for c in "BCD")
    # TTA = mean of the 8 flipped runs of the reference
    tta = predict_array(model, image, normalisation=NORM, tta=True)
    flips = [predict_array(model, image[::sz, ::sy, ::sx], normalisation=NORM)["B"][::sz, ::sy, ::sx]
             for sz in (1, -1) for sy in (1, -1) for sx in (1, -1)]  # fmt: skip
    np.testing.assert_allclose(tta["B"], np.mean(flips, axis=0), atol=1e-5)


def test_tta_negates_vector_components(image):
    model = IdentityNet(("cpv",), input_patch=(10, 16, 14)).eval()
    out = predict_array(model, image.astype(np.float32), tta=True)
    # half of the 8 flips flip any given axis: the component averages to zero
    for c in model.channels:
        np.testing.assert_allclose(out[c], 0.0, atol=1e-4)


def test_dry_run_writes_nothing(tmp_path, image_zarr):
    save_checkpoint(tmp_path / "m.pt", tiny())
    plan = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=(8, 16, 16), dry_run=True,
                   patch="train")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()
    assert len(plan.grid) == 3 * 3 * 3 and plan.halo == (9, 17, 17)
    assert plan.patches_total == plan.patches_whole_volume and plan.memory_bytes["total"] > 0
    text = plan.describe()
    assert "blocks: 27" in text and "halo" in text and "MiB" in text and "training patch" in text
    # the default inference patch is chosen, and the choice is shown
    auto = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=(8, 16, 16), dry_run=True)
    assert auto.patch_choice.mode == "auto" and "inference patch: auto" in auto.describe()
    assert auto.to_dict()["patch_choice"]["patch"] == list(auto.lattice.patch)
    assert not (tmp_path / "o.zarr").exists()


def test_user_errors(tmp_path, image_zarr):
    save_checkpoint(tmp_path / "m.pt", tiny())
    save_checkpoint(tmp_path / "cpv.pt", IdentityNet(("cpv",), input_patch=(10, 16, 14)))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "o.zarr"
    with pytest.raises(BlocksegError, match="does not exist"):
        predict(image_zarr, tmp_path / "missing.pt", out)
    with pytest.raises(BlocksegError, match="not a blockseg checkpoint"):
        predict(image_zarr, tmp_path / "junk.pt", out)
    with pytest.raises(BlocksegError, match="not a multiple of the chunk"):
        predict(image_zarr, tmp_path / "m.pt", out, block_shape=(6, 16, 16))
    with pytest.raises(BlocksegError, match="float16 or float32"):
        predict(image_zarr, tmp_path / "cpv.pt", out, dtype="uint8")
    with pytest.raises(BlocksegError, match="no dropout|MC"):
        predict(image_zarr, tmp_path / "cpv.pt", out, mc_samples=4)
    flat = create_volume(tmp_path / "nan.zarr", (8, 16, 16), np.float32, chunks=(8, 8, 8))
    bad = np.zeros((8, 16, 16), np.float32)
    bad[5, 12, 3] = np.nan
    flat.array[...] = bad
    with pytest.raises(BlocksegError, match="NaN"):
        predict(flat.path, tmp_path / "m.pt", out, progress=False)
    zarr.create_array(str(tmp_path / "2d.zarr"), shape=(16, 16), dtype="uint8")
    with pytest.raises(BlocksegError, match="3D"):
        predict(tmp_path / "2d.zarr", tmp_path / "m.pt", tmp_path / "o2.zarr")
    (tmp_path / "taken").mkdir()  # an empty folder may be used; a foreign non-empty one never
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(BlocksegError, match="already exists and was not written by blockseg"):
        predict(image_zarr, tmp_path / "m.pt", tmp_path / "taken", overwrite=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tmp_path, image):  # pragma: no cover - GPU machines only
    model = tiny()
    ref = predict_array(model, image, normalisation=NORM)
    got = predict_array(model.cuda(), image, normalisation=NORM, device="cuda", amp=False)
    for c in model.channels:
        np.testing.assert_allclose(got[c], ref[c], atol=1e-3)


# ---------------------------------------------------------------------------- CLI
def run_cli(argv):
    """``blockseg predict ARGV`` through the real entry point (one-line errors on stderr)."""
    from blockseg_cli.main import main

    return main(["predict", *argv])


def test_cli_happy_path_and_errors(tmp_path, image_zarr, capsys, no_cluster):
    save_checkpoint(tmp_path / "m.pt", tiny(), normalisation=NORM)
    out = str(tmp_path / "o.zarr")
    assert run_cli([image_zarr, str(tmp_path / "m.pt"), out, "--block", "8", "16", "16", "--dry-run"]) == 0
    assert "blocks: 27" in capsys.readouterr().out and not Path(out).exists()
    assert run_cli([image_zarr, str(tmp_path / "m.pt"), out, "--block", "12", "24", "24", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["computed"] == report["blocks"] == 8
    assert set(open_predictions(out)) == {"B", "C", "D"}
    # exists, same settings, resume: nothing to do; --no-resume: refused
    assert run_cli([image_zarr, str(tmp_path / "m.pt"), out, "--block", "12", "24", "24", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == 0
    assert run_cli([image_zarr, str(tmp_path / "m.pt"), out, "--no-resume"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli([image_zarr, str(tmp_path / "nope.pt"), str(tmp_path / "x.zarr")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli([image_zarr, str(tmp_path / "m.pt"), str(tmp_path / "x.zarr"), "--block", "5"]) == 2
    assert "multiple of the chunk" in capsys.readouterr().err


@pytest.mark.slow  # a LocalCluster
def test_predict_refuses_to_start_without_room_for_its_scratch(tmp_path, image_zarr, monkeypatch, capsys):
    # the scratch is uncompressed (held values and partial sums): a disk without room for it is
    # refused before anything is written, in one line; room for the scratch but not for the
    # output uncompressed is a warning
    import shutil
    from collections import namedtuple

    from blockseg_cli.main import main

    model = tiny()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    kw = dict(block_shape=(8, 16, 16), progress=False, torch_threads=1)
    plan = predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", dry_run=True, **kw)
    assert plan.scratch_bytes > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12, plan.scratch_bytes - 1))
    with pytest.raises(BlocksegError, match="GiB of scratch beside"):
        predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    assert not (tmp_path / "o.zarr").exists()
    assert main(["predict", image_zarr, str(tmp_path / "m.pt"), str(tmp_path / "o.zarr"), "--block", "8", "16", "16"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "LocalCluster" not in line]
    assert len(err) == 1 and "of scratch beside" in err[0] and not (tmp_path / "o.zarr").exists()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12, plan.scratch_bytes + 1))
    with pytest.warns(UserWarning, match="not for the output uncompressed"):
        predict(image_zarr, tmp_path / "m.pt", tmp_path / "o.zarr", **kw)
    assert (tmp_path / "o.zarr").exists()
