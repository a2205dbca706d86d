"""``segment``: prediction store -> global instance labels, blockwise and seamless.

Passes, each a set of independent block tasks that write only their own core:

1. **seeds** -- decode the core once, give its seed components block-unique ids, write its
   height and seed code to the work directory;
2. **pairs** -- the seed ids that touch across every face, edge and corner two blocks share;
3. *driver* -- union-find over the pairs; global seed sizes; seeds numbered 1..S in raster order;
4. **watershed**, in exchange rounds (:mod:`.exact`) run per tile of blocks, until no shell
   value changes anywhere; no labels are written in the rounds;
5. **statistics** -- per-instance partial sums from each block's last solution, reduced;
   instances under ``min_size`` removed, the rest numbered 1..N in seed order;
6. **relabel** -- each block writes its final labels; the table goes to ``OUT/instances.csv``.

No task reads a file written in its own round, so every task is idempotent. The work directory
(``OUT.work``: seed codes, heights, lz4-compressed solutions with their deltas, ``journal.json``)
lets a killed driver's rerun continue; it is deleted at the end. Each pass in detail:
``docs/design/exactness.md``, section *The passes of segment*.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import os
import uuid
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence

import cc3d
import fastremap
import fsspec
import numcodecs
import numpy as np
import zarr
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .._version import __version__
from ..runtime.cluster import block_voxels, run_blocks, run_task
from ..runtime._jit import njit
from ..errors import BlocksegError
from ..faults import fault_point
from ..grid import BlockGrid, BlockTask, Interface
from ..io.volume import create_volume
from ..io.storage import free_space, is_url, listdir, load_npz, makedirs, read_bytes, remove_file, remove_tree, save_npz, write_bytes
from ..io.predictions import decode_channel, open_predictions, prediction_kind
from ..io.pyramid import MAX_PROPERTIES, block_levels, create_levels, downsample_block, finish_volume
from ..io.tables import write_table
from .decoders import BCDDecoder, Decoder
from .exact import UNREACHED, keyed_flood, keyed_update, shell_positions
from .options import segment_options
from .params import DecoderChoice, choose_decoder, store_decoder
from .stats import instance_table, partial_stats, reduce_stats
from ..io.safety import aborts_on_error, prepare_output, prepare_work

#: safety bound on exchange rounds (never reached: the fixed point is finite, see .exact)
_MAX_ROUNDS = 100_000


# ---------------------------------------------------------------------------- job context
@dataclass(frozen=True)
class _Job:
    """Everything a block task needs (small and picklable: paths and parameters only)."""

    pred_path: str
    work_path: str
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    decoder: Decoder
    kinds: tuple[tuple[str, str], ...]
    #: unique per segment run: keys the per-process caches below (a rerun never sees stale data)
    token: str = ""
    #: blocks per axis of a tile: later exchange rounds run one task per tile (:func:`_tile_task`)
    tile: tuple[int, ...] = (1, 1, 1)

    def grid(self) -> BlockGrid:
        # the halo is handled here (any size, even larger than a block), not by the grid
        return BlockGrid(self.shape, self.block_shape, 0, self.chunk_shape)

    def array(self, name: str) -> zarr.Array:
        if not self.token:
            return zarr.open_array(f"{self.work_path}/{name}", mode="r+")
        return _open_work_array(self.work_path, name, self.token)


@functools.lru_cache(maxsize=64)
def _open_work_array(work_path: str, name: str, token: str) -> zarr.Array:
    """Work arrays opened once per worker process and run (opening costs ~1 ms a call)."""
    return zarr.open_array(f"{work_path}/{name}", mode="r+")


@functools.lru_cache(maxsize=16)
def _open_score(pred_path: str, channel: str, token: str):
    return open_predictions(pred_path, (channel,))[channel]


@functools.lru_cache(maxsize=4096)
def _seed_table(work_path: str, block_id: int, token: str) -> tuple[np.ndarray, np.ndarray]:
    """A block's seed table (written once per run, before the watershed reads it many times)."""
    data = load_npz(os.path.join(work_path, "seed_tables", f"{block_id}.npz"))
    return data["keys"], data["values"]


def expand(region: Sequence[slice], by: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """``region`` grown by ``by`` voxels on each side, clipped to ``shape``."""
    return tuple(slice(max(s.start - b, 0), min(s.stop + b, n)) for s, b, n in zip(region, by, shape))


def _within(inner: Sequence[slice], outer: Sequence[slice]) -> tuple[slice, ...]:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def decode_region(job: _Job, region: Sequence[slice]):
    """Decode ``region``: ``(seeds, foreground, height, channels)`` cropped to it.

    Reads ``decoder.support`` extra voxels so that masks needing context are exact.
    """
    kinds = dict(job.kinds)
    read = expand(region, (job.decoder.support,) * 3, job.shape)
    vols = open_predictions(job.pred_path, job.decoder.channels)
    ch = {c: decode_channel(vols[c].array[read], kinds[c]) for c in job.decoder.channels}
    seeds, fg, height = job.decoder.decode(ch)
    crop = _within(region, read)
    return seeds[crop], fg[crop], height[crop], {c: v[crop] for c, v in ch.items()}


#: the float32 value of every byte, per channel kind (:func:`decode_channel` of 0..255)
@functools.lru_cache(maxsize=8)
def _byte_values(kind: str) -> np.ndarray:
    return decode_channel(np.arange(256, dtype=np.uint8), kind)


def decode_masks(job: _Job, region: Sequence[slice]):
    """``(seeds, foreground, height)`` of ``region``, as :func:`decode_region` gives them: from
    the stored bytes in one pass where the decoder can (:meth:`Decoder.decode_bytes`, uint8
    channels), else from the decoded channels."""
    if job.decoder.support == 0:
        kinds = dict(job.kinds)
        vols = open_predictions(job.pred_path, job.decoder.channels)
        stored = {c: vols[c].array[tuple(region)] for c in job.decoder.channels}
        if all(a.dtype == np.uint8 for a in stored.values()) and all(kinds[c] != "raw" for c in stored):
            out = job.decoder.decode_bytes(stored, {c: _byte_values(kinds[c]) for c in stored})
            if out is not None:
                return out
        seeds, fg, height = job.decoder.decode({c: decode_channel(a, kinds[c]) for c, a in stored.items()})
        return seeds, fg, height
    seeds, fg, height, _ = decode_region(job, region)
    return seeds, fg, height


# ---------------------------------------------------------------------------- block tasks
@njit(nogil=True)
def _encode_seeds(cc, fg, offset, fg_value, out, counts, first, origin, shape):
    """Seed code of a core (see :func:`segment`), the voxel count of each component and the
    global raster index of its first voxel (the seed numbering key)."""
    nz, ny, nx = cc.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                c = cc[z, y, x]
                if c != 0:
                    out[z, y, x] = c + offset
                    counts[c] += 1
                    if first[c] < 0:
                        first[c] = ((z + origin[0]) * shape[1] + (y + origin[1])) * shape[2] + (x + origin[2])
                elif fg[z, y, x]:
                    out[z, y, x] = fg_value
                else:
                    out[z, y, x] = 0


def _seed_task(block_id: int, job: _Job):
    """Decode the core once: write its height and its seed/foreground code (see :func:`segment`),
    return the block's seed ids and their voxel counts."""
    grid = job.grid()
    block = grid[block_id]
    seeds, fg, height = decode_masks(job, block.core)
    cc, n = cc3d.connected_components(seeds.view(np.uint8), connectivity=26, out_dtype=np.uint32, return_N=True)
    seeds_out = job.array("seeds")
    dtype = seeds_out.dtype
    code = np.empty(cc.shape, dtype=dtype)
    counts = np.zeros(n + 1, dtype=np.int64)
    first = np.full(n + 1, -1, dtype=np.int64)
    _encode_seeds(
        cc, fg, dtype.type(grid.id_offset(block_id)), dtype.type(_fg_code(dtype)), code, counts, first,
        np.asarray(block.origin, dtype=np.int64), np.asarray(grid.shape, dtype=np.int64),
    )  # fmt: skip
    fault_point("segment.seeds:before", block=block_id)
    seeds_out[block.core] = code
    fault_point("segment.seeds:between", block=block_id)
    job.array("height")[block.core] = height
    fault_point("segment.seeds:after", block=block_id)
    ids = np.arange(1, n + 1, dtype=np.uint64) + grid.id_offset(block_id)
    return ids, counts[1:], first[1:]


def _fg_code(dtype) -> int:
    """Seed-array value of a foreground voxel that is not a seed (the dtype's largest value)."""
    return int(np.iinfo(dtype).max)


def _later_neighbours(grid: BlockGrid, block_id: int) -> list[Interface]:
    out = []
    for nid, off in grid.neighbours(block_id):
        if next(v for v in off if v) > 0:
            out.append(Interface(block_id, nid, off))
    return out


def _pairs_task(block_id: int, job: _Job) -> np.ndarray:
    grid = job.grid()
    seeds = job.array("seeds")
    edges = [np.zeros((0, 2), dtype=np.uint64)]
    for iface in _later_neighbours(grid, block_id):
        slab = seeds[grid.interface_slices(iface, 1)]
        sel = (slab != 0) & (slab != _fg_code(slab.dtype))
        if not sel.any():
            continue
        cc = cc3d.connected_components(sel, connectivity=26)
        pairs = np.unique(np.stack([cc[sel].astype(np.uint64), slab[sel]], axis=1), axis=0)
        # within one slab component, link every id to the component's first id
        first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
        rep = pairs[first, 1][np.cumsum(first) - 1]
        link = pairs[:, 1] != rep
        edges.append(np.stack([rep[link], pairs[link, 1]], axis=1))
    return np.concatenate(edges)


def _relabel_task(block_id: int, job: _Job, dst: str, table_dir: str, levels: tuple = ()):
    """Map the core's final labels (kept by :func:`_stats_task`) through this block's table into
    level 0 of the label volume ``dst``, and write the pyramid levels ``levels`` (their factors,
    :func:`~blockseg.io.pyramid.block_levels`) of the core."""
    core = job.grid()[block_id].core
    data = load_npz(os.path.join(table_dir, f"{block_id}.npz"))
    mapping = dict(zip(data["keys"].tolist(), data["values"].tolist()))
    mapping[0] = 0
    raw = _load_core(job, block_id)
    out = fastremap.remap(raw, mapping, preserve_missing_labels=False, in_place=True)
    target = zarr.open_array(f"{dst}/0", mode="r+")
    out = out.astype(target.dtype, copy=False)
    fault_point("segment.relabel:before", block=block_id)
    target[core] = out
    fault_point("segment.relabel:after", block=block_id)
    _write_core_levels(dst, core, out, levels, block_id)


def _write_core_levels(dst: str, core: tuple[slice, ...], labels: np.ndarray, levels: Sequence, block_id: int) -> None:
    """Levels ``1..len(levels)`` of the core: each chunk of them samples this core only, so the
    pyramid pass need not read level 0 back (at 512³ in 256³ blocks it built levels 1-3 in
    1.5-1.7 CPU s, now level 3 alone in 0.06 s; 2026-12-07, issue 29 goal 5)."""
    cum = np.ones(3, dtype=np.int64)
    for k, f in enumerate(levels, start=1):
        cum = cum * np.asarray(f)
        # the pyramid's own rule (and its fault point): level k is level k-1 sampled with a stride
        labels = downsample_block(labels, f, "stride")
        box = tuple(slice(s.start // c, s.start // c + n) for s, c, n in zip(core, cum, labels.shape))
        zarr.open_array(f"{dst}/{k}", mode="r+")[box] = labels
        fault_point("segment.levels:after", block=block_id, level=k)


def _global_seeds(job: _Job, grid: BlockGrid, region: tuple[slice, ...], compact: bool = False):
    """Seeds and foreground of ``region``: raw block seed ids mapped to global seed ids with the
    tables of the blocks whose cores ``region`` overlaps (only those tables are loaded).

    With ``compact``, seeds are numbered 1..K in the order of their global ids and returned as
    uint16 when K < 65535 (a smaller flood: labels only need to be told apart), together with
    the lookup table ``local -> global`` (else None and global ids).
    """
    raw = job.array("seeds")[region]
    code = _fg_code(raw.dtype)
    keys, values = [np.zeros(1, raw.dtype), np.full(1, code, raw.dtype)], [np.zeros(2, np.uint64)]
    for bid in grid.blocks_in(region):
        if job.token:
            k, v = _seed_table(job.work_path, bid, job.token)
        else:
            data = load_npz(os.path.join(job.work_path, "seed_tables", f"{bid}.npz"))
            k, v = data["keys"], data["values"]
        keys.append(k)
        values.append(v)
    keys, values = np.concatenate(keys), np.concatenate(values)
    fg = raw != 0
    lut = None
    if compact:
        gids = np.unique(values)  # 0 first
        if gids.size < 65535:
            values = np.searchsorted(gids, values)
            lut = gids
    mapping = dict(zip(keys.tolist(), values.tolist()))
    seeds = fastremap.remap(raw, mapping, preserve_missing_labels=False, in_place=True)
    if lut is not None:
        seeds = seeds.astype(np.uint16)
    return (seeds, fg, lut) if compact else (seeds, fg)


def _score(job: _Job, region: tuple[slice, ...]) -> np.ndarray:
    """Per-voxel instance score of ``region`` (reads the decoder's score channel only)."""
    c = job.decoder.score_channel
    vol = _open_score(job.pred_path, c, job.token) if job.token else open_predictions(job.pred_path, (c,))[c]
    return job.decoder.score({c: decode_channel(vol.array[region], dict(job.kinds)[c])})


# ---------------------------------------------------------------------------- exact watershed
def _shell_slabs(outer: tuple[slice, ...], shape: Sequence[int]) -> list[tuple[int, tuple[slice, ...]]]:
    """The one-voxel face layers just outside ``outer`` that lie in the volume, as
    ``(face, slices)`` with ``face = 2 * axis + side`` (the shell of :mod:`.exact`)."""
    out = []
    for ax in range(3):
        for side in (0, 1):
            s = list(outer)
            if side == 0:
                if outer[ax].start == 0:
                    continue
                s[ax] = slice(outer[ax].start - 1, outer[ax].start)
            else:
                if outer[ax].stop == shape[ax]:
                    continue
                s[ax] = slice(outer[ax].stop, outer[ax].stop + 1)
            out.append((2 * ax + side, tuple(s)))
    return out


def _intersect(a: Sequence[slice], b: Sequence[slice]) -> tuple[slice, ...] | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.stop > s.start for s in out) else None


def _pieces_dir(job: _Job, block_id: int) -> str:
    return os.path.join(job.work_path, "pieces", str(block_id))


_PIECE_PARTS = ("lab", "lev", "dist")


def _save_pieces(job: _Job, block_id: int, rnd: int, pieces: Mapping[str, tuple[np.ndarray, ...]]) -> None:
    """Publish a run's pieces as one immutable npz (plain arrays: reading it runs no code)."""
    arrays = {f"{name}.{part}": a for name, parts in pieces.items() for part, a in zip(_PIECE_PARTS, parts)}
    save_npz(os.path.join(_pieces_dir(job, block_id), f"{rnd}.npz"), **arrays)


def _load_pieces(job: _Job, block_id: int, rnd: int) -> dict[str, tuple[np.ndarray, ...]]:
    arrays = load_npz(os.path.join(_pieces_dir(job, block_id), f"{rnd}.npz"))
    names = sorted({k.rsplit(".", 1)[0] for k in arrays})
    return {n: tuple(arrays[f"{n}.{part}"] for part in _PIECE_PARTS) for n in names}


def _round_of(name: str) -> int | None:
    """The round a work file or folder belongs to (``3``, ``3.npz``), None for a temporary one."""
    stem = name[:-4] if name.endswith(".npz") else name
    return int(stem) if stem.isdigit() else None


def _remove_older(folder: str, than: int) -> None:
    """Delete the files and folders of rounds before ``than`` (and temporaries left by a killed
    attempt of those rounds); no task of round ``than`` or later reads them."""
    for f in listdir(folder):
        rnd = _round_of(f)
        rnd = rnd if rnd is not None else _round_of(f.split(".")[0])
        if rnd is not None and rnd < than:
            path = os.path.join(folder, f)
            remove_tree(path) if os.path.isdir(path) else remove_file(path)


def _read_shell(job: _Job, grid: BlockGrid, block_id: int, outer, dtype, pieces_of: Callable[[int], dict | None]):
    """Shell values of ``block_id``'s region from the latest pieces its neighbours published
    (``pieces_of(c)``: block ``c``'s pieces, None before its first run), as 1-D arrays in the
    order of :func:`.exact.shell_positions`: only the shell is allocated, not three arrays the
    size of the region (which cost about 0.2 s per 256³ block, issue 29 goal 5)."""
    pshape = tuple(s.stop - s.start + 2 for s in outer)
    ring = shell_positions(tuple(n - 2 for n in pshape))
    lab = np.zeros(ring.size, dtype=dtype)
    lev = np.full(ring.size, UNREACHED, dtype=np.uint16)
    dist = np.zeros(ring.size, dtype=np.uint32)
    origin = tuple(s.start - 1 for s in outer)
    for face, slab in _shell_slabs(outer, job.shape):
        name = f"{block_id}_{face}"
        for c in grid.blocks_in(slab):
            published = pieces_of(c)
            if published is None:
                continue  # not run yet: its voxels are unreached
            piece = published.get(name)
            if piece is None:
                continue  # nothing reached on that piece
            inter = _intersect(slab, grid[c].core)
            at = np.searchsorted(ring, _box_positions(inter, origin, pshape))
            lab[at], lev[at], dist[at] = (np.asarray(a).ravel() for a in piece)
    return lab, lev, dist


def _box_positions(box: Sequence[slice], origin: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Flat indices (C order) of the voxels of ``box`` in an array of ``shape`` placed at ``origin``."""
    z, y, x = (np.arange(b.start - o, b.stop - o) for b, o in zip(box, origin))
    return ((z[:, None, None] * shape[1] + y[None, :, None]) * shape[2] + x[None, None, :]).ravel()


_STATE_KEYS = "lvdhf"  # labels, level, dist, height, fixed: the padded solution of a region


#: a saved solution's arrays are compressed (lz4, not shuffled: a 264³ region of the 512³
#: benchmark, 220 MiB, packs to 24 MiB in 0.15 s CPU and unpacks in 0.09 s; bit-shuffled it was
#: 38 MiB, 0.27 s and 0.20 s -- the runs of equal labels and keys compress best unshuffled,
#: 2026-12-07, issue 29 goal 5). Blosc frames name their own shuffle: older work files read too
_CODEC = numcodecs.Blosc(cname="lz4", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE)


def _save_state(state_dir: str, rnd: int, state) -> None:
    """Keep a region's solution for its next update: one file ``N.npz`` holding each array
    compressed (:data:`_CODEC`) with its dtype and shape, written beside and renamed into place
    (on object storage: one put), so it is there complete or not at all. A complete solution
    of a round is never replaced: another attempt's is identical, and a reader of the next
    round must never find none."""
    path = os.path.join(state_dir, f"{rnd}.npz")
    if not is_url(path) and os.path.exists(path):
        return
    _save_packed(path, _STATE_KEYS, state)


def _save_packed(path: str, keys: str, arrays: Sequence[np.ndarray]) -> None:
    """One npz at ``path`` (:func:`save_npz`: written whole) holding each array under its key
    compressed (:data:`_CODEC`), with its dtype and shape (``<key>.meta``); read by :func:`_read_state`."""
    packed = {}
    for k, a in zip(keys, arrays):
        a = np.ascontiguousarray(a)
        packed[k] = np.frombuffer(_CODEC.encode(a), dtype=np.uint8)
        packed[f"{k}.meta"] = np.array([a.dtype.str, *map(str, a.shape)])
    save_npz(path, **packed)


def _read_state(path: str, keys: str = _STATE_KEYS) -> tuple:
    """The arrays ``keys`` (default: all, in :data:`_STATE_KEYS` order) of a saved solution, or of
    any file :func:`_save_packed` wrote."""
    saved = load_npz(path)
    out = []
    for k in keys:
        dtype, *shape = saved[f"{k}.meta"]
        a = np.empty(tuple(int(n) for n in shape), dtype=np.dtype(str(dtype)))
        _CODEC.decode(saved[k], out=a)
        out.append(a)
    return tuple(out)


#: a later round's update is kept as a delta (the entries it changed) until the deltas since
#: the last full solution hold this fraction of the region's voxels, or there are
#: :data:`_MAX_DELTAS` of them (each run reads the whole chain); then a full one is saved
_DELTA_FRACTION = 0.125
_MAX_DELTAS = 8

_DELTA = ".delta.npz"


def _save_delta(state_dir: str, rnd: int, state, touched: np.ndarray) -> None:
    """Keep an update as the entries it changed: flat indices and their new label, key and
    fixed flag (one immutable npz; a later round's cost grows with what changed)."""
    arrays = {"i": touched}
    for k, a in zip(_STATE_KEYS, state):
        if k != "h":  # the height never changes
            arrays[k] = np.asarray(a).reshape(-1)[touched]
    save_npz(os.path.join(state_dir, f"{rnd}{_DELTA}"), **arrays)


def _state_files(state_dir: str) -> tuple[list[int], list[int]]:
    """Rounds of the full solutions and of the deltas a region's folder holds."""
    full, deltas = [], []
    for f in listdir(state_dir):
        if f.endswith(_DELTA) and f[: -len(_DELTA)].isdigit():
            deltas.append(int(f[: -len(_DELTA)]))
        elif (r := _round_of(f)) is not None:
            full.append(r)
    return full, deltas


def _chain(state_dir: str, upto: int | None) -> tuple[int, list[int]]:
    """The solution of the latest round ``<= upto``: its full base and the deltas after it."""
    full, deltas = _state_files(state_dir)
    base = max(r for r in full if upto is None or r <= upto)
    return base, sorted(r for r in deltas if r > base and (upto is None or r <= upto))


def _load_state(state_dir: str, upto: int | None = None) -> tuple[int, tuple, tuple[int, int]]:
    """The latest saved solution of a region from a round ``<= upto`` (any round when None),
    its round and (delta entries, deltas) it was rebuilt with. A run of round ``r`` asks for
    ``upto`` = the block's previous run, never for its own round: a retried attempt must start
    from what the first attempt started from, not from what that attempt saved (it would then
    update nothing and publish stale pieces)."""
    base, deltas = _chain(state_dir, upto)
    return _load_chain(state_dir, base, deltas, _STATE_KEYS)


def _load_chain(state_dir: str, base: int, deltas: Sequence[int], keys: str) -> tuple[int, tuple, tuple[int, int]]:
    """The arrays ``keys`` of the full solution of round ``base`` with ``deltas`` applied."""
    state = _read_state(os.path.join(state_dir, f"{base}.npz"), keys)
    entries = 0
    for rnd in deltas:  # in round order: a later delta overwrites an earlier one's entries
        d = load_npz(os.path.join(state_dir, f"{rnd}{_DELTA}"))
        for k, a in zip(keys, state):
            if k != "h":
                a.reshape(-1)[d["i"]] = d[k]
        entries += int(d["i"].size)
    return (deltas[-1] if deltas else base), state, (entries, len(deltas))


def _prune_states(state_dir: str, upto: int) -> None:
    """Delete what no reader needs any more: everything older than the full solution that the
    chain of round ``upto`` starts from (later files, and that chain, stay)."""
    base, _ = _chain(state_dir, upto)
    for f in listdir(state_dir):
        if f.endswith(_DELTA):
            old = f[: -len(_DELTA)].isdigit() and int(f[: -len(_DELTA)]) <= base
        else:
            rnd = _round_of(f)
            rnd = rnd if rnd is not None else _round_of(f.split(".")[0])  # temporaries of a killed attempt
            old = rnd is not None and rnd < base
        if old:
            path = os.path.join(state_dir, f)
            remove_tree(path) if os.path.isdir(path) else remove_file(path)


def _core_labels(state, inner) -> np.ndarray:
    """Labels of a saved region solution on ``inner`` (the region's core, or any box in it)."""
    lab = np.array(state[0][tuple(slice(s.start + 2, s.stop + 2) for s in inner)])
    lab[lab == np.iinfo(lab.dtype).max] = 0
    return lab


def _state_dir(job: _Job, block_id: int) -> str:
    return os.path.join(job.work_path, "state", str(block_id))


def _publish(job: _Job, grid: BlockGrid, block_id: int, state) -> dict[str, tuple[np.ndarray, ...]]:
    """The parts of a block's core that lie on other blocks' shells, as ``{"<block>_<face>":
    (labels, level, dist)}`` (only pieces with a reached voxel; a missing one is all unreached)."""
    core = grid[block_id].core
    outer = expand(core, job.halo, job.shape)
    lev, dist = state[1][2:-2, 2:-2, 2:-2], state[2][2:-2, 2:-2, 2:-2]
    pieces = {}
    for b in grid.blocks_in(expand(core, tuple(h + 1 for h in job.halo), job.shape)):
        if b == block_id:
            continue
        for face, slab in _shell_slabs(expand(grid[b].core, job.halo, job.shape), job.shape):
            inter = _intersect(slab, core)
            if inter is None:
                continue
            loc = _within(inter, outer)
            piece = _core_labels(state, loc)
            if piece.any():
                pieces[f"{b}_{face}"] = (piece, np.array(lev[loc]), np.array(dist[loc]))
    return pieces


def _woken(old: Mapping, new: Mapping) -> set[int]:
    """Blocks whose shell values differ between two publications of one block."""
    return {int(name.split("_")[0]) for name in old.keys() | new.keys()
            if not (name in old and name in new and all(np.array_equal(a, b) for a, b in zip(old[name], new[name])))}  # fmt: skip


def _core_moved(moved: np.ndarray, pshape: Sequence[int], inner: Sequence[slice]) -> bool:
    """Whether any of the flat indices ``moved`` (into a padded region) lies in the core."""
    pz, pr = np.divmod(moved, pshape[1] * pshape[2])
    py, px = np.divmod(pr, pshape[2])
    return bool(np.any(
        (pz >= inner[0].start + 2) & (pz < inner[0].stop + 2) & (py >= inner[1].start + 2)
        & (py < inner[1].stop + 2) & (px >= inner[2].start + 2) & (px < inner[2].stop + 2)
    ))  # fmt: skip


def _flood_task(block_id: int, job: _Job, rnd: int = 1):
    """Round 1 of a block (see :mod:`.exact`): flood core + halo with an unreached shell, keep
    the region's solution in the work directory and publish the values its core holds on other
    blocks' shells. Nothing is written to the labels here: a block may run again, so its core
    is read from its last solution once, after the fixed point (:func:`_stats_task`).
    Returns (blocks its pieces reach, foreground voxels of the core, voxels flooded)."""
    grid = job.grid()
    core = grid[block_id].core
    outer = expand(core, job.halo, job.shape)
    state_dir, where = _state_dir(job, block_id), dict(round=rnd, block=block_id)
    height = job.array("height")[outer]
    seeds, fg = _global_seeds(job, grid, outer)
    _, _, _, state = keyed_flood(height, seeds, fg, None, return_state=True, with_labels=False)
    del height, seeds
    makedirs(state_dir)
    fault_point("segment.state:before", **where)
    _save_state(state_dir, rnd, state)
    fault_point("segment.state:after", **where)
    pieces = _publish(job, grid, block_id, state)
    makedirs(_pieces_dir(job, block_id))
    fault_point("segment.pieces:before", **where)
    _save_pieces(job, block_id, rnd, pieces)
    fault_point("segment.pieces:after", **where)
    return sorted(_woken({}, pieces)), int(fg[_within(core, outer)].sum()), int(fg.size)


def tile_shape(grid: BlockGrid, voxels: int) -> tuple[int, int, int]:
    """Blocks per axis of the tiles later exchange rounds run in: doubled along the axis with
    the fewest blocks per tile while a tile's cores hold at most ``voxels`` voxels."""
    tile = [1, 1, 1]
    while True:
        options = [a for a in range(3) if tile[a] < grid.grid_shape[a]]
        options = [a for a in options if 2 * math.prod(tile) * grid.block_voxels <= voxels]
        if not options:
            return tuple(tile)  # type: ignore[return-value]
        a = min(options, key=lambda a: (tile[a], -grid.grid_shape[a], -a))  # ties: x, then y, then z
        tile[a] = min(2 * tile[a], grid.grid_shape[a])


def tile_of(grid: BlockGrid, tile: Sequence[int], block_id: int) -> tuple[int, int, int]:
    return tuple(i // t for i, t in zip(grid.block_index(block_id), tile))  # type: ignore[return-value]


def _tile_blocks(grid: BlockGrid, tile: Sequence[int], corner: Sequence[int]) -> list[int]:
    ranges = [range(c * t, min((c + 1) * t, n)) for c, t, n in zip(corner, tile, grid.grid_shape)]
    return [grid.block_id((z, y, x)) for z in ranges[0] for y in ranges[1] for x in ranges[2]]


def _tile_task(corner: tuple[int, int, int], job: _Job, rnd: int, last_run: Mapping[int, int], pending: tuple[int, ...]):
    """A later exchange round of one tile of blocks (:func:`tile_shape`): run its pending
    blocks, and the blocks of the tile they wake, until nothing in the tile changes, each run
    an update of the block's previous solution (:func:`.exact.keyed_update`) from the newest
    pieces (its tile mates' of this task, the others' of their last run). Only then is each
    block that ran saved (its update since its previous run, as a delta or in full) and
    published. Any order of updates reaches the same fixed point (:mod:`.exact`), so this only
    saves rounds: a path that crosses many faces inside a tile costs one round, not one per face.

    Idempotent by construction: every input (the solutions of rounds <= each block's previous
    run, the pieces of runs before this round) was written in an earlier round and is deleted
    only by a later one, the order of the runs is fixed (smallest block id first), so any
    attempt of this task computes the same solutions and pieces.

    Returns (blocks outside the tile whose shell changed, runs per block, voxels changed,
    the round of the solution each block that ran now stands on)."""
    grid = job.grid()
    members = set(_tile_blocks(grid, job.tile, corner))
    disk: dict[int, dict] = {}

    def on_disk(c):
        if c not in disk:
            disk[c] = _load_pieces(job, c, last_run[c])
        return disk[c]

    published: dict[int, dict] = {}
    pieces_of = lambda c: published.get(c) if c in published else (on_disk(c) if c in last_run else None)  # noqa: E731
    runs: dict[int, dict] = {}
    queue, work = sorted(set(pending)), 0
    while queue:
        b = heapq.heappop(queue)
        core = grid[b].core
        outer = expand(core, job.halo, job.shape)
        if b not in runs:
            start, state, entries = _load_state(_state_dir(job, b), upto=last_run[b])
            runs[b] = {"start": start, "state": state, "entries": entries, "touched": [], "n": 0}
        rec = runs[b]
        shell = _read_shell(job, grid, b, outer, rec["state"][0].dtype, pieces_of)
        _, _, _, rec["state"], moved, written = keyed_update(rec["state"], shell, with_labels=False, return_shell=True)
        rec["n"] += 1
        work += int(moved.size)
        if moved.size:
            rec["touched"] += [moved, written]
        if _core_moved(moved, rec["state"][0].shape, _within(core, outer)):
            new = _publish(job, grid, b, rec["state"])
            for w in _woken(pieces_of(b), new) & members:
                if w not in queue and w != b:
                    heapq.heappush(queue, w)
            published[b] = new
    woken, kept = set(), {}
    for b in sorted(runs):
        rec, state_dir, where = runs[b], _state_dir(job, b), dict(round=rnd, block=b)
        state = rec["state"]
        if rec["touched"]:  # the region changed: keep its new solution (an older one stays a valid start)
            touched = np.unique(np.concatenate(rec["touched"]))
            fault_point("segment.state:before", **where)
            if rec["entries"][0] + touched.size > _DELTA_FRACTION * state[0].size or rec["entries"][1] >= _MAX_DELTAS:
                _save_state(state_dir, rnd, state)  # a new full solution: the chain stays short
            else:
                _save_delta(state_dir, rnd, state, touched)
            fault_point("segment.state:after", **where)
        _prune_states(state_dir, last_run[b])  # solutions before the one this run started from: read by nobody
        pieces = published.get(b, on_disk(b))  # unchanged core: its previous pieces again
        woken |= _woken(on_disk(b), pieces) - members
        fault_point("segment.pieces:before", **where)
        _save_pieces(job, b, rnd, pieces)
        fault_point("segment.pieces:after", **where)
        _remove_older(_pieces_dir(job, b), last_run[b])  # this round reads this run's or the last run's
        kept[b] = rnd if rec["touched"] else rec["start"]
    return sorted(woken), {b: r["n"] for b, r in runs.items()}, work, kept


def _final_labels(job: _Job, block_id: int) -> np.ndarray:
    """The core's labels (raw global seed ids) from the block's last saved solution."""
    core = job.grid()[block_id].core
    # only the labels (a third of the solution's bytes): the keys, height and flags are not needed
    state_dir = os.path.join(job.work_path, "state", str(block_id))
    base, deltas = _chain(state_dir, None)
    _, state, _ = _load_chain(state_dir, base, deltas, "l")
    return _core_labels(state, _within(core, expand(core, job.halo, job.shape)))


def _stats_task(block_id: int, job: _Job) -> dict:
    """Partial per-instance statistics of the core's final labels, which it also keeps for the
    relabel (:func:`_save_core`): the block's saved solution is decoded once, not twice."""
    block = job.grid()[block_id]
    labels = _final_labels(job, block_id)
    fault_point("segment.statistics:before", block=block_id)
    _save_core(job, block_id, labels)
    fault_point("segment.statistics:after", block=block_id)
    return partial_stats(labels, _score(job, block.core), block.origin)


def _core_path(job: _Job, block_id: int) -> str:
    return os.path.join(job.work_path, "core_labels", f"{block_id}.npz")


def _save_core(job: _Job, block_id: int, labels: np.ndarray) -> None:
    """Keep a core's final labels (raw global seed ids) packed like a solution (:func:`_save_packed`):
    a 256³ core packs in about 0.03 CPU s and unpacks in 0.03, where the relabel rebuilt it from
    the saved solution and its deltas in 0.1-0.3 (2026-12-07)."""
    _save_packed(_core_path(job, block_id), "l", (labels,))


def _load_core(job: _Job, block_id: int) -> np.ndarray:
    """The core labels :func:`_save_core` kept."""
    return _read_state(_core_path(job, block_id), "l")[0]


# ---------------------------------------------------------------------------- driver steps
def _write_tables(table_dir: str, per_block: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    remove_tree(table_dir)
    makedirs(table_dir)
    for bid, (keys, values) in per_block.items():
        save_npz(os.path.join(table_dir, f"{bid}.npz"), keys=keys, values=values)


def merge_seeds(
    block_ids: list[np.ndarray],
    block_counts: list[np.ndarray],
    edges: np.ndarray,
    min_seed_size: int,
    block_first: list[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], int]:
    """Union-find of block seed ids; per-block tables of final seed ids (0 = dropped).

    Components are numbered 1..S in the order of their smallest block id, so the numbering is
    deterministic; with ``block_first`` (each block seed's first global raster index), in the
    order of their first voxel in the whole volume instead -- the numbering a whole-volume
    labelling gives, independent of the blocks (the watershed breaks exact ties by seed id).
    Returns the per-block values (aligned with ``block_ids``) and S.
    """
    all_ids = np.concatenate(block_ids) if block_ids else np.zeros(0, np.uint64)
    counts = np.concatenate(block_counts) if block_counts else np.zeros(0, np.int64)
    n = all_ids.size
    if n == 0:
        return [np.zeros(0, np.uint64) for _ in block_ids], 0
    order = np.argsort(all_ids)
    sorted_ids = all_ids[order]
    a = order[np.searchsorted(sorted_ids, edges[:, 0])] if len(edges) else np.zeros(0, np.int64)
    b = order[np.searchsorted(sorted_ids, edges[:, 1])] if len(edges) else np.zeros(0, np.int64)
    graph = sparse.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    size = np.bincount(comp, weights=counts).astype(np.int64)
    if block_first is not None:
        # number the components in the order of their first voxel (raster order)
        key = np.full(size.size, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(key, comp, np.concatenate(block_first).astype(np.int64))
        by_first = np.argsort(key, kind="stable")
    else:
        # number the components in the order of their smallest member id
        _, first = np.unique(comp[order], return_index=True)
        by_first = np.argsort(first)
    kept = by_first[size[by_first] >= min_seed_size]
    new = np.zeros(size.size, dtype=np.uint64)
    new[kept] = np.arange(1, kept.size + 1, dtype=np.uint64)
    final = new[comp]
    out, start = [], 0
    for ids in block_ids:
        out.append(final[start : start + ids.size])
        start += ids.size
    return out, int(kept.size)


@dataclass
class SegmentReport:
    """What :func:`segment` did.

    Attributes
    ----------
    labels_path, table_path : str
        The label volume and its instance table.
    n_seeds, n_instances, n_removed_small : int
        Global seeds kept, instances written, instances removed by ``min_size``.
    foreground_voxels : int
        Voxels in the decoded foreground.
    halo, block_shape : list of int
        The halo (as given, never clipped) and the block core shape used.
    rounds : list of dict
        Per exchange round of the watershed (:mod:`.exact`): ``round``, ``blocks`` run,
        ``woken`` (blocks whose shell values changed, run in the next round). Round 1 runs
        every block; the run stops when no shell value changed.
    blocks_rerun : int
        Block runs after round 1 (the recomputation the exchange needed).
    flood_amplification : float
        (Voxels flooded by round 1, halos included, + voxels changed by the later rounds'
        updates) / volume voxels.
    seconds : dict
        Wall time per pass.
    retried : dict
        Blocks whose task ran more than once (it failed or its worker was lost), per pass:
        ``{"watershed-round-3": [2]}``. Every task is idempotent: the output is the same.
    resumed : dict
        Empty for a fresh run; after a killed run of the same plan, what its work directory
        gave: ``from`` (the last finished step: ``seeds`` or ``round``), ``rounds`` and
        ``block_runs`` reused.
    decoder : dict
        The decoder, its parameters and where each came from
        (:meth:`blockseg.segment.params.DecoderChoice.provenance`).
    """

    labels_path: str
    table_path: str
    n_seeds: int = 0
    n_instances: int = 0
    n_removed_small: int = 0
    foreground_voxels: int = 0
    halo: list = field(default_factory=list)
    block_shape: list = field(default_factory=list)
    rounds: list = field(default_factory=list)
    blocks_rerun: int = 0
    flood_amplification: float = 0.0
    seconds: dict = field(default_factory=dict)
    decoder: dict = field(default_factory=dict)
    retried: dict = field(default_factory=dict)
    resumed: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _decoder_choice(decoder, pred_path: str):
    """The decoder to use and the source of its parameters: a :class:`DecoderChoice` as given,
    a :class:`Decoder` (``given``), or None: the recommendation the store carries (written by
    ``predict`` from the checkpoint) over the defaults."""
    if decoder is None:
        return choose_decoder(stored=store_decoder(pred_path), stored_label="store")
    if isinstance(decoder, DecoderChoice):
        return decoder
    if isinstance(decoder, Decoder):
        return DecoderChoice.given(decoder)
    raise BlocksegError(f"decoder must be a blockseg Decoder, got {type(decoder).__name__}")


#: bytes per voxel of a block's saved solution (labels 4, level 2, dist 4, height 1, flags 1)
_STATE_BYTES = 12


def work_bytes(grid: BlockGrid, halo: Sequence[int]) -> int:
    """Upper bound on the bytes of segment's work directory, as if nothing compressed: seed code
    (4) and height (1) per voxel, and every block's saved solution of core + halo (kept until
    the end, :data:`_STATE_BYTES` per voxel), plus a quarter of the solutions for the deltas of
    later rounds and the blocks holding two solutions while a round compacts them. Everything
    is stored compressed (lz4): measured peaks are a fraction of this bound
    (``experiments/bench_geometry.py``, ``benchmarks/RESULTS.md``)."""
    regions = sum(math.prod(s.stop - s.start + 4 for s in expand(b.core, halo, grid.shape)) for b in grid)  # padded by 2
    return 5 * int(np.prod(grid.shape, dtype=np.int64)) + _STATE_BYTES * regions * 5 // 4


def check_work_space(out_path: str, grid: BlockGrid, halo: Sequence[int]) -> None:
    """Refuse to start (one line) when the local disk of ``OUT.work`` has less free space than
    segment's work directory will need; object storage is not checked."""
    space = free_space(out_path)
    if space is None:
        return
    parent, free = space
    need = work_bytes(grid, halo)
    if free < need:
        raise BlocksegError(
            f"segment needs about {need / 2**30:.1f} GiB of work space beside {out_path} (seed code, height and each "
            f"block's saved solution, halo {list(halo)}); {parent} has {free / 2**30:.1f} GiB free"
        )


@aborts_on_error
def segment(
    pred_path: str | os.PathLike,
    out_path: str | os.PathLike,
    decoder: Decoder | None = None,
    block_shape: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    client=None,
    overwrite: bool = False,
    keep_work: bool = False,
    progress: bool = False,
    pyramid_levels: int | None = None,
    tile_voxels: int | None = None,
    dry_run: bool = False,
) -> SegmentReport | SegmentPlan:
    """Segment a prediction store into a global instance-label volume, blockwise and exactly.

    The result equals :func:`segment_array` on the same (stored) predictions voxel for voxel,
    ids included, for every block shape and halo (:mod:`.exact` proves it).

    Parameters
    ----------
    pred_path : str or path-like
        Prediction store (:mod:`blockseg.io.predictions`) with the decoder's channels.
    out_path : str or path-like
        Label volume to create (OME-Zarr, uint32, or uint64 beyond 2**32 - 1 instances). The
        instance table is written to ``OUT/instances.csv``.
    decoder : Decoder or DecoderChoice, optional
        Decoder and its parameters. Default: the decoder and thresholds the store carries
        (``predict`` copies the checkpoint's tuned recommendation), else :class:`BCDDecoder`'s
        defaults (:func:`blockseg.segment.params.choose_decoder`). The parameters and their
        sources are recorded in the report and the output's ``segment`` attribute.
    block_shape : int or sequence of int, optional
        Core shape of a block; a multiple of the prediction chunks (default: about 16 M voxels).
    halo : int or sequence of int, optional
        Context flooded around each core (default :data:`~blockseg.segment.options.DEFAULT_HALO`, 8). A performance knob only: any value,
        0 included and larger than the blocks, gives the same result; more halo means fewer
        exchange rounds and more voxels read and flooded per block. Never clipped.
    client : distributed.Client, optional
        Dask client; None runs the blocks in this process.
    overwrite : bool
        Replace an existing output.
    keep_work : bool
        Keep the work directory ``OUT.work`` (intermediate seeds and labels). A run that
        stops early (a crash, a killed driver, Ctrl-C) always leaves it: the next run with the
        same predictions and settings continues from its journal (finished passes and
        exchange rounds are reused; ``SegmentReport.resumed`` says what).
    progress : bool
        Show progress bars.
    tile_voxels : int, optional
        Core voxels of the tiles that exchange rounds after the first run in (default
        :data:`~blockseg.segment.options.DEFAULT_TILE_VOXELS`, 32 M). A performance knob only: a flooding path that
        crosses many block faces inside one tile costs one round; a tile of one block gives
        one round per face crossed. Bounds the memory of a tile's task.
    pyramid_levels : int, optional
        Levels of the label volume's multiscale pyramid (None: automatic; 1: none), sampled
        blockwise after the relabel; the volume is marked an NGFF ``image-label`` either way.
    dry_run : bool
        Return the :class:`SegmentPlan` (:func:`plan_segment`, from metadata alone; its
        :meth:`~SegmentPlan.describe` is what ``segment --dry-run`` prints) and write nothing.

    Returns
    -------
    SegmentReport, or SegmentPlan with ``dry_run``

    Raises
    ------
    BlocksegError
        For a missing or incomplete prediction store, a bad geometry or an existing output.
    """
    t_start = time.perf_counter()
    plan = plan_segment(pred_path, out_path, decoder, block_shape, halo, tile_voxels)
    if dry_run:
        return plan
    check_work_space(plan.out_path, plan.grid, plan.halo)
    # written beside the path and renamed in last: a failure (a full disk) leaves no partial labels;
    # a rerun resumes from the work folder
    output = prepare_output(plan.out_path, [plan.pred_path], overwrite, extra=[plan.work_path], staged=True)
    target = output.begin()
    report = SegmentReport(plan.out_path, f"{plan.out_path}/instances.csv", halo=list(plan.halo),
                           block_shape=list(plan.grid.block_shape), decoder=plan.choice.provenance())  # fmt: skip
    driver = _Driver(plan, _open_work(plan, report), report, client, progress)
    if driver.journal.get("done") is None:
        _seed_pass(driver)
    _watershed_pass(driver)
    final = _statistics_pass(driver)
    _write_labels(driver, target, final, pyramid_levels)
    report.seconds["total"] = round(time.perf_counter() - t_start, 3)
    zarr.open_group(target, mode="r+").attrs["blockseg_report"] = json.loads(json.dumps(report.to_dict()))
    if not keep_work:
        remove_tree(plan.work_path)
    output.commit()
    return report


# ---------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class SegmentPlan:
    """What a segment run will do, from metadata alone (nothing is read or written).

    Attributes
    ----------
    pred_path, out_path : str
        The prediction store and the label volume.
    work_path : str
        The work directory ``OUT.work`` (a driver killed mid-run leaves it, and a rerun with
        the same plan continues from its journal).
    choice : DecoderChoice
        The decoder, its parameters and their sources.
    grid : BlockGrid
        Block cores (the halo is added per block, never clipped).
    halo : tuple of int
        Context flooded around each core.
    kinds : tuple of (str, str)
        Each decoder channel and how its values are scaled.
    id_dtype : numpy dtype
        Seed ids while stitching (uint32 when every block-offset id fits).
    voxel_size, chunks, shards
        Copied onto the label volume.
    tile : tuple of int
        Blocks per axis of the tiles later exchange rounds run in (:func:`tile_shape`).
    """

    pred_path: str
    out_path: str
    work_path: str
    choice: object
    grid: BlockGrid
    halo: tuple[int, int, int]
    kinds: tuple[tuple[str, str], ...]
    id_dtype: type
    voxel_size: tuple
    chunks: tuple
    shards: tuple | None
    tile: tuple[int, int, int] = (1, 1, 1)

    @property
    def decoder(self) -> Decoder:
        return self.choice.decoder

    def describe(self) -> str:
        """What the run will do, a fact a line (``segment --dry-run`` prints it). Reads the work
        directory's journal, if any, to say where a rerun would continue."""
        g = self.grid
        journal = _read_journal(self.work_path)
        resume = ("a new run" if journal.get("signature") != self.signature() or not journal.get("done") else
                  f"continues the interrupted run in it (finished: {journal['done']}, {journal.get('round', 0)} round(s))")  # fmt: skip
        return "\n".join([
            f"predictions {self.pred_path}: shape {g.shape}, channels {', '.join(c for c, _ in self.kinds)}",
            f"output {self.out_path} (labels and instances.csv); work directory {self.work_path}: {resume}",
            self.choice.describe() if hasattr(self.choice, "describe") else f"decoder {self.decoder.name}: {self.decoder.params()}",
            f"blocks: {len(g)} of {g.block_shape} (grid {g.grid_shape}), chunks {g.chunk_shape}; halo {self.halo} "
            f"(read around each core, not clipped: a performance knob, any halo gives the same labels)",
            f"exchange rounds after the first: tiles of {self.tile} blocks; seed ids while stitching: {np.dtype(self.id_dtype).name}",
            f"work space (uncompressed bound): {work_bytes(g, self.halo) / 2**20:.0f} MiB",
            "passes: seeds, seed-pairs, merge (driver), watershed rounds, statistics, reduce (driver), relabel, pyramid; "
            "a rerun continues after the last finished pass or exchange round (journal), not within one",
        ])  # fmt: skip

    def signature(self) -> dict:
        """What a work directory must have been made by to be continued: the same stored
        predictions (their metadata files as written: a rewritten store differs), decoder,
        blocks, halo and blockseg version."""
        return json.loads(json.dumps({
            "blockseg": __version__, "predictions": _store_stamp(self.pred_path, [c for c, _ in self.kinds]),
            "decoder": [self.decoder.name, self.decoder.params()], "shape": self.grid.shape,
            "block_shape": self.grid.block_shape, "chunks": self.grid.chunk_shape, "halo": self.halo,
            "id_dtype": np.dtype(self.id_dtype).name,
        }))  # fmt: skip


def plan_segment(
    pred_path, out_path, decoder=None, block_shape=None, halo=None, tile_voxels=None
) -> SegmentPlan:
    """The plan of :func:`segment` (same parameters), from metadata reads only; raises
    :class:`BlocksegError` (one line) for anything :func:`segment` would refuse up front."""
    opts = segment_options(block_shape=block_shape, halo=halo, tile_voxels=tile_voxels)
    choice = _decoder_choice(decoder, str(pred_path))
    pred_path, out_path = str(pred_path), str(out_path).rstrip("/")
    vols = open_predictions(pred_path, choice.decoder.channels)
    first = vols[choice.decoder.channels[0]]
    grid = first.grid(opts.block_shape)
    # block-offset ids are at most len(grid) * block_voxels: uint32 when that fits below the
    # foreground code (the largest value)
    id_dtype = np.uint32 if len(grid) * grid.block_voxels < 2**32 - 1 else np.uint64
    return SegmentPlan(
        pred_path, out_path, out_path + ".work", choice, grid, opts.halo_zyx,
        tuple((c, prediction_kind(vols[c], c)) for c in choice.decoder.channels), id_dtype, first.voxel_size,
        first.array.chunks, getattr(first.array, "shards", None), tile_shape(grid, opts.tile_voxels),
    )  # fmt: skip


def _store_stamp(pred_path: str, channels: Sequence[str]) -> list:
    """Modification stamps of a store's metadata files (root and channels)."""
    fs, root = fsspec.core.url_to_fs(pred_path)
    out = []
    for part in ("", *channels):
        try:
            info = fs.info(f"{root.rstrip('/')}/{part + '/' if part else ''}zarr.json")
        except (OSError, ValueError):
            out.append(None)
            continue
        out.append(str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("size")))
    return out


# ---------------------------------------------------------------------------- driver
@dataclass
class _Driver:
    """One run's driver: runs a pass's block tasks (recording retries), times the passes and
    keeps the journal of what is finished (``WORK/journal.json``, rewritten whole after every
    pass and exchange round: a rerun of a killed driver continues from it)."""

    plan: SegmentPlan
    job: _Job
    report: SegmentReport
    client: object = None
    progress: bool = False
    journal: dict = field(default_factory=dict)
    _t: float = field(default_factory=time.perf_counter)

    def __post_init__(self):
        self.journal = _read_journal(self.job.work_path)

    def run(self, func, name: str, block_ids: Sequence[int] | None = None) -> list:
        """Run the pass ``name`` (a :class:`~blockseg.grid.BlockTask`: read core + halo, write the
        core) over ``block_ids`` (default: every block)."""
        task = BlockTask(name, self.plan.grid, func, self.plan.halo)
        again: list[int] = []
        out = run_task(task, block_ids, client=self.client, progress=self.progress, retried=again)
        if again:
            self.report.retried[name] = sorted(again)
        return out

    def run_tiles(self, func, name: str, corners: list, pending: list) -> list:
        """Run ``func(corner, pending=...)`` for every tile, as block tasks numbered 0..n-1;
        the blocks of a retried tile are reported."""
        items = list(zip(corners, pending))
        voxels = [sum(block_voxels(self.plan.grid, p)) for p in pending]
        again: list[int] = []
        out = run_blocks(partial(_tile_item, func, items), range(len(items)), client=self.client, name=name,
                         progress=self.progress, voxels=voxels, retried=again)  # fmt: skip
        if again:
            self.report.retried[name] = sorted(b for i in again for b in pending[i])
        return out

    def timed(self, name: str) -> None:
        now = time.perf_counter()
        self.report.seconds[name] = round(self.report.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now

    def record(self, **state) -> None:
        self.journal = {**self.journal, **state}
        write_bytes(_journal_path(self.job.work_path), json.dumps(self.journal).encode())
        fault_point("segment.journal:after", done=self.journal["done"], round=self.journal.get("round", 0))


def _tile_item(func, items: list, index: int):
    corner, pending = items[index]
    return func(corner, pending=pending)


def _journal_path(work: str) -> str:
    return os.path.join(work, "journal.json")


def _read_journal(work: str) -> dict:
    try:
        return json.loads(read_bytes(_journal_path(work)))
    except (OSError, ValueError):
        return {}


def _open_work(plan: SegmentPlan, report: SegmentReport) -> _Job:
    """The job of this run: the work directory an interrupted run of the same plan left
    (its journal says how far it got), else a new one."""
    signature, work = plan.signature(), plan.work_path
    journal = _read_journal(work)
    if journal.get("signature") == signature and journal.get("done"):
        report.resumed = {"from": journal["done"], "rounds": int(journal.get("round", 0)),
                          "block_runs": int(sum(r["blocks"] for r in journal.get("rounds", [])))}  # fmt: skip
    else:
        prepare_work(work)
        # scratch: lz4 (fast; the seed code is mostly a handful of values, ~14x smaller unshuffled:
        # a 256³ core packs to 4.7 MiB in 0.04 s, bit-shuffled to 6.1 MiB in 0.07 s, 2026-12-07);
        # the height bit-shuffled (unshuffled it packs a little smaller but twice as slowly)
        def lz4(shuffle):
            return zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle=shuffle)

        kw = dict(shape=plan.grid.shape, chunks=plan.grid.chunk_shape, fill_value=0)
        zarr.create_array(f"{work}/seeds", dtype=plan.id_dtype, compressors=lz4("noshuffle"), **kw)
        zarr.create_array(f"{work}/height", dtype=np.uint8, compressors=lz4("bitshuffle"), **kw)
        write_bytes(_journal_path(work), json.dumps({"signature": signature, "done": None}).encode())
    g = plan.grid
    return _Job(plan.pred_path, work, g.shape, g.block_shape, plan.halo, g.chunk_shape, plan.decoder, plan.kinds,
                uuid.uuid4().hex, plan.tile)  # fmt: skip


# ---------------------------------------------------------------------------- passes
def _seed_pass(d: _Driver) -> None:
    """Seeds per block, joined across faces, numbered globally; one lookup table per block."""
    seeds = d.run(partial(_seed_task, job=d.job), "seeds")
    edges = d.run(partial(_pairs_task, job=d.job), "seed-pairs")
    d.timed("seeds")
    values, n_seeds = merge_seeds(
        [s[0] for s in seeds], [s[1] for s in seeds], np.concatenate(edges), d.plan.decoder.min_seed_size,
        block_first=[s[2] for s in seeds],
    )  # fmt: skip
    ids = d.plan.grid.block_ids
    _write_tables(f"{d.job.work_path}/seed_tables", {b: (s[0], v) for b, s, v in zip(ids, seeds, values)})
    d.timed("seed_merge")
    d.record(done="seeds", n_seeds=int(n_seeds), round=0, pending=list(ids), last_run={}, fg_count={}, flooded=0,
             rounds=[])  # fmt: skip


def _watershed_pass(d: _Driver) -> None:
    """Exchange rounds until no shell value changes (:mod:`.exact`): round 1 floods every block
    (one task each), later rounds run the tiles holding the woken blocks (one task each,
    :func:`_tile_task`). The driver holds only the per-block round numbers and statistics,
    journalled after every round."""
    j, grid, job = d.journal, d.plan.grid, d.job
    last_run = {int(b): r for b, r in j["last_run"].items()}
    fg_count = {int(b): n for b, n in j["fg_count"].items()}
    flooded, pending, rnd, rounds = j["flooded"], j["pending"], j["round"], list(j["rounds"])
    while pending:
        rnd += 1
        if rnd > _MAX_ROUNDS:
            raise BlocksegError(
                f"segment: {_MAX_ROUNDS} exchange rounds without reaching the fixed point: the foreground holds paths "
                f"that cross tile faces more than {_MAX_ROUNDS} times (see the docs, 'rounds'); use larger blocks "
                "(--block-shape) or a larger tile (--tile-voxels) so that such paths stay inside one task"
            )  # fmt: skip
        if rnd == 1:
            res = d.run(partial(_flood_task, job=job, rnd=rnd), "watershed", pending)
            woken = set().union(*(r[0] for r in res))
            for b, r in zip(pending, res):
                fg_count[b], flooded, last_run[b] = r[1], flooded + r[2], rnd
            runs = len(pending)
        else:
            tiles: dict[tuple, list[int]] = {}
            for b in pending:
                tiles.setdefault(tile_of(grid, job.tile, b), []).append(b)
            corners = sorted(tiles)
            res = d.run_tiles(partial(_tile_task, job=job, rnd=rnd, last_run=dict(last_run)), f"watershed-round-{rnd}",
                              corners, [tuple(tiles[c]) for c in corners])  # fmt: skip
            woken, runs = set(), 0
            for r in res:
                woken.update(r[0])
                runs += sum(r[1].values())
                flooded += r[2]
                for b, kept in r[3].items():
                    last_run[b] = rnd
                    # the round is over: no attempt of it will start from an older solution again
                    _prune_states(_state_dir(job, b), kept)
        rounds.append({"round": rnd, "blocks": runs, "woken": len(woken)})
        pending = sorted(woken)
        d.record(done="round", round=rnd, pending=pending, last_run=last_run, fg_count=fg_count, flooded=flooded,
                 rounds=rounds)  # fmt: skip
    d.report.n_seeds = d.journal["n_seeds"]
    d.report.rounds = rounds
    d.report.blocks_rerun = int(sum(r["blocks"] for r in rounds) - len(grid))
    d.report.flood_amplification = round(flooded / float(np.prod(grid.shape)), 4)
    d.report.foreground_voxels = int(sum(fg_count.values()))
    d.timed("watershed")


def _statistics_pass(d: _Driver) -> dict:
    """Per-instance statistics reduced over blocks; instances under ``min_size`` removed, the
    rest numbered 1..N in seed order; one relabel table per block. Returns the final table."""
    ids = list(d.plan.grid.block_ids)
    remove_tree(f"{d.job.work_path}/core_labels")  # what a killed run's statistics pass left
    makedirs(f"{d.job.work_path}/core_labels")
    parts = dict(zip(ids, d.run(partial(_stats_task, job=d.job), "statistics")))
    stats = reduce_stats([parts[b] for b in ids])
    keep = stats["count"] >= d.plan.decoder.min_size
    d.report.n_removed_small = int((~keep).sum())
    new_ids = np.zeros(stats["id"].size, dtype=np.uint64)
    new_ids[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint64)
    d.report.n_instances = int(keep.sum())
    per_block = {b: (parts[b]["id"], new_ids[np.searchsorted(stats["id"], parts[b]["id"])]) for b in ids}
    _write_tables(f"{d.job.work_path}/label_tables", per_block)
    final = {c: v[keep] for c, v in stats.items()}
    final["id"] = new_ids[keep]
    return final


def _write_labels(d: _Driver, target: str, final: dict, pyramid_levels: int | None) -> None:
    """The label volume (each core mapped through its table), its instance table and pyramid."""
    plan, report = d.plan, d.report
    dtype = np.uint32 if report.n_instances < 2**32 - 1 else np.uint64
    create_volume(
        target, plan.grid.shape, dtype, plan.voxel_size, plan.chunks, shards=plan.shards, name="nuclei",
        attributes={"segment": {"decoder": plan.decoder.name, "params": plan.decoder.params(),
                                "params_source": plan.choice.sources, "preset": plan.choice.preset,
                                "stored_decoder": plan.choice.stored, "block_shape": list(plan.grid.block_shape),
                                "halo": list(plan.halo)}},
    )  # fmt: skip
    # the leading pyramid levels whose chunks each lie in one core are written by the relabel
    levels = block_levels(target, plan.grid.block_shape, pyramid_levels)
    create_levels(target, levels)
    d.run(partial(_relabel_task, job=d.job, dst=target, table_dir=f"{d.job.work_path}/label_tables",
                  levels=tuple(levels)), "relabel")  # fmt: skip
    write_table(instance_table(final, plan.voxel_size), f"{target}/instances.csv")
    d.timed("relabel")
    props = None
    if report.n_instances <= MAX_PROPERTIES:
        props = [{"label-value": int(i), "voxels": int(n)} for i, n in zip(final["id"], final["count"])]
    finish_volume(target, labels=True, levels=pyramid_levels, client=d.client, properties=props, written=len(levels))
    d.timed("pyramid")


def segment_array(
    channels: Mapping[str, np.ndarray], decoder: Decoder | None = None, return_table: bool = False
):
    """Whole-volume reference: decode, seeds, exact flood, size filter, in memory.

    The same decoder and the same watershed rule (:mod:`.exact`) as :func:`segment`, on one
    array: seeds are the 26-connected components of the seed mask numbered by their first voxel
    in raster order (those under ``min_seed_size`` dropped); instances under ``min_size`` are
    removed and the rest numbered 1..N in seed order -- so :func:`segment` writes the very same
    ids.

    Returns
    -------
    labels : ndarray of uint32
    table : dict of ndarray, only with ``return_table``
        The instance table :func:`segment` writes to ``instances.csv`` (same columns).
    """
    decoder = decoder or BCDDecoder()
    seeds_mask, fg, height = decoder.decode(channels)
    cc = cc3d.connected_components(seeds_mask.view(np.uint8), connectivity=26, out_dtype=np.uint32)
    ids, first, counts = np.unique(cc.ravel(), return_index=True, return_counts=True)
    keep = (ids != 0) & (counts >= max(decoder.min_seed_size, 1))
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint32)
    order = np.argsort(first[keep], kind="stable")
    lut[ids[keep][order]] = np.arange(1, order.size + 1, dtype=np.uint32)
    seeds = lut[cc]
    labels, _, _ = keyed_flood(height, seeds, fg)
    stats = partial_stats(labels, decoder.score(channels))
    keep = stats["count"] >= decoder.min_size
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
    lut[stats["id"][keep].astype(np.int64)] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    labels = lut[labels]
    if not return_table:
        return labels
    final = {c: v[keep] for c, v in stats.items()}
    final["id"] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint64)
    return labels, instance_table(final)
