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
knows the file is blockseg's; the output goes through :mod:`blockseg.safety` (never an input,
replaced new-then-swap). The exported array is built in memory: export a region or a level
that fits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import BlocksegError
from .io import open_volume

TIFF_SUFFIXES = (".tif", ".tiff")
H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
#: refuse exports larger than this in memory (bytes) unless ``max_bytes`` says otherwise
MAX_BYTES = 8 * 2**30


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
    max_bytes: int = MAX_BYTES,
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
    max_bytes : int
        Refuse an export whose array is larger (it is built in memory).
    """
    from .safety import mark_text, prepare_output, stamp_json

    source, out = str(source), str(out)
    vol = open_volume(source)
    output = prepare_output(out, [source], overwrite, what="export file")
    suffix = os.path.splitext(out)[1].lower()
    if suffix not in TIFF_SUFFIXES + H5_SUFFIXES:
        raise BlocksegError(f"{out}: export writes .tif/.tiff or .h5/.hdf5, not {suffix or '(no suffix)'}")
    box = parse_region(region, vol.shape) if region is None or isinstance(region, str) else tuple(region)
    f = (int(factor),) * 3 if np.isscalar(factor) else tuple(int(v) for v in factor)  # type: ignore[arg-type]
    if len(f) != 3 or min(f) < 1:
        raise BlocksegError(f"downsampling factor must be one or three positive integers, got {factor!r}")
    mode = mode or ("mean" if vol.dtype.kind == "f" else "stride")
    if mode not in ("stride", "mode", "mean"):
        raise BlocksegError(f"downsampling mode must be stride, mode or mean, got {mode!r}")
    n_bytes = int(np.prod([s.stop - s.start for s in box])) * vol.dtype.itemsize
    if n_bytes > max_bytes:
        raise BlocksegError(
            f"the region is {n_bytes / 2**30:.1f} GiB, more than {max_bytes / 2**30:.1f} GiB in memory; "
            "export a smaller --region or a downsampled level"
        )
    step = f if mode == "stride" else (1, 1, 1)
    data = np.asarray(vol.array[tuple(slice(s.start, s.stop, k) for s, k in zip(box, step))])
    if mode != "stride":
        data = downsample(data, f, mode)
    vs = tuple(v * k for v, k in zip(vol.voxel_size, f))
    note = ""
    info = {"source": source, "region": [[s.start, s.stop] for s in box], "factor": list(f), "mode": mode,
            "voxel_size_um": list(vs)}  # fmt: skip
    with output.writing() as target:
        if suffix in TIFF_SUFFIXES:
            data, note = _imagej_dtype(data)
            import tifffile

            tifffile.imwrite(
                target, data, imagej=True, resolution=(1.0 / vs[2], 1.0 / vs[1]),
                metadata={"spacing": vs[0], "unit": "micron", "axes": "ZYX", "Info": mark_text(info)},
            )  # fmt: skip
        else:
            import json

            import h5py

            with h5py.File(target, "w") as h5:
                chunks = tuple(min(64, s) for s in data.shape)
                ds = h5.create_dataset("main", data=data, chunks=chunks, compression="gzip")
                ds.attrs["element_size_um"] = np.asarray(vs, dtype=np.float64)
                h5.attrs["blockseg"] = json.dumps(stamp_json(info))
    return ExportReport(out, tuple(data.shape), str(data.dtype), vs, tuple((s.start, s.stop) for s in box), f, note)  # type: ignore[arg-type]


def _imagej_dtype(data: np.ndarray) -> tuple[np.ndarray, str]:
    """ImageJ holds uint8, uint16 and float32: convert exactly, or refuse."""
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data, ""
    if data.dtype.kind == "b":
        return data.astype(np.uint8), ""
    if data.dtype.kind == "f":
        return data.astype(np.float32), f"stored as float32 (ImageJ has no {data.dtype})"
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo >= 0 and hi <= np.iinfo(np.uint16).max:
        return data.astype(np.uint16), ""
    if lo > -(2**24) and hi < 2**24:
        return data.astype(np.float32), f"values up to {hi} stored as float32 (exact; ImageJ has no 32-bit integers)"
    raise BlocksegError(f"values up to {hi} do not fit an ImageJ TIFF exactly; export to .h5 instead")
