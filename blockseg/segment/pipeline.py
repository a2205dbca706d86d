"""``segment``: prediction store -> global instance labels, blockwise and seamless.

Passes (each a set of independent block tasks that write only their own core):

1. **seeds** -- decode the core (the only time predictions are decoded), label the seed mask's
   26-connected components, give them ids ``grid.id_offset(block) + k`` (unique without
   coordination); write the core's uint8 height and its *seed code* (0 background, the
   dtype's largest value foreground without seed, else the block seed id) to the work
   directory; return each component's voxel count.
2. **pairs** -- for every face, edge and corner the block shares with a later block, label the
   two-voxel slab of seed ids 26-connected: ids in one slab component are one seed.
3. *driver* -- union-find (sparse connected components) over the pairs; global seed sizes;
   seeds under ``min_seed_size`` dropped; kept seeds numbered 1..S; one small lookup table per
   block (only the ids in that block) written to the work directory.
4. **watershed** -- read height and seed code of core + halo (written by the neighbours in
   pass 1), map the seed ids to global ids with the tables of the (at most 27) blocks it
   overlaps, flood (:mod:`.flood`), write the core, mark the core voxels the certificate cannot
   vouch for as *uncertain*, and return partial per-instance statistics of the core (count,
   coordinate sums, bbox, summed score).
5. **resolve** -- blocks with uncertain voxels flood again the bounding box of those voxels
   grown by twice the halo (then four times, ... up to ``max_halo``; by default none),
   overwrite only their uncertain voxels, and return fresh statistics; the new certificate
   decides what stays uncertain. Rounds read heights and seeds only, never labels, so no block
   reads what another writes.
6. *driver* -- reduce the statistics, remove instances under ``min_size``, number the rest
   1..N (in seed order); per-block tables again.
7. **relabel** the work labels into the output volume; the instance table goes to
   ``OUT/instances.csv``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Mapping, Sequence

import cc3d
import fastremap
import numba
import numpy as np
import zarr
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from ..cluster import run_blocks
from ..errors import BlocksegError
from ..grid import BlockGrid, Interface
from ..io import _prepare_destination, create_volume
from ..storage import load_npz, makedirs, remove_tree, save_npz
from ..predictions import decode_channel, open_predictions, prediction_kind
from .decoders import BCDDecoder, Decoder
from .flood import artificial_faces, flood, uncertain_voxels
from .stats import instance_table, partial_stats, reduce_stats, write_csv

#: default halo in voxels per axis (clipped to the block shape)
DEFAULT_HALO = 24


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

    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape, self.halo, self.chunk_shape)

    def array(self, name: str) -> zarr.Array:
        return zarr.open_array(f"{self.work_path}/{name}", mode="r+")


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


# ---------------------------------------------------------------------------- block tasks
@numba.njit(cache=True, nogil=True)
def _encode_seeds(cc, fg, offset, fg_value, out, counts):
    """Seed code of a core (see :func:`segment`) and the voxel count of each component."""
    c, f, o = cc.ravel(), fg.ravel(), out.ravel()
    for i in range(c.size):
        if c[i] != 0:
            o[i] = c[i] + offset
            counts[c[i]] += 1
        elif f[i]:
            o[i] = fg_value
        else:
            o[i] = 0


def _seed_task(block_id: int, job: _Job):
    """Decode the core once: write its height and its seed/foreground code (see :func:`segment`),
    return the block's seed ids and their voxel counts."""
    grid = job.grid()
    block = grid[block_id]
    seeds, fg, height, _ = decode_region(job, block.core)
    cc, n = cc3d.connected_components(seeds.view(np.uint8), connectivity=26, out_dtype=np.uint32, return_N=True)
    seeds_out = job.array("seeds")
    dtype = seeds_out.dtype
    code = np.empty(cc.shape, dtype=dtype)
    counts = np.zeros(n + 1, dtype=np.int64)
    _encode_seeds(cc, fg, dtype.type(grid.id_offset(block_id)), dtype.type(_fg_code(dtype)), code, counts)
    seeds_out[block.core] = code
    job.array("height")[block.core] = height
    ids = np.arange(1, n + 1, dtype=np.uint64) + grid.id_offset(block_id)
    return ids, counts[1:]


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


def _relabel_task(block_id: int, job: _Job, src: str, dst: str, table_dir: str):
    """Map the core of work array ``src`` through this block's table into array ``dst``."""
    core = job.grid()[block_id].core
    data = load_npz(os.path.join(table_dir, f"{block_id}.npz"))
    mapping = dict(zip(data["keys"].tolist(), data["values"].tolist()))
    mapping[0] = 0
    out = fastremap.remap(job.array(src)[core], mapping, preserve_missing_labels=False, in_place=True)
    target = zarr.open_array(dst, mode="r+")
    target[core] = out.astype(target.dtype, copy=False)


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
        data = load_npz(os.path.join(job.work_path, "seed_tables", f"{bid}.npz"))
        keys.append(data["keys"])
        values.append(data["values"])
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
    vol = open_predictions(job.pred_path, (c,))[c]
    return job.decoder.score({c: decode_channel(vol.array[region], dict(job.kinds)[c])})


def _flood_region(job: _Job, grid: BlockGrid, outer: tuple[slice, ...]):
    """Flood ``outer`` from the stored heights and global seeds; labels, foreground and the
    certificate's uncertain mask."""
    height = job.array("height")[outer]
    seeds, fg, lut = _global_seeds(job, grid, outer, compact=True)
    labels, level = flood(height, seeds, fg)
    unc = uncertain_voxels(height, fg, level, artificial_faces(outer, job.shape), labels, seeds)
    return labels, fg, unc, lut


def _to_global(labels: np.ndarray, lut) -> np.ndarray:
    return labels if lut is None else lut.astype(np.uint32 if lut[-1] < 2**32 else np.uint64)[labels]


def _watershed_task(block_id: int, job: _Job, halo: tuple[int, ...]):
    """Flood core + ``halo`` and write the core; mark the voxels the certificate cannot vouch
    for. Returns (foreground voxels, uncertain voxels, partial statistics of the core)."""
    grid = job.grid()
    block = grid[block_id]
    core = block.core
    outer = expand(core, halo, job.shape)
    labels, fg, unc, lut = _flood_region(job, grid, outer)
    inner = _within(core, outer)
    lab, unc = _to_global(labels[inner], lut), unc[inner]
    job.array("labels")[core] = lab
    n_unc = int(unc.sum())
    if n_unc:
        job.array("uncertain")[core] = unc
    return int(fg[inner].sum()), n_unc, partial_stats(lab, _score(job, core), block.origin)


def _resolve_task(block_id: int, job: _Job, halo: tuple[int, ...]):
    """Flood the bounding box of the block's uncertain voxels grown by ``halo``; overwrite only
    those voxels. Returns (voxels considered, voxels left uncertain, statistics of the core)."""
    grid = job.grid()
    block = grid[block_id]
    core = block.core
    umap = job.array("uncertain")
    prev = umap[core]
    nz = np.nonzero(prev)
    box = tuple(slice(c.start + int(i.min()), c.start + int(i.max()) + 1) for c, i in zip(core, nz))
    outer = expand(box, halo, job.shape)
    labels, _, unc, lut = _flood_region(job, grid, outer)
    raw = job.array("labels")
    current = raw[core]
    in_core, in_outer = _within(box, core), _within(box, outer)
    p = prev[in_core]
    current[in_core][p] = _to_global(labels[in_outer][p], lut)
    raw[core] = current
    left = np.zeros_like(prev)
    left[in_core] = p & unc[in_outer]
    umap[core] = left
    return int(p.sum()), int(left.sum()), partial_stats(current, _score(job, core), block.origin)


# ---------------------------------------------------------------------------- driver steps
def _write_tables(table_dir: str, per_block: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> None:
    remove_tree(table_dir)
    makedirs(table_dir)
    for bid, (keys, values) in per_block.items():
        save_npz(os.path.join(table_dir, f"{bid}.npz"), keys=keys, values=values)


def merge_seeds(
    block_ids: list[np.ndarray], block_counts: list[np.ndarray], edges: np.ndarray, min_seed_size: int
) -> tuple[list[np.ndarray], int]:
    """Union-find of block seed ids; per-block tables of final seed ids (0 = dropped).

    Components are numbered 1..S in the order of their smallest block id, so the numbering is
    deterministic. Returns the per-block values (aligned with ``block_ids``) and S.
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
    uncertain_voxels : int
        Core voxels the first pass could not certify (:mod:`.flood`, rules C0-C2); these are
        the voxels a resolution round floods again.
    unresolved_voxels : int
        Voxels still uncertain after the last round (all of ``uncertain_voxels`` when no round
        runs; 0 means certified identical to a whole-volume run). They keep their label.
    rounds : list of dict
        Per resolution round: halo, blocks run, voxels entering and leaving uncertain.
    seconds : dict
        Wall time per pass.
    """

    labels_path: str
    table_path: str
    n_seeds: int = 0
    n_instances: int = 0
    n_removed_small: int = 0
    foreground_voxels: int = 0
    uncertain_voxels: int = 0
    unresolved_voxels: int = 0
    rounds: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _as_triple(value, name: str) -> tuple[int, int, int]:
    if np.isscalar(value):
        value = (value,) * 3
    try:
        t = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise BlocksegError(f"{name} must be integers, got {value!r}") from None
    if len(t) != 3 or any(v < 0 for v in t):
        raise BlocksegError(f"{name} must be one or three non-negative integers, got {value!r}")
    return t  # type: ignore[return-value]


def segment(
    pred_path: str | os.PathLike,
    out_path: str | os.PathLike,
    decoder: Decoder | None = None,
    block_shape: int | Sequence[int] | None = None,
    halo: int | Sequence[int] | None = None,
    max_halo: int | Sequence[int] | None = None,
    client=None,
    overwrite: bool = False,
    keep_work: bool = False,
    progress: bool = False,
    pyramid_levels: int | None = None,
) -> SegmentReport:
    """Segment a prediction store into a global instance-label volume, blockwise.

    Parameters
    ----------
    pred_path : str or path-like
        Prediction store (:mod:`blockseg.predictions`) with the decoder's channels.
    out_path : str or path-like
        Label volume to create (OME-Zarr, uint32, or uint64 beyond 2**32 - 1 instances). The
        instance table is written to ``OUT/instances.csv``.
    decoder : Decoder, optional
        Decoder and its parameters (default: :class:`BCDDecoder` with NucMM defaults).
    block_shape : int or sequence of int, optional
        Core shape of a block; a multiple of the prediction chunks (default: about 16 M voxels).
    halo : int or sequence of int, optional
        Context read around each core for the watershed (default 24, clipped to the block).
    max_halo : int or sequence of int, optional
        Largest halo of the resolution rounds (default ``halo``: no round, only the
        certificate, the fast configuration; e.g. 2 x ``halo``: one round). Voxels still uncertain
        there keep their label and are counted in ``unresolved_voxels``.
    client : distributed.Client, optional
        Dask client; None runs the blocks in this process.
    overwrite : bool
        Replace an existing output.
    keep_work : bool
        Keep the work directory ``OUT.work`` (intermediate seeds and labels).
    progress : bool
        Show progress bars.
    pyramid_levels : int, optional
        Levels of the label volume's multiscale pyramid (None: automatic; 1: none), sampled
        blockwise after the relabel; the volume is marked an NGFF ``image-label`` either way.

    Returns
    -------
    SegmentReport

    Raises
    ------
    BlocksegError
        For a missing or incomplete prediction store, a bad geometry or an existing output.
    """
    t_start = time.perf_counter()
    decoder = decoder or BCDDecoder()
    if not isinstance(decoder, Decoder):
        raise BlocksegError(f"decoder must be a blockseg Decoder, got {type(decoder).__name__}")
    pred_path, out_path = str(pred_path), str(out_path).rstrip("/")
    vols = open_predictions(pred_path, decoder.channels)
    first = vols[decoder.channels[0]]
    grid0 = first.grid(block_shape)
    halo = _as_triple(DEFAULT_HALO if halo is None else halo, "halo")
    halo = tuple(min(h, b) for h, b in zip(halo, grid0.block_shape))
    max_halo = halo if max_halo is None else _as_triple(max_halo, "max_halo")
    if any(m < h for m, h in zip(max_halo, halo)):
        raise BlocksegError(f"max_halo {max_halo} is smaller than the halo {halo}")
    grid = first.grid(grid0.block_shape, halo)
    _prepare_destination(out_path, overwrite)
    work = out_path + ".work"
    _prepare_destination(work, True)
    remove_tree(work)  # a URL's leftover scratch (local ones: removed by the line above)
    zarr.open_group(work, mode="w")
    kw = dict(shape=grid.shape, chunks=first.write_unit, fill_value=0, compressors=None)  # scratch: fast, not small
    # block-offset ids are at most len(grid) * block_voxels: uint32 when that fits below the
    # foreground code (the largest value)
    id_dtype = np.uint32 if len(grid) * grid.block_voxels < 2**32 - 1 else np.uint64
    zarr.create_array(f"{work}/seeds", dtype=id_dtype, **kw)
    zarr.create_array(f"{work}/height", dtype=np.uint8, **kw)
    zarr.create_array(f"{work}/labels", dtype=id_dtype, **kw)
    zarr.create_array(f"{work}/uncertain", dtype=bool, **kw)
    kinds = tuple((c, prediction_kind(vols[c], c)) for c in decoder.channels)
    job = _Job(pred_path, work, grid.shape, grid.block_shape, halo, first.write_unit, decoder, kinds)
    ids = list(grid.block_ids)
    report = SegmentReport(out_path, f"{out_path}/instances.csv")
    run = partial(run_blocks, block_ids=ids, client=client, progress=progress)

    def timed(name, t0):
        report.seconds[name] = round(time.perf_counter() - t0, 3)
        return time.perf_counter()

    t = time.perf_counter()
    seeds = run(partial(_seed_task, job=job), name="seeds")
    edges = run(partial(_pairs_task, job=job), name="seed-pairs")
    t = timed("seeds", t)
    values, report.n_seeds = merge_seeds(
        [s[0] for s in seeds], [s[1] for s in seeds], np.concatenate(edges), decoder.min_seed_size
    )
    _write_tables(f"{work}/seed_tables", {b: (s[0], v) for b, s, v in zip(ids, seeds, values)})
    t = timed("seed_merge", t)

    results = run(partial(_watershed_task, job=job, halo=halo), name="watershed")
    report.foreground_voxels = int(sum(r[0] for r in results))
    parts = {b: r[2] for b, r in zip(ids, results)}
    pending = [b for b, r in zip(ids, results) if r[1]]
    report.uncertain_voxels = int(sum(r[1] for r in results))
    t = timed("watershed", t)
    current = halo
    while pending:
        bigger = tuple(min(2 * h if h else 1, m) for h, m in zip(current, max_halo))
        if bigger == current:
            break
        current = bigger
        res = run_blocks(
            partial(_resolve_task, job=job, halo=current), pending, client=client,
            name=f"resolve-halo-{max(current)}", progress=progress,
        )  # fmt: skip
        entering, left = sum(r[0] for r in res), sum(r[1] for r in res)
        report.rounds.append({"halo": list(current), "blocks": len(pending), "uncertain_in": int(entering), "uncertain_out": int(left)})
        parts.update({b: r[2] for b, r in zip(pending, res)})
        pending = [b for b, r in zip(pending, res) if r[1]]
    report.unresolved_voxels = int(report.rounds[-1]["uncertain_out"]) if report.rounds else report.uncertain_voxels
    t = timed("resolve", t)

    stats = reduce_stats([parts[b] for b in ids])
    keep = stats["count"] >= decoder.min_size
    report.n_removed_small = int((~keep).sum())
    new_ids = np.zeros(stats["id"].size, dtype=np.uint64)
    new_ids[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint64)
    report.n_instances = int(keep.sum())
    per_block = {}
    for b in ids:
        p = parts[b]
        pos = np.searchsorted(stats["id"], p["id"])
        per_block[b] = (p["id"], new_ids[pos])
    tables = f"{work}/label_tables"
    _write_tables(tables, per_block)
    dtype = np.uint32 if report.n_instances < 2**32 - 1 else np.uint64
    create_volume(
        out_path, grid.shape, dtype, first.voxel_size, first.array.chunks,
        shards=getattr(first.array, "shards", None), name="nuclei",
        attributes={"segment": {"decoder": decoder.name, "params": decoder.params(), "block_shape": list(grid.block_shape), "halo": list(halo)}},
    )  # fmt: skip
    run(partial(_relabel_task, job=job, src="labels", dst=f"{out_path}/0", table_dir=tables), name="relabel")
    final = {c: v[keep] for c, v in stats.items()}
    final["id"] = new_ids[keep]
    table = instance_table(final)
    write_csv(table, report.table_path)
    t = timed("relabel", t)
    from ..pyramid import MAX_PROPERTIES, finish_volume

    props = None
    if report.n_instances <= MAX_PROPERTIES:
        props = [{"label-value": int(i), "voxels": int(n)} for i, n in zip(final["id"], final["count"])]
    finish_volume(out_path, labels=True, levels=pyramid_levels, client=client, properties=props)
    t = timed("pyramid", t)
    report.seconds["total"] = round(time.perf_counter() - t_start, 3)
    zarr.open_group(out_path, mode="r+").attrs["blockseg_report"] = json.loads(json.dumps(report.to_dict()))
    if not keep_work:
        remove_tree(work)
    return report


def segment_array(channels: Mapping[str, np.ndarray], decoder: Decoder | None = None) -> np.ndarray:
    """Whole-volume reference: decode, global seeds, flood, size filter, in memory.

    Same decoder and the same flood as :func:`segment`, on one array. Returns uint32 labels
    numbered 1..N in the order of their seeds' first voxel (raster order).
    """
    decoder = decoder or BCDDecoder()
    seeds_mask, fg, height = decoder.decode(channels)
    seeds = cc3d.connected_components(seeds_mask.view(np.uint8), connectivity=26, out_dtype=np.uint64)
    if decoder.min_seed_size > 1:
        seeds = cc3d.dust(seeds, threshold=decoder.min_seed_size, connectivity=26, in_place=True)
    labels, _ = flood(height, seeds, fg)
    if decoder.min_size > 1:
        ids, counts = fastremap.unique(labels, return_counts=True)
        small = ids[(counts < decoder.min_size) & (ids != 0)]
        if small.size:
            labels = fastremap.mask(labels, small)
    labels, _ = fastremap.renumber(labels, preserve_zero=True, in_place=True)
    return labels.astype(np.uint32)
