"""The other decoders share the seeded-watershed machinery: blockwise == whole volume, and each
recovers nuclei from predictions made from ground truth. Plus blockwise peak detection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from blockseg.io import open_volume
from blockseg.predictions import open_predictions, read_channels, save_predictions
from blockseg.segment import AffinityDecoder, SDTDecoder, ThreeLabelDecoder, make_decoder, segment, segment_array
from blockseg.segment.decoders import CPVDecoder, vote_map
from blockseg.segment.detect import detect_peaks, local_peaks
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.targets import contour_target, distance_target

from test_segment import matched_at, same_partition

SHAPE, CHUNKS = (32, 40, 40), (8, 8, 8)


@pytest.fixture(scope="module")
def gt():
    c, r = random_nuclei(SHAPE, 14, (5.0, 8.0), seed=11)
    return rasterise(SHAPE, c, r)


def three_label(lab):
    fg = lab > 0
    edge = contour_target(lab) > 0
    return {"P_bg": (~fg).astype(np.float32), "P_boundary": (fg & edge).astype(np.float32),
            "P_interior": (fg & ~edge).astype(np.float32)}  # fmt: skip


def sdt(lab):
    return {"sdt": -distance_target(lab)}


def affinities(lab):
    """Affinity of a voxel to both its neighbours along each axis (a two-sided boundary, so that
    seeds of touching nuclei stay apart under 26-connectivity)."""
    out = {"fg": (lab > 0).astype(np.float32)}
    for ax, name in enumerate(("aff_z", "aff_y", "aff_x")):
        same = (lab > 0) & (lab == np.roll(lab, 1, axis=ax)) & (lab == np.roll(lab, -1, axis=ax))
        idx = [slice(None)] * 3
        for end in (0, -1):
            idx[ax] = end
            same[tuple(idx)] = False
        out[name] = same.astype(np.float32)
    return out


def cpv(lab):
    ids = np.arange(1, lab.max() + 1)
    centres = np.asarray(ndi.center_of_mass(np.ones(lab.shape), lab, ids)).reshape(-1, 3)
    grid = np.indices(lab.shape, dtype=np.float32)
    out = {"B": (lab > 0).astype(np.float32)}
    for ax, name in enumerate(("cpv_z", "cpv_y", "cpv_x")):
        c = np.r_[0.0, centres[:, ax]].astype(np.float32)
        out[name] = np.where(lab > 0, c[lab] - grid[ax], 0).astype(np.float32)
    return out


CASES = [
    (ThreeLabelDecoder(min_seed_size=8, min_size=64), three_label),
    (SDTDecoder(seed_t=-0.3, min_seed_size=8, min_size=64), sdt),
    (AffinityDecoder(min_seed_size=8, min_size=64), affinities),
    (CPVDecoder(min_votes=5, max_vector=8, min_seed_size=1, min_size=64), cpv),
]


@pytest.mark.parametrize("decoder, make", CASES, ids=[d.name for d, _ in CASES])
def test_decoder_blockwise_equals_whole_and_recovers(tmp_path, gt, decoder, make):
    save_predictions(tmp_path / "p.zarr", make(gt), chunks=CHUNKS)
    ch = read_channels(open_predictions(tmp_path / "p.zarr"), (slice(None),) * 3)
    ref = segment_array(ch, decoder)
    report = segment(tmp_path / "p.zarr", tmp_path / "o.zarr", decoder, block_shape=(16, 16, 24), halo=8)
    out = open_volume(tmp_path / "o.zarr").array[:]
    assert same_partition(ref, out)
    m, n_gt, n_pred = matched_at(gt, out, 0.5)
    assert n_gt >= 8 and m >= 0.8 * n_gt and report.n_instances == n_pred


def test_vote_map_counts_every_voter_once():
    shape = (5, 6, 7)
    voters = np.zeros(shape, bool)
    voters[1:4, 1:4, 1:4] = True
    vec = tuple(np.zeros(shape, np.float32) for _ in range(3))
    vec[0][voters] = 2 - np.nonzero(voters)[0]  # every voter points at z = 2
    votes = vote_map(vec, voters)
    assert votes.sum() == voters.sum() and votes[2, 2, 2] == 3 and votes[1, 2, 2] == 0


def test_make_decoder_rejects_unknown():
    from blockseg import BlocksegError

    with pytest.raises(BlocksegError, match="unknown decoder"):
        make_decoder("nope")
    assert make_decoder("bcd", fg_b=0.7).fg_b == 0.7


def test_detection_blockwise_equals_whole(tmp_path):
    rng = np.random.default_rng(5)
    pts = rng.integers(2, 30, size=(12, 3))
    impulses = np.zeros(SHAPE, np.float32)
    impulses[pts[:, 0], pts[:, 1], pts[:, 2]] = 1.0
    g = ndi.gaussian_filter(impulses, 1.5)
    g = g / g.max()
    save_predictions(tmp_path / "g.zarr", {"G": g}, dtype=np.float32, chunks=CHUNKS)
    table = detect_peaks(tmp_path / "g.zarr", "G", n=3, threshold=0.2, block_shape=(8, 16, 8))
    z, y, x = np.nonzero(local_peaks(g, 3, 0.2))
    assert np.array_equal(table["z"], z) and np.array_equal(table["y"], y) and np.array_equal(table["x"], x)
    assert len(z) > 0
