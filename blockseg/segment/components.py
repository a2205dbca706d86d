"""Exact blockwise connected-component labelling of a binary volume (``label``).

The same algorithm as the seed pass of :func:`blockseg.segment.segment`, for any mask:

1. **components** -- each block labels its core with ``cc3d`` and gives the components ids
   ``grid.id_offset(block) + k`` (unique without coordination); the ids go to a work array;
2. **pairs** -- for every face (edge, corner) the block shares with a later block, the two-voxel
   slab of ids is labelled with the same connectivity: ids in one slab component are one
   component;
3. *driver* -- union-find (sparse connected components) over the pairs, components numbered
   1..N in the order of their smallest block id; one lookup table per block;
4. **relabel** -- each block maps its core through its table into the output volume.

The result is the partition a whole-volume ``cc3d.connected_components`` gives (ids differ).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import cc3d
import fastremap
import numpy as np
import zarr

from ..runtime.cluster import block_voxels, run_blocks
from ..errors import BlocksegError
from ..faults import fault_point
from ..grid import BlockGrid, Interface
from ..io.volume import create_volume, open_volume
from ..io.storage import load_npz, remove_tree
from .pipeline import _write_tables, merge_seeds
from ..io.safety import aborts_on_error, prepare_output, prepare_work

#: cc3d connectivity -> BlockGrid neighbourhood connectivity (faces / + edges / + corners)
_GRID_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True)
class _LabelJob:
    mask_path: str
    work_path: str
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    connectivity: int

    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape, 0, self.chunk_shape)

    def ids(self) -> zarr.Array:
        return zarr.open_array(f"{self.work_path}/ids", mode="r+")


@dataclass
class LabelReport:
    """What :func:`label` did: output path, number of components, wall seconds per pass, and
    the blocks whose task ran more than once, per pass (``retried``; the output is the same)."""

    labels_path: str
    n_components: int = 0
    seconds: dict = field(default_factory=dict)
    retried: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _components_task(block_id: int, job: _LabelJob) -> int:
    grid = job.grid()
    block = grid[block_id]
    mask = open_volume(job.mask_path).array[block.core] != 0
    ids = job.ids()
    cc, n = cc3d.connected_components(mask, connectivity=job.connectivity, out_dtype=np.uint64, return_N=True)
    if n:
        cc[mask] += grid.id_offset(block_id)
    fault_point("label.components:before", block=block_id)
    ids[block.core] = cc.astype(ids.dtype, copy=False)
    fault_point("label.components:after", block=block_id)
    return int(n)


def _pairs_task(block_id: int, job: _LabelJob) -> np.ndarray:
    """Pairs of ids (this block's, a later neighbour's) joined across their shared slab."""
    grid = job.grid()
    ids = job.ids()
    edges = [np.zeros((0, 2), dtype=np.uint64)]
    for nid, off in grid.neighbours(block_id, _GRID_CONNECTIVITY[job.connectivity]):
        if next(v for v in off if v) < 0:
            continue
        slab = ids[grid.interface_slices(Interface(block_id, nid, off), 1)]
        sel = slab != 0
        if not sel.any():
            continue
        cc = cc3d.connected_components(sel, connectivity=job.connectivity)
        pairs = np.unique(np.stack([cc[sel].astype(np.uint64), slab[sel].astype(np.uint64)], axis=1), axis=0)
        first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
        rep = pairs[first, 1][np.cumsum(first) - 1]
        link = pairs[:, 1] != rep
        edges.append(np.stack([rep[link], pairs[link, 1]], axis=1))
    return np.concatenate(edges)


def _relabel_task(block_id: int, job: _LabelJob, out_path: str) -> None:
    core = job.grid()[block_id].core
    data = load_npz(os.path.join(job.work_path, "tables", f"{block_id}.npz"))
    mapping = dict(zip(data["keys"].tolist(), data["values"].tolist()))
    mapping[0] = 0
    out = fastremap.remap(job.ids()[core], mapping, preserve_missing_labels=False, in_place=True)
    target = open_volume(out_path, mode="r+").array
    fault_point("label.relabel:before", block=block_id)
    target[core] = out.astype(target.dtype, copy=False)
    fault_point("label.relabel:after", block=block_id)


@aborts_on_error
def label(
    mask_path: str | os.PathLike,
    out_path: str | os.PathLike,
    connectivity: int = 26,
    block_shape: int | Sequence[int] | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = False,
) -> LabelReport:
    """Label the connected components of a mask volume, blockwise and exactly.

    Parameters
    ----------
    mask_path : str or path-like
        Volume whose nonzero voxels are foreground (any integer or bool dtype).
    out_path : str or path-like
        Label volume to create (OME-Zarr, same chunks and voxel size; uint32, or uint64 beyond
        2**32 - 1 components). Components are numbered 1..N in the order of their first block.
    connectivity : {6, 18, 26}
        Voxel connectivity, as in ``cc3d`` (26 = ``scipy.ndimage.label`` with a full 3x3x3
        structure).
    block_shape : int or sequence of int, optional
        Block (core) shape, a multiple of the mask's chunks (default: about 16 M voxels).
    client : distributed.Client, optional
        Dask client; None runs the blocks in this process.
    overwrite : bool
        Replace an existing output.
    progress : bool
        Show progress bars.

    Returns
    -------
    LabelReport

    Raises
    ------
    BlocksegError
        For a bad connectivity or geometry, a missing mask or an existing output.

    Examples
    --------
    A cube, and a bar that crosses the border between two blocks: two components, the bar one.

    >>> from blockseg.io.volume import create_volume, open_volume
    >>> mask = create_volume("mask.zarr", (8, 32, 32), "uint8", chunks=(8, 16, 16))
    >>> mask[:, 2:6, 2:6] = 1
    >>> mask[:, 10:22, 14:18] = 1
    >>> report = label("mask.zarr", "components.zarr", block_shape=(8, 16, 16))
    >>> report.n_components
    2
    >>> labels = open_volume("components.zarr")[:]
    >>> len(set(labels[:, 10:22, 14:18].ravel().tolist()))
    1
    """
    if connectivity not in _GRID_CONNECTIVITY:
        raise BlocksegError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    t_start = time.perf_counter()
    mask_path, out_path = str(mask_path), str(out_path).rstrip("/")
    vol = open_volume(mask_path)
    grid = vol.grid(block_shape)

    output = prepare_output(out_path, [mask_path], overwrite, extra=[out_path + ".work"])
    final_path, out_path = out_path, output.begin()  # a replacement is written beside the old one
    work = prepare_work(out_path + ".work")
    id_dtype = np.uint32 if len(grid) * grid.block_voxels < 2**32 - 1 else np.uint64
    zarr.create_array(f"{work}/ids", shape=grid.shape, chunks=vol.write_unit, dtype=id_dtype, fill_value=0,
                      compressors=None)  # fmt: skip
    job = _LabelJob(mask_path, work, grid.shape, grid.block_shape, vol.write_unit, connectivity)
    ids = list(grid.block_ids)
    report = LabelReport(final_path)

    def run(func, name):
        again: list[int] = []
        out = run_blocks(func, ids, client=client, name=name, progress=progress, voxels=block_voxels(grid, ids),
                         retried=again)  # fmt: skip
        if again:
            report.retried[name] = sorted(again)
        return out
    t = time.perf_counter()
    counts = run(partial(_components_task, job=job), name="label-components")
    edges = run(partial(_pairs_task, job=job), name="label-pairs")
    report.seconds["components"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    block_ids = [np.arange(1, n + 1, dtype=np.uint64) + grid.id_offset(b) for b, n in zip(ids, counts)]
    values, report.n_components = merge_seeds(block_ids, [np.ones(n, np.int64) for n in counts], np.concatenate(edges), 0)
    _write_tables(f"{work}/tables", {b: (k, v) for b, k, v in zip(ids, block_ids, values)})
    report.seconds["merge"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    dtype = np.uint32 if report.n_components < 2**32 - 1 else np.uint64
    create_volume(out_path, grid.shape, dtype, vol.voxel_size, vol.array.chunks,
                  shards=getattr(vol.array, "shards", None), name="components")  # fmt: skip
    run(partial(_relabel_task, job=job, out_path=out_path), name="label-relabel")
    report.seconds["relabel"] = round(time.perf_counter() - t, 3)
    report.seconds["total"] = round(time.perf_counter() - t_start, 3)
    remove_tree(work)
    output.commit()
    return report
