"""The global patch lattice: where patches go, how their outputs are blended, what a block reads.

Patches sit on one lattice fixed by the *volume* (its shape, the model's geometry, the patch size
and the overlap), never by the block, so the assembled prediction does not depend on the block
shape. Per axis, output tiles of ``O = patch - 2 * crop`` voxels start every ``stride = O -
overlap`` voxels over the volume plus the model's context ``margin`` on both sides (the last
tile snapped to the end, or overhanging it with ``snap=False``); input outside the volume is its
mirror image. Blending weights are separable and normalised per axis, so the weights of the
tiles covering any voxel sum to one with no accumulator and no division pass.

The lattice per axis, the blending argument and how blocks own tiles:
``docs/design/predict-lattice.md`` (the site's *Design notes*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import BlocksegError
from ..zyx import zyx

BLENDINGS = ("gaussian", "bump", "constant")
#: gaussian sigma as a fraction of the output patch (as MONAI's sigma_scale)
GAUSSIAN_SIGMA = 0.125
#: smallest 1-D window value: weights stay strictly positive, so every voxel is normalisable
WINDOW_FLOOR = 1e-4


def window_1d(n: int, blending: str = "gaussian") -> np.ndarray:
    """1-D blending window of length ``n`` (float64, peak 1, strictly positive)."""
    if blending not in BLENDINGS:
        raise BlocksegError(f"unknown blending {blending!r}; use one of {BLENDINGS}")
    i = np.arange(n, dtype=np.float64)
    if blending == "constant" or n == 1:
        return np.ones(n)
    if blending == "gaussian":
        sigma = GAUSSIAN_SIGMA * n
        w = np.exp(-0.5 * ((i - (n - 1) / 2) / sigma) ** 2)
    else:  # bump: exp(-1 / (1 - r^2)) on r in (-1, 1), zero at the window border
        r = (2 * i + 1) / n - 1
        w = np.exp(1.0 - 1.0 / np.maximum(1.0 - r * r, 1e-12))
    w /= w.max()
    return np.maximum(w, WINDOW_FLOOR)


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map integer coordinates onto ``[0, size)`` by mirror reflection (edge not repeated)."""
    index = np.asarray(index, dtype=np.int64)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    j = np.mod(index, period)
    return np.where(j >= size, period - j, j)


def read_reflected(read: Callable[[tuple[slice, ...]], np.ndarray], shape: Sequence[int], lo, hi) -> np.ndarray:
    """Read the box ``[lo, hi)`` (global, may leave the volume) with reflection at the borders.

    ``read(slices)`` reads an in-volume box (a zarr or numpy array's ``__getitem__``). Only the
    in-volume bounding box of the reflected coordinates is read, once.
    """
    boxes, takes = [], []
    for a, (l, h, s) in enumerate(zip(lo, hi, shape)):
        l, h = int(l), int(h)
        if 0 <= l and h <= s:
            boxes.append(slice(l, h))
            takes.append(None)
        else:
            idx = reflect_index(np.arange(l, h), s)
            mn, mx = int(idx.min()), int(idx.max())
            boxes.append(slice(mn, mx + 1))
            takes.append(idx - mn)
    data = np.asarray(read(tuple(boxes)))
    for a, t in enumerate(takes):
        if t is not None:
            data = np.take(data, t, axis=a)
    return data


@dataclass(frozen=True)
class AxisLattice:
    """The lattice along one axis (see the module docstring).

    Attributes
    ----------
    size : int
        Volume size on this axis.
    patch, crop, out, stride, pad : int
        Input patch, valid-padding crop per side, output patch ``patch - 2 * crop``, tile
        stride, and the reflected context ``pad`` added at both volume borders.
    starts : ndarray of int64
        Global start of every output tile, increasing.
    weights : ndarray of float64, shape (n_tiles, out)
        Normalised 1-D blending weight of every tile at each of its output positions.
    """

    size: int
    patch: int
    crop: int
    out: int
    stride: int
    pad: int
    starts: np.ndarray
    weights: np.ndarray

    @classmethod
    def build(cls, size: int, patch: int, crop: int, overlap: int, pad: int, blending: str,
              snap: bool = True) -> "AxisLattice":  # fmt: skip
        """The lattice of one axis; ``snap=False`` lets the last tile overhang the domain's end
        (its input beyond the volume is reflected, its outputs there dropped) instead of
        snapping it back, so every tile start stays a multiple of the stride."""
        out = patch - 2 * crop
        stride = out - overlap
        if out <= 0 or stride <= 0:
            raise BlocksegError(f"overlap {overlap} leaves no stride for an output patch of {out}")
        length = size + 2 * pad
        last = max(length - out, 0)
        n = 1 + math.ceil(last / stride)
        k = np.arange(n, dtype=np.int64) * stride
        starts = -pad + (np.minimum(k, last) if snap else k)
        w = window_1d(out, blending)
        total = np.zeros(max(length, int(starts[-1]) + pad + out))
        for t in starts:
            total[t + pad : t + pad + out] += w
        weights = np.stack([w / total[t + pad : t + pad + out] for t in starts])
        return cls(size, patch, crop, out, stride, pad, starts, weights)

    def __len__(self) -> int:
        return len(self.starts)

    def tiles_overlapping(self, start: int, stop: int) -> range:
        """Indices of the tiles whose output overlaps ``[start, stop)`` (contiguous)."""
        k0 = int(np.searchsorted(self.starts + self.out, start, side="right"))
        k1 = int(np.searchsorted(self.starts, stop, side="left"))
        return range(k0, k1)

    @property
    def anchors(self) -> np.ndarray:
        """Centre of every tile's output, clamped into the volume: decides which block owns it.

        The centre, not the start: a tile then reaches at most about half its output into the
        blocks on either side, and tiles of a block-aligned lattice shifted by the reflect pad
        (or a last tile snapped back to the volume's end) stay with the block they mostly cover.
        """
        return np.clip(self.starts + self.out // 2, 0, self.size - 1)

    def tiles_owned(self, start: int, stop: int) -> range:
        """Indices of the tiles whose anchor lies in ``[start, stop)`` (contiguous)."""
        return range(int(np.searchsorted(self.anchors, start)), int(np.searchsorted(self.anchors, stop)))

    def output_extent(self, tiles: range) -> tuple[int, int]:
        """Output box ``[lo, hi)`` of a run of tiles, clipped to the volume (empty: ``lo == hi``)."""
        if len(tiles) == 0:
            return 0, 0
        lo = max(int(self.starts[tiles.start]), 0)
        return lo, max(min(int(self.starts[tiles.stop - 1]) + self.out, self.size), lo)

    def reach_below(self, start: int) -> int:
        """End of the outputs of the tiles anchored before ``start`` (``start`` when none reach past it)."""
        k = int(np.searchsorted(self.anchors, start))
        if k == 0:
            return start
        return max(start, int((self.starts[:k] + self.out).max()))

    def reach_above(self, stop: int) -> int:
        """Start of the outputs of the tiles anchored at or after ``stop`` (``stop`` when none reach below it)."""
        k = int(np.searchsorted(self.anchors, stop))
        if k == len(self.starts):
            return stop
        return min(stop, max(int(self.starts[k:].min()), 0))

    def input_extent(self, tiles: range) -> tuple[int, int]:
        """Global input box ``[lo, hi)`` read by a run of tiles."""
        return int(self.starts[tiles.start]) - self.crop, int(self.starts[tiles.stop - 1]) - self.crop + self.patch


@dataclass(frozen=True)
class Lattice:
    """The 3-D patch lattice of a volume: one :class:`AxisLattice` per axis (z, y, x)."""

    axes: tuple[AxisLattice, AxisLattice, AxisLattice]
    blending: str

    @classmethod
    def build(
        cls,
        shape: Sequence[int],
        patch: Sequence[int],
        crop: Sequence[int],
        overlap: Sequence[int],
        pad: Sequence[int] = (0, 0, 0),
        blending: str = "gaussian",
        snap: bool = True,
    ) -> "Lattice":
        return cls(
            tuple(AxisLattice.build(*args, blending, snap) for args in zip(shape, patch, crop, overlap, pad)),  # type: ignore[arg-type]
            blending,
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.axes)

    @property
    def patch(self) -> tuple[int, ...]:
        return tuple(a.patch for a in self.axes)

    @property
    def out(self) -> tuple[int, ...]:
        return tuple(a.out for a in self.axes)

    @property
    def n_tiles(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    def tiles_for(self, core: Sequence[slice]) -> tuple[range, ...]:
        """Per-axis tile ranges whose outputs overlap the region ``core``."""
        return tuple(a.tiles_overlapping(s.start, s.stop) for a, s in zip(self.axes, core))

    def tiles_owned(self, core: Sequence[slice]) -> tuple[range, ...]:
        """Per-axis tile ranges computed by the block of ``core`` (anchors inside it)."""
        return tuple(a.tiles_owned(s.start, s.stop) for a, s in zip(self.axes, core))

    def halo(self) -> tuple[int, ...]:
        """Largest distance, per axis, that any block reads beyond its core (its derived halo).

        A core edge can fall anywhere inside a tile, so a block reads up to ``out - 1`` output
        voxels plus ``crop`` beyond it; at least ``crop + pad``.
        """
        return tuple(max(a.out - 1 + a.crop, a.crop + a.pad) for a in self.axes)


def resolve_overlap(overlap, out: Sequence[int], reference: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Overlap in voxels per axis: values < 1 are fractions of ``reference`` (default: the
    output patch ``out``), else voxels; must be smaller than ``out``."""
    vals = zyx(overlap, "overlap", kind=float, at_least=0)
    res = []
    for v, o, r in zip(vals, out, out if reference is None else reference):
        vox = int(round(v * r)) if v < 1 else int(v)
        if vox >= o:
            raise BlocksegError(f"overlap {vox} voxels is not smaller than the output patch {o}")
        res.append(vox)
    return tuple(res)  # type: ignore[return-value]
