"""Export a volume (or a region of it, or a downsampled level) to TIFF or HDF5 for other tools.

* ``.tif`` / ``.tiff``: an ImageJ hyperstack (axes ZYX) with the voxel size as ImageJ reads it
  (``XResolution`` / ``YResolution`` in pixels per µm, ``spacing`` for z, unit ``micron``), so
  Fiji shows the right scale. ImageJ stores 8- and 16-bit integers and 32-bit floats only:
  labels above 65535 are written as float32 (exact up to 2**24) and the message says so;
  beyond 2**24 the export is refused (use HDF5).
* ``.h5`` / ``.hdf5``: dataset ``main`` (the key PyTorch Connectomics reads by default), gzip,
  chunked, with ``element_size_um`` (z, y, x) -- the attribute ilastik and PyTorch
  Connectomics read -- on the dataset.

Both carry a ``blockseg`` mark (TIFF ``Info``, HDF5 file attribute), so a later ``--overwrite``
knows the file is blockseg's; the output goes through :mod:`blockseg.io.safety` (never an input,
replaced new-then-swap).

The export is written slab by slab along z (:func:`output_slabs`): each slab reads only the
source planes it needs, is downsampled and appended to the file (tifffile writes pages from an
iterator, h5py writes into a chunked dataset), so memory is bounded by ``slab_bytes`` (default
256 MiB), not by the size of the volume. Integer volumes that ImageJ cannot hold as they are
(e.g. uint32 labels) take one extra read pass to find their range first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..errors import BlocksegError
from ..zyx import zyx
from .volume import open_volume
from .safety import mark_text, prepare_output, stamp_json

TIFF_SUFFIXES = (".tif", ".tiff")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: memory bound for one slab of the export (bytes of source data read at once)
SLAB_BYTES = 256 * 2**20


@dataclass
class ExportReport:
    """What :func:`export` wrote."""

    path: str
    shape: tuple[int, int, int]
    dtype: str
    voxel_size: tuple[float, float, float]
    region: tuple[tuple[int, int], ...]
    factor: tuple[int, int, int]
    note: str = ""


def parse_region(text: str | None, shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """``"z0:z1,y0:y1,x0:x1"`` (each bound optional, e.g. ``":,100:200,:"``) -> slices within ``shape``."""
    if text is None:
        return tuple(slice(0, s) for s in shape)  # type: ignore[return-value]
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise BlocksegError(f"--region takes z0:z1,y0:y1,x0:x1, got {text!r}")
    out = []
    for part, size, axis in zip(parts, shape, "zyx"):
        lo, sep, hi = part.partition(":")
        try:
            a = int(lo) if lo.strip() else 0
            b = int(hi) if hi.strip() else size
        except ValueError:
            raise BlocksegError(f"--region {axis}: {part!r} is not START:STOP") from None
        if not sep:
            raise BlocksegError(f"--region {axis}: {part!r} is not START:STOP")
        if not 0 <= a < b <= size:
            raise BlocksegError(f"--region {axis} {a}:{b} is outside the volume (0:{size}) or empty")
        out.append(slice(a, b))
    return tuple(out)  # type: ignore[return-value]


def downsample(data: np.ndarray, factor: Sequence[int], mode: str) -> np.ndarray:
    """Downsample by an integer ``factor`` per axis.

    ``stride``: every factor-th voxel (labels stay labels); ``mode``: the most frequent value
    of each window (ties: the smallest; labels); ``mean``: the window mean (images). Windows
    at the upper faces are cut to the volume (``stride``) or the volume is cropped to whole
    windows (``mode``, ``mean``).
    """
    f = tuple(int(v) for v in factor)
    if f == (1, 1, 1):
        return data
    if mode == "stride":
        return data[:: f[0], :: f[1], :: f[2]]
    n = tuple(s // k for s, k in zip(data.shape, f))
    if min(n) == 0:
        raise BlocksegError(f"downsampling factor {f} is larger than the region {data.shape}")
    crop = data[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    win = crop.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).transpose(0, 2, 4, 1, 3, 5).reshape(*n, -1)
    if mode == "mean":
        return win.mean(axis=-1, dtype=np.float64).astype(np.float32 if data.dtype.kind == "f" else data.dtype)
    if mode == "mode":
        s = np.sort(win, axis=-1)
        k = s.shape[-1]
        change = np.ones(s.shape, bool)
        change[..., 1:] = s[..., 1:] != s[..., :-1]
        # run length ending at each position: index minus the start of its run
        idx = np.broadcast_to(np.arange(k), s.shape)
        start = np.maximum.accumulate(np.where(change, idx, 0), axis=-1)
        length = idx - start + 1
        best = np.argmax(length, axis=-1)  # first (smallest value) longest run
        return np.take_along_axis(s, best[..., None], axis=-1)[..., 0]
    raise BlocksegError(f"downsampling mode must be stride, mode or mean, got {mode!r}")


def export(
    source: str | os.PathLike,
    out: str | os.PathLike,
    region: str | Sequence[slice] | None = None,
    factor: int | Sequence[int] = 1,
    mode: str | None = None,
    overwrite: bool = False,
    slab_bytes: int = SLAB_BYTES,
) -> ExportReport:
    """Write ``source`` (a region of it, downsampled by ``factor``) to ``out`` (.tif or .h5).

    Parameters
    ----------
    source : path-like
        A blockseg volume (labels or image).
    out : path-like
        ``*.tif`` / ``*.tiff`` (ImageJ) or ``*.h5`` / ``*.hdf5`` (dataset ``main``).
    region : str or tuple of slices, optional
        ``"z0:z1,y0:y1,x0:x1"`` in voxels of ``source`` (default: everything).
    factor : int or sequence of int
        Downsampling factor per axis (1 = full resolution). The voxel size written is the
        source's times the factor.
    mode : {"stride", "mode", "mean"}, optional
        How to downsample (default: ``stride`` for integer volumes, ``mean`` for floats).
    overwrite : bool
        Replace an earlier export of blockseg's at ``out``.
    slab_bytes : int
        Source bytes read at once (the memory bound); the export goes slab by slab along z.
    """

    source, out = str(source), str(out)
    vol = open_volume(source)
    output = prepare_output(out, [source], overwrite, what="export file")
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in TIFF_SUFFIXES + H5_SUFFIXES:
        raise BlocksegError(f"{out}: export writes .tif/.tiff or .h5/.hdf5, not {suffix or '(no suffix)'}")
    box = parse_region(region, vol.shape) if region is None or isinstance(region, str) else tuple(region)
    f = zyx(factor, "downsampling factor", at_least=1)
    mode = mode or ("mean" if vol.dtype.kind == "f" else "stride")
    if mode not in ("stride", "mode", "mean"):
        raise BlocksegError(f"downsampling mode must be stride, mode or mean, got {mode!r}")
    shape = output_shape(box, f, mode)
    if min(shape) == 0:
        raise BlocksegError(f"downsampling factor {f} is larger than the region {tuple(s.stop - s.start for s in box)}")
    vs = tuple(v * k for v, k in zip(vol.voxel_size, f))
    note, dtype = "", np.dtype(vol.dtype if mode != "mean" else (np.float32 if vol.dtype.kind == "f" else vol.dtype))
    info = {"source": source, "region": [[s.start, s.stop] for s in box], "factor": list(f), "mode": mode,
            "voxel_size_um": list(vs)}  # fmt: skip

    def slabs() -> Iterator[tuple[int, np.ndarray]]:
        return output_slabs(vol.array, box, f, mode, slab_bytes)

    with output.writing() as target:
        if suffix in TIFF_SUFFIXES:
            dtype, note = _imagej_dtype(dtype, slabs)
            import tifffile

            def planes():
                for _, slab in slabs():
                    yield from slab.astype(dtype, copy=False)

            tifffile.imwrite(
                target, planes(), shape=shape, dtype=dtype, imagej=True, resolution=(1.0 / vs[2], 1.0 / vs[1]),
                metadata={"spacing": vs[0], "unit": "micron", "axes": "ZYX", "Info": mark_text(info)},
            )  # fmt: skip
        else:
            import h5py

            with h5py.File(target, "w") as h5:
                chunks = tuple(min(64, n) for n in shape)
                ds = h5.create_dataset("main", shape=shape, dtype=dtype, chunks=chunks, compression="gzip")
                for z0, slab in slabs():
                    ds[z0 : z0 + slab.shape[0]] = slab
                ds.attrs["element_size_um"] = np.asarray(vs, dtype=np.float64)
                h5.attrs["blockseg"] = json.dumps(stamp_json(info))
    return ExportReport(out, shape, str(dtype), vs, tuple((s.start, s.stop) for s in box), f, note)  # type: ignore[arg-type]


def output_shape(box: Sequence[slice], factor: Sequence[int], mode: str) -> tuple[int, int, int]:
    """Shape of ``box`` downsampled by ``factor``: every window (``stride``) or whole windows only."""
    sizes = [s.stop - s.start for s in box]
    if mode == "stride":
        return tuple(-(-n // k) for n, k in zip(sizes, factor))  # type: ignore[return-value]
    return tuple(n // k for n, k in zip(sizes, factor))  # type: ignore[return-value]


def output_slabs(array, box: Sequence[slice], factor: Sequence[int], mode: str,
                 slab_bytes: int = SLAB_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """The export of ``array[box]`` downsampled by ``factor``, as ``(z0, slab)`` along z.

    Each slab holds as many output planes as fit in ``slab_bytes`` of source data (at least
    one): the source planes they need are read (every factor-th plane for ``stride``, whole
    windows otherwise), downsampled with :func:`downsample` and yielded with the index of their
    first output plane. Windows never straddle two slabs, so the slabs together equal the
    downsampled region.
    """
    f = tuple(int(k) for k in factor)
    nz = output_shape(box, f, mode)[0]
    zb, yb, xb = box
    if mode == "stride":
        plane = len(range(yb.start, yb.stop, f[1])) * len(range(xb.start, xb.stop, f[2]))
        src_planes = 1
    else:
        plane = (yb.stop - yb.start) // f[1] * f[1] * ((xb.stop - xb.start) // f[2] * f[2])
        src_planes = f[0]
    per_out = max(1, plane * src_planes * np.dtype(array.dtype).itemsize)
    m = max(1, int(slab_bytes) // per_out)
    cz = int(getattr(array, "chunks", (1,))[0])
    per_chunk = max(1, -(-cz // f[0]))  # output planes that one source chunk row feeds
    if m >= per_chunk:  # whole chunk rows per slab: no chunk is decoded twice (when aligned)
        m = m // per_chunk * per_chunk
    for z0 in range(0, nz, m):
        z1 = min(nz, z0 + m)
        if mode == "stride":
            sel = (slice(zb.start + z0 * f[0], zb.start + (z1 - 1) * f[0] + 1, f[0]),
                   slice(yb.start, yb.stop, f[1]), slice(xb.start, xb.stop, f[2]))  # fmt: skip
            yield z0, np.asarray(array[sel])
        else:
            sel = (slice(zb.start + z0 * f[0], zb.start + z1 * f[0]), yb, xb)
            yield z0, downsample(np.asarray(array[sel]), f, mode)


def _imagej_dtype(dtype: np.dtype, slabs) -> tuple[np.dtype, str]:
    """The dtype an ImageJ TIFF holds ``dtype`` in (uint8, uint16 or float32), exactly, or refuse.

    Other integer types need the range of the values: ``slabs()`` (an iterator factory of
    ``(z0, slab)``) is read once to find it.
    """
    dtype = np.dtype(dtype)
    if dtype in (np.uint8, np.uint16, np.float32):
        return dtype, ""
    if dtype.kind == "b":
        return np.dtype(np.uint8), ""
    if dtype.kind == "f":
        return np.dtype(np.float32), f"stored as float32 (ImageJ has no {dtype})"
    lo, hi = 0, 0
    for _, slab in slabs():
        if slab.size:
            lo, hi = min(lo, int(slab.min())), max(hi, int(slab.max()))
    if lo >= 0 and hi <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16), ""
    if lo > -(2**24) and hi < 2**24:
        return np.dtype(np.float32), f"values up to {hi} stored as float32 (exact; ImageJ has no 32-bit integers)"
    raise BlocksegError(f"values up to {hi} do not fit an ImageJ TIFF exactly; export to .h5 instead")
