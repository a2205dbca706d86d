"""Per-volume percentile normalisation (blockseg.predict.normalise): statistics, transfer between
intensity encodings, the zero volume, old checkpoints, training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import zarr

from blockseg.errors import BlocksegWarning
from blockseg.io.volume import create_volume
from blockseg.models import TinyConvNet, demo_checkpoint_path, read_checkpoint, save_checkpoint
from blockseg.predict.normalise import (
    array_statistics,
    histogram_percentiles,
    merge_histograms,
    box_histogram,
    percentile_metadata,
    resolve_array,
    sample_step,
    volume_statistics,
)
from blockseg.predict import predict
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.segment import make_decoder, segment_array

torch.set_num_threads(1)


# ---------------------------------------------------------------------------- helpers
def blob_image(shape=(24, 48, 48), n=10, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Bright balls (radius 4-5) on a dim, noisy background, in [0, 1]; and their labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    img = np.full(shape, 0.1)
    lab = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        c = rng.uniform([5, 6, 6], np.array(shape) - [5, 6, 6])
        r = rng.uniform(4, 5)
        ball = ((zz - c[0]) / 0.8) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < r * r
        ball &= lab == 0
        lab[ball] = i
        img[ball] = 0.8
    img = img + rng.normal(0, 0.03, shape)
    return np.clip(img, 0, 1), lab


def threshold_net_checkpoint(path, normalisation: dict) -> str:
    """A hand-set network: ``sdt = tanh(4 - 8 x)`` of the normalised input ``x``.

    Bright voxels (above half the 1-99.8 % range) are inside nuclei. Its segmentation depends
    on the input only through the normalisation, which is what these tests are about.
    """
    net = TinyConvNet(("sdt",), width=1, valid=True, input_patch=(12, 20, 20), dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.conv1.weight[0, 0, 1, 1, 1] = 1.0
        net.conv2.weight[0, 0, 1, 1, 1] = -8.0
        net.conv2.bias[0] = 4.0
    save_checkpoint(path, net, normalisation=normalisation, voxel_size=[1.0, 1.0, 1.0])
    return str(path)


def write(path, data, voxel_size=(1.0, 1.0, 1.0)) -> str:
    vol = create_volume(path, data.shape, data.dtype, voxel_size, chunks=(12, 24, 24))
    vol.array[...] = data
    return str(path)


def predict_and_segment(image_path, ckpt, out, decoder=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = predict(image_path, ckpt, out, block_shape=(12, 24, 24), progress=False, pyramid_levels=1)
    vols = open_predictions(out)
    ch = read_channels(vols, (slice(None),) * 3)
    seg = segment_array(ch, decoder or make_decoder("sdt", min_size=20))
    msgs = [str(w.message) for w in caught if issubclass(w.category, BlocksegWarning)]
    return seg, report, msgs


# ---------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("block", [(5, 7, 9), (13, 40, 3), (30, 50, 60)])
def test_blockwise_statistics_equal_whole_volume(dtype, block):
    rng = np.random.default_rng(1)
    a = (rng.gamma(2.0, 25.0, (29, 41, 37)) * (3 if dtype != np.uint8 else 1)).astype(dtype)
    a = np.minimum(a, np.iinfo(dtype).max) if dtype != np.float32 else a
    whole = array_statistics(a, max_samples=3000)
    blocked = array_statistics(a, max_samples=3000, block_shape=block)
    assert blocked == whole
    # and they are the percentiles of the strided sample, as numpy computes them
    s = whole.step
    assert s > 1
    ref = np.percentile(a[::s, ::s, ::s].astype(np.float64), [1.0, 99.8])
    np.testing.assert_allclose([whole.p_low, whole.p_high], ref, rtol=1e-12)


@pytest.mark.slow  # the shared LocalCluster
def test_volume_statistics_on_dask_equal_in_memory(tmp_path, local_client):
    rng = np.random.default_rng(2)
    a = rng.gamma(2.0, 300.0, (24, 60, 50)).astype(np.uint16)
    path = write(tmp_path / "img.zarr", a)
    ref = array_statistics(a, max_samples=5000)
    on_dask = volume_statistics(path, max_samples=5000, client=local_client, block_shape=(12, 24, 24))
    here = volume_statistics(path, max_samples=5000, block_shape=(24, 48, 24))
    assert on_dask == ref == here


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16, np.bool_, np.int32, np.float32])
def test_box_histogram_counts_every_value_like_unique(dtype):
    # 8/16-bit images are counted with bincount, the rest sorted: the same histogram either way
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        a = rng.integers(max(info.min, -40000), min(info.max, 40000), (9, 10, 11), endpoint=True).astype(dtype)
        a.flat[:2] = [info.min, info.max]
    else:
        a = (rng.random((9, 10, 11)) * 3).astype(dtype)
    values, counts = box_histogram(a, (1, 2, 3), 2)
    want_v, want_c = np.unique(a[1::2, ::2, 1::2], return_counts=True)
    assert values.dtype == a.dtype and counts.dtype == np.int64
    np.testing.assert_array_equal(values, want_v)
    np.testing.assert_array_equal(counts, want_c)


def test_histogram_merge_and_percentiles_are_exact():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 50, (10, 11, 12)).astype(np.uint16)
    halves = [box_histogram(a[:4], (0, 0, 0), 1), box_histogram(a[4:], (4, 0, 0), 1)]
    v, c = merge_histograms(halves)
    assert c.sum() == a.size
    q = [0, 1, 37.5, 50, 99.8, 100]
    np.testing.assert_allclose(histogram_percentiles(v, c, q), np.percentile(a, q), rtol=1e-12)
    assert sample_step((100, 100, 100), 1000) == 10


# ---------------------------------------------------------------------------- transfer
@pytest.fixture(scope="module")
def scene():
    return blob_image()


@pytest.fixture(scope="module")
def percentile_ckpt(tmp_path_factory, scene):
    img = (scene[0] * 255).round().astype(np.uint8)
    meta = percentile_metadata([array_statistics(img)])
    return threshold_net_checkpoint(tmp_path_factory.mktemp("ckpt") / "net.pt", meta)


def test_uint8_uint16_and_float_give_the_same_segmentation(tmp_path, scene, percentile_ckpt):
    u8 = (scene[0] * 255).round().astype(np.uint8)
    encodings = {
        "uint8": u8,
        "uint16": u8.astype(np.uint16) * 257,
        "float": (u8.astype(np.float32) / 255 * 0.37 + 12.5).astype(np.float32),
    }
    segs = {}
    for name, data in encodings.items():
        seg, report, msgs = predict_and_segment(write(tmp_path / f"{name}.zarr", data), percentile_ckpt, tmp_path / f"{name}.pred")
        assert not msgs, msgs
        assert report.plan.normalisation.startswith("percentile")
        segs[name] = seg
    ref = segs["uint8"]
    n = int(ref.max())
    assert n >= 6  # the scene's nuclei are found (10 placed, some touching)
    for name in ("uint16", "float"):
        assert int(segs[name].max()) == n, name
        assert (segs[name] == ref).mean() > 0.999, name


def test_percentile_statistics_are_in_the_store_provenance(tmp_path, scene, percentile_ckpt):
    data = (scene[0] * 1000).astype(np.uint16)
    out = tmp_path / "p.pred"
    predict(write(tmp_path / "i.zarr", data), percentile_ckpt, out, progress=False, pyramid_levels=1)
    run = dict(zarr.open_group(str(out), mode="r").attrs["blockseg"])["predictions"]["run"]
    norm = run["normalisation"]
    ref = array_statistics(data)
    assert norm["scheme"] == "percentile"
    assert norm["statistics"]["p_low"] == ref.p_low and norm["statistics"]["p_high"] == ref.p_high
    assert norm["affine"] == ref.affine()


def test_zero_volume_warns_and_finds_no_nuclei(tmp_path, percentile_ckpt):
    zero = np.zeros((24, 48, 48), np.uint8)
    path = write(tmp_path / "zero.zarr", zero)
    seg, _, msgs = predict_and_segment(path, percentile_ckpt, tmp_path / "zero.pred")
    assert int(seg.max()) == 0
    assert len(msgs) == 1 and "constant" in msgs[0] and "\n" not in msgs[0]


def test_far_from_training_warns(tmp_path, scene, percentile_ckpt):
    # a mostly bright volume: normalised median far above the training data's
    inverted = ((1 - scene[0]) * 255).astype(np.uint8)
    with pytest.warns(BlocksegWarning, match="far from the training data"):
        resolve_array(read_checkpoint(percentile_ckpt)["metadata"]["normalisation"], inverted)


#: the normalisation the demo checkpoint shipped with until 2026-11-29: one affine map in raw units
OLD_DEMO_MAP = {"offset": 187.4854156176249, "scale": 29.35511393930031, "method": "mean_std"}


def test_old_checkpoint_keeps_its_fixed_map_and_says_so(tmp_path, scene):
    import torch

    payload = torch.load(demo_checkpoint_path(), map_location="cpu", weights_only=False)
    payload["metadata"]["normalisation"] = dict(OLD_DEMO_MAP)  # an older checkpoint, as saved then
    ckpt = tmp_path / "old_demo.pt"
    torch.save(payload, ckpt)
    meta = read_checkpoint(ckpt)["metadata"]["normalisation"]
    assert "scheme" not in meta  # written before the percentile scheme: an affine map in raw units
    data = (scene[0] * 255).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = predict(write(tmp_path / "i.zarr", data), ckpt, tmp_path / "d.pred", dry_run=True, progress=False)
    assert plan.normalisation.startswith("fixed affine map in raw units")
    assert f"{meta['offset']:.6g}" in plan.normalisation
    # its training data had mean ~187: this image is far from it, and a zero volume is constant
    assert any("far from the training data" in str(w.message) for w in caught)
    with pytest.warns(BlocksegWarning, match="constant"):
        resolve_array(meta, np.zeros((8, 8, 8), np.uint8))


def test_training_records_the_percentile_scheme(tmp_path):
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train import parse_config, train

    vol = tmp_path / "vol.zarr"
    synthesize(str(vol), SynthParams(shape=(16, 48, 48), seed=5), chunks=(16, 48, 48), progress=False)
    cfg = parse_config({
        "data": {"train": [str(vol)], "target_context": 2},
        "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}},
        "output": str(tmp_path / "run"), "iterations": 2, "patch": [8, 24, 24], "threads": 1, "log_every": 1,
    })  # fmt: skip
    assert cfg.normalisation == "percentile"
    res = train(cfg, progress=False)
    meta = read_checkpoint(res.checkpoint)["metadata"]["normalisation"]
    assert meta["scheme"] == "percentile" and (meta["low"], meta["high"]) == (1.0, 99.8)
    ref = volume_statistics(str(vol))
    assert meta["training"][0]["p_low"] == ref.p_low and meta["training"][0]["p_high"] == ref.p_high


def test_a_sidecar_affine_map_is_not_taken_for_training_statistics():
    # {offset: 0, scale: 255} in a foreign network's sidecar maps uint8 to [0, 1]; it says nothing of
    # the training data's mean and spread, so an ordinary uint8 image must not be called far from it
    image = (np.random.default_rng(0).random((16, 16, 16)) * 120).astype(np.uint8)
    sidecar = {"offset": 0.0, "scale": 255.0, "method": "sidecar"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = resolve_array(sidecar, image)
    assert "from the sidecar's" in res.description
    # the same map recorded as training statistics (mean 0, s.d. 255) does warn
    with pytest.warns(BlocksegWarning, match="far from the training data"):
        resolve_array({**sidecar, "method": "mean_std (sidecar)"}, image)
