"""keyed_flood's padded state, byte for byte, on random inputs large enough for long FIFOs.

The flood's kernel prefetches the entries it will pop next and its prepare pass is branch-free
(issue 29 goal 5): both must leave every returned array -- labels, keys and the padded state
that keyed_update, the pipeline's saved rounds and resume files read -- exactly as the
definition and the state's layout say, for every seed dtype, with and without a shell."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.segment import keyed_flood
from blockseg.segment.exact import UNREACHED

from test_exact import brute_force  # tests/segment is on sys.path (rootdir-relative import mode)


def _expected_state(h, seeds, mask, lab, lev, dist, shell, dtype):
    """The padded state (lab, lev, dist, hp, fixed) keyed_flood must return, built with numpy
    from the region's solution ``lab, lev, dist`` and its shell."""
    wall = np.iinfo(dtype).max
    pshape = tuple(n + 4 for n in h.shape)
    core = (slice(2, -2),) * 3
    e_lab = np.full(pshape, wall, dtype)
    e_lev = np.full(pshape, UNREACHED, np.uint16)
    e_dist = np.zeros(pshape, np.uint32)
    e_hp = np.zeros(pshape, np.uint8)
    e_fixed = np.zeros(pshape, np.uint8)
    e_lab[core] = np.where(mask, lab, wall)
    e_lev[core], e_dist[core], e_hp[core] = lev, dist, h
    e_fixed[core] = mask & (seeds != 0)
    if shell is not None:
        s_lab, s_lev, s_dist = shell
        # only the six face layers (not the box's edges and corners) are shell positions
        faces = _face_layers(s_lab.shape)
        take = faces & (s_lab != 0) & (s_lev < UNREACHED)
        sub = (slice(1, -1),) * 3
        e_lab[sub][take], e_lev[sub][take], e_dist[sub][take] = s_lab[take], s_lev[take], s_dist[take]
        e_fixed[sub][take] = 1
    return e_lab, e_lev, e_dist, e_hp, e_fixed


def _face_layers(shape):
    """The six face layers of a box of ``shape`` without its edges and corners."""
    out = np.zeros(shape, bool)
    for ax in range(3):
        for side in (0, -1):
            idx = [slice(1, -1)] * 3
            idx[ax] = side
            out[tuple(idx)] = True
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_flood_state_is_the_definition_byte_for_byte(dtype):
    rng = np.random.default_rng(29)
    for it in range(12):
        shape = tuple(int(s) for s in rng.integers(6, 19, 3))
        q = int(rng.integers(1, 4))  # 1-3 levels: large plateaus, so FIFOs longer than the prefetch distance
        h = (rng.integers(0, q, shape) * 90).astype(np.uint8)
        mask = rng.random(shape) < (0.95 if it % 2 else 0.7)
        seeds = np.zeros(shape, dtype)
        for s in range(1, int(rng.integers(2, 9))):
            seeds[tuple(int(rng.integers(0, n)) for n in shape)] = s
        seeds[~mask & (rng.random(shape) < 0.02)] = 7  # seeds outside the mask are ignored
        rl, rlev, rd = brute_force(h, seeds * mask, mask)
        lab, lev, dist, state = keyed_flood(h, seeds, mask, None, return_state=True)
        assert lab.dtype == dtype and lev.dtype == np.uint16 and dist.dtype == np.uint32
        assert np.array_equal(lab, rl) and np.array_equal(lev, rlev) and np.array_equal(dist, rd)
        for got, want in zip(state, _expected_state(h, seeds, mask, rl, rlev, rd, None, dtype)):
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        # a sub-box with the whole-volume values on its shell: the whole's values, same layout
        lo = [int(rng.integers(0, n - 2)) for n in shape]
        hi = [int(rng.integers(a + 2, n + 1)) for a, n in zip(lo, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        ring = tuple(slice(max(a - 1, 0), min(b + 1, n)) for a, b, n in zip(lo, hi, shape))
        at = tuple(slice(r.start - a + 1, r.stop - a + 1) for r, a in zip(ring, lo))
        s_lab = np.zeros(tuple(b - a + 2 for a, b in zip(lo, hi)), dtype)
        s_lev = np.full(s_lab.shape, UNREACHED, np.uint16)
        s_dist = np.zeros(s_lab.shape, np.uint32)
        s_lab[at], s_lev[at], s_dist[at] = rl[ring], rlev[ring], rd[ring]
        shell = (s_lab, s_lev, s_dist)
        l2, v2, d2, state2 = keyed_flood(h[box], seeds[box], mask[box], shell, return_state=True)
        assert np.array_equal(l2, rl[box]) and np.array_equal(v2, rlev[box]) and np.array_equal(d2, rd[box])
        want = _expected_state(h[box], seeds[box], mask[box], rl[box], rlev[box], rd[box], shell, dtype)
        for got, exp in zip(state2, want):
            assert got.dtype == exp.dtype and got.shape == exp.shape and got.tobytes() == exp.tobytes()


def test_a_seed_with_the_reserved_value_is_refused_anywhere_in_the_mask():
    h = np.zeros((5, 6, 7), np.uint8)
    mask = np.ones(h.shape, bool)
    seeds = np.zeros(h.shape, np.uint16)
    seeds[4, 5, 6] = np.iinfo(np.uint16).max  # the last voxel: no early exit may skip it
    with pytest.raises(ValueError, match="reserved"):
        keyed_flood(h, seeds, mask)
    mask[4, 5, 6] = False  # outside the mask it is ignored
    lab, lev, _ = keyed_flood(h, seeds, mask)
    assert not lab.any() and (lev == UNREACHED).all()
