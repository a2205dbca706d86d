"""Multiscale pyramids of the volumes blockseg writes, built blockwise on Dask after a stage.

Level ``k`` of an image halves level ``k-1`` along the axes whose voxel is finest (every axis
whose voxel size is less than twice the smallest one), so an anisotropic stack first becomes
isotropic, then shrinks on all axes. Images and probabilities are averaged (the mean of the
voxels under each coarse voxel, at the block edge only of those that exist); labels are
sampled with a stride (every second voxel), so no label value is invented or blended.

Each level is one dask graph over the level below: the source is read in blocks of
``chunk x factor`` voxels and each task writes exactly one chunk of the new level, so no two
tasks write one chunk. A stage whose block tasks hold their core's labels may write the
leading stride levels itself where every chunk of them samples one core only
(:func:`block_levels`, :func:`create_levels`; ``segment``'s relabel does): the same bytes,
without reading level 0 back; the pyramid pass then builds only the levels above. The NGFF ``multiscales`` metadata lists every level with its ``scale``
(and, for averaged levels, the ``translation`` of the coarse voxel centre), as ome-zarr-py,
napari and neuroglancer expect.

By default levels are added while the smallest downsampled axis is longer than 64 voxels and
than one chunk (``levels=None``); ``levels=1`` writes full resolution only.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import numpy as np
import zarr

from ..errors import BlocksegError
from ..faults import fault_point

#: stop adding levels once the smallest downsampled axis is at most this long
MIN_AXIS = 64
METHODS = ("mean", "stride")


def level_factors(
    shape: Sequence[int], voxel_size: Sequence[float], chunks: Sequence[int], levels: int | None = None
) -> list[tuple[int, int, int]]:
    """Per-level downsampling factors relative to the level below (level 0 excluded).

    Parameters
    ----------
    shape, voxel_size, chunks : sequence
        Level 0's (z, y, x) shape, voxel size and chunk shape.
    levels : int, optional
        Total number of levels, level 0 included (None: until the smallest downsampled axis is
        at most :data:`MIN_AXIS` voxels or one chunk).
    """
    if levels is not None and int(levels) < 1:
        raise BlocksegError(f"pyramid levels must be >= 1 (1: full resolution only), got {levels}")
    shape = [int(s) for s in shape]
    vs = [float(v) for v in voxel_size]
    out: list[tuple[int, int, int]] = []
    while levels is None or len(out) + 1 < levels:
        finest = min(v for v, s in zip(vs, shape) if s > 1) if any(s > 1 for s in shape) else None
        if finest is None:
            break
        f = tuple(2 if s > 1 and v < 2 * finest * (1 - 1e-9) else 1 for v, s in zip(vs, shape))
        down = [i for i in range(3) if f[i] > 1]
        if levels is None and min(shape[i] for i in down) <= max(MIN_AXIS, min(chunks[i] for i in down)):
            break
        out.append(f)  # type: ignore[arg-type]
        shape = [-(-s // k) for s, k in zip(shape, f)]
        vs = [v * k for v, k in zip(vs, f)]
    return out


def downsample_block(block: np.ndarray, factors: Sequence[int], method: str) -> np.ndarray:
    """Downsample one block by integer ``factors`` (``ceil`` of the shape; see module doc)."""
    fault_point("pyramid.level:before", voxels=block.size)
    f = tuple(int(k) for k in factors)
    if method == "stride":
        return np.ascontiguousarray(block[:: f[0], :: f[1], :: f[2]])
    if method != "mean":
        raise BlocksegError(f"pyramid method must be one of {METHODS}, got {method!r}")
    out_shape = tuple(-(-s // k) for s, k in zip(block.shape, f))
    dt = np.dtype(block.dtype)
    # float32 sums are exact for the 8 (or fewer) values of <= 16-bit data; wider data sums in float64
    acc = np.float64 if dt.itemsize > 2 or dt == np.float64 else np.float32
    shp = (out_shape[0], f[0], out_shape[1], f[1], out_shape[2], f[2])
    if all(o * k == n for o, k, n in zip(out_shape, f, block.shape)):  # whole windows: no padding
        mean = block.reshape(shp).sum(axis=(1, 3, 5), dtype=acc) / acc(math.prod(f))
    else:  # the volume's last block: average only the voxels that exist
        pad = [(0, o * k - n) for o, k, n in zip(out_shape, f, block.shape)]
        total = np.pad(block.astype(acc, copy=False), pad).reshape(shp).sum(axis=(1, 3, 5))
        counts = np.pad(np.ones(block.shape, dtype=acc), pad).reshape(shp).sum(axis=(1, 3, 5))
        mean = total / counts
    if np.dtype(block.dtype).kind in "iub":
        info = np.iinfo(block.dtype) if block.dtype.kind in "iu" else None
        mean = np.rint(mean)
        if info is not None:
            mean = np.clip(mean, info.min, info.max)
    return mean.astype(block.dtype, copy=False)


def multiscale_datasets(voxel_size: Sequence[float], factors: Sequence[Sequence[int]], method: str) -> list[dict]:
    """NGFF ``datasets`` of level 0 and the levels made by ``factors`` (paths "0", "1", ...)."""
    out = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in voxel_size]}]}]
    cum = np.ones(3)
    for k, f in enumerate(factors, start=1):
        cum = cum * np.asarray(f)
        t: list[dict[str, Any]] = [{"type": "scale", "scale": [float(v * c) for v, c in zip(voxel_size, cum)]}]
        if method == "mean":  # a coarse voxel's centre is the mean of the fine centres under it
            t.append({"type": "translation", "translation": [float((c - 1) / 2 * v) for v, c in zip(voxel_size, cum)]})
        out.append({"path": str(k), "coordinateTransformations": t})
    return out


def _compute_retried(store, client, retries: int = 1) -> None:
    """Compute a level's store graph; a failed task runs again (every task rewrites whole
    chunks of the level from the complete level above it, so a rerun writes the same bytes).
    The threaded scheduler has no retries: the level is computed again instead."""
    import dask

    if client is not None:
        client.compute(store, retries=retries).result()
        return
    for attempt in range(retries + 1):
        try:
            dask.compute(store, scheduler="threads")
            return
        except (BlocksegError, MemoryError):
            raise
        except Exception:
            if attempt == retries:
                raise


def level_graph(src, chunks: Sequence[int], factors: Sequence[int], method: str):
    """Dask array of the next level: one task per destination chunk (``chunks``), reading the
    ``chunk x factor`` source voxels under it, so no two tasks write one chunk."""
    import dask.array as da

    f = tuple(int(q) for q in factors)
    x = da.from_zarr(src, chunks=tuple(c * q for c, q in zip(chunks, f))) if not hasattr(src, "dask") else src.rechunk(
        tuple(c * q for c, q in zip(chunks, f)))  # fmt: skip
    out_chunks = tuple(tuple(-(-c // q) for c in cs) for cs, q in zip(x.chunks, f))
    # meta given: dask need not call the function on an empty block in the driver to guess it
    return x.map_blocks(downsample_block, f, method, chunks=out_chunks, dtype=src.dtype,
                        meta=np.empty((0, 0, 0), dtype=src.dtype))


def level_shapes(shape: Sequence[int], chunks: Sequence[int], factors: Sequence[Sequence[int]]) -> list[tuple]:
    """``(shape, chunks)`` of every level made by ``factors`` (level 0 excluded): each level's
    chunks are level 0's, clipped to the level."""
    out, shape = [], tuple(int(s) for s in shape)
    for f in factors:
        shape = tuple(-(-s // q) for s, q in zip(shape, f))
        out.append((shape, tuple(min(int(c), s) for c, s in zip(chunks, shape))))
    return out


def block_levels(path: str, block_shape: Sequence[int], levels: int | None = None,
                 storage_options: dict | None = None) -> list[tuple[int, int, int]]:
    """Factors of the leading ``"stride"`` levels of the volume at ``path`` that blocks of
    ``block_shape`` can write themselves: those whose every chunk samples level-0 voxels of one
    block's core only (the block is a multiple of the chunk times the cumulative factor on
    every axis it splits), so that a block's ``core[::c]`` is exactly what :func:`write_pyramid`
    would write there.

    Parameters
    ----------
    path : str
        OME-Zarr image group with its level ``0`` (its shape, chunks and voxel size are read).
    block_shape : sequence of int
        Core shape of the stage's blocks (cores tile the volume from the origin).
    levels : int, optional
        Total levels including level 0, as given to :func:`write_pyramid`.

    Returns
    -------
    list of tuple
        The factors of levels ``1..n`` (a prefix of :func:`level_factors`; empty when none).
    """
    group = zarr.open_group(path, mode="r", storage_options=storage_options)
    base = group["0"]
    factors = level_factors(base.shape, _base_scale(group), tuple(base.chunks), levels)
    cum, out = np.ones(3, dtype=np.int64), []
    for f, (_, cshape) in zip(factors, level_shapes(base.shape, base.chunks, factors)):
        cum = cum * np.asarray(f)
        if not all(b >= n or b % (c * k) == 0 for b, n, c, k in zip(block_shape, base.shape, cshape, cum)):
            break
        out.append(tuple(int(q) for q in f))
    return out


def _base_scale(group) -> list[float]:
    """Level 0's voxel size, from the group's NGFF metadata."""
    ds = group.attrs["ome"]["multiscales"][0]["datasets"][0]
    return next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")


def _create_level(group, k: int, shape, dtype, chunks, fill_value):
    """Level ``k``'s empty array (one definition: the pyramid pass and a stage's block tasks
    write into identical arrays)."""
    return group.create_array(str(k), shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
                              dimension_names=("z", "y", "x"))  # fmt: skip


def create_levels(path: str, factors: Sequence[Sequence[int]], storage_options: dict | None = None) -> None:
    """Replace every coarser level of the volume at ``path`` by the empty levels ``factors``
    make, for a stage's block tasks to fill (then :func:`write_pyramid` with ``written``).

    Parameters
    ----------
    path : str
        OME-Zarr image group with its level ``0``.
    factors : sequence of sequence of int
        Per-level factors, usually :func:`block_levels`'s.
    """
    group = zarr.open_group(path, mode="r+", storage_options=storage_options)
    base = group["0"]
    for name in list(group.array_keys()):
        if name.isdigit() and name != "0":
            del group[name]
    for k, (shape, cshape) in enumerate(level_shapes(base.shape, base.chunks, factors), start=1):
        _create_level(group, k, shape, base.dtype, cshape, base.fill_value)


def write_pyramid(
    path: str,
    method: str = "mean",
    levels: int | None = None,
    client=None,
    storage_options: dict | None = None,
    written: int = 0,
) -> list[tuple[int, int, int]]:
    """Build the pyramid of the blockseg OME-Zarr volume at ``path`` from its level ``0``.

    Existing coarser levels are replaced (a rebuild after an interrupted run is idempotent).

    Parameters
    ----------
    path : str
        OME-Zarr image group written by blockseg (level ``0`` complete).
    method : {"mean", "stride"}
        ``"mean"`` for images and probabilities, ``"stride"`` for labels.
    levels : int, optional
        Total levels including level 0 (None: automatic, see :func:`level_factors`).
    client : distributed.Client, optional
        Where the tasks run (None: dask's threaded scheduler).
    written : int
        Levels ``1..written`` are complete already (:func:`create_levels`, filled by the stage's
        block tasks, :func:`block_levels`): kept; the levels above are built from them.

    Returns
    -------
    list of tuple
        The (z, y, x) shape of every level, level 0 first.
    """
    if method not in METHODS:
        raise BlocksegError(f"pyramid method must be one of {METHODS}, got {method!r}")
    group = zarr.open_group(path, mode="r+", storage_options=storage_options)
    ome = dict(group.attrs["ome"])
    ms = [dict(m) for m in ome["multiscales"]]
    base = group["0"]
    scale = _base_scale(group)
    factors = level_factors(base.shape, scale, tuple(base.chunks), levels)
    specs = level_shapes(base.shape, base.chunks, factors)
    if written > len(factors) or any(group[str(k)].shape != specs[k - 1][0] for k in range(1, written + 1)):
        raise BlocksegError(f"{path}: the {written} level(s) written by the blocks are not this pyramid's")
    for name in list(group.array_keys()):
        if name.isdigit() and int(name) > written:
            del group[name]
    src = group[str(written)]
    for k in range(written + 1, len(factors) + 1):
        shape, cshape = specs[k - 1]
        dst = _create_level(group, k, shape, src.dtype, cshape, base.fill_value)
        _compute_level(src, dst, cshape, factors[k - 1], method, client)
        src = dst
    ms[0]["datasets"] = multiscale_datasets(scale, factors, method)
    ome["multiscales"] = ms
    group.attrs["ome"] = ome
    return [tuple(int(s) for s in base.shape), *(s for s, _ in specs)]


#: on a cluster, a level of at most this many chunks runs as plain block tasks, not a dask array
#: graph: importing dask.array costs 1-2 s in the driver and in every worker, more than such a
#: level (segment's 512³ pyramid: one chunk left after its relabel wrote two levels, 2026-12-07)
SMALL_LEVEL_CHUNKS = 64


def _compute_level(src, dst, cshape, factors, method: str, client) -> None:
    """Write level ``dst`` from the level ``src`` below it, one task per destination chunk (the
    same blocks, function and bytes either way)."""
    n = math.prod(-(-s // c) for s, c in zip(dst.shape, cshape))
    if client is not None and n <= SMALL_LEVEL_CHUNKS:
        from ..runtime.cluster import run_blocks

        # retried once, as the graph's tasks are: a rerun writes the same chunk
        run_blocks(partial(_level_chunk, src, dst, tuple(cshape), tuple(factors), method), range(n), client=client,
                   name="pyramid-level", progress=False, retries=1)  # fmt: skip
        return
    import dask.array as da

    _compute_retried(da.store(level_graph(src, cshape, factors, method), dst, lock=False, compute=False), client)


def _level_chunk(src, dst, cshape, factors, method: str, index: int) -> None:
    """Chunk ``index`` (C order) of level ``dst``: the task :func:`level_graph` makes for it."""
    at = np.unravel_index(index, tuple(-(-s // c) for s, c in zip(dst.shape, cshape)))
    out = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(at, cshape, dst.shape))
    read = tuple(slice(o.start * f, min(o.stop * f, s)) for o, f, s in zip(out, factors, src.shape))
    dst[out] = downsample_block(src[read], factors, method)


__all__ = [
    "METHODS", "block_levels", "create_levels", "downsample_block", "level_graph", "level_factors", "level_shapes",
    "multiscale_datasets", "write_pyramid",
]  # fmt: skip


#: label images with more instances than this get no per-label ``properties`` in their metadata
MAX_PROPERTIES = 10_000


def set_image_label(path: str, properties: list[dict] | None = None, storage_options: dict | None = None) -> None:
    """Mark the OME-Zarr group at ``path`` a label image (NGFF ``image-label``).

    Background (0) is transparent. With ``properties`` (a list of ``{"label-value": id, ...}``,
    at most :data:`MAX_PROPERTIES` long) every listed label also gets a fixed colour (a hash of
    its value) and its properties; without, colours are left to the viewer.
    """
    group = zarr.open_group(path, mode="r+", storage_options=storage_options)
    ome = dict(group.attrs["ome"])
    label = dict(ome.get("image-label") or {})
    label.pop("properties", None)
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    if properties is not None and len(properties) <= MAX_PROPERTIES:
        ids = np.array([int(p["label-value"]) for p in properties], dtype=np.uint64)
        rgb = ((ids[:, None] * np.array([2654435761, 2246822519, 3266489917], dtype=np.uint64)) >> np.uint64(24)) % 200 + 55
        colors += [{"label-value": int(i), "rgba": [*map(int, c), 255]} for i, c in zip(ids, rgb)]
        label["properties"] = [{"label-value": 0, "background": True}, *properties]
    label["colors"] = colors
    ome["image-label"] = label
    group.attrs["ome"] = ome


def finish_volume(
    path: str,
    labels: bool = False,
    levels: int | None = None,
    client=None,
    storage_options: dict | None = None,
    properties: list[dict] | None = None,
    written: int = 0,
) -> list[tuple[int, int, int]]:
    """After a stage wrote level 0 (and levels ``1..written``, see :func:`write_pyramid`): build
    the pyramid (mean, or stride for ``labels``) and, for labels, the ``image-label`` metadata.
    Returns every level's shape."""
    shapes = write_pyramid(path, "stride" if labels else "mean", levels, client, storage_options, written)
    if labels:
        set_image_label(path, properties, storage_options)
    return shapes


__all__ += ["MAX_PROPERTIES", "finish_volume", "set_image_label"]
