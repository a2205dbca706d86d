"""Missing chunks in input arrays: detected, not read silently as the fill value.

zarr reads an absent chunk as the fill value: right for sparse label volumes (zarr omits
all-background chunks), wrong for a microscope image, where a missing chunk is a lost or
unfinished upload. :func:`check_complete` (called by :func:`blockseg.io.volume.open_volume` for
every zarr input opened for reading) therefore refuses missing chunks in images in one line,
reads them as the fill value with a warning in label images, and leaves blockseg's own outputs
alone (their completeness is tracked by ``predict``'s markers). The policy ``fill`` or
``error`` (``--missing-chunks``, or ``BLOCKSEG_MISSING_CHUNKS``, which dask workers inherit)
changes that. Cost: one listing of the array's keys per process; nothing is read.

The rule in full, its cost and what it cannot see (chunks missing inside a shard):
``docs/api/io.md``, section *Missing chunks*.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterator

import zarr
from zarr.core.sync import sync

from ..errors import BlocksegError, warn

#: environment variable holding the policy for missing chunks ("error", "fill" or "auto")
ENV = "BLOCKSEG_MISSING_CHUNKS"
POLICIES = ("auto", "error", "fill")

_CHECKED: dict[tuple[str, str], int] = {}


class MissingChunkError(BlocksegError):
    """An input array lacks chunks it should hold; the message names the array and a key."""


def policy() -> str:
    """The policy in force (``auto`` unless :data:`ENV` says otherwise)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise BlocksegError(f"{ENV}={value!r}: expected one of {', '.join(POLICIES)}")
    return value


def set_policy(value: str | None) -> None:
    """Set the policy for this process and the workers it starts (``None`` leaves it)."""
    if value is None:
        return
    if value not in POLICIES:
        raise BlocksegError(f"missing-chunks policy {value!r}: expected one of {', '.join(POLICIES)}")
    os.environ[ENV] = value
    _CHECKED.clear()


def _units(array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape of one stored object (shard or chunk) and the grid of them."""
    unit = tuple(int(c) for c in (getattr(array, "shards", None) or array.chunks))
    grid = tuple(-(-int(s) // u) for s, u in zip(array.shape, unit))
    return unit, grid


def _touched(array, fixed: dict[int, int]) -> Iterator[tuple[int, ...]]:
    """Grid coordinates of the stored objects a view with ``fixed`` axis indices reads."""
    unit, grid = _units(array)
    ranges = [
        (fixed[ax] // unit[ax],) if ax in fixed else range(grid[ax]) for ax in range(len(grid))
    ]
    return itertools.product(*ranges)


def stored_keys(array) -> set[str]:
    """Keys (relative to the array) of the objects stored for a zarr ``array``."""
    store = array.store
    prefix = array.path.rstrip("/") + "/" if array.path else ""

    async def collect() -> set[str]:
        return {k[len(prefix) :] async for k in store.list_prefix(prefix)}

    return sync(collect())


def missing_keys(array, fixed: dict[int, int] | None = None) -> tuple[list[str], int]:
    """Chunk (shard) keys the view reads but the store lacks, in grid order, and how many it reads.

    Parameters
    ----------
    array : zarr.Array
    fixed : dict of int to int, optional
        Axes fixed at one index by the view (channel / timepoint).
    """
    have = stored_keys(array)
    encode = array.metadata.encode_chunk_key
    missing, total = [], 0
    for coords in _touched(array, fixed or {}):
        total += 1
        key = encode(coords)
        if key not in have:
            missing.append(key)
    return missing, total


def _is_label(path: str, attrs: dict[str, Any]) -> bool:
    inner = attrs.get("ome", attrs)
    return "image-label" in inner or "/labels/" in path.replace(os.sep, "/")


def check_complete(array, path: str, *, fixed: dict[int, int] | None = None, attrs: dict | None = None,
                   owned=None) -> int:
    """Refuse (or report) chunks missing from a zarr input; return how many read as fill.

    Parameters
    ----------
    array : zarr.Array
        The stored array (the level opened; not a view of it).
    path : str
        How the input is named in messages.
    fixed : dict, optional
        Axes of ``array`` fixed at one index by the selection (only those units are compared).
    attrs : dict, optional
        Attributes of the image group (for its ``image-label`` metadata).
    owned : callable, optional
        Called (only when chunks are missing) to ask whether the input is blockseg's own
        output, which is not refused.

    Raises
    ------
    MissingChunkError
        Under the ``error`` policy, or ``auto`` for an image, when a chunk is missing.
    """
    if not isinstance(array, zarr.Array):
        return 0
    mode = policy()
    ident = (str(getattr(array.store, "root", "") or id(array.store)) + "/" + array.path, repr(sorted((fixed or {}).items())))
    if ident in _CHECKED:
        return _CHECKED[ident]
    missing, total = missing_keys(array, fixed)
    if missing and owned is not None and owned():
        missing = []  # blockseg's own sparse output: its completeness is tracked elsewhere
    name = f"{path.rstrip('/')}/{array.path.rpartition('/')[2]}" if array.path and not path.rstrip("/").endswith(array.path) else path
    if missing and (mode == "error" or (mode == "auto" and not _is_label(path, attrs or {}))):
        more = f" (and {len(missing) - 1} more of {total})" if len(missing) > 1 else f" (of {total})"
        raise MissingChunkError(
            f"{name}: chunk {missing[0]} is missing{more}; restore it, or pass --missing-chunks fill "
            f"if the array is sparse on purpose (missing chunks then read as the fill value {array.fill_value!r})"
        )
    if missing:
        warn(f"{name}: {len(missing)} of {total} chunks are absent and read as the fill value {array.fill_value!r}")
    _CHECKED[ident] = len(missing)
    return len(missing)
