"""The other decoders share the seeded-watershed machinery: blockwise == whole volume, and each
recovers nuclei from predictions made from ground truth. Plus blockwise peak detection."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from blockseg.io.volume import open_volume
from blockseg.io.predictions import open_predictions, read_channels, save_predictions
from blockseg.segment import AffinityDecoder, SDTDecoder, ThreeLabelDecoder, make_decoder, segment, segment_array
from blockseg.segment.decoders import CPVDecoder, vote_map
from blockseg.segment.detect import detect_peaks, local_peaks
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.train.targets import contour_target, distance_target

from _helpers import differing_voxels, matched_at, same_partition

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
    (SDTDecoder(seed_t=-0.3, fg_t=0.0, dilation=1, min_seed_size=8, min_size=64), sdt),  # -D: background just outside is ~0.02
    (AffinityDecoder(min_seed_size=8, min_size=64), affinities),
    (CPVDecoder(min_votes=5, max_vector=8, min_seed_size=1, min_size=64), cpv),
]


@pytest.mark.slow  # five decoders, each blockwise and whole on a 32x40x40 volume
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


# ---------------------------------------------------------------------------- identity at defaults
IDENTITY = [("bcd", ["B", "C", "D"]), ("cpv", ["B", "cpv"]), ("3label", ["3label"]), ("sdt", ["sdt"]), ("affinities", ["aff"])]


@pytest.fixture(scope="module")
def touching_gt():
    """40 random touching nuclei of radius 4-10 (many contacts). A piece with no voxel deeper
    than 2.5 voxels (a sliver squeezed between neighbours) has no seedable interior in any
    representation (see BCDDecoder) and is left out."""
    from blockseg.train.targets import compute_targets

    shape = (48, 64, 64)
    c, r = random_nuclei(shape, 40, (4.0, 10.0), seed=1)
    lab = rasterise(shape, c, r)
    d = compute_targets(lab, ["D"])["D"]
    ids = np.arange(1, lab.max() + 1)
    deep = ndi.maximum(d, lab, ids) > 0.3
    lab[~np.r_[True, deep][lab]] = 0
    return lab


@pytest.mark.slow  # five decoders on 40 touching nuclei
@pytest.mark.parametrize("name, reps", IDENTITY, ids=[n for n, _ in IDENTITY])
def test_default_decoders_recover_perfect_targets(tmp_path, touching_gt, name, reps):
    """Identity: perfect targets (blockseg.train.targets, stored as uint8) decoded with the default
    parameters give every ground-truth nucleus exactly once, and no other instance. Voxels on a
    contact between two nuclei carry no instance information in these representations (e.g. one
    boundary class, or equal D on both sides), so they may go to the neighbour: we require at
    least 97 % of the foreground to carry its nucleus' label (measured: bcd 99.7 %, 3label and
    sdt 98.9 %, affinities 97.9 %, cpv 97.3 %) and the background to be exact."""
    from blockseg.train.targets import compute_targets

    gt = touching_gt
    ch = compute_targets(gt, reps)
    save_predictions(tmp_path / "p.zarr", ch, chunks=CHUNKS)
    ch = read_channels(open_predictions(tmp_path / "p.zarr"), (slice(None),) * 3)
    out = segment_array(ch, make_decoder(name))
    n_gt = len(np.unique(gt)) - 1
    m, _, n_pred = matched_at(gt, out, 0.5)
    assert n_gt >= 35 and m == n_gt == n_pred
    assert np.array_equal(gt > 0, out > 0)
    assert differing_voxels(gt, out) <= 0.03 * int((gt > 0).sum())


def test_nucmm_preset_keeps_the_reference_thresholds_and_explains_the_defaults(touching_gt):
    """``preset="nucmm"`` is NucMM's reference decoder; on perfect maps of small touching
    nuclei it loses many of them (the defect the defaults fix), the defaults lose none."""
    from blockseg import BlocksegError
    from blockseg.train.targets import compute_targets

    ref = make_decoder("bcd", preset="nucmm")
    assert (ref.seed_d, ref.fg_b, ref.min_seed_size, ref.min_size) == (0.5, 0.85, 32, 128)
    assert make_decoder("bcd", preset="nucmm", min_size=64).min_size == 64  # parameters override
    ch = compute_targets(touching_gt, ["B", "C", "D"])
    n_gt = len(np.unique(touching_gt)) - 1
    m_ref = matched_at(touching_gt, segment_array(ch, ref), 0.5)[0]
    m_def = matched_at(touching_gt, segment_array(ch, make_decoder("bcd")), 0.5)[0]
    assert m_def == n_gt > m_ref
    with pytest.raises(BlocksegError, match="unknown preset"):
        make_decoder("bcd", preset="nope")
    with pytest.raises(BlocksegError, match="no cpv decoder"):
        make_decoder("cpv", preset="nucmm")


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
