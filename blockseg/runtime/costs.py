"""Costly geometry named before it costs: tiny chunks, huge task graphs, images that hold no data.

Each check returns a :class:`Cost` (a one-line message and whether it refuses or warns) or None.
Commands call them where the geometry is first known -- the plan (``--dry-run`` says them as
warnings), before the first volume is created and before the first task is submitted -- so a
run that would write a quarter of a million chunk files, flood the scheduler with millions of
tasks, or compute the network over billions of voxels that were never written, is named with its
numbers instead of running for minutes or hours.

The thresholds, and why:

- **chunks**: a zarr chunk is one file (or object); below a few KiB each costs more in file-system
  blocks, inodes and one open/write per chunk than in data. Chunks under :data:`SMALL_CHUNK_BYTES`
  (far below the ~1 MiB zarr recommends) in a volume of more than :data:`MANY_CHUNKS` chunks are
  warned about; under :data:`TINY_CHUNK_BYTES` (one file-system block) they are refused.
  Measured: a 64^3 volume imported with 1-voxel chunks wrote 262,144 files in 246 s.
- **tasks**: dask's scheduler spends ~1 ms and a few KiB per task; above :data:`MANY_TASKS` the
  overhead is minutes and is warned about, above :data:`MAX_TASKS` refused.
- **no data**: a zarr image none of whose chunks is stored (or an HDF5 dataset with no byte
  allocated) reads as its fill value everywhere (a lazily declared array); computing over more than :data:`EMPTY_VOXELS` voxels of it is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import zarr
from zarr.core.sync import sync

from ..errors import BlocksegError, warn

#: chunks smaller than this (bytes), in a volume of more than MANY_CHUNKS chunks, are warned about
SMALL_CHUNK_BYTES = 256 * 2**10
#: chunks smaller than this (one file-system block), in a volume of more than MANY_CHUNKS chunks, are refused
TINY_CHUNK_BYTES = 4 * 2**10
#: chunk files of one volume above which small chunks matter
MANY_CHUNKS = 10_000
#: block tasks of one stage above which the scheduler's overhead is warned about
MANY_TASKS = 100_000
#: block tasks of one stage above which the stage is refused
MAX_TASKS = 2_000_000
#: voxels of an image holding no data above which computing over it is refused
EMPTY_VOXELS = 2**27
#: chunk shape suggested in the messages (~1 MiB of uint8)
SUGGESTED_CHUNKS = (64, 128, 128)


@dataclass(frozen=True)
class Cost:
    """A costly geometry: ``message`` (one line) and whether it is refused (else warned about)."""

    message: str
    refuse: bool = False


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def format_bytes(n: float) -> str:
    """``1536 * 2**20`` -> ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f}".removesuffix(".0") + f" {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def chunk_cost(shape: Sequence[int], chunks: Sequence[int], itemsize: int, what: str = "the volume") -> Cost | None:
    """Chunks far below ~1 MiB in a volume of many chunks (see the module for the thresholds)."""
    chunks = [max(1, min(int(c), int(s))) for c, s in zip(chunks, shape)]
    n_chunks = math.prod(-(-int(s) // c) for s, c in zip(shape, chunks))
    size = math.prod(chunks) * int(itemsize)
    if n_chunks <= MANY_CHUNKS or size >= SMALL_CHUNK_BYTES:
        return None
    refuse = size < TINY_CHUNK_BYTES
    return Cost(
        f"{what}: chunks of {_shape(chunks)} voxels ({format_bytes(size)} each) make {n_chunks:,} chunk files for "
        f"{_shape(shape)} voxels{', each smaller than a file-system block' if refuse else ''}; chunks of about 1 MiB "
        f"are read and written far faster (e.g. --chunks {' '.join(map(str, SUGGESTED_CHUNKS))})",
        refuse,
    )


def task_cost(n_tasks: int, what: str, block_shape: Sequence[int] | None = None) -> Cost | None:
    """A stage of more than :data:`MANY_TASKS` block tasks (refused above :data:`MAX_TASKS`)."""
    if n_tasks <= MANY_TASKS:
        return None
    blocks = f" of {_shape(block_shape)} voxels" if block_shape is not None else ""
    return Cost(
        f"{what}: {n_tasks:,} block tasks{blocks} (dask's scheduler spends ~1 ms and a few KiB on each: "
        f"{'blockseg runs at most ' + format(MAX_TASKS, ',') + ' per stage' if n_tasks > MAX_TASKS else 'minutes of overhead'}); "
        "give a larger block shape (--block-shape)",
        n_tasks > MAX_TASKS,
    )


#: keys of zarr metadata (v3 and v2), not chunks
_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _any_chunk_stored(array) -> bool | None:
    """Whether any chunk (or shard) of a zarr array, or any byte of an HDF5 dataset, is stored; None
    when that cannot be told (another kind of array, or a store that cannot list)."""
    base = getattr(array, "base", array)  # a channel / timepoint view of a zarr array
    if type(base).__module__.startswith("h5py"):  # an HDF5 dataset: bytes allocated on disk
        try:
            return base.id.get_storage_size() > 0
        except Exception:
            return None
    if not isinstance(base, zarr.Array):
        return None
    try:
        path = base.path.strip("/")
        prefix = f"{path}/" if path else ""  # an array has no child nodes: every other key is a chunk

        async def first() -> bool:
            async for key in base.store.list_prefix(prefix):
                if key.rsplit("/", 1)[-1] not in _METADATA:
                    return True
            return False

        return sync(first())
    except Exception:  # an unusual store: do not guess
        return None


def empty_image_cost(array, shape: Sequence[int], what: str, fill_value=None) -> Cost | None:
    """An image of more than :data:`EMPTY_VOXELS` voxels that stores no chunk at all (every voxel
    reads as the fill value): refused."""
    voxels = math.prod(int(s) for s in shape)
    if voxels <= EMPTY_VOXELS or _any_chunk_stored(array) is not False:
        return None
    fill = fill_value if fill_value is not None else getattr(getattr(array, "base", array), "fill_value", None)
    return Cost(
        f"{what} holds no data: none of its chunks is stored, so each of its {voxels:,} voxels ({_shape(shape)}) "
        f"reads as the fill value {fill}; write the image first (or check the path)",
        True,
    )


def settle(costs: Iterable[Cost | None], dry_run: bool = False) -> None:
    """Raise the first refusal (unless ``dry_run``), else warn about every cost, one line each.

    Raises
    ------
    BlocksegError
        The first refused cost's message (not in a dry run, which only warns).
    """
    costs = [c for c in costs if c is not None]
    refused = [c for c in costs if c.refuse]
    if refused and not dry_run:  # the refusal is the one line
        raise BlocksegError(refused[0].message)
    for cost in costs:
        warn(cost.message + (" (refused when run)" if cost.refuse else ""))


__all__: Sequence[str] = ["Cost", "chunk_cost", "task_cost", "empty_image_cost", "settle"]
