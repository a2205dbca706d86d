"""The predict engine's fast paths: compiled kernels, inference patches larger than the training
patch (``patch="auto"``), and the GPU path (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockseg import BlocksegError
from blockseg.io.volume import create_volume
from blockseg.models import IdentityNet, TinyConvNet, save_checkpoint
from blockseg.models.base import Geometry
from blockseg.predict import predict, predict_array
from blockseg.predict.kernels import blend_tile, quantise
from blockseg.predict.lattice import Lattice
from blockseg.predict.patch import choose_patch, patch_memory
from blockseg.io.predictions import encode_channel

from _helpers import stored_channels

#: one torch thread for the module's tiny networks (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

NORM = {"offset": 128.0, "scale": 64.0}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def assert_within_a_storage_step(got: dict, ref: dict, model) -> None:
    """Stored uint8 channels equal ``ref`` (floats) encoded, within one step, in >99 % exactly."""
    for c in model.channels:
        want = encode_channel(ref[c], model.kinds[c], np.uint8).astype(int)
        assert np.abs(got[c].astype(int) - want).max() <= 1, c
        assert (got[c] == want).mean() > 0.99


def run_settings(path) -> dict:
    """The run settings predict stored in a store's provenance."""
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs["blockseg"])["predictions"]["run"]


# ---------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("kind", ["prob", "tanh"])
def test_quantiser_gives_the_bytes_of_encode_channel(kind):
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 0.8, (9, 11, 13)).astype(np.float32)
    # exact halves of a storage step (round half to even), the range ends and beyond
    v[0, 0, :8] = np.array([0.5 / 255, 1.5 / 255, 2.5 / 255, 0, 1, -0.0, 127.5 / 255, -1], np.float32)
    full = np.zeros((3, 12, 14, 16), np.float32)
    full[1, 2:11, 1:12, 3:16] = v
    view = full[1, 2:11, 1:12, 3:16]  # strided, as the engine passes it
    np.testing.assert_array_equal(quantise(view, kind), encode_channel(v, kind, np.uint8))


def test_blend_float64_is_bit_identical_to_numpy():
    rng = np.random.default_rng(2)
    w = [rng.random(n) + 0.1 for n in (6, 7, 8)]
    out = rng.random((2, 6, 7, 8)).astype(np.float32)
    acc = rng.random((2, 9, 9, 9))
    ref = acc.copy()
    ref[:, 1:6, 0:7, 2:8] += out[:, 1:6, 0:7, 0:6] * (w[0][1:6, None, None] * w[1][None, 0:7, None] * w[2][None, None, 0:6])
    blend_tile(acc, out, (1, 0, 2), (1, 0, 0), (5, 7, 6), w)
    assert np.array_equal(acc, ref)
    acc32 = np.zeros((2, 9, 9, 9), np.float32)
    blend_tile(acc32, out, (1, 0, 2), (1, 0, 0), (5, 7, 6), [x.astype(np.float32) for x in w])
    want = out[:, 1:6, 0:7, 0:6] * (w[0][1:6, None, None] * w[1][None, 0:7, None] * w[2][None, None, 0:6])
    np.testing.assert_allclose(acc32[:, 1:6, 0:7, 2:8], want, rtol=1e-6)
    assert not acc32[:, 0].any() and not acc32[:, :, :, :2].any()  # nothing outside the box


# ---------------------------------------------------------------------------- patch choice
def test_auto_patch_is_block_aligned_within_budget_and_never_below_training():
    geo = Geometry((16, 32, 32), (0, 0, 0), (0, 0, 0), (4, 4, 4))
    big = choose_patch(geo, (128, 512, 512), (64, 256, 256), (4, 4, 4), 2, 3, "auto", budget_bytes=1 << 30)
    out = [p - 0 for p in big.patch]
    assert all(o % 4 == 0 and o >= t for o, t in zip(out, geo.input_patch))
    assert all(b % (o - 4) == 0 for o, b in zip(out, (64, 256, 256)))  # stride divides the block
    assert patch_memory(big.patch, 2, 3) <= 1 << 30 and big.mode == "auto" and "auto" in big.reason
    small = choose_patch(geo, (128, 512, 512), (64, 256, 256), (4, 4, 4), 2, 3, "auto", budget_bytes=40 << 20)
    assert patch_memory(small.patch, 2, 3) <= 40 << 20 and np.prod(small.patch) < np.prod(big.patch)
    tiny = choose_patch(geo, (128, 512, 512), (64, 256, 256), (4, 4, 4), 2, 3, "auto", budget_bytes=1)
    assert tiny.patch == geo.input_patch  # nothing larger fits: the training patch
    assert choose_patch(geo, (9, 9, 9), (9, 9, 9), (4, 4, 4), 2, 3, "train").patch == geo.input_patch
    with pytest.raises(BlocksegError, match="admissible"):
        choose_patch(geo, (9, 9, 9), (9, 9, 9), (4, 4, 4), 2, 3, (17, 32, 32))


def test_auto_patch_says_it_follows_the_block_shape():
    # issue 34: --patch auto aligns its stride with the blocks, so the block shape can change the
    # patch (and the output); the choice's reason, printed and stored in provenance, says so
    geo = Geometry((16, 32, 32), (0, 0, 0), (0, 0, 0), (4, 4, 4))
    a = choose_patch(geo, (128, 512, 512), (64, 256, 256), (4, 4, 4), 2, 3, "auto", budget_bytes=1 << 30)
    b = choose_patch(geo, (128, 512, 512), (64, 192, 192), (4, 4, 4), 2, 3, "auto", budget_bytes=1 << 30)
    assert a.patch != b.patch
    assert "chosen for blocks (64, 256, 256)" in a.reason and "--patch" in a.reason
    assert "chosen for blocks" not in choose_patch(geo, (9, 9, 9), (9, 9, 9), (4, 4, 4), 2, 3, "train").reason


def test_auto_patch_on_a_resampled_grid_counts_the_tiles_each_block_reaches():
    """Resampled runs: blocks do not align with the lattice and each runs every tile reaching its
    region, so the choice ranks patches by those tiles (brute force over the lattice here)."""
    from blockseg.predict.lattice import AxisLattice
    from blockseg.predict.patch import _axis_candidates_for_regions

    geo = Geometry((16, 32, 32), (0, 0, 0), (2, 4, 4), (4, 4, 4))
    regions = [[(0, 40), (38, 77)], [(0, 120), (118, 230)], [(0, 120), (118, 230)]]  # two blocks per axis
    shape = (77, 230, 230)
    cands = _axis_candidates_for_regions(230, regions[1], 4, 4, 4, 32)

    def brute(out):  # output voxels the blocks compute along y, from the lattice the engine builds
        lat = AxisLattice.build(230, out, 0, 4, 4, "gaussian", snap=False)
        return sum(len(lat.tiles_overlapping(a, b)) for a, b in regions[1]) * out

    costs = [brute(o) for o in cands[:-1]]
    assert costs == sorted(costs) and cands[-1] == 32  # fewest computed first, the training patch last
    assert brute(cands[0]) == min(brute(o) for o in range(32, 240, 4))
    auto = choose_patch(geo, shape, (40, 120, 120), (4, 4, 4), 2, 3, "auto", budget_bytes=1 << 30, regions=regions)
    aligned = choose_patch(geo, shape, (40, 120, 120), (4, 4, 4), 2, 3, "auto", budget_bytes=1 << 30)

    def computed(patch):
        lats = [AxisLattice.build(n, p, 0, 4, m, "gaussian", snap=False) for n, p, m in zip(shape, patch, (2, 4, 4))]
        return np.prod([sum(len(lat.tiles_overlapping(a, b)) for a, b in r) * lat.out for lat, r in zip(lats, regions)])

    assert computed(auto.patch) < computed(aligned.patch) and "resampled grid" in auto.reason


def volume_and_tiny(tmp_path, shape, seed, valid=True, chunks=(4, 8, 8)):
    """A random uint8 image volume and a saved TinyConvNet checkpoint (``tmp_path / "m.pt"``)."""
    image = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    vol = create_volume(tmp_path / "img.zarr", shape, np.uint8, chunks=chunks)
    vol.array[...] = image
    model = TinyConvNet(("B", "C", "D"), valid=valid, input_patch=(12, 20, 20), margin=(1, 2, 2)).eval()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    return vol, image, model


# ---------------------------------------------------------------------------- equality
@pytest.mark.parametrize(
    "shape,block,chunks,patch,valid",
    [((23, 37, 41), (8, 16, 16), (4, 8, 8), "auto", True),
     ((19, 45, 30), (12, 24, 8), (4, 8, 8), "auto", False),
     ((21, 33, 35), (24, 40, 40), (8, 8, 8), "auto", True),
     ((17, 29, 31), (8, 16, 8), (4, 8, 8), (16, 28, 24), True)],
)  # fmt: skip
def test_larger_inference_patch_equals_predict_array(tmp_path, shape, block, chunks, patch, valid):
    vol, image, model = volume_and_tiny(tmp_path, shape, 3, valid, chunks)
    rep = predict(vol.path, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=block, patch=patch, overlap=0.25,
                  progress=False, torch_threads=1)  # fmt: skip
    used = rep.plan.lattice.patch
    assert np.prod(used) > np.prod(model.geometry.input_patch)  # larger than the training patch
    assert rep.patches == rep.plan.patches_whole_volume  # every tile once
    ref = predict_array(model, image, NORM, patch=used, overlap=0.25, snap=rep.plan.lattice_snap)
    assert_within_a_storage_step(stored_channels(tmp_path / "o.zarr"), ref, model)
    run = run_settings(tmp_path / "o.zarr")  # the choice is in the store's provenance
    assert run["patch"] == list(used) and run["patch_choice"]["patch"] == list(used)


@pytest.mark.slow  # predicts twice with other blocks
def test_a_stores_recorded_patch_reproduces_its_lattice_with_other_blocks(tmp_path):
    # the auto patch follows the block shape; giving the recorded patch with other blocks runs
    # the same lattice (it depends on the patch alone), so the two stores agree within a storage
    # step, while auto with those other blocks picks another patch
    vol, _, model = volume_and_tiny(tmp_path, (23, 37, 41), 5)
    kw = dict(overlap=0.25, progress=False, torch_threads=1)
    first = predict(vol.path, tmp_path / "m.pt", tmp_path / "a.zarr", block_shape=(8, 16, 16), **kw)
    recorded = run_settings(tmp_path / "a.zarr")["patch"]
    other = predict(vol.path, tmp_path / "m.pt", tmp_path / "b.zarr", block_shape=(12, 24, 24), dry_run=True, **kw)
    assert list(other.lattice.patch) != recorded  # auto with other blocks: another lattice
    again = predict(vol.path, tmp_path / "m.pt", tmp_path / "c.zarr", block_shape=(12, 24, 24), patch=recorded, **kw)
    assert again.plan.patch_choice.mode == "explicit" and not again.plan.lattice_snap
    assert np.array_equal(again.plan.lattice.axes[1].starts, first.plan.lattice.axes[1].starts)
    a, c = stored_channels(tmp_path / "a.zarr"), stored_channels(tmp_path / "c.zarr")
    for ch in model.channels:
        diff = np.abs(a[ch].astype(int) - c[ch].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, ch


@pytest.mark.parametrize("block", [(8, 16, 16), (12, 24, 40)])
def test_identity_stays_exact_with_auto_patch(tmp_path, block):
    shape = (23, 37, 41)
    image = np.random.default_rng(4).integers(0, 256, shape).astype(np.uint8)
    vol = create_volume(tmp_path / "img.zarr", shape, np.uint8, chunks=(4, 8, 8))
    vol.array[...] = image
    save_checkpoint(tmp_path / "i.pt", IdentityNet(("cpv", "B"), input_patch=(10, 16, 14), crop=(1, 2, 1)))
    rep = predict(vol.path, tmp_path / "i.pt", tmp_path / "o.zarr", block_shape=block, dtype="float32", overlap=0.4,
                  progress=False)  # fmt: skip
    assert rep.plan.patch_choice.mode == "auto" and not rep.plan.lattice_snap
    got = stored_channels(tmp_path / "o.zarr")
    for c in ("cpv_z", "cpv_y", "cpv_x"):
        np.testing.assert_array_equal(got[c], image.astype(np.float32))  # float64 path: exact


def test_overhanging_lattice_weights_sum_to_one():
    lat = Lattice.build((23, 37, 41), (10, 16, 14), (1, 2, 1), (3, 5, 4), (2, 0, 1), "gaussian", snap=False)
    for a in lat.axes:
        assert np.all((a.starts + a.pad) % a.stride == 0)
        total = np.zeros(a.size + 2 * a.pad + a.out)
        for k, t in enumerate(a.starts):
            total[t + a.pad : t + a.pad + a.out] += a.weights[k]
        np.testing.assert_allclose(total[a.pad : a.pad + a.size], 1.0, rtol=1e-12)


# ---------------------------------------------------------------------------- runtime
@pytest.mark.slow  # compiles the runtime, then predicts blockwise and whole
def test_compiled_runtime_equals_eager_predict_array_within_a_storage_step(tmp_path):
    vol, image, model = volume_and_tiny(tmp_path, (17, 29, 31), 6)
    rep = predict(vol.path, tmp_path / "m.pt", tmp_path / "o.zarr", block_shape=(8, 16, 16), runtime="compile",
                  progress=False, torch_threads=1)  # fmt: skip
    assert rep.plan.runtime == "compile" and "torch.compile" in rep.plan.describe()
    from blockseg.predict.engine import cached_model

    compiled = cached_model(str(tmp_path / "m.pt"), "cpu", runtime="compile")
    assert compiled._compiled_call_impl is not None  # the network that ran was compiled
    ref = predict_array(model, image, NORM, patch=rep.plan.lattice.patch, snap=rep.plan.lattice_snap)  # eager
    assert_within_a_storage_step(stored_channels(tmp_path / "o.zarr"), ref, model)
    assert run_settings(tmp_path / "o.zarr")["runtime"] == "compile"


def test_runtime_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    vol = create_volume(tmp_path / "img.zarr", (8, 16, 16), np.uint8, chunks=(4, 8, 8))
    save_checkpoint(tmp_path / "m.pt", TinyConvNet(("B",), input_patch=(8, 12, 12)), normalisation=NORM)
    with pytest.raises(BlocksegError, match="runtime: must be one of 'eager' or 'compile', got 'onnx'"):  # the options model's line
        predict(vol.path, tmp_path / "m.pt", tmp_path / "o.zarr", runtime="onnx", progress=False)
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(BlocksegError, match="needs a C.. compiler"):
        predict(vol.path, tmp_path / "m.pt", tmp_path / "o.zarr", runtime="compile", device="cpu", progress=False)
    assert not (tmp_path / "o.zarr").exists()


# ---------------------------------------------------------------------------- GPU
@cuda
def test_gpu_predict_matches_cpu_within_a_storage_step(tmp_path):  # pragma: no cover - GPU machines only
    shape = (23, 37, 41)
    image = np.random.default_rng(5).integers(0, 256, shape).astype(np.uint8)
    vol = create_volume(tmp_path / "img.zarr", shape, np.uint8, chunks=(4, 8, 8))
    vol.array[...] = image
    model = TinyConvNet(("B", "C", "D"), valid=True, input_patch=(12, 20, 20)).eval()
    save_checkpoint(tmp_path / "m.pt", model, normalisation=NORM)
    kw = dict(block_shape=(8, 16, 16), progress=False, amp=False)
    predict(vol.path, tmp_path / "m.pt", tmp_path / "cpu.zarr", device="cpu", **kw)
    predict(vol.path, tmp_path / "m.pt", tmp_path / "gpu.zarr", device="cuda", **kw)
    a, b = stored_channels(tmp_path / "cpu.zarr"), stored_channels(tmp_path / "gpu.zarr")
    for c in a:
        assert np.abs(a[c].astype(int) - b[c].astype(int)).max() <= 1, c


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_resident_path_equals_host_path(dtype):
    # the GPU path's code (slab, patches and accumulator as torch tensors) run on the CPU
    from blockseg.predict.infer import InferenceOptions, make_lattice, predict_region
    from blockseg.predict.lattice import read_reflected

    image = np.random.default_rng(6).integers(0, 256, (13, 21, 19)).astype(np.float32)
    model = TinyConvNet(("B", "D"), valid=True, input_patch=(12, 20, 20), margin=(1, 1, 1)).eval()
    lat = make_lattice(model, image.shape, (12, 24, 20), 0.25, snap=False)

    def read(lo, hi):
        return read_reflected(image.__getitem__, image.shape, lo, hi) / 64

    core = (slice(2, 11), slice(0, 21), slice(5, 19))
    opts = InferenceOptions(batch_size=3)
    host = predict_region(model, read, lat, core, 2, opts, prefetch=False, dtype=dtype)
    dev = predict_region(model, read, lat, core, 2, opts, prefetch=True, dtype=dtype, on_device=True)
    assert dev.dtype == host.dtype == np.dtype(dtype) and dev.shape == host.shape
    np.testing.assert_allclose(dev, host, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_prediction_channels_are_written_without_the_empty_chunk_check(tmp_path):
    # zarr's default skips chunks equal to the fill value after comparing each chunk with it,
    # which costs more than the write; predict writes dense channels, all-zero chunks included
    import zarr

    from blockseg.predict.engine import open_dense

    zarr.create_array(str(tmp_path / "a"), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint8", fill_value=0)
    arr = open_dense(str(tmp_path / "a"))
    assert arr.config.write_empty_chunks
    arr[...] = 0
    assert sorted(p.name for p in (tmp_path / "a" / "c").iterdir()) == ["0", "1"]  # both chunks stored
    # predict's store: an all-zero prediction (sigmoid(-1000)) still gives every chunk
    img = create_volume(tmp_path / "img.zarr", (8, 16, 16), np.uint8, chunks=(4, 8, 8))
    ck = tmp_path / "id.pt"
    save_checkpoint(ck, IdentityNet(("B",), input_patch=(8, 8, 8)), normalisation={"offset": 1000.0, "scale": 1.0})
    with pytest.warns(UserWarning):  # constant input
        predict(str(img.path), ck, tmp_path / "o.zarr", block_shape=(4, 8, 8), progress=False, torch_threads=1)
    b = zarr.open_array(str(tmp_path / "o.zarr" / "B" / "0"), mode="r")
    assert not b[...].any() and b.nchunks_initialized == b.nchunks
