"""The exact watershed (issue 14): the keyed flood against a brute-force definition, and named
regressions for the failures of the certified first pass (each blockwise == whole volume)."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
import zarr

from blockseg.io.volume import open_volume
from blockseg.io.predictions import open_predictions, read_channels, save_predictions
from blockseg.segment import BCDDecoder, keyed_flood, segment, segment_array
from blockseg.io.tables import read_table

CHUNKS = (8, 8, 8)


# ---------------------------------------------------------------------------- the definition
def brute_force(h, seeds, mask):
    """The module docstring's definition, literally: optimal keys by a heap Dijkstra over
    ``(M, n)`` paths, then label = min over optimal predecessors, in key order."""
    shape = h.shape
    key = {}
    heap = []
    for p in zip(*np.nonzero((seeds > 0) & mask)):
        key[p] = (int(h[p]), 0)
        heapq.heappush(heap, (key[p], p))

    def nbrs(p):
        for d in ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)):
            q = tuple(a + b for a, b in zip(p, d))
            if all(0 <= c < n for c, n in zip(q, shape)) and mask[q]:
                yield q

    def ext(k, w):
        return (int(h[w]), 0) if h[w] > k[0] else (k[0], k[1] + 1)

    done = set()
    while heap:
        k, p = heapq.heappop(heap)
        if p in done:
            continue
        done.add(p)
        for w in nbrs(p):
            if seeds[w] == 0 and ext(k, w) < key.get(w, (999, 0)):
                key[w] = ext(k, w)
                heapq.heappush(heap, (key[w], w))
    lab = np.zeros(shape, np.int64)
    for p in sorted(key, key=key.get):
        lab[p] = seeds[p] if seeds[p] else min(lab[u] for u in nbrs(p) if u in key and ext(key[u], p) == key[p])
    lev = np.full(shape, 256)
    dist = np.zeros(shape, np.int64)
    for p, (m, n) in key.items():
        lev[p], dist[p] = m, n
    return lab, lev, dist


def test_keyed_flood_equals_the_definition_and_a_region_with_its_shell_equals_the_whole():
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(2, 9, 3))
        q = int(rng.integers(1, 5))  # 1-4 levels: plateaus everywhere
        h = (rng.integers(0, q, shape) * 60).astype(np.uint8)
        mask = rng.random(shape) < 0.8
        seeds = np.zeros(shape, np.uint32)
        for s in range(1, int(rng.integers(1, 6))):
            seeds[tuple(int(rng.integers(0, n)) for n in shape)] = s
        lab, lev, dist = keyed_flood(h, seeds, mask)
        rl, rlev, rd = brute_force(h, seeds, mask)
        assert np.array_equal(lab, rl) and np.array_equal(lev, rlev) and np.array_equal(dist, rd)
        # uniqueness: any sub-box flooded with the whole-volume values on its shell is the whole
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        ring = tuple(slice(max(a - 1, 0), min(b + 1, n)) for a, b, n in zip(lo, hi, shape))
        at = tuple(slice(r.start - a + 1, r.stop - a + 1) for r, a in zip(ring, lo))
        s_lab = np.zeros(tuple(b - a + 2 for a, b in zip(lo, hi)), np.uint32)
        s_lev = np.full(s_lab.shape, 256, np.uint16)
        s_dist = np.zeros(s_lab.shape, np.uint32)
        s_lab[at], s_lev[at], s_dist[at] = lab[ring], lev[ring], dist[ring]
        l2, v2, d2 = keyed_flood(h[box], seeds[box], mask[box], (s_lab, s_lev, s_dist))
        assert np.array_equal(l2, lab[box]) and np.array_equal(v2, lev[box]) and np.array_equal(d2, dist[box])


def test_two_seeds_on_one_plateau_split_by_geodesic_distance_then_seed_id():
    h = np.zeros((1, 1, 7), np.uint8)
    seeds = np.zeros((1, 1, 7), np.uint32)
    seeds[0, 0, 0], seeds[0, 0, 6] = 2, 1
    lab, lev, dist = keyed_flood(h, seeds, np.ones_like(h, bool))
    assert lab.ravel().tolist() == [2, 2, 2, 1, 1, 1, 1]  # the equidistant middle goes to id 1
    assert dist.ravel().tolist() == [0, 1, 2, 3, 2, 1, 0]


# ---------------------------------------------------------------------------- regressions
def _bcd(shape):
    return {"B": np.zeros(shape, np.float32), "C": np.zeros(shape, np.float32), "D": -np.ones(shape, np.float32)}


def _run(tmp_path, ch, decoder, block, halo, name="seg"):
    pred = tmp_path / "pred.zarr"
    if not pred.exists():
        save_predictions(pred, ch, chunks=CHUNKS)
    ref, table = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), decoder, return_table=True)
    out = tmp_path / f"{name}.zarr"
    report = segment(pred, out, decoder, block_shape=block, halo=halo, overwrite=True)
    return ref, table, open_volume(out).array[:], read_table(report.table_path), report


def _assert_tables_equal(a, b):
    """``b`` (segment's csv) also has micrometre columns (volume_um3, centroid_um_*, bbox_um_*);
    segment_array has no voxel size, so the voxel columns are compared."""
    b = {k: v for k, v in b.items() if "_um" not in k}
    assert list(a) == list(b)
    for c in a:
        assert np.allclose(np.asarray(a[c], float), np.asarray(b[c], float), rtol=1e-5, atol=0), c


def test_long_nucleus_with_its_seed_at_one_end(tmp_path):
    """A 60-voxel rod (4 blocks of 16, halo 2) whose only seed sits at one end: the old first
    pass wrote background in the blocks beyond the halo; now it is one instance, whole."""
    shape = (16, 16, 64)
    ch = _bcd(shape)
    rod = (slice(5, 11), slice(5, 11), slice(2, 62))
    ch["B"][rod] = 1.0
    ch["D"][rod] = 0.9
    ch["D"][(ch["B"] > 0) & (np.arange(64) >= 8)[None, None, :]] = 0.2  # seed (D > 0.3) only at x < 8
    dec = BCDDecoder(min_seed_size=1, min_size=1)
    ref, table, out, table2, report = _run(tmp_path, ch, dec, (16, 16, 16), 2)
    assert np.array_equal(out, ref)
    assert out.max() == 1 and (out[rod] == 1).all() and (out > 0).sum() == 6 * 6 * 60
    assert len(report.rounds) == 2  # one tile: round 2 carries the label through every block
    single = segment(tmp_path / "pred.zarr", tmp_path / "one.zarr", dec, block_shape=(16, 16, 16), halo=2, tile_voxels=1)
    assert np.array_equal(open_volume(tmp_path / "one.zarr").array[:], ref)
    assert len(single.rounds) >= 4  # tiles of one block: the label travels one block per round
    _assert_tables_equal(table, table2)


def test_two_seeds_on_one_plateau_in_different_blocks(tmp_path):
    """Saturated predictions: one flat box, a seed near each end, blocks that see only one of
    them (halo 1): the split is by geodesic distance in the plateau, identical to the whole."""
    shape = (16, 16, 48)
    ch = _bcd(shape)
    box = (slice(4, 12), slice(4, 12), slice(2, 46))
    ch["B"][box] = 1.0
    ch["D"][box] = 0.2  # one plateau (no seed from D alone)
    for x in (4, 40):  # two small seeds
        ch["D"][6:10, 6:10, x : x + 2] = 0.9
    dec = BCDDecoder(min_seed_size=1, min_size=1)
    ref, table, out, table2, report = _run(tmp_path, ch, dec, (16, 16, 8), 1)
    assert np.array_equal(out, ref)
    assert out.max() == 2
    left, right = out[box][..., :21], out[box][..., 23:]  # 2-voxel tie band in the middle
    assert (left == 1).all() and (right == 2).all()
    _assert_tables_equal(table, table2)


def test_size_filter_counts_global_sizes(tmp_path):
    """An instance spread over 8 blocks, under min_size in each block but not in total, is
    kept whole; a smaller one crossing blocks is removed; the table equals the whole run's."""
    shape = (32, 32, 32)
    ch = _bcd(shape)
    big, small = (slice(10, 22), slice(10, 22), slice(10, 22)), (slice(2, 5), slice(2, 5), slice(14, 18))
    for r in (big, small):
        ch["B"][r] = 1.0
        ch["D"][r] = 0.9
    dec = BCDDecoder(min_seed_size=1, min_size=1000)  # big: 1728 voxels, 216 per block; small: 36
    ref, table, out, table2, report = _run(tmp_path, ch, dec, (16, 16, 16), 0)
    assert np.array_equal(out, ref)
    assert out.max() == 1 and (out[big] == 1).all() and (out > 0).sum() == 1728
    assert report.n_removed_small == 1 and report.n_instances == 1
    _assert_tables_equal(table, table2)
    assert table2["voxels"].tolist() == [1728]


def test_halo_is_never_clipped(tmp_path):
    """--halo 24 with blocks 16 x 32 x 32: the halo is used as given (reported and stored) and
    the result equals the whole-volume run."""
    from blockseg.segment.synthetic import noisy_predictions, random_nuclei, rasterise

    shape = (32, 32, 64)
    centres, radii = random_nuclei(shape, 12, (5.0, 8.0), seed=5)
    ch = noisy_predictions(rasterise(shape, centres, radii), blur=0.5, noise=0.05, seed=5)
    dec = BCDDecoder(seed_d=0.3, min_seed_size=8, min_size=32)
    ref, table, out, table2, report = _run(tmp_path, ch, dec, (16, 32, 32), 24)
    assert np.array_equal(out, ref) and ref.max() > 3
    assert report.halo == [24, 24, 24]
    assert zarr.open_group(str(tmp_path / "seg.zarr"), mode="r").attrs["blockseg"]["segment"]["halo"] == [24, 24, 24]
    _assert_tables_equal(table, table2)


@pytest.mark.parametrize("halo", [0, 40])
def test_halo_zero_and_larger_than_the_volume(tmp_path, halo):
    from blockseg.segment.synthetic import noisy_predictions, random_nuclei, rasterise

    shape = (24, 24, 24)
    centres, radii = random_nuclei(shape, 8, (4.0, 7.0), seed=2)
    ch = noisy_predictions(rasterise(shape, centres, radii), seed=2)
    dec = BCDDecoder(seed_d=0.3, min_seed_size=8, min_size=32)
    ref, table, out, table2, report = _run(tmp_path, ch, dec, (8, 16, 8), halo)
    assert np.array_equal(out, ref) and ref.max() > 3
    if halo == 40:  # every block sees the whole volume: one round, nothing to exchange
        assert report.rounds == [{"round": 1, "blocks": 18, "woken": 0}]
    _assert_tables_equal(table, table2)


def test_incremental_update_equals_a_fresh_flood():
    """keyed_update (later exchange rounds) from the previous solution == keyed_flood with the
    new shell, for shells whose keys decrease (unreached -> an upper bound -> the true value)."""
    from blockseg.segment.exact import keyed_update, shell_positions

    rng = np.random.default_rng(3)
    for _ in range(80):
        shape = tuple(int(s) for s in rng.integers(3, 11, 3))
        h = (rng.integers(0, int(rng.integers(1, 5)), shape) * 60).astype(np.uint8)
        mask = rng.random(shape) < 0.8
        seeds = np.zeros(shape, np.uint32)
        for s in range(1, int(rng.integers(2, 7))):
            seeds[tuple(int(rng.integers(0, n)) for n in shape)] = s
        lab, lev, dist = keyed_flood(h, seeds, mask)
        lo = [int(rng.integers(0, n - 1)) for n in shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        ring = tuple(slice(max(a - 1, 0), min(b + 1, n)) for a, b, n in zip(lo, hi, shape))
        at = tuple(slice(r.start - a + 1, r.stop - a + 1) for r, a in zip(ring, lo))
        pshape = tuple(b - a + 2 for a, b in zip(lo, hi))
        *_, state = keyed_flood(h[box], seeds[box], mask[box], None, return_state=True)
        first = tuple(a.copy() for a in state)  # round 1's solution, kept when a round changed nothing
        # an upper bound first: the whole-volume values of a flood with fewer seeds (larger keys)
        fewer = seeds * (seeds % 2 == 1)
        ub = keyed_flood(h, fewer, mask)
        for values in (ub, (lab, lev, dist)):
            shell = (np.zeros(pshape, np.uint32), np.full(pshape, 256, np.uint16), np.zeros(pshape, np.uint32))
            for arr, v in zip(shell, values):
                arr[at] = v[ring]
            fresh = keyed_flood(h[box], seeds[box], mask[box], shell)
            *got, state, _ = keyed_update(state, shell)
            for a, b in zip(got, fresh):
                assert np.array_equal(a, b)
        assert np.array_equal(got[0], lab[box])
        # an older state (any earlier shell) is as good a start: round 1's, straight to the truth
        first_copy = tuple(a.copy() for a in first)
        *again, _, moved = keyed_update(first, shell)
        for a, b in zip(again, got):
            assert np.array_equal(a, b)
        assert moved.dtype == np.int64 and np.unique(moved).size == moved.size
        # the same shell given as its positions alone (1-D, shell_positions order): same update
        positions = shell_positions(tuple(b - a for a, b in zip(lo, hi)))
        *sparse, _, moved_sparse = keyed_update(first_copy, tuple(a.ravel()[positions] for a in shell))
        for a, b in zip(sparse, got):
            assert np.array_equal(a, b)
        assert np.array_equal(moved_sparse, moved)
