import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockseg import BlockGrid, BlocksegError
from blockseg.grid import default_block_shape


@st.composite
def grids(draw):
    chunk = tuple(draw(st.integers(1, 6)) for _ in range(3))
    block = tuple(c * draw(st.integers(1, 4)) for c in chunk)
    shape = tuple(draw(st.integers(1, 40)) for _ in range(3))
    halo = tuple(draw(st.integers(0, b)) for b in block)
    return BlockGrid(shape, block, halo, chunk)


@settings(max_examples=150, deadline=None)
@given(grids())
def test_cores_tile_the_volume_exactly_once(grid):
    count = np.zeros(grid.shape, np.int32)
    for block in grid:
        count[block.core] += 1
        # the outer region is the core grown by the halo, clipped to the volume
        for c, o, h, n in zip(block.core, block.outer, grid.halo, grid.shape):
            assert o.start == max(c.start - h, 0) and o.stop == min(c.stop + h, n)
        inner = np.zeros(block.outer_shape, bool)
        inner[block.core_in_outer] = True
        assert inner.sum() == np.prod(block.shape)
    assert np.all(count == 1)


@settings(max_examples=100, deadline=None)
@given(grids())
def test_no_two_blocks_write_one_chunk(grid):
    seen = {}
    for b in grid.block_ids:
        for c in grid.chunks_of(b):
            assert c not in seen, f"chunk {c} written by blocks {seen[c]} and {b}"
            seen[c] = b
    n_chunks = np.prod([-(-s // c) for s, c in zip(grid.shape, grid.chunk_shape)])
    assert len(seen) == n_chunks


@pytest.mark.slow  # every block of many grids
@settings(max_examples=100, deadline=None)
@given(grids(), st.integers(1, 3))
def test_neighbours_and_interfaces_are_consistent(grid, connectivity):
    pairs = set()
    for b in grid.block_ids:
        for n, off in grid.neighbours(b, connectivity):
            assert (b, tuple(-o for o in off)) in grid.neighbours(n, connectivity)
            pairs.add((min(b, n), max(b, n)))
    ifaces = list(grid.interfaces(connectivity))
    assert len(ifaces) == len(pairs) == len({(i.a, i.b) for i in ifaces})
    assert {(i.a, i.b) for i in ifaces} == pairs
    for i in ifaces:
        assert i.b == grid.block_id(tuple(a + o for a, o in zip(grid.block_index(i.a), i.offset)))
        # the slab straddles the boundary: it holds voxels of both cores
        slab = grid.interface_slices(i, width=1)
        mark = np.zeros(grid.shape, np.int8)
        mark[grid[i.a].core] = 1
        mark[grid[i.b].core] = 2
        assert {1, 2} <= set(np.unique(mark[slab]))


def test_neighbour_counts_in_the_interior():
    g = BlockGrid((30, 30, 30), 10)
    assert len(g.neighbours(g.block_id((1, 1, 1)))) == 26
    assert len(g.neighbours(g.block_id((1, 1, 1)), 1)) == 6
    assert len(g.neighbours(g.block_id((1, 1, 1)), 2)) == 18
    assert len(g.neighbours(0)) == 7  # a corner block
    kinds = [i.kind for i in g.interfaces()]
    # 3x3x3 blocks: 54 faces, 72 edges, 32 corners shared
    assert (kinds.count("face"), kinds.count("edge"), kinds.count("corner")) == (54, 72, 32)


def test_edge_blocks_are_clipped_and_ids_are_stable():
    g = BlockGrid((10, 25, 7), (4, 10, 7), halo=(1, 3, 2), chunk_shape=(2, 5, 7))
    assert g.grid_shape == (3, 3, 1)
    last = g[len(g) - 1]
    assert last.core == (slice(8, 10), slice(20, 25), slice(0, 7))
    assert last.outer == (slice(7, 10), slice(17, 25), slice(0, 7))
    assert last.halo_lo == (1, 3, 0) and last.halo_hi == (0, 0, 0)
    # ids do not depend on the halo
    assert [b.core for b in g.with_halo(0)] == [b.core for b in g]
    assert g.block_id(g.block_index(5)) == 5


def test_id_offsets_leave_room_for_every_voxel():
    g = BlockGrid((64, 64, 64), 16)
    offs = [int(g.id_offset(b)) for b in g.block_ids]
    assert np.all(np.diff(offs) == g.block_voxels)
    assert g.id_offset(len(g) - 1).dtype == np.uint64


def test_blocks_in_region():
    g = BlockGrid((20, 20, 20), 10)
    assert g.blocks_in((slice(0, 5), slice(0, 5), slice(0, 5))) == [0]
    assert sorted(g.blocks_in((slice(9, 11), slice(0, 20), slice(19, 20)))) == [1, 3, 5, 7]
    assert g.blocks_in((slice(5, 5), slice(0, 5), slice(0, 5))) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(10, 10, 10), block_shape=(6, 8, 8), chunk_shape=(4, 4, 4)), "not a multiple of the chunk shape"),
        (dict(shape=(10, 10, 10), block_shape=(4, 4, 4), halo=(5, 0, 0)), "larger than the block shape"),
        (dict(shape=(10, 10, 10), block_shape=(4, 0, 4)), r"^block shape must be ≥ 1, got \(4, 0, 4\)$"),
        (dict(shape=(10, -1, 10), block_shape=4), r"^volume shape must be ≥ 1, got \(10, -1, 10\)$"),
        (dict(shape=(10, 10, 10), block_shape=4, halo=-1), r"^halo must be ≥ 0, got -1$"),
        (dict(shape=(10, 10, 10), block_shape=(4, 4)), r"^block shape must be one whole number or three \(z y x\), got \(4, 4\)$"),
        (dict(shape=(10, 10, 10), block_shape=4.5), r"^block shape must be one whole number or three \(z y x\), got 4.5$"),
        (dict(shape=(10, 10), block_shape=(4, 4, 4)), r"^block shape must be one whole number or two \(one per axis\)"),
    ],
)
def test_impossible_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(BlocksegError, match=message):
        BlockGrid(**kwargs)


def test_default_block_shape_is_chunk_aligned_and_near_target():
    b = default_block_shape((397, 1450, 2000), (64, 128, 128), target_voxels=2**24)
    assert all(x % c == 0 for x, c in zip(b, (64, 128, 128)))
    assert 2**24 <= np.prod(b) < 2**25
    # never larger than needed to cover a small volume
    assert default_block_shape((10, 20, 30), (8, 8, 8)) == (16, 24, 32)


def test_dask_chunks_match_cores():
    g = BlockGrid((10, 25, 7), (4, 10, 7))
    assert g.dask_chunks == ((4, 4, 2), (10, 10, 5), (7,))
    for b, idx in zip(g, itertools.product(*[range(n) for n in g.grid_shape])):
        assert b.index == idx
