"""One block grid, shared by every stage.

A volume of shape ``(z, y, x)`` is cut into *blocks*. Each block has

* a **core**: the region this block's task writes. Cores tile the volume exactly once, and
  every core is a whole number of storage chunks (or shards), so no two tasks ever write one
  chunk;
* an **outer** region: core plus ``halo`` voxels on every side, clipped to the volume. It is
  what the task reads (the "read region" of daisy, the core being its "write region").

Block ids are C order over the grid: stable for a volume and block shape, whatever the halo.

Examples
--------
>>> g = BlockGrid((100, 200, 200), block_shape=(64, 128, 128), halo=(4, 8, 8))
>>> g.grid_shape, len(g)
((2, 2, 2), 8)
>>> b = g[7]
>>> b.core, b.outer
((slice(64, 100, None), slice(128, 200, None), slice(128, 200, None)), (slice(60, 100, None), slice(120, 200, None), slice(120, 200, None)))
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, Sequence

import numpy as np

from .errors import BlocksegError
from .zyx import zyx

AXES = ("z", "y", "x")
Slices = tuple[slice, ...]

#: default number of voxels per block when none is given (about 16 M: ~64 MiB of float32)
DEFAULT_BLOCK_VOXELS = 2**24


@dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockGrid`.

    Attributes
    ----------
    id : int
        Stable C-order id of the block in its grid.
    index : tuple of int
        Position of the block in the grid, ``(iz, iy, ix)``.
    core : tuple of slice
        Global slices of the region this block writes.
    outer : tuple of slice
        Global slices of core + halo, clipped to the volume: the region it reads.
    """

    id: int
    index: tuple[int, ...]
    core: Slices
    outer: Slices

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the core."""
        return tuple(s.stop - s.start for s in self.core)

    @property
    def outer_shape(self) -> tuple[int, ...]:
        """Shape of the outer region (core + clipped halo)."""
        return tuple(s.stop - s.start for s in self.outer)

    @property
    def core_in_outer(self) -> Slices:
        """Slices that cut the core out of an array holding the outer region."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))

    @property
    def halo_lo(self) -> tuple[int, ...]:
        """Halo actually present before the core on each axis (0 at the volume border)."""
        return tuple(c.start - o.start for c, o in zip(self.core, self.outer))

    @property
    def halo_hi(self) -> tuple[int, ...]:
        """Halo actually present after the core on each axis (0 at the volume border)."""
        return tuple(o.stop - c.stop for c, o in zip(self.core, self.outer))

    @property
    def origin(self) -> tuple[int, ...]:
        """Global coordinate of the first core voxel."""
        return tuple(s.start for s in self.core)


@dataclass(frozen=True)
class Interface:
    """A face, edge or corner shared by two blocks ``a`` and ``b = a + offset``.

    ``offset`` has entries in {-1, 0, 1} and is lexicographically positive, so ``b > a`` and
    every shared boundary is listed once.
    """

    a: int
    b: int
    offset: tuple[int, ...]

    @property
    def kind(self) -> str:
        """``"face"``, ``"edge"`` or ``"corner"`` (in 3D) by the number of axes crossed."""
        return {1: "face", 2: "edge", 3: "corner"}.get(sum(o != 0 for o in self.offset), "ridge")


class BlockGrid:
    """Blocks of a volume: chunk-aligned cores that tile it once, each with a halo.

    Parameters
    ----------
    shape : sequence of int
        Volume shape, ``(z, y, x)``.
    block_shape : int or sequence of int
        Core shape of a block. The last block on an axis is clipped to the volume.
    halo : int or sequence of int, optional
        Extra context read on each side of a core, per axis. Clipped at the volume border.
    chunk_shape : sequence of int, optional
        Write unit of the arrays the grid is used with (zarr chunks, or shards when the
        array is sharded). ``block_shape`` must be a multiple of it on every axis.

    Raises
    ------
    BlocksegError
        For impossible geometry: non-positive sizes, a negative halo, a halo larger than a
        block, or a block that is not a whole number of chunks.
    """

    def __init__(
        self,
        shape: Sequence[int],
        block_shape: int | Sequence[int],
        halo: int | Sequence[int] = 0,
        chunk_shape: Sequence[int] | None = None,
    ):
        ndim = len(shape)
        if ndim == 0:
            raise BlocksegError("a block grid needs a volume with at least one axis")
        self.shape = zyx(shape, "volume shape", at_least=1, axes=ndim)
        self.block_shape = zyx(block_shape, "block shape", at_least=1, axes=ndim)
        self.halo = zyx(halo, "halo", at_least=0, axes=ndim)
        self.chunk_shape = zyx(chunk_shape, "chunk shape", at_least=1, axes=ndim)
        names = AXES if ndim == 3 else tuple(f"axis {i}" for i in range(ndim))

        for name, h, b in zip(names, self.halo, self.block_shape):
            if h > b:
                raise BlocksegError(
                    f"halo {self.halo} is larger than the block shape {self.block_shape} on axis {name}: "
                    "use larger blocks"
                )
        if self.chunk_shape is not None:
            for name, b, c in zip(names, self.block_shape, self.chunk_shape):
                if b % c:
                    raise BlocksegError(
                        f"block shape {self.block_shape} is not a multiple of the chunk shape "
                        f"{self.chunk_shape} on axis {name}: each block must write whole chunks"
                    )
        self.grid_shape = tuple(math.ceil(s / b) for s, b in zip(self.shape, self.block_shape))

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_array(
        cls,
        array,
        block_shape: int | Sequence[int] | None = None,
        halo: int | Sequence[int] = 0,
    ) -> "BlockGrid":
        """Grid over a zarr (or any chunked) array, aligned to its write unit.

        The write unit is the shard shape for sharded zarr arrays, else the chunk shape. Without
        ``block_shape``, :func:`default_block_shape` picks one.
        """
        unit = write_unit(array)
        if block_shape is None:
            block_shape = default_block_shape(array.shape, unit)
        return cls(array.shape, block_shape, halo, unit)

    def with_halo(self, halo: int | Sequence[int]) -> "BlockGrid":
        """The same blocks (same ids and cores) with another halo."""
        return BlockGrid(self.shape, self.block_shape, halo, self.chunk_shape)

    # ------------------------------------------------------------------ basic properties
    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    @property
    def block_voxels(self) -> int:
        """Voxels in a full (unclipped) core; an upper bound on labels a block can create."""
        return math.prod(self.block_shape)

    def __repr__(self) -> str:
        return (
            f"BlockGrid(shape={self.shape}, block_shape={self.block_shape}, halo={self.halo}, "
            f"chunk_shape={self.chunk_shape}, blocks={len(self)} as {self.grid_shape})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockGrid) and (
            self.shape, self.block_shape, self.halo, self.chunk_shape
        ) == (other.shape, other.block_shape, other.halo, other.chunk_shape)

    def __hash__(self) -> int:
        return hash((self.shape, self.block_shape, self.halo, self.chunk_shape))

    # ------------------------------------------------------------------ ids and blocks
    def block_id(self, index: Sequence[int]) -> int:
        """C-order id of the block at grid position ``index``."""
        return int(np.ravel_multi_index(tuple(index), self.grid_shape))

    def block_index(self, block_id: int) -> tuple[int, ...]:
        """Grid position of block ``block_id``."""
        if not 0 <= block_id < len(self):
            raise IndexError(f"block id {block_id} out of range for {len(self)} blocks")
        return tuple(int(i) for i in np.unravel_index(block_id, self.grid_shape))

    def __getitem__(self, block_id: int) -> Block:
        index = self.block_index(int(block_id))
        core, outer = [], []
        for i, s, b, h in zip(index, self.shape, self.block_shape, self.halo):
            start, stop = i * b, min((i + 1) * b, s)
            core.append(slice(start, stop))
            outer.append(slice(max(start - h, 0), min(stop + h, s)))
        return Block(int(block_id), index, tuple(core), tuple(outer))

    def __iter__(self) -> Iterator[Block]:
        return (self[i] for i in range(len(self)))

    @property
    def block_ids(self) -> range:
        return range(len(self))

    def id_offset(self, block_id: int) -> np.uint64:
        """First of ``block_voxels`` uint64 label ids reserved for ``block_id``.

        A block labels its objects ``offset + 1 .. offset + n`` with ``n <= block_voxels``, so ids
        are unique across blocks without any coordination. Id 0 stays background.
        """
        return np.uint64(block_id) * np.uint64(self.block_voxels)

    # ------------------------------------------------------------------ neighbourhood
    def _offsets(self, connectivity: int) -> list[tuple[int, ...]]:
        if not 1 <= connectivity <= self.ndim:
            raise BlocksegError(f"connectivity must be between 1 and {self.ndim}, got {connectivity}")
        return [
            o
            for o in itertools.product((-1, 0, 1), repeat=self.ndim)
            if 0 < sum(v != 0 for v in o) <= connectivity
        ]

    def neighbours(self, block_id: int, connectivity: int | None = None) -> list[tuple[int, tuple[int, ...]]]:
        """Blocks sharing a face, edge or corner with ``block_id``, as ``(id, offset)`` pairs.

        ``connectivity`` 1 gives faces only (6 in 3D), 2 faces and edges (18), 3 (default in 3D)
        all 26. Blocks at the volume border have fewer.
        """
        connectivity = self.ndim if connectivity is None else connectivity
        index = self.block_index(block_id)
        out = []
        for o in self._offsets(connectivity):
            n = tuple(i + d for i, d in zip(index, o))
            if all(0 <= v < g for v, g in zip(n, self.grid_shape)):
                out.append((self.block_id(n), o))
        return out

    def interfaces(self, connectivity: int | None = None) -> Iterator[Interface]:
        """Every face (edge, corner) shared by two blocks, once, as :class:`Interface`."""
        connectivity = self.ndim if connectivity is None else connectivity
        positive = [o for o in self._offsets(connectivity) if next(v for v in o if v) > 0]
        for block_id in self.block_ids:
            index = self.block_index(block_id)
            for o in positive:
                n = tuple(i + d for i, d in zip(index, o))
                if all(0 <= v < g for v, g in zip(n, self.grid_shape)):
                    yield Interface(block_id, self.block_id(n), o)

    def interface_slices(self, interface: Interface, width: int = 1) -> Slices:
        """Global slices of the slab around a shared face (edge, corner).

        On each axis the offset crosses, the slab spans ``width`` voxels of block ``a`` and
        ``width`` of block ``b`` around their common boundary; on the other axes it spans the
        cores' common extent (they are equal, the blocks being in the same grid row).
        """
        ca, cb = self[interface.a].core, self[interface.b].core
        out = []
        for sa, sb, o in zip(ca, cb, interface.offset):
            if o == 0:
                out.append(sa)
            else:
                boundary = sa.stop if o > 0 else sa.start
                lo = max(boundary - width, min(sa.start, sb.start))
                hi = min(boundary + width, max(sa.stop, sb.stop))
                out.append(slice(lo, hi))
        return tuple(out)

    # ------------------------------------------------------------------ regions and chunks
    def blocks_in(self, region: Slices) -> list[int]:
        """Ids of the blocks whose core intersects ``region`` (global slices)."""
        ranges = []
        for s, b, size in zip(region, self.block_shape, self.shape):
            start = 0 if s.start is None else max(s.start, 0)
            stop = size if s.stop is None else min(s.stop, size)
            if stop <= start:
                return []
            ranges.append(range(start // b, (stop - 1) // b + 1))
        return [self.block_id(i) for i in itertools.product(*ranges)]

    def chunks_of(self, block_id: int) -> list[tuple[int, ...]]:
        """Chunk indices (of ``chunk_shape``) written by the core of ``block_id``."""
        if self.chunk_shape is None:
            raise BlocksegError("this grid has no chunk shape")
        core = self[block_id].core
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(core, self.chunk_shape)]
        return list(itertools.product(*ranges))

    @cached_property
    def dask_chunks(self) -> tuple[tuple[int, ...], ...]:
        """The cores as dask ``chunks`` (one dask chunk per block)."""
        return tuple(
            tuple(min(b, s - i * b) for i in range(g))
            for s, b, g in zip(self.shape, self.block_shape, self.grid_shape)
        )


def write_unit(array) -> tuple[int, ...]:
    """Shape of the smallest region one task may write alone: shards if any, else chunks."""
    shards = getattr(array, "shards", None)
    return tuple(shards) if shards else tuple(array.chunks)


def default_block_shape(
    shape: Sequence[int], chunk_shape: Sequence[int], target_voxels: int = DEFAULT_BLOCK_VOXELS
) -> tuple[int, ...]:
    """A block shape made of whole chunks, about ``target_voxels`` large.

    Grows the block one chunk at a time along the axis where it is smallest in voxels
    (relative to the volume), never past the volume, until the target is reached.
    """
    chunk = [int(c) for c in chunk_shape]
    counts = [1] * len(chunk)
    limits = [max(1, math.ceil(s / c)) for s, c in zip(shape, chunk)]
    while math.prod(c * n for c, n in zip(chunk, counts)) < target_voxels:
        growable = [i for i in range(len(chunk)) if counts[i] < limits[i]]
        if not growable:
            break
        i = min(growable, key=lambda a: (chunk[a] * counts[a], a))
        counts[i] += 1
    return tuple(c * n for c, n in zip(chunk, counts))


@dataclass(frozen=True)
class BlockTask:
    """One pass of a stage over a grid's blocks, described as daisy describes a task.

    Every blockwise pass of every stage is one such record, run by
    :func:`blockseg.runtime.cluster.run_task`: what a block reads, what it writes, how "done" is
    checked and the function that does it.

    Attributes
    ----------
    name : str
        The pass's name (progress, dashboard, error messages and the report's retries).
    grid : BlockGrid
        The blocks; a block writes its core (the *write region*).
    process : callable
        ``process(block_id)``: pickle-able (a ``functools.partial`` carrying paths and small
        settings, never arrays); reads its own input, writes its own core, is idempotent.
    halo : tuple of int
        Context read around the core, per side (the *read region* is the core grown by it,
        clipped to the volume; unlike ``grid.halo`` it may exceed the block shape).
    check : callable, optional
        ``check(block_id) -> bool``: the block's output is already final (a done-marker); None:
        never done (the pass has no per-block resume).
    select : callable, optional
        ``select(block_id) -> bool``: the block takes part in this pass at all (None: every block).
    resources : dict, optional
        Worker resources each task needs, e.g. ``{"GPU": 1}``.

    Examples
    --------
    >>> task = BlockTask("double", BlockGrid((10, 10, 10), 5), process=lambda b: 2 * b, halo=(1, 1, 1),
    ...                  check=lambda b: b < 6)
    >>> task.read_region(7)
    (slice(4, 10, None), slice(4, 10, None), slice(4, 10, None))
    >>> task.write_region(7)
    (slice(5, 10, None), slice(5, 10, None), slice(5, 10, None))
    >>> task.todo()
    [6, 7]
    """

    name: str
    grid: BlockGrid
    process: object
    halo: tuple = (0, 0, 0)
    check: object = None
    select: object = None
    resources: dict | None = None

    def write_region(self, block_id: int) -> Slices:
        """Global slices the block writes: its core."""
        return self.grid[block_id].core

    def read_region(self, block_id: int) -> Slices:
        """Global slices the block reads: its core grown by :attr:`halo`, clipped to the volume."""
        return tuple(slice(max(c.start - h, 0), min(c.stop + h, n))
                     for c, h, n in zip(self.grid[block_id].core, self.halo, self.grid.shape))  # fmt: skip

    def todo(self, block_ids: Sequence[int] | None = None) -> list[int]:
        """The blocks of ``block_ids`` (default: all) this pass selects and has not done yet."""
        ids = self.grid.block_ids if block_ids is None else block_ids
        return [int(b) for b in ids if (self.select is None or self.select(b)) and not (self.check and self.check(b))]
