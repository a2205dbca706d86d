"""The blockwise engine: image zarr -> prediction store, Dask tasks that carry block ids.

Every lattice tile is computed exactly once, by the block that owns it (:mod:`.lattice`), in
two passes:

1. ``predict_block`` computes the block's own tiles (the network cached once per worker),
   writes the whole chunks that no other block's tile reaches, and keeps the rest -- held
   values and weighted partial sums -- in the block's row of the scratch ``OUT/_partial/rows``;
2. ``finish_block`` adds its own and its neighbours' partial sums over its strips and writes
   the rest of its core.

Every output chunk is written once, by one task; the result equals a whole-volume run up to
the order (and the float32 rounding) of the additions. Done-markers (``OUT/_pass1``,
``OUT/_done``) are written after the data they vouch for, so a rerun resumes; the run's
settings are stored in the store's attributes and a resume with other settings is refused.
Design notes: ``docs/design/predict-lattice.md``.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache, partial
from typing import Optional, Sequence

import numpy as np
import torch
import zarr
from torch import nn

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import BlocksegError, warn
from ..faults import fault_point
from ..options import validate
from ..grid import BlockGrid, BlockTask, default_block_shape
from ..io.storage import free_space, is_url
from ..io.volume import open_volume
from ..models.base import BlocksegNet, build_model, normalise
from ..models.checkpoint import load_checkpoint, read_checkpoint
from ..io.predictions import DONE_ARRAY, create_predictions, describe_dtypes, encode_channel, mark_complete, plan_store
from ..provenance import file_digest
from ..zyx import zyx
from .kernels import quantise
from .infer import (
    InferenceOptions,
    check_options,
    check_runtime,
    compile_model,
    make_lattice,
    output_channels,
    predict_region,
)
from .lattice import Lattice, read_reflected, resolve_overlap
from .options import DEFAULT_OVERLAP, PredictOptions
from .patch import PatchChoice, choose_patch, patch_memory
from .resample import Scaling, net_region, predict_core_scaled, resolve_scale
from ..io.safety import aborts_on_error, prepare_output
from ..models import resolve_checkpoint
from ..runtime.costs import chunk_cost, empty_image_cost, settle, task_cost
from .size import resolve_diameter
from .domain import domain_warnings
from .normalise import resolve_volume
from .polarity import card_polarity, orient_volume
from ..runtime.cluster import TORCH_WORKER_BYTES, check_task_memory, has_gpu_workers, run_task, worker_memory_limit
from ..segment import DECODERS
from ..segment.params import checkpoint_decoder
from ..io.pyramid import finish_volume

PASS1_ARRAY = "_pass1"
PARTIAL_GROUP = "_partial"
#: the scratch (partial sums and held values): one row of bytes per block (scratch_pieces)
SCRATCH_ARRAY = f"{PARTIAL_GROUP}/rows"
#: bytes per scratch chunk
SCRATCH_CHUNK = 1 << 20
#: bumped when the block decomposition changes (stores of another scheme are not resumed)
SCHEME = "owned-tiles-6"  # 2: exact (not chunk-rounded) strips; 3: every output chunk written once;
#                            4: a block's held values packed in one scratch array; 5: tiles owned by their centre;
#                            6: one scratch row per block (partial sums and held values)
DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}


# ---------------------------------------------------------------------------- worker side
_MODELS: dict[tuple, BlocksegNet] = {}
_MODELS_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """``"auto"`` -> CUDA when visible, else CPU; a bare ``"cuda"`` on a dask worker of a
    multi-GPU host picks the GPU by worker name (LocalCluster workers are named 0, 1, ...;
    dask-jobqueue's workers of one job NAME-0, NAME-1, ...)."""

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BlocksegError("device cuda requested but no CUDA device is visible")
        n = torch.cuda.device_count()
        index = 0
        if n > 1:
            try:
                from distributed import get_worker

                # LocalCluster names workers 0, 1, ...; a dask-jobqueue job with several workers
                # names them JOBNAME-0, JOBNAME-1, ...: the trailing number picks the GPU
                index = int(str(get_worker().name).rsplit("-", 1)[-1]) % n
            except (ValueError, TypeError):
                index = 0
        device = f"cuda:{index}"
    return device


def cached_model(checkpoint: str, device: str, mc: bool = False, runtime: str = "eager") -> BlocksegNet:
    """The network of ``checkpoint`` on ``device``, loaded once per process (and thread for MC).

    The key includes the file's modification time, so a rewritten checkpoint is reloaded.
    MC-dropout switches dropout layers on and off around sampling, so each thread gets its own
    copy then; plain inference shares one model between a worker's threads. ``runtime``
    ``"compile"``: the copy is compiled (:func:`.infer.compile_model`) and so compiles once per
    process and patch shape, on its first forward.
    """

    path = os.path.abspath(checkpoint)
    key = (path, os.path.getmtime(path), device, threading.get_ident() if mc else None, runtime)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model, _ = load_checkpoint(path, device)
            if torch.device(device).type == "cuda":  # see run_batch: channels-last on GPUs only
                model = model.to(memory_format=torch.channels_last_3d)
            if runtime == "compile":
                compile_model(model)
            _MODELS[key] = model
    return model


@dataclass(frozen=True)
class BlockJob:
    """Everything a block task needs besides its id (small, pickled once per run)."""

    image_path: str
    out_path: str
    checkpoint: str
    device: str
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    chunk_shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    crop: tuple[int, int, int]
    margin: tuple[int, int, int]
    overlap: tuple[int, int, int]
    blending: str
    channels: tuple[str, ...]
    kinds: tuple[tuple[str, str], ...]
    dtype: str
    normalisation: tuple[tuple[str, float], ...] | None
    batch_size: int = DEFAULT_BATCH_SIZE
    tta: bool = False
    mc_samples: int = 0
    amp: bool = True
    torch_threads: int | None = None
    prefetch: bool = True
    #: how the network runs: "eager" (torch) or "compile" (torch.compile; infer.RUNTIMES)
    runtime: str = "eager"
    #: (channel, dtype) of the channels the store keeps (empty: every channel, as ``dtype``)
    store: tuple = ()
    #: resampling for the network (blockseg.predict.resample): per-axis factors and the resampled
    #: shape the lattice covers (empty: none)
    scale: tuple = ()
    net_shape: tuple = ()
    #: unique per run: keys the per-process cache of opened output arrays
    run_id: str = ""
    #: lattice end: snapped last tiles (True, ``patch="train"``) or overhanging ones (auto and explicit patches)
    snap: bool = True

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape, 0, self.chunk_shape)

    @property
    def scratch_dtype(self) -> str:
        """Accumulator and partial sums: float32 covers uint8 / float16 outputs (within one
        storage step of float64); float32 outputs get float64 (an identity network stays exact)."""
        return "float64" if self.dtype == "float32" else "float32"


@lru_cache(maxsize=8)
def _job_lattice(job: BlockJob) -> Lattice:
    return Lattice.build(job.net_shape or job.shape, job.patch, job.crop, job.overlap, job.margin, job.blending, job.snap)


@dataclass(frozen=True)
class BlockLayout:
    """What one block computes and writes (global boxes, see the module docstring).

    Attributes
    ----------
    tiles : tuple of range
        Per-axis ranges of the tiles the block owns.
    region : tuple of slice
        Box its own tiles' outputs cover inside the volume, from its core's start (may be empty).
    interior : tuple of slice
        Part of its core that only its own tiles reach (final after pass 1).
    strips : list of tuple of slice
        Disjoint boxes covering ``core - interior`` (summed in pass 2).
    written : tuple of slice, optional
        The whole chunks of the interior (``interior`` shrunk to the chunk grid): pass 1 writes
        them. The rest of the interior (:attr:`held`) is final after pass 1 too, but shares its
        chunks with the strips, so pass 1 keeps it (encoded) in its scratch and pass 2 writes
        those chunks once, whole. None: the interior itself (no chunk grid given).

    Interior and strips need not follow chunk boundaries; what is *written* does: pass 1 writes
    :attr:`written`, pass 2 writes :attr:`finish` (``core - written``), both whole chunks, so no
    output chunk is ever read back, merged and written a second time.
    """

    tiles: tuple
    region: tuple
    interior: tuple
    strips: list
    written: tuple | None = None

    @property
    def written_box(self) -> tuple:
        return self.interior if self.written is None else self.written

    @property
    def held(self) -> list:
        """Boxes of the interior that pass 1 keeps, encoded, for pass 2 to write."""
        return box_minus(self.interior, self.written_box)

    @property
    def partials(self) -> list:
        """Boxes whose weighted partial sums pass 1 leaves in the scratch: ``region - interior``
        (its strips and its spill), one scratch array each, numbered in this order."""
        return box_minus(self.region, self.interior)

    @property
    def finish(self) -> list:
        """Boxes pass 2 writes: ``core - written`` (the strips and the held boxes)."""
        if not self.strips:
            return []
        core = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in
                     zip(self.interior, _hull(self.strips)))  # fmt: skip
        return box_minus(core, self.written_box)

    @property
    def n_tiles(self) -> int:
        return math.prod(len(r) for r in self.tiles)


def _hull(boxes) -> tuple:
    """The bounding box of ``boxes``."""
    return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0])))


def box_minus(outer: Sequence[slice], inner: Sequence[slice]) -> list[tuple[slice, ...]]:
    """Disjoint boxes covering ``outer`` minus ``inner`` (``inner`` inside ``outer`` or empty)."""
    if any(s.stop <= s.start for s in outer):
        return []
    if any(s.stop <= s.start for s in inner):
        return [tuple(outer)]
    boxes, cur = [], list(outer)
    for a in range(len(cur)):
        if inner[a].start > cur[a].start:
            boxes.append(tuple(cur[:a] + [slice(cur[a].start, inner[a].start)] + cur[a + 1 :]))
        if inner[a].stop < cur[a].stop:
            boxes.append(tuple(cur[:a] + [slice(inner[a].stop, cur[a].stop)] + cur[a + 1 :]))
        cur[a] = inner[a]
    return boxes


def block_layout(lattice: Lattice, core: Sequence[slice], chunk_shape: Sequence[int] | None = None) -> BlockLayout:
    """The :class:`BlockLayout` of the block with ``core`` (chunk-aligned) on ``lattice``.

    Strips are exact (only the voxels that tiles of neighbouring blocks reach go through the
    scratch as partial sums); with ``chunk_shape``, :attr:`BlockLayout.written` is the
    interior shrunk to whole chunks (see :class:`BlockLayout`).
    """
    tiles = lattice.tiles_owned(core)
    region, interior = [], []
    for ax, s, r in zip(lattice.axes, core, tiles):
        lo, hi = ax.output_extent(r)
        region.append(slice(lo, hi) if hi > lo else slice(s.start, s.start))
        interior.append(slice(ax.reach_below(s.start), ax.reach_above(s.stop)))
    if any(s.stop <= s.start for s in interior):
        interior = [slice(s.start, s.start) for s in core]
    strips = box_minus(core, interior)
    written = None
    if chunk_shape is not None:
        # cores start on the chunk grid and stop on it or at the volume's end: round the
        # interior's start up and its stop down to the grid (a stop at the core's stop stays)
        written = [slice(min(s.start + -(-(i.start - s.start) // c) * c, s.stop),
                         i.stop if i.stop == s.stop else s.start + (i.stop - s.start) // c * c)
                   for s, i, c in zip(core, interior, chunk_shape)]  # fmt: skip
        if not strips:
            written = interior
        elif any(i.stop <= i.start for i in interior) or any(w.stop <= w.start for w in written):
            written = [slice(s.start, s.start) for s in core]
        written = tuple(written)
    return BlockLayout(tiles, tuple(region), tuple(interior), strips, written)


def strip_sources(lattice: Lattice, grid: BlockGrid, block_id: int) -> list[tuple[int, BlockLayout]]:
    """``(id, layout)`` of every block whose own tiles reach the core of ``block_id`` (itself included).

    A tile's output centre (clamped into the volume) lies in its owner's core, so its output
    reaches at most ``out - out // 2`` voxels past that core on either side: only blocks within
    ``ceil((out - out // 2) / block)`` grid steps can.
    """
    block = grid[block_id]
    reach = [-(-(a.out - a.out // 2) // b) for a, b in zip(lattice.axes, grid.block_shape)]
    near = [range(max(i - r, 0), min(i + r, n - 1) + 1) for i, r, n in zip(block.index, reach, grid.grid_shape)]
    sources = []
    for idx in itertools.product(*near):
        other = grid[grid.block_id(idx)]
        layout = block_layout(lattice, other.core, grid.chunk_shape)
        if _intersect(layout.region, block.core) is not None:
            sources.append((other.id, layout))
    return sources


def _shift(box: Sequence[slice], origin: Sequence[slice]) -> tuple[slice, ...]:
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, origin))


def _intersect(a: Sequence[slice], b: Sequence[slice]) -> tuple[slice, ...] | None:
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if any(s.stop <= s.start for s in box) else box


def open_dense(path: str) -> zarr.Array:
    """``path`` opened for writing without zarr's empty-chunk check.

    zarr-python 3 compares every chunk it writes with the fill value, to skip "empty" ones
    (``write_empty_chunks=False``, its default); that comparison has no fast path in numpy and
    cost more than the write itself here (an 11 MB raw scratch array: 68 ms with it, 5 ms
    without; eight zstd uint8 chunks: 26 ms vs 12 ms). Predictions and the engine's scratch are
    dense, so the check buys nothing: an all-zero chunk is simply stored.
    """
    return zarr.open_array(path, mode="r+").with_config({"write_empty_chunks": True})


@lru_cache(maxsize=64)
def _channel_array(out_path: str, channel: str, run_id: str) -> zarr.Array:
    """The full-resolution array of a store's channel (opened once per process and run)."""
    return open_dense(f"{out_path.rstrip('/')}/{channel}/0")


def encode_values(values: np.ndarray, kind: str, dtype) -> np.ndarray:
    """:func:`blockseg.io.predictions.encode_channel`, with the compiled one-pass quantiser
    (same bytes) for float32 values stored as uint8."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8 and values.dtype == np.float32 and values.ndim == 3 and kind in ("prob", "tanh"):
        return quantise(values, kind)
    return encode_channel(values, kind, dtype)


def _stored(job: BlockJob) -> dict:
    """Kept channel -> stored dtype (channels the network computes but the store drops are absent)."""
    stored = dict(job.store) if job.store else {c: job.dtype for c in job.channels}
    return {c: stored[c] for c in job.channels if c in stored}


def _encode_channels(job: BlockJob, values: np.ndarray) -> dict:
    """Kept channel -> its stored (encoded) values."""
    kinds, stored = dict(job.kinds), _stored(job)
    return {c: encode_values(values[i], kinds[c], stored[c]) for i, c in enumerate(job.channels) if c in stored}


def _write_channels(job: BlockJob, values: np.ndarray, box: Sequence[slice]) -> None:
    for c, enc in _encode_channels(job, values).items():
        _channel_array(job.out_path, c, job.run_id)[tuple(box)] = enc


def _scratch(job: BlockJob, mode: str = "r+") -> zarr.Array:
    """The run's scratch: one row of bytes per block (:func:`scratch_pieces`)."""
    path = f"{job.out_path.rstrip('/')}/{SCRATCH_ARRAY}"
    return open_dense(path) if mode == "r+" else zarr.open_array(path, mode="r")


def scratch_pieces(job: BlockJob, layout: BlockLayout) -> tuple[list, list, int]:
    """Where a block's row of the scratch holds its partial sums and its held values.

    Returns ``(partials, held, total bytes)``. ``partials[k]`` is the byte offset of
    :attr:`BlockLayout.partials` box ``k``: every channel, C-ordered, in the scratch dtype.
    ``held`` is ``[(box, channel, dtype, byte offset), ...]`` for :attr:`BlockLayout.held`:
    box by box, each box's kept channels one after the other, C-ordered, encoded as stored.
    Partial sums come first, so each lies at a multiple of its item size.
    """
    partials, offset = [], 0
    sums = len(job.channels) * np.dtype(job.scratch_dtype).itemsize
    for box in layout.partials:
        partials.append(offset)
        offset += sums * math.prod(s.stop - s.start for s in box)
    held = []
    stored = _stored(job)
    for box in layout.held:
        n = math.prod(s.stop - s.start for s in box)
        for c, dt in stored.items():
            dt = np.dtype(dt)
            held.append((box, c, dt, offset))
            offset += n * dt.itemsize
    return partials, held, offset


def _create_scratch(job: BlockJob, layouts: dict) -> None:
    """Create the run's scratch (nothing when no block has partial sums or held values).

    One uint8 array, a row per block id, chunks of :data:`SCRATCH_CHUNK` bytes along the row
    (one chunk per row where every row is shorter), uncompressed: a block writes its own row
    once (no chunk of another block's), a neighbour reads back only the chunks of the boxes it
    needs, and the driver creates one array per run instead of one per box (each zarr array
    costs milliseconds to create and to open).
    """
    width = max((scratch_pieces(job, lay)[2] for lay in layouts.values()), default=0)
    if not width:
        return
    chunk = min(width, SCRATCH_CHUNK)  # a small volume's rows are one chunk each, not 1 MiB
    width = -(-width // chunk) * chunk
    zarr.open_group(f"{job.out_path.rstrip('/')}/{PARTIAL_GROUP}", mode="a").create_array(
        SCRATCH_ARRAY.rpartition("/")[2], shape=(len(job.grid), width), dtype="uint8", chunks=(1, chunk),
        fill_value=0, compressors=None, overwrite=True)  # fmt: skip


def _set_marker(job: BlockJob, name: str, index) -> None:
    zarr.open_array(f"{job.out_path.rstrip('/')}/{name}", mode="r+")[index] = 1


_PROCESS_TORCH_THREADS: list[int] = []


def _set_torch_threads(n: int | None) -> None:
    """``n`` intra-op threads for this task, else the process's own default: never what an
    earlier task on the same worker set (the thread count changes float sums in the last bits,
    so a restarted worker and an old one would otherwise write different float channels)."""

    if not _PROCESS_TORCH_THREADS:
        _PROCESS_TORCH_THREADS.append(torch.get_num_threads())
    want = n or _PROCESS_TORCH_THREADS[0]
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


def task_context(job: BlockJob, block_id: int):
    """What every predict task of ``block_id`` starts from: ``(device, model, lattice, block,
    image array, normalisation)`` (torch threads set, the model cached per process)."""

    _set_torch_threads(job.torch_threads)
    device = resolve_device(job.device)
    model = cached_model(job.checkpoint, device, mc=job.mc_samples > 0, runtime=job.runtime)
    norm = dict(job.normalisation) if job.normalisation else None
    return device, model, _job_lattice(job), job.grid[block_id], open_volume(job.image_path).array, norm


def predict_block(job: BlockJob, block_id: int) -> dict:
    """Pass 1 of a block: compute its own tiles, write its interior and its partial sums.

    Sets the block's done-marker when its core has no strips (nothing left for pass 2),
    else its pass-1 marker. Returns timing stats.
    """
    t0 = time.perf_counter()
    device, model, lattice, block, image, norm = task_context(job, block_id)
    layout = block_layout(lattice, block.core, job.chunk_shape)
    is_float = np.dtype(image.dtype).kind == "f"
    t_read = [0.0]

    def read(lo, hi):
        t = time.perf_counter()
        raw = read_reflected(image.__getitem__, job.shape, lo, hi)
        if is_float and not np.isfinite(raw).all():
            raise BlocksegError(
                f"{job.image_path}: NaN or infinite values in block {block_id} (region {lo}..{hi}); "
                "clean the image first"
            )
        x = normalise(raw, norm)
        t_read[0] += time.perf_counter() - t
        return x

    options = InferenceOptions(job.batch_size, device, job.tta, job.mc_samples, job.amp)
    n_ch = len(job.channels)
    acc = predict_region(model, read, lattice, layout.region, n_ch, options, prefetch=job.prefetch, tiles=layout.tiles,
                         dtype=np.dtype(job.scratch_dtype))  # fmt: skip
    t_compute = time.perf_counter()
    written = layout.written_box
    if all(s.stop > s.start for s in written):
        fault_point("predict.pass1.channels:before", block=block_id)
        _write_channels(job, acc[(slice(None), *_shift(written, layout.region))], written)
        fault_point("predict.pass1.channels:after", block=block_id)
    parts, held, total = scratch_pieces(job, layout)
    if total:  # partial sums, and the final values in chunks pass 2 writes (encoded): one row
        packed = np.empty(total, dtype=np.uint8)
        sums = np.dtype(job.scratch_dtype)
        for box, offset in zip(layout.partials, parts):
            values = acc[(slice(None), *_shift(box, layout.region))]
            packed[offset : offset + values.nbytes].view(sums).reshape(values.shape)[...] = values
        encoded, encoded_box = {}, None
        for box, c, _, offset in held:  # pieces come box by box: encode each box once
            if box != encoded_box:
                encoded, encoded_box = _encode_channels(job, acc[(slice(None), *_shift(box, layout.region))]), box
            raw = np.ascontiguousarray(encoded[c]).view(np.uint8).ravel()
            packed[offset : offset + raw.size] = raw
        fault_point("predict.scratch:before", block=block_id)
        _scratch(job)[block_id, :total] = packed
        fault_point("predict.scratch:after", block=block_id)
    # written last: everything this pass vouches for is on disk
    _set_marker(job, PASS1_ARRAY if layout.strips else DONE_ARRAY, block.index)
    fault_point("predict.pass1.marker:after", block=block_id)
    t1 = time.perf_counter()
    return {
        "block": block_id,
        "patches": layout.n_tiles,
        "seconds": t1 - t0,
        "read_s": t_read[0],
        "write_s": t1 - t_compute,
    }


def finish_block(job: BlockJob, block_id: int) -> dict:
    """Pass 2 of a block: sum the partial sums reaching its strips, write them, set its done-marker.

    Needs pass 1 of the block and of every neighbour whose tiles reach its core
    (:func:`strip_sources`) to have finished: predict starts pass 2 once every pass 1 is done.
    """
    t0 = time.perf_counter()
    grid = job.grid
    block = grid[block_id]
    lattice = _job_lattice(job)
    layout = block_layout(lattice, block.core, job.chunk_shape)
    n_ch = len(job.channels)
    sources = strip_sources(lattice, grid, block_id)
    # finish = held + strips (disjoint): the held values come from this block's packed scratch;
    # each strip piece is the sum of the partial sums reaching it, added in source order
    finish = layout.finish
    pieces = [(box, sb) for box in finish for strip in layout.strips
              if (sb := _intersect(box, strip)) is not None]  # fmt: skip
    totals = [np.zeros((n_ch, *(s.stop - s.start for s in sb)), dtype=job.scratch_dtype) for _, sb in pieces]
    scratch = _scratch(job, "r")
    sums = np.dtype(job.scratch_dtype)
    for oid, lay in sources:  # every partial-sum box of every source, each read at most once
        offsets = scratch_pieces(job, lay)[0]
        for pbox, offset in zip(lay.partials, offsets):
            hits = [(i, hit) for i, (_, sb) in enumerate(pieces) if (hit := _intersect(sb, pbox)) is not None]
            if not hits:
                continue
            shape = (n_ch, *(s.stop - s.start for s in pbox))
            part = scratch[oid, offset : offset + math.prod(shape) * sums.itemsize].view(sums).reshape(shape)
            for i, hit in hits:
                totals[i][(slice(None), *_shift(hit, pieces[i][1]))] += part[(slice(None), *_shift(hit, pbox))]
    _, held, total = scratch_pieces(job, layout)
    start = held[0][3] if held else total
    packed = scratch[block_id, start:total] if held else None
    stored = _stored(job)
    for box in finish:  # whole chunks
        shape = tuple(s.stop - s.start for s in box)
        out = {c: np.empty(shape, dtype=dt) for c, dt in stored.items()}
        filled = 0
        for hbox in layout.held:
            hit = _intersect(box, hbox)
            filled += 0 if hit is None else math.prod(s.stop - s.start for s in hit)
        for hbox, c, dt, offset in held:
            hit = _intersect(box, hbox)
            if hit is not None:
                hshape = tuple(s.stop - s.start for s in hbox)
                values = packed[offset - start : offset - start + math.prod(hshape) * dt.itemsize].view(dt).reshape(hshape)
                out[c][_shift(hit, box)] = values[_shift(hit, hbox)]
        for (fbox, sb), total in zip(pieces, totals):
            if fbox == box:
                for c, enc in _encode_channels(job, total).items():
                    out[c][_shift(sb, box)] = enc
                filled += total[0].size
        if filled != math.prod(shape):  # held + strips must tile the box exactly
            raise BlocksegError(f"internal error: block {block_id}'s pass 2 covers {filled} of {math.prod(shape)} voxels")
        fault_point("predict.pass2.channels:before", block=block_id)
        for c, enc in out.items():
            _channel_array(job.out_path, c, job.run_id)[tuple(box)] = enc
    fault_point("predict.pass2.marker:before", block=block_id)
    _set_marker(job, DONE_ARRAY, block.index)
    fault_point("predict.pass2.marker:after", block=block_id)
    return {"block": block_id, "seconds": time.perf_counter() - t0, "sources": len(sources)}


# ---------------------------------------------------------------------------- resampled blocks
def scaled_layouts(lattice, grid) -> dict:
    """Per block, a :class:`BlockLayout` of its resampled work (no strips:
    a block computes every tile it needs, its whole core is final after one pass)."""
    layouts = {}
    shape = grid.shape
    for b in grid:
        region = net_region(b.core, shape, lattice.shape)
        layouts[b.id] = BlockLayout(lattice.tiles_for(region), region, tuple(b.core), [])
    return layouts


def predict_block_scaled(job, block_id: int) -> dict:
    """The resampled counterpart of :func:`predict_block`: one pass,
    writes the block's whole core and sets its done-marker."""
    t0 = time.perf_counter()
    device, model, lattice, block, image, norm = task_context(job, block_id)
    scaling = Scaling(tuple(job.scale), tuple(job.shape), tuple(job.net_shape), "")  # type: ignore[arg-type]
    is_float = np.dtype(image.dtype).kind == "f"

    def read_image(box):
        raw = np.asarray(image[box])
        if is_float and not np.isfinite(raw).all():
            raise BlocksegError(f"{job.image_path}: NaN or infinite values in block {block_id}; clean the image first")
        return raw

    options = InferenceOptions(job.batch_size, device, job.tta, job.mc_samples, job.amp)
    values = predict_core_scaled(model, read_image, lattice, block.core, scaling, job.channels, norm, options, job.prefetch)
    t1 = time.perf_counter()
    _write_channels(job, values, block.core)
    _set_marker(job, DONE_ARRAY, block.index)
    region = net_region(block.core, job.shape, job.net_shape)
    return {"block": block_id, "patches": math.prod(len(r) for r in lattice.tiles_for(region)),
            "seconds": time.perf_counter() - t0, "read_s": 0.0, "write_s": time.perf_counter() - t1}  # fmt: skip


# ---------------------------------------------------------------------------- planning
@dataclass
class PredictPlan:
    """What a run will do (``--dry-run`` prints :meth:`describe`)."""

    image_path: str
    out_path: str
    shape: tuple[int, ...]
    grid: BlockGrid
    lattice: Lattice
    halo: tuple[int, ...]
    channels: list[str]
    kinds: dict[str, str]
    dtype: str
    patches_total: int
    patches_whole_volume: int
    memory_bytes: dict[str, int]
    todo: list[int] = field(default_factory=list)
    scratch_bytes: int = 0
    store_bytes: int = 0
    image_bytes: int = 0
    store_note: str = ""
    #: how the input is normalised and resampled (blockseg.predict.normalise, blockseg.predict.resample)
    normalisation: str = ""
    resampling: str = ""
    patch_choice: PatchChoice | None = None
    #: False: the lattice's last tiles overhang the volume (pass ``snap=False`` to predict_array)
    lattice_snap: bool = True
    #: how the network runs (infer.RUNTIMES)
    runtime: str = "eager"
    #: the grid the lattice tiles: the image's, or the network's when the input is resampled
    lattice_shape: tuple[int, ...] | None = None
    #: costly geometry (blockseg.runtime.costs): warned about in the dry run, refusals raised before a run
    costs: list = field(default_factory=list)
    #: a foreign network (TorchScript / ONNX with a sidecar): what it is and where its margin came from
    model: str = ""

    @property
    def compute_factor(self) -> float:
        """Output voxels computed per voxel of the grid the network runs on (the lattice's
        overlap: each tile runs once; with resampling, per *resampled* voxel)."""
        return self.patches_total * math.prod(self.lattice.out) / math.prod(self.lattice_shape or self.shape)

    def describe(self) -> str:
        g, lat = self.grid, self.lattice
        mem = self.memory_bytes
        lines = [
            f"image {self.image_path}: shape {self.shape}",
            f"output {self.out_path}: channels {self.dtype}, chunks {g.chunk_shape}; kept: {self.store_note}",
            f"store size (uncompressed): {self.store_bytes / 2**20:.1f} MiB = "
            f"{self.store_bytes / max(self.image_bytes, 1):.2f}x the image ({self.image_bytes / 2**20:.1f} MiB)",
            f"blocks: {len(g)} of {g.block_shape} (grid {g.grid_shape}); to run: {len(self.todo)}",
            f"patch {lat.patch} -> output {lat.out}, stride {tuple(a.stride for a in lat.axes)}, "
            f"reflect pad {tuple(a.pad for a in lat.axes)}, blending {lat.blending}",
            f"inference patch: {self.patch_choice.reason if self.patch_choice else 'given'}; "
            f"last tiles {'snapped to the volume end' if self.lattice_snap else 'overhang the volume end (stride-aligned)'}",
            f"lattice: {lat.n_tiles} tiles = {self.patches_whole_volume} patches whole-volume; "
            f"{self.patches_total} computed blockwise ({self.compute_factor:.2f} output voxels per "
            f"{'resampled ' if self.lattice_shape else ''}voxel)",
            f"halo (read beyond the core, per side): {self.halo}",
            f"network runtime: {'torch.compile (inductor), compiled once per worker' if self.runtime == 'compile' else 'torch eager'}",
            *([f"model: {self.model}"] if self.model else []),
            f"normalisation: {self.normalisation}",
            f"voxel size: {self.resampling}",
            ("partial sums exchanged between blocks: none (resampled: each block runs every tile reaching its core)"
             if self.lattice_shape else
             f"partial sums exchanged between blocks (scratch, deleted at the end): {self.scratch_bytes / 2**20:.0f} MiB"),
            "memory per task (estimate): "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items() if k != "total")
            + f"; total ~{mem['total'] / 2**20:.0f} MiB",
        ]
        return "\n".join(lines)

    def check_memory(self, limit: int | None) -> None:
        """Refuse (one line) a run whose block tasks cannot fit a worker's memory ``limit`` (bytes;
        None or 0: unlimited): named by its largest block, the estimate and what to change."""

        if not self.todo or not limit:
            return
        block = max(self.todo, key=lambda i: math.prod(self.grid[i].shape))
        core = "x".join(str(n) for n in self.grid[block].shape)
        parts = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in self.memory_bytes.items() if k != "total" and v >= 2**20)
        check_task_memory(self.memory_bytes["total"], limit, f"predict block {block} (core {core} voxels)",
                          base=TORCH_WORKER_BYTES, detail=parts)  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "image": self.image_path,
            "output": self.out_path,
            "shape": list(self.shape),
            "block_shape": list(self.grid.block_shape),
            "blocks": len(self.grid),
            "todo": len(self.todo),
            "patch": list(self.lattice.patch),
            "patch_choice": self.patch_choice.to_dict() if self.patch_choice else None,
            "lattice_snap": self.lattice_snap,
            "runtime": self.runtime,
            **({"model": self.model} if self.model else {}),
            "halo": list(self.halo),
            "patches_total": self.patches_total,
            "compute_factor": round(self.compute_factor, 3),
            "scratch_bytes": self.scratch_bytes,
            "channels": list(self.channels),
            "dtypes": self.dtype,
            "store_bytes": self.store_bytes,
            "image_bytes": self.image_bytes,
            "store_note": self.store_note,
            "normalisation": self.normalisation,
            "resampling": self.resampling,
            "memory_bytes": self.memory_bytes,
        }


def _memory_estimate(model: BlocksegNet, grid: BlockGrid, lattice: Lattice, layouts: dict, n_channels: int,
                     in_itemsize: int, out_itemsize: int, batch_size: int, exchange: bool = True) -> dict[str, int]:  # fmt: skip
    """Peak bytes of one block task, by what holds them (``exchange``: the blocks exchange partial
    sums through the scratch; resampled runs do not)."""
    worst_slab, worst_core, worst_row = 0, 0, 0
    sums = 8 if out_itemsize == 4 else 4
    for lay in layouts.values():
        if lay.n_tiles == 0:
            continue
        ext = [a.input_extent(r) for a, r in zip(lattice.axes, lay.tiles)]
        slab = lattice.patch[0] * (ext[1][1] - ext[1][0]) * (ext[2][1] - ext[2][0])
        worst_slab = max(worst_slab, slab)
        worst_core = max(worst_core, math.prod(s.stop - s.start for s in lay.region))
        row = sum(math.prod(s.stop - s.start for s in b) for b in lay.partials) * sums + sum(
            math.prod(s.stop - s.start for s in b) for b in lay.held) * out_itemsize  # fmt: skip
        worst_row = max(worst_row, row * n_channels if exchange else 0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    mem = {
        "input slabs": 2 * worst_slab * (4 + in_itemsize),
        "accumulator": worst_core * n_channels * sums,
        "encoded core": worst_core * n_channels * out_itemsize,
        "scratch row": worst_row,
        "patch batch": patch_memory(lattice.patch, batch_size, _activations_per_voxel(model, n_channels)),
        "weights": params,
    }
    mem["total"] = sum(mem.values())
    return mem


def _activations_per_voxel(model: BlocksegNet, n_channels: int) -> int:
    """Values per input voxel a forward holds (the plan's memory model: every conv's outputs)."""

    own = getattr(model, "activations_per_voxel", None)  # a foreign network counts its own (models.foreign)
    if own is not None and (n := own()) is not None:
        return max(int(n), n_channels)
    widths = sum(m.out_channels for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)))
    return max(widths, n_channels)


def _patch_choice(model, shape, block_shape, patch, overlap, batch_size, n_channels, device, out_path, regions=None) -> PatchChoice:
    """The run's :class:`PatchChoice`; a resumed ``auto`` run keeps the patch it started with."""

    geo = model.geometry
    vox = resolve_overlap(overlap, geo.output_patch)
    mode = patch if isinstance(patch, str) or patch is None else zyx(patch, "patch", at_least=1)
    if getattr(model, "fixed_patch", False):  # an ONNX graph with a fixed input shape runs its patch only
        if mode not in ("auto", "train", None) and tuple(mode) != tuple(geo.input_patch):
            raise BlocksegError(f"the network's input shape is fixed at {list(geo.input_patch)}: --patch must be that, auto or train")
        return PatchChoice(geo.input_patch, "train", geo.input_patch, 0, "the network's fixed input shape (an ONNX graph without dynamic axes)")
    if mode == "auto":
        previous = _previous_patch_choice(out_path)
        if previous and previous.get("mode") == "auto":
            # the same choice (a GPU's free memory may differ now): the resumed run stays one run
            return PatchChoice(tuple(int(v) for v in previous["patch"]), "auto", geo.input_patch,  # type: ignore[arg-type]
                               int(previous.get("budget_bytes", 0)), str(previous.get("reason", "")))  # fmt: skip
    dev = "cpu" if device == "cpu" or not torch.cuda.is_available() else device
    return choose_patch(geo, shape, block_shape, vox, batch_size, _activations_per_voxel(model, n_channels), mode, dev,
                        regions=regions)  # fmt: skip


def _previous_patch_choice(out_path: str) -> dict | None:
    """The patch choice recorded in an existing prediction store (None when there is none)."""
    try:
        group = zarr.open_group(out_path, mode="r")
        return dict(group.attrs["blockseg"])["predictions"]["run"].get("patch_choice")
    except Exception:
        return None


@dataclass
class PredictReport:
    """Outcome of :func:`predict`."""

    output: str
    blocks: int
    skipped: int
    computed: int
    patches: int
    seconds: float
    voxels: int
    plan: PredictPlan
    #: blocks of ``computed`` whose network pass an interrupted run had finished (only their
    #: exchange with neighbours was left to do): reused, not recomputed
    reused_pass1: int = 0
    #: blocks whose task ran more than once (it failed or its worker was lost), per pass:
    #: ``{"predict": [3]}``; every task is idempotent, so the output is the same
    retried: dict = field(default_factory=dict)

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "plan"}
        d["voxels_per_second"] = self.voxels_per_second
        d["plan"] = self.plan.to_dict()
        return d


class _Options(PredictOptions):
    """The settings of a :func:`predict` run (:class:`~blockseg.predict.options.PredictOptions`,
    checked, kept as given) and the run's own arguments: the decoder whose channels the store
    keeps, and whether an existing output is replaced or resumed."""

    decoder: Optional[str] = None
    overwrite: bool = False
    resume: bool = True


def _run_options(values: dict) -> _Options:
    """:class:`_Options` from :func:`predict`'s keyword values; one-line :class:`BlocksegError`."""
    return validate(_Options, values)


@dataclass
class _Prepared:
    """A planned run and what its passes need besides the :class:`PredictPlan` (private)."""

    plan: PredictPlan
    options: _Options
    checkpoint: str
    payload: dict
    names: list
    kinds: dict
    keep: list
    dtypes: dict
    dtype: str
    scaling: object
    layouts: dict
    settings: dict
    norm: dict | None
    voxel_size: tuple
    output: object = None
    #: (done, pass1) markers of the run this one resumes; None: a new store
    markers: tuple | None = None


@aborts_on_error
def predict(
    image_path: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_path: str | os.PathLike,
    block_shape: int | Sequence[int] | None = None,
    client=None,
    dtype: str | np.dtype | None = None,
    overwrite: bool = False,
    resume: bool = True,
    channels: Sequence[str] | str | None = None,
    decoder: str | None = None,
    patch: int | Sequence[int] | str | None = "auto",
    overlap: float | Sequence[float] = DEFAULT_OVERLAP,
    blending: str = "gaussian",
    tta: bool = False,
    mc_samples: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    amp: bool = True,
    runtime: str = "eager",
    chunks: Sequence[int] | None = None,
    torch_threads: int | None = None,
    prefetch: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    pyramid_levels: int | None = None,
    scale=None,
    diameter=None,
    polarity: str | None = None,
) -> PredictReport | PredictPlan:
    """Predict every representation of a checkpoint's network over an image, block by block.

    Runs as named passes: :func:`plan_predict` (the plan, from metadata and the checkpoint;
    ``dry_run`` returns it), the store's creation, the block tasks (pass 1 computes each block's
    own tiles, pass 2 sums the strips neighbours share; both skip blocks whose done-marker is
    set, so an interrupted run resumes per block), then the reduce (pyramid, completion mark).

    Parameters
    ----------
    image_path : str or path-like
        3-D image volume (OME-Zarr or zarr array).
    checkpoint : str or path-like
        blockseg checkpoint (:func:`blockseg.models.save_checkpoint`), or ``"demo"`` for the
        shipped one; workers must see the path. Its recommended decoder and tuned thresholds
        are stored in the output's ``blockseg.predictions.decoder`` attribute, where
        ``segment`` takes its defaults from.
    out_path : str or path-like
        Prediction store to create (:mod:`blockseg.io.predictions` layout), one volume per channel.
    block_shape : int or sequence of int, optional
        Core shape of a block, a multiple of the output chunks (default ~16 M voxels).
    client : distributed.Client, optional
        Where blocks run (None: in this process, one after the other).
    dtype : {"uint8", "float16", "float32"}, optional
        Storage of every kept channel. Default per channel: uint8 for probabilities and tanh
        maps, float16 for "raw" channels (cpv, density), which cannot be quantised.
    channels : sequence of str or "all", optional
        Channels stored besides the decoder's (``"all"``: every channel the network predicts).
    decoder : str, optional
        The decoder whose channels the store keeps (default: the checkpoint's recommended
        decoder, else the first one the network can feed); see
        :func:`blockseg.io.predictions.plan_store`.
    overwrite : bool
        Replace an existing output.
    resume : bool
        If the output exists and holds an unfinished run with the same settings, compute only
        the blocks without a done-marker (a finished run computes nothing).
    patch : "auto", "train", int or sequence of int
        Inference patch. ``"auto"`` (default): the largest patch whose stride divides the
        block shape within a memory budget of the device (:func:`.patch.choose_patch`), never
        smaller than the training patch; ``"train"`` or None: the network's training patch (on
        the snapped lattice); sizes: that patch. Auto and explicit patches run the same
        stride-aligned lattice (tile starts ``-margin + k * stride``, the last tiles overhanging
        the volume), which depends on the patch alone: giving a store's recorded patch
        reproduces its lattice with any block shape.
        The choice and its reason are in the plan (dry run) and the store's provenance.
    overlap : float or sequence
        Overlap between neighbouring output tiles (default 0.125): < 1 a fraction of the network's
        *training* output patch (so it stays the same in voxels for a larger inference patch),
        else whole voxels (1.5 is refused).
    blending : {"gaussian", "bump", "constant"}
        Blending window (normalised weights).
    tta : bool
        Average the 8 flips (z, y, x subsets); cpv vector components are negated back.
    mc_samples : int
        MC-dropout samples (networks with dropout); adds a ``<ch>_var`` channel per channel.
    batch_size : int
        Patches per forward pass (default :data:`blockseg.defaults.DEFAULT_BATCH_SIZE`, as the
        CLI and the run config). A speed knob: the output does not depend on it.
    device : str
        ``"auto"`` (CUDA where visible), ``"cpu"``, ``"cuda"``. GPU tasks ask for the ``GPU``
        worker resource when the cluster has GPU workers.
    amp : bool
        bf16 / fp16 autocast on CUDA.
    runtime : {"eager", "compile"}
        How the network runs: torch eager, or ``torch.compile`` (inductor) compiled once per
        worker and patch shape (needs a C++ compiler on CPU workers; ~10 s per worker, then a
        forward 1.14x faster on the CPU measured, with no wall-time gain for a 64x256x256 volume:
        experiments/results/predict_runtime.md). Recorded in the provenance; equal to eager
        within one storage step.
    chunks : sequence of int, optional
        Output chunk shape (default: the image's write unit).
    torch_threads : int, optional
        ``torch.set_num_threads`` in each task (default: leave it; dask workers start with 1).
    prefetch : bool
        Read the next z-row of a block's input on a background thread during compute.
    progress : bool
        Progress bar.
    dry_run : bool
        Return the :class:`PredictPlan` without computing or writing anything.
    pyramid_levels : int, optional
        Levels of every channel's multiscale pyramid (None: automatic; 1: none), averaged
        blockwise once every block is done; rebuilt by a resumed run.
    scale : None, "auto", float or sequence of 3 floats
        Resample the input for the network by these factors (resampled voxels per image
        voxel) and the outputs back (:mod:`blockseg.predict.resample`). Default: image voxel size /
        the checkpoint's training voxel size, when both are known; 1: off.
    diameter : float, str, "auto" or "off", optional
        ``"auto"`` (the CLI's default): estimate the image's nucleus size from the image
        (:mod:`blockseg.predict.size`; printed as ``plan.nucleus_size``, in the provenance's
        ``nucleus_size``); None / ``"off"``: no estimate. A size (µm, or ``"17um"``, ``"34px"``):
        the image's typical nucleus diameter, instead of ``scale``: resample so that such
        a nucleus spans as many network voxels as the checkpoint's training nuclei
        (``metadata["nucleus_diameter_um"]``; :func:`blockseg.predict.resample.resolve_scale`).
    polarity : {None, "bright", "dark", "auto"}
        The image's nuclei are brighter or darker than around them (default: the polarity the
        checkpoint's model card records; ``"auto"``: detected). When it differs from the card's,
        the normalisation is inverted; a label-free check warns when it disagrees
        (:mod:`blockseg.predict.polarity`). Printed with the normalisation, in the provenance.

    Returns
    -------
    PredictReport, or PredictPlan with ``dry_run``

    Raises
    ------
    BlocksegError
        A bad option, first (one line naming it; checked by
        :class:`~blockseg.predict.options.PredictOptions`, the model the run config's ``predict``
        section and ``blockseg predict``'s flags share: one default and one check each), then
        what the checkpoint, the image or the output refuse.

    Notes
    -----
    The input is normalised by the checkpoint's scheme (:mod:`blockseg.predict.normalise`: the
    image's own 1-99.8 percentiles for checkpoints trained so, else the checkpoint's fixed
    affine map); scheme, values and resampling are in the plan and the store's provenance.

    Examples
    --------
    >>> import tempfile, blockseg
    >>> from blockseg.synth import SynthParams, synthesize
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthesize(f"{tmp}/img.zarr", SynthParams(shape=(16, 48, 48), seed=1), progress=False)
    >>> plan = blockseg.predict(f"{tmp}/img.zarr", "demo", f"{tmp}/pred.zarr", device="cpu", dry_run=True)
    >>> len(plan.grid), plan.shape
    (1, (16, 48, 48))
    """
    # the checks: every keyword but the paths, the client and how to run, by the options model
    options = _run_options({k: v for k, v in locals().items() if k in _Options.model_fields})
    run = _prepare(str(image_path), checkpoint, str(out_path), options, client, dry_run)
    if dry_run:
        return run.plan
    _check_resources(run, client)
    t0 = time.perf_counter()
    # a new store is written in place (an interrupted run resumes it); a replaced one is
    # written beside the old one and swapped in when complete (blockseg.io.safety)
    target = run.output.begin()
    done, pass1 = run.markers if run.markers is not None else _create_store(run, target)
    job = _block_job(run, target)
    stats, reused_pass1, retried = _block_passes(run, job, done, pass1, client, progress)
    _finish_store(target, run.keep, options.pyramid_levels, client)
    run.output.commit()
    grid, todo = run.plan.grid, run.plan.todo
    return PredictReport(
        output=run.output.path, blocks=len(grid), skipped=len(grid) - len(todo), computed=len(todo),
        patches=sum(s["patches"] for s in stats), seconds=time.perf_counter() - t0,
        voxels=sum(math.prod(grid[i].shape) for i in todo), plan=run.plan, reused_pass1=reused_pass1,
        retried={name: sorted(ids) for name, ids in retried.items() if ids},
    )  # fmt: skip


def plan_predict(image_path, checkpoint, out_path, client=None, **options) -> PredictPlan:
    """The :class:`PredictPlan` of :func:`predict` (same parameters): what a run would compute
    and write, from the image's metadata, the checkpoint and an existing output's markers.

    Nothing is written. The one data read: a checkpoint normalised by the image's own
    percentiles samples them (:mod:`blockseg.predict.normalise`), as the run itself would.

    Examples
    --------
    >>> import tempfile
    >>> from blockseg.synth import SynthParams, synthesize
    >>> tmp = tempfile.mkdtemp()
    >>> _ = synthesize(f"{tmp}/img.zarr", SynthParams(shape=(16, 48, 48), seed=1), chunks=(16, 48, 24), progress=False)
    >>> plan = plan_predict(f"{tmp}/img.zarr", "demo", f"{tmp}/pred.zarr", device="cpu", block_shape=(16, 48, 24))
    >>> len(plan.grid), len(plan.todo)
    (2, 2)
    """
    return _prepare(str(image_path), checkpoint, str(out_path), _run_options(options), client, True).plan


def _validate_inputs(checkpoint, options: _Options) -> tuple[str, dict, BlocksegNet]:
    """The checkpoint's path, payload and network, with the options the network constrains
    checked (one-line :class:`BlocksegError` each)."""

    checkpoint = resolve_checkpoint(checkpoint)
    payload = read_checkpoint(checkpoint)
    model = build_model(payload["architecture"], **payload["config"])
    check_options(model, InferenceOptions(options.batch_size, "cpu", options.tta, options.mc_samples, options.amp))
    check_runtime(options.runtime, options.device)
    foreign = payload.get("foreign")  # a TorchScript / ONNX network with its sidecar (models.foreign)
    if foreign and options.runtime != "eager":
        raise BlocksegError(f"runtime {options.runtime!r} is for blockseg checkpoints; a {foreign['format']} network runs as it is (--runtime eager)")
    return checkpoint, payload, model


def _prepare(image_path: str, checkpoint, out_path: str, options: _Options, client, dry_run: bool) -> _Prepared:
    """Plan the run (:func:`plan_predict`), check its output may be written and read the
    markers of the run it resumes; costly geometry is refused (warned about in a dry run)."""

    checkpoint, payload, model = _validate_inputs(checkpoint, options)
    vol = open_volume(image_path)
    meta = payload.get("metadata", {})

    # --diameter auto: the image's nucleus size estimated (blockseg.predict.size), printed and recorded
    diameter, size = resolve_diameter(options.diameter, options.scale, vol, image_path, meta, options.polarity)

    for line in domain_warnings(checkpoint, meta, vol.voxel_size, vol.voxel_size_source, size):  # far from its training data
        warn(line)
    scaling, scale_why = resolve_scale(options.scale, vol.shape, vol.voxel_size, vol.voxel_size_source,
                                       meta.get("voxel_size"), diameter, meta.get("nucleus_diameter_um"))  # fmt: skip
    normalised = _normalisation(meta, image_path, vol, options.polarity, client)
    names, kinds = output_channels(model, options.mc_samples)
    # which channels the store keeps, each in its own dtype (blockseg.io.predictions.plan_store)
    recommended = (meta.get("decoder") or {}).get("name")
    keep, dtypes, store_why = plan_store(names, kinds, options.decoder, options.channels, options.dtype, recommended)
    dtype = "float32" if "float32" in dtypes.values() else ("float16" if "float16" in dtypes.values() else "uint8")
    grid = _block_grid(vol, options)
    choice, lattice, layouts = _lattice_layouts(model, grid, scaling, options, len(names), out_path)
    run = _Prepared(None, options, checkpoint, payload, names, kinds, keep, dtypes, dtype, scaling, layouts, {},  # type: ignore[arg-type]
                    normalised.affine, vol.voxel_size)  # fmt: skip
    run.settings = _run_settings(run, image_path, vol, grid, lattice, choice, normalised, scale_why)
    if size["source"] != "off":  # an estimate (or a given size) is part of the run
        run.settings["nucleus_size"] = {k: v for k, v in size.items() if k != "line"}
    run.plan = _make_plan(run, image_path, out_path, vol, model, grid, lattice, choice, store_why, normalised, scale_why)
    run.plan.nucleus_size = size["line"]
    run.output = prepare_output(out_path, [image_path, checkpoint], options.overwrite, resume=options.resume)
    run.markers = _existing_run(run.output, run.settings)
    if dry_run:  # the plan claims nothing: the output's lock goes with it (a run claims it again)
        run.output.release()
    if run.markers is not None:
        run.plan.todo = [b.id for b in grid if not run.markers[0][b.index]]
    # tiny output chunks, an image that stores no data: named before they cost (the dry run warns)
    run.plan.costs = [c for c in (
        chunk_cost(vol.shape, grid.chunk_shape, max(np.dtype(d).itemsize for d in dtypes.values()), out_path),
        empty_image_cost(vol.array, vol.shape, image_path),
    ) if c is not None]  # fmt: skip
    settle(run.plan.costs, dry_run=dry_run)
    return run


def _normalisation(meta: dict, image_path: str, vol, polarity: str | None, client):
    """How the input is normalised (:func:`.normalise.resolve_volume`), oriented by the image's
    polarity when the checkpoint's card records one or ``polarity`` is given (:mod:`.polarity`)."""

    norm_meta = meta.get("normalisation")
    if card_polarity(norm_meta) is None and polarity is None:
        return resolve_volume(norm_meta, image_path, client=client)
    # the input check runs on the intensities as the network sees them
    return orient_volume(resolve_volume(norm_meta, image_path, client=client, warn=False), norm_meta, image_path,
                         vol.voxel_size, meta.get("nucleus_diameter_um"), polarity)  # fmt: skip


def _block_grid(vol, options: _Options) -> BlockGrid:
    """Block cores on the output chunks (a block shape within the volume, rounded to chunks);
    millions of blocks are refused before the plan lays them out (minutes of Python)."""

    shape = vol.shape
    chunk_shape = tuple(min(int(c), s) for c, s in zip(zyx(options.chunks, "chunks", at_least=1) or vol.write_unit, shape))
    block_shape = zyx(options.block_shape, "block shape", at_least=1) or default_block_shape(shape, chunk_shape)
    block_shape = tuple(min(b, -(-s // c) * c) for b, s, c in zip(block_shape, shape, chunk_shape))
    grid = BlockGrid(shape, block_shape, 0, chunk_shape)
    settle([task_cost(2 * len(grid), "predict", grid.block_shape)])  # up to two passes per block
    return grid


def _lattice_layouts(model, grid: BlockGrid, scaling, options: _Options, n_channels: int, out_path: str):
    """``(patch choice, lattice, {block id: layout})``: the tiles each block owns."""
    net_shape = scaling.net_shape if scaling else grid.shape
    regions = None
    if scaling:  # the ranges of the network's grid the blocks along each axis need
        boxes = [net_region(b.core, grid.shape, net_shape) for b in grid]
        regions = [sorted({(bx[a].start, bx[a].stop) for bx in boxes}) for a in range(3)]
    choice = _patch_choice(model, net_shape, grid.block_shape, options.patch, options.overlap, options.batch_size,
                           n_channels, options.device, out_path, regions)  # fmt: skip
    # auto and explicit patches keep tile starts on the stride (-margin + k * stride, the last tiles
    # overhanging): the lattice depends on the patch alone, not on the blocks, so a store's
    # recorded patch reproduces its lattice with any block shape; "train" keeps the snapped lattice
    lattice = make_lattice(model, net_shape, choice.patch, options.overlap, options.blending, choice.mode == "train")
    if scaling:
        return choice, lattice, scaled_layouts(lattice, grid)
    return choice, lattice, {b.id: block_layout(lattice, b.core, grid.chunk_shape) for b in grid}


def _run_settings(run: _Prepared, image_path: str, vol, grid: BlockGrid, lattice: Lattice, choice: PatchChoice,
                  normalised, scale_why: str) -> dict:  # fmt: skip
    """What the store records of the run (``predictions.run``): a resume must match it."""
    o, foreign = run.options, run.payload.get("foreign")
    return {
        "image": os.path.abspath(image_path) if not is_url(image_path) else image_path,
        "shape": list(vol.shape),
        "checkpoint_sha256": file_digest(run.checkpoint),
        "patch": list(lattice.patch),
        "patch_choice": choice.to_dict(),
        "lattice_snap": choice.mode == "train",
        "overlap": [a.out - a.stride for a in lattice.axes],
        "blending": o.blending,
        "block_shape": list(grid.block_shape),
        "chunks": list(grid.chunk_shape),
        "dtype": run.dtypes,
        "stored_channels": run.keep,
        "tta": bool(o.tta),
        "mc_samples": int(o.mc_samples),
        "runtime": o.runtime,
        "channels": run.names,
        "scheme": SCHEME,
        "voxel_size": list(vol.voxel_size),
        "voxel_size_source": vol.voxel_size_source,
        "normalisation": normalised.provenance(),
        "resampling": run.scaling.to_dict() if run.scaling else {"description": scale_why},
        # a foreign network's sidecar and measured margin are part of the run (the digest above is the weights')
        **({"model": {k: foreign[k] for k in ("format", "sha256", "outputs", "activation", "margin", "crop")}} if foreign else {}),
    }


def _make_plan(run: _Prepared, image_path, out_path, vol, model, grid, lattice, choice, store_why, normalised,
               scale_why) -> PredictPlan:  # fmt: skip
    """The :class:`PredictPlan` (every block still to run: the markers are read after)."""
    scaling, layouts, shape = run.scaling, run.layouts, vol.shape
    mem = _memory_estimate(model, grid, lattice, layouts, len(run.names), vol.dtype.itemsize,
                           np.dtype(run.dtype).itemsize, run.options.batch_size, exchange=not scaling)  # fmt: skip
    plan = PredictPlan(image_path, out_path, shape, grid, lattice, lattice.halo(), run.keep, run.kinds,
                       describe_dtypes(run.dtypes), sum(lay.n_tiles for lay in layouts.values()),
                       math.prod(lattice.n_tiles), mem, list(grid.block_ids))  # fmt: skip
    plan.store_bytes = math.prod(shape) * sum(np.dtype(d).itemsize for d in run.dtypes.values())
    plan.image_bytes = math.prod(shape) * vol.dtype.itemsize
    plan.store_note = store_why
    plan.normalisation, plan.resampling = normalised.description, scale_why
    plan.patch_choice = choice
    plan.lattice_snap = choice.mode == "train"
    plan.runtime = run.options.runtime
    plan.lattice_shape = tuple(scaling.net_shape) if scaling else None
    if run.payload.get("foreign"):
        plan.model = model.description.summary_line()
    # resampled blocks exchange nothing: their layouts mix the network's grid (region) and the
    # image's (core), so the box arithmetic below means nothing for them
    plan.scratch_bytes = 0 if scaling else (8 if run.dtype == "float32" else 4) * len(run.names) * sum(
        math.prod(s.stop - s.start for s in box) for lay in layouts.values() for box in lay.partials
    ) + sum(np.dtype(run.dtypes[c]).itemsize for c in run.keep) * sum(
        math.prod(s.stop - s.start for s in box) for lay in layouts.values() for box in lay.held
    )  # fmt: skip
    return plan


def _check_resources(run: _Prepared, client) -> None:
    """Before anything is written: blocks no worker can hold never start, and a new run's
    scratch must fit its disk (a resumed run's scratch is partly on disk already)."""
    if client is not None:

        run.plan.check_memory(worker_memory_limit(client))
    if run.markers is None:
        check_scratch_space(run.plan.out_path, run.plan.scratch_bytes, run.plan.store_bytes)


def _create_store(run: _Prepared, out_path: str) -> tuple[np.ndarray, np.ndarray]:
    """The new store: its channels, the run's settings and the checkpoint's tuned decoder in its
    attributes, empty done-markers; marked unfinished (segment refuses it) until the reduce.
    Returns the (all zero) ``done`` and ``pass1`` markers."""

    grid, keep = run.plan.grid, run.keep
    create_predictions(out_path, keep, grid.shape, run.dtypes, run.voxel_size, grid.chunk_shape,
                       {c: run.kinds[c] for c in keep}, complete=False)  # fmt: skip
    group = zarr.open_group(out_path, mode="r+")
    attrs = dict(group.attrs["blockseg"])
    # the checkpoint's tuned decoder travels with the data: segment's defaults (segment.params);
    # sizes in voxels of the network's grid become voxels of this image's grid
    size_factor = 1.0 / float(np.prod(run.scaling.factors)) if run.scaling else None
    stored = checkpoint_decoder(run.payload, run.checkpoint, run.settings["checkpoint_sha256"], size_factor)
    if stored is not None:  # only a decoder the kept channels can feed
        stored = stored if set(DECODERS[stored["name"]].channels) <= set(keep) else None
    attrs["predictions"] = {**attrs["predictions"], "run": run.settings, **({"decoder": stored} if stored else {})}
    group.attrs["blockseg"] = attrs
    for name in (DONE_ARRAY, PASS1_ARRAY):
        group.create_array(name, shape=grid.grid_shape, chunks=(1, 1, 1), dtype="uint8", fill_value=0)
    group.create_group(PARTIAL_GROUP)
    done = np.zeros(grid.grid_shape, dtype=np.uint8)
    return done, done


def _block_job(run: _Prepared, out_path: str) -> BlockJob:
    """The :class:`BlockJob` every block task of the run gets."""
    o, lattice, grid, scaling = run.options, run.plan.lattice, run.plan.grid, run.scaling
    return BlockJob(
        image_path=run.plan.image_path,
        out_path=out_path,
        checkpoint=os.path.abspath(run.checkpoint),
        device=o.device,
        shape=grid.shape,
        block_shape=grid.block_shape,  # type: ignore[arg-type]
        chunk_shape=grid.chunk_shape,  # type: ignore[arg-type]
        patch=lattice.patch,  # type: ignore[arg-type]
        crop=tuple(a.crop for a in lattice.axes),  # type: ignore[arg-type]
        margin=tuple(a.pad for a in lattice.axes),  # type: ignore[arg-type]
        overlap=tuple(a.out - a.stride for a in lattice.axes),  # type: ignore[arg-type]
        blending=o.blending,
        channels=tuple(run.names),
        kinds=tuple(sorted(run.kinds.items())),
        dtype=run.dtype,
        store=tuple(run.dtypes.items()),
        normalisation=tuple(sorted(run.norm.items())) if run.norm else None,
        batch_size=o.batch_size,
        tta=o.tta,
        mc_samples=o.mc_samples,
        amp=o.amp,
        runtime=o.runtime,
        torch_threads=o.torch_threads,
        prefetch=o.prefetch,
        scale=scaling.factors if scaling else (),
        net_shape=scaling.net_shape if scaling else (),
        run_id=uuid.uuid4().hex,
        snap=run.plan.lattice_snap,
    )


def _gpu_resources(client, device: str) -> dict | None:
    """``{"GPU": 1}`` for GPU tasks on a cluster with GPU workers; a local ``cuda`` run fails
    fast here when no GPU is visible."""
    if client is not None and device != "cpu":

        return {"GPU": 1} if has_gpu_workers(client) else None
    if client is None and device == "cuda":
        resolve_device("cuda")
    return None


def block_tasks(job: BlockJob, layouts: dict, done: np.ndarray, pass1: np.ndarray, resources=None) -> tuple:
    """The two passes' block tasks (:class:`blockseg.grid.BlockTask`): pass 1 (``"predict"``,
    done when its pass-1 marker is set) and pass 2 (``"predict-strips"``, done when its
    done-marker is; only blocks with strips to sum). Both write the block's core; pass 1
    reads the input its own tiles need (within the lattice's halo around the core)."""
    grid, halo = job.grid, _job_lattice(job).halo()
    if job.scale:  # the lattice is on the network's grid: its halo in image voxels
        halo = tuple(math.ceil(h / f) for h, f in zip(halo, job.scale))
    first = BlockTask("predict", grid, partial(predict_block_scaled if job.scale else predict_block, job), halo,
                      check=lambda b: bool(pass1[grid[b].index] or done[grid[b].index]), resources=resources)  # fmt: skip
    second = BlockTask("predict-strips", grid, partial(finish_block, job), halo, check=lambda b: bool(done[grid[b].index]),
                       select=lambda b: bool(layouts[b].finish))  # fmt: skip
    return first, second


def _block_passes(run: _Prepared, job: BlockJob, done, pass1, client, progress: bool) -> tuple[list, int, dict]:
    """Run both passes over the blocks still to do; returns ``(pass-1 stats, blocks whose pass 1
    was reused, {pass: retried block ids})``."""

    retried: dict[str, list[int]] = {}
    if not run.plan.todo:
        return [], 0, retried
    grid, lattice, todo = run.plan.grid, run.plan.lattice, run.plan.todo
    first, second = block_tasks(job, run.layouts, done, pass1, _gpu_resources(client, job.device))
    strips = [i for i in todo if second.select(i)]
    ids = {i for i in todo if not pass1[grid[i].index]}
    # the scratch is deleted with the run's end: a block whose pass 1 finished before (its
    # pass-1 or done-marker is written after its row) has its row only while the scratch
    # is there; recompute the partial sums of the others if needed
    scratch_there = SCRATCH_ARRAY.rpartition("/")[2] in zarr.open_group(job.out_path, mode="r")[PARTIAL_GROUP]
    kept = {b for b in grid.block_ids if first.check(b)} if scratch_there else set()
    for i in strips:
        ids.update(j for j, _ in strip_sources(lattice, grid, i) if j not in kept)
    ids = sorted(ids)
    if not kept and not run.scaling:  # made here, so tasks write chunks only (resampled blocks exchange nothing)
        _create_scratch(job, run.layouts)
    stats = run_task(first, ids, client, progress=progress, retried=retried.setdefault(first.name, []))
    if strips:
        run_task(second, strips, client, progress=progress, retried=retried.setdefault(second.name, []))
    return stats, len(set(todo) - set(ids)), retried


def _finish_store(out_path: str, keep: Sequence[str], levels: int | None, client) -> None:
    """The reduce: drop the scratch, build every channel's pyramid (part of the output: a rerun
    after an interruption here rebuilds it), mark the store complete."""

    _drop_partials(out_path)
    for c in keep:
        finish_volume(f"{out_path.rstrip('/')}/{c}", levels=levels, client=client)
    mark_complete(out_path)


def check_scratch_space(out_path: str, scratch_bytes: int, store_bytes: int) -> None:
    """Refuse to start (one line) when the local disk of ``out_path`` has less free space than
    the run's scratch (partial sums and held values, uncompressed, deleted at the end); warn when
    it could not also hold the output uncompressed (its compressed size is not known before).
    Object storage is not checked."""

    space = free_space(out_path) if scratch_bytes else None
    if space is None:
        return
    parent, free = space
    gib = 2**30
    if free < scratch_bytes:
        raise BlocksegError(
            f"predict needs about {scratch_bytes / gib:.1f} GiB of scratch beside {out_path} (the partial sums and held "
            f"values blocks exchange, uncompressed, deleted at the end); {parent} has {free / gib:.1f} GiB free"
        )
    if free < scratch_bytes + store_bytes:

        warn(f"{parent} has {free / gib:.1f} GiB free: enough for predict's {scratch_bytes / gib:.1f} GiB of scratch, not for "
             f"the output uncompressed ({store_bytes / gib:.1f} GiB); compression decides whether it fits")  # fmt: skip


def _existing_run(output, settings: dict):
    """Done-markers of the run to resume at ``output`` (None when a new store must be made).

    ``output`` is :func:`blockseg.io.safety.prepare_output`'s verdict: only a ``resume`` of
    blockseg's own store gets here with markers; it must hold a run with the same settings.
    """
    if output.action != "resume":
        return None
    out_path = output.path
    hint = "pass overwrite=True / --overwrite to replace it"
    try:
        group = zarr.open_group(out_path, mode="r")
        previous = dict(group.attrs["blockseg"])["predictions"]["run"]
        done = group[DONE_ARRAY][...]
    except Exception:
        raise BlocksegError(f"{out_path} already exists and is not a resumable blockseg prediction ({hint})") from None
    diff = sorted(k for k in set(settings) | set(previous) if settings.get(k) != previous.get(k))
    if diff:
        raise BlocksegError(f"{out_path} holds a prediction run with other settings ({', '.join(diff)}); {hint}")
    pass1 = group[PASS1_ARRAY][...]
    return done, pass1


def _drop_partials(out_path: str) -> None:
    """Delete the scratch partial sums once every block is done (they are kept for a resume)."""
    group = zarr.open_group(out_path, mode="r+")
    if PARTIAL_GROUP in group and bool(group[DONE_ARRAY][...].all()):
        del group[PARTIAL_GROUP]
        group.create_group(PARTIAL_GROUP)
