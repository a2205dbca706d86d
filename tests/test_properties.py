"""Property-based tests (hypothesis): blockwise == whole volume for random geometry.

Random volume, chunk and block shapes (volumes <= 40 voxels a side), on the in-process path
(``client=None``: the same block functions dask runs, one after the other). Each property has
a fixed example budget and ``derandomize=True``, so CI draws the same examples every run.

(a) ``segment`` == ``segment_array`` (0 differing voxels, equal instance tables) for every
    decoder, perfect / quantised / noisy maps, any halo;
(b) ``predict`` == ``predict_array`` within one uint8 step (1/255);
(c) streaming ``evaluate`` of zarr volumes == ``evaluate`` of the in-memory arrays, and its TP
    count at IoU 0.6 == a brute-force count.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockseg.io.volume import create_volume, open_volume
from blockseg.io.predictions import encode_channel, open_predictions, read_channels, save_predictions
from scipy import ndimage as ndi

from blockseg.segment import AffinityDecoder, BCDDecoder, SDTDecoder, ThreeLabelDecoder, segment, segment_array
from blockseg.segment.decoders import CPVDecoder
from blockseg.io.tables import read_table
from blockseg.train.targets import compute_targets
from blockseg.segment.synthetic import random_nuclei, rasterise

from _helpers import same_partition

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def geometry(draw, lo=12, hi=40, chunk_lo=4, chunk_hi=12, max_factor=3):
    """(volume shape, chunk shape, block shape): blocks are whole chunks, any remainder."""
    shape = tuple(draw(st.integers(lo, hi)) for _ in range(3))
    chunks = tuple(draw(st.integers(chunk_lo, min(chunk_hi, s))) for s in shape)
    block = tuple(c * draw(st.integers(1, max_factor)) for c in chunks)
    return shape, chunks, block


def _nuclei(shape, seed, radius=(4.0, 7.0)):
    n = max(2, int(np.prod(shape) / 1500))
    centres, radii = random_nuclei(shape, n, radius, seed=seed)
    return rasterise(shape, centres, radii)


# ---------------------------------------------------------------------------- (a) segment
DECODER = BCDDecoder(seed_d=0.3, min_seed_size=8, min_size=32)

#: decoder -> (target representations, decoder used on both sides of the comparison)
DECODERS = {
    "bcd": (["B", "C", "D"], BCDDecoder(seed_d=0.3, min_seed_size=4, min_size=16)),
    "cpv": (["B", "cpv"], CPVDecoder(min_votes=3, max_vector=6, min_seed_size=1, min_size=16)),
    "3label": (["3label"], ThreeLabelDecoder(min_seed_size=4, min_size=16)),
    "sdt": (["sdt"], SDTDecoder(min_seed_size=4, min_size=16)),
    "affinities": (["aff"], AffinityDecoder(min_seed_size=4, min_size=16)),
}


def _maps(labels, reps, kind, seed):
    """Perfect targets; quantised to ``q <= 8`` levels per channel (heavy plateaus: most ties);
    or blurred + noisy."""
    ch = compute_targets(labels, reps)
    rng = np.random.default_rng(seed)
    out = {}
    for c, v in ch.items():
        if kind == "quantised":
            q = int(rng.integers(2, 9))
            lo, hi = float(v.min()), float(v.max())
            v = lo + np.round((v - lo) / max(hi - lo, 1e-6) * (q - 1)) / (q - 1) * (hi - lo) if hi > lo else v
        elif kind == "noisy":
            v = ndi.gaussian_filter(v, 0.7) + rng.normal(0, 0.08 * max(float(np.abs(v).max()), 1e-3), v.shape)
            if c.startswith("cpv"):
                pass
            elif c in ("D", "sdt"):
                v = np.clip(v, -1, 1)
            else:
                v = np.clip(v, 0, 1)
        out[c] = np.asarray(v, dtype=np.float32)
    return out


def _tables_equal(a, b) -> bool:
    b = {k: v for k, v in b.items() if "_um" not in k}  # segment's csv adds micrometre columns
    return list(a) == list(b) and all(
        np.allclose(np.asarray(a[c], float), np.asarray(b[c], float), rtol=1e-5, atol=0) for c in a
    )


@st.composite
def few_blocks(draw, lo=12, hi=30):
    """(volume shape, chunk shape, block shape): 3-4 blocks along the longest axis (the rod's),
    1-3 along the others, any remainder; blocks are whole chunks."""
    shape = tuple(draw(st.integers(lo, hi)) for _ in range(3))
    longest = int(np.argmax(shape))
    block, chunks = [], []
    for ax, s in enumerate(shape):
        k = draw(st.integers(3, 4) if ax == longest else st.integers(1, 3))
        b = -(-s // k)  # ceil: k blocks (the last one may be smaller)
        c = draw(st.sampled_from([d for d in range(1, b + 1) if b % d == 0 and d >= min(3, b)]))
        block.append(b)
        chunks.append(c)
    return shape, tuple(chunks), tuple(block)


@pytest.mark.slow  # hypothesis: 20 random geometries, each segmented blockwise and whole
@settings(max_examples=20, **SETTINGS)
@given(
    few_blocks(),
    st.sampled_from([0, 1, 2, 4, 8, 48]),
    st.integers(0, 2**16),
    st.sampled_from(sorted(DECODERS)),
    st.sampled_from(["perfect", "quantised", "noisy"]),
    st.booleans(),
)
def test_segment_blockwise_equals_whole_volume(geo, halo, seed, decoder, kind, rod):
    """blockwise ``segment`` == ``segment_array``: 0 differing voxels (ids included) and equal
    instance tables, for random geometry, halos (0, smaller than the nuclei, larger than some
    blocks), every decoder, perfect / quantised / noisy maps, with nuclei of radius up to 9
    (larger than most halos) and optionally an elongated nucleus along the longest axis
    (crossing every block on that axis)."""
    shape, chunks, block = geo
    labels = _nuclei(shape, seed, radius=(3.0, 9.0))
    if rod:
        ax = int(np.argmax(shape))
        sl = [slice(s // 2 - 2, s // 2 + 2) for s in shape]
        sl[ax] = slice(1, shape[ax] - 1)
        labels[tuple(sl)] = labels.max() + 1
    reps, dec = DECODERS[decoder]
    channels = _maps(labels, reps, kind, seed)
    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(tmp) / "pred.zarr"
        save_predictions(pred, channels, chunks=chunks)
        ref, table = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), dec, return_table=True)
        report = segment(pred, Path(tmp) / "seg.zarr", dec, block_shape=block, halo=halo)
        out = open_volume(Path(tmp) / "seg.zarr").array[:]
        got = read_table(report.table_path)
    assert report.halo == [halo] * 3 and report.rounds[-1]["woken"] == 0
    assert report.n_instances == int(ref.max())
    assert int(np.count_nonzero(out != ref)) == 0
    assert same_partition(ref, out)
    assert _tables_equal(table, got)


# ---------------------------------------------------------------------------- (b) predict
@pytest.mark.slow  # hypothesis: 12 random geometries, each predicted blockwise and whole
@settings(max_examples=12, **SETTINGS)
@given(
    geometry(lo=8, hi=32, chunk_lo=4, chunk_hi=16),
    st.booleans(),
    st.tuples(*[st.integers(0, 3)] * 3),
    st.sampled_from([0.125, 0.25, 0.5]),
    st.integers(0, 2**16),
    st.one_of(st.none(), st.tuples(*[st.integers(0, 3)] * 3)),
)
def test_predict_blockwise_equals_predict_array(geo, valid, margin, overlap, seed, grow):
    from blockseg.models import save_checkpoint
    from blockseg.models.tiny import TinyConvNet
    from blockseg.predict import predict, predict_array

    shape, chunks, block = geo
    norm = {"offset": 128.0, "scale": 64.0}
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    model = TinyConvNet(("B", "D"), valid=valid, input_patch=(12, 20, 20), margin=margin, seed=seed % 97).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            img = create_volume(Path(tmp) / "img.zarr", shape, np.uint8, (1.0, 1.0, 1.0), chunks)
            img.array[:] = image
            save_checkpoint(Path(tmp) / "m.pt", model, normalisation=norm)
            # the inference patch: "auto" (None), or an explicit one grown from the training patch by
            # whole divisors (not aligned with the blocks: tiles straddle them)
            geo_net = model.geometry
            patch = "auto" if grow is None else tuple(o + g * d + 2 * c for o, g, d, c in
                                                      zip(geo_net.output_patch, grow, geo_net.divisor, geo_net.crop))  # fmt: skip
            rep = predict(img.path, Path(tmp) / "m.pt", Path(tmp) / "o.zarr", block_shape=block, overlap=overlap,
                          patch=patch, progress=False, torch_threads=1)  # fmt: skip
            got = {c: v.array[:] for c, v in open_predictions(Path(tmp) / "o.zarr").items()}
        # the reference runs the patch and lattice predict chose
        ref = predict_array(model, image, normalisation=norm, overlap=overlap, patch=rep.plan.lattice.patch,
                            snap=rep.plan.lattice_snap)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert rep.computed == rep.blocks >= 1
    for c in model.channels:
        want = encode_channel(ref[c], model.kinds[c], np.uint8).astype(int)
        assert np.abs(got[c].astype(int) - want).max() <= 1, c  # one uint8 step = 1/255


@pytest.mark.slow  # hypothesis: 10 random geometries, each predicted blockwise and whole
@settings(max_examples=10, **SETTINGS)
@given(
    geometry(lo=8, hi=28, chunk_lo=4, chunk_hi=14),
    st.booleans(),
    st.tuples(*[st.sampled_from([0.6, 0.8, 1.3, 1.7, 2.0])] * 3),
    st.integers(0, 2**16),
)
def test_resampled_predict_blockwise_equals_predict_array_scaled(geo, valid, voxel_size, seed):
    """Images at another voxel size than the network's go through the resampled grid: blockwise
    (each block runs every tile reaching its core, auto patch chosen on that grid) equals the
    whole-volume reference on the same lattice within one storage step."""
    from blockseg.models import save_checkpoint
    from blockseg.models.tiny import TinyConvNet
    from blockseg.predict import predict
    from blockseg.predict.resample import predict_array_scaled

    shape, chunks, block = geo
    norm = {"offset": 128.0, "scale": 64.0}
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    model = TinyConvNet(("B", "D"), valid=valid, input_patch=(12, 20, 20), margin=(1, 2, 2), seed=seed % 97).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            img = create_volume(Path(tmp) / "img.zarr", shape, np.uint8, voxel_size, chunks)
            img.array[:] = image
            save_checkpoint(Path(tmp) / "m.pt", model, normalisation=norm, voxel_size=[1.0, 1.0, 1.0])
            rep = predict(img.path, Path(tmp) / "m.pt", Path(tmp) / "o.zarr", block_shape=block, progress=False, torch_threads=1)
            got = {c: v.array[:] for c, v in open_predictions(Path(tmp) / "o.zarr").items()}
        assert rep.plan.lattice_shape is not None  # resampled
        ref = predict_array_scaled(model, image, voxel_size, norm, patch=rep.plan.lattice.patch, snap=rep.plan.lattice_snap)
    finally:
        torch.set_num_threads(threads)
    for c in model.channels:
        want = encode_channel(ref[c], model.kinds[c], np.uint8).astype(int)
        assert np.abs(got[c].astype(int) - want).max() <= 1, c  # one uint8 step = 1/255


# ---------------------------------------------------------------------------- (c) evaluate
def _tp_at(gt: np.ndarray, pred: np.ndarray, t: float) -> int:
    """Pairs with IoU >= t > 0.5 (each instance has at most one such partner), brute force."""
    tp = 0
    for g in np.unique(gt[gt > 0]):
        inside = gt == g
        for p in np.unique(pred[inside]):
            if p == 0:
                continue
            other = pred == p
            inter = np.count_nonzero(inside & other)
            if inter / np.count_nonzero(inside | other) >= t:
                tp += 1
    return tp


@pytest.mark.slow  # hypothesis: 12 random geometries, each evaluated blockwise and whole
@settings(max_examples=12, **SETTINGS)
@given(geometry(chunk_lo=3, chunk_hi=16), st.integers(1, 12000), st.integers(0, 2**16))
def test_streaming_evaluate_equals_in_memory(geo, block_voxels, seed):
    from blockseg.evaluate import evaluate

    shape, chunks, _ = geo
    rng = np.random.default_rng(seed)
    n = max(2, int(np.prod(shape) / 1500))
    centres, radii = random_nuclei(shape, n, (4.0, 7.0), seed=seed)
    gt = rasterise(shape, centres, radii)
    # the prediction: nuclei moved and resized, some missed, some invented
    keep = rng.random(n) > 0.15
    extra_c, extra_r = random_nuclei(shape, 2, (3.0, 5.0), seed=seed + 1)
    pc = np.r_[centres[keep] + rng.normal(0, 1.0, (keep.sum(), 3)), extra_c]
    pr = np.r_[radii[keep] * rng.uniform(0.8, 1.2, keep.sum()), extra_r]
    pred = rasterise(shape, pc, pr)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, arr in (("gt", gt), ("pred", pred)):
            v = create_volume(Path(tmp) / f"{name}.zarr", shape, np.uint32, None, chunks)
            v.array[:] = arr
            paths.append(str(Path(tmp) / f"{name}.zarr"))
        streamed = evaluate(*paths, block_voxels=block_voxels)
    whole = evaluate(gt, pred)
    assert streamed.matching == whole.matching
    np.testing.assert_equal(streamed.coco["ap"], whole.coco["ap"])
    assert streamed.overlaps.n_true == len(np.unique(gt[gt > 0]))
    assert streamed.overlaps.n_pred == len(np.unique(pred[pred > 0]))
    at = next(m for m in streamed.matching if m["threshold"] == 0.6)
    assert at["tp"] == _tp_at(gt, pred, 0.6)
