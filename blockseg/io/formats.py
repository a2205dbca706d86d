"""Reading volumes as the field stores them: one (z, y, x) view, its voxel size in µm, and where
that size came from.

Every command reads its inputs through :func:`blockseg.io.volume.open_volume`, which calls
:func:`open_source` here. Formats:

- **OME-Zarr** NGFF 0.4 (zarr v2, e.g. written by ome-zarr-py) and 0.5 (zarr v3): any level of
  the pyramid, channel and time axes chosen by index. The metadata is parsed and validated by
  ``ome-zarr-models``; metadata that does not validate is read leniently, with a warning.
- **plain zarr arrays** (v2 or v3): axes from ``dimension_names`` / ``_ARRAY_DIMENSIONS``, voxel
  size from a ``voxel_size_um`` attribute.
- **TIFF** through tifffile: OME-TIFF (axes, pyramid levels and ``PhysicalSize*`` from the
  OME-XML), ImageJ hyperstacks (``spacing`` and the resolution tags), plain multi-page TIFF.
  Read lazily, page by page, through tifffile's zarr store.
- **HDF5** (``element_size_um``), **npy** (memory-mapped) and **npz** (loaded whole).

N5 is not readable (zarr-python 3 has no N5 store): one line says to convert it. A level /
channel / timepoint can ride on the path as a fragment, ``img.zarr#level=1&channel=0``, so every
input (and the tasks that reopen it on workers) is one string (``docs/guide/formats.md``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import BlocksegError, warn
from .chunks import check_complete
from .safety import owned_kind, resolve, zarr_root
from .storage import has_scheme
from .access import bad_metadata, storage_failure

#: length units of NGFF axes (and OME-XML) in micrometres
UNIT_UM = {
    "angstrom": 1e-4, "Å": 1e-4, "nanometer": 1e-3, "nm": 1e-3, "micrometer": 1.0, "micron": 1.0, "um": 1.0,
    "µm": 1.0, "\u03bcm": 1.0, "\\u00B5m": 1.0, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4,
    "meter": 1e6, "m": 1e6,
}  # fmt: skip

#: suffixes read as files (everything else is opened as zarr)
FILE_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".hdf")
#: chunks reported for sources without chunking of their own (npy, npz, contiguous h5)
VIRTUAL_CHUNKS = (64, 128, 128)


# ----------------------------------------------------------------------------- a (z, y, x) view
class SelectedArray:
    """A 3-D (z, y, x) view of an N-D array with the other axes fixed at one index each.

    Reads go straight to the underlying (lazy) array; nothing is loaded until indexed.
    """

    def __init__(self, base, fixed: dict[int, int], spatial: tuple[int, int, int], chunks=None):
        self.base = base
        self.fixed = dict(fixed)
        self.spatial = tuple(spatial)
        bshape = tuple(base.shape)
        self.shape = tuple(int(bshape[i]) for i in self.spatial)
        self.dtype = np.dtype(base.dtype)
        self.ndim = 3
        if chunks is None:
            bchunks = getattr(base, "chunks", None)
            chunks = tuple(bchunks[i] for i in self.spatial) if bchunks else VIRTUAL_CHUNKS
        self.chunks = tuple(min(int(c), s) for c, s in zip(chunks, self.shape))
        bshards = getattr(base, "shards", None)
        self.shards = tuple(bshards[i] for i in self.spatial) if bshards else None
        self.attrs = getattr(base, "attrs", {})

    def _key(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (3 - len(key))
        full: list[Any] = [slice(None)] * len(self.base.shape)
        for pos, idx in self.fixed.items():
            full[pos] = idx
        for pos, k in zip(self.spatial, key):
            full[pos] = k
        return tuple(full)

    def __getitem__(self, key):
        return np.asarray(self.base[self._key(key)])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out

    def __len__(self) -> int:
        return self.shape[0]


def select_axes(array, axes: str, channel: int | None, timepoint: int | None, path: str, chunks=None):
    """A (z, y, x) view of ``array`` whose axes are the letters ``axes`` (t, c, z, y, x).

    Channel / time axes of length 1 are dropped; longer ones need ``channel`` / ``timepoint``
    (a one-line error names the option otherwise). Returns ``(view, selection)``.
    """
    axes = axes.lower()
    if len(axes) != len(array.shape):
        raise BlocksegError(f"{path}: {len(array.shape)} axes of shape {tuple(array.shape)} but axis names {axes!r}")
    unknown = sorted(set(axes) - set("tczyx"))
    if unknown or len(set(axes)) != len(axes):
        raise BlocksegError(f"{path}: axes {axes!r} (blockseg reads t, c, z, y, x)")
    if "z" not in axes:
        raise BlocksegError(f"{path}: a 2-D image (axes {axes!r}); blockseg segments 3-D (z, y, x) volumes")
    spatial = tuple(axes.index(a) for a in "zyx")
    if list(spatial) != sorted(spatial):
        raise BlocksegError(f"{path}: spatial axes in the order {''.join(a for a in axes if a in 'zyx')!r}; blockseg needs z, y, x")
    fixed: dict[int, int] = {}
    selection: dict[str, int] = {}
    for letter, value, option, what in (("c", channel, "--channel", "channels"), ("t", timepoint, "--timepoint", "timepoints")):
        if letter not in axes:
            if value not in (None, 0):
                raise BlocksegError(f"{path}: no {'channel' if letter == 'c' else 'time'} axis (axes {axes!r}); drop {option}")
            continue
        pos = axes.index(letter)
        n = int(array.shape[pos])
        if value is None:
            if n > 1:
                raise BlocksegError(f"{path}: {n} {what} (axes {axes!r}); choose one with {option} 0..{n - 1} "
                                    f"(or name the axes with --axes if that axis holds no {what})")  # fmt: skip
            value = 0
        if not 0 <= value < n:
            raise BlocksegError(f"{path}: {option} {value} out of range (0..{n - 1})")
        fixed[pos] = int(value)
        selection["channel" if letter == "c" else "timepoint"] = int(value)
    if not fixed and axes == "zyx" and chunks is None:
        return array, selection
    return SelectedArray(array, fixed, spatial, chunks), selection


def default_axes(ndim: int) -> str | None:
    """The axes blockseg assumes for an array of ``ndim`` axes that names none: (c,) z, y, x."""
    return {3: "zyx", 4: "czyx", 5: "tczyx"}.get(ndim)


def given_axes(path: str, found: str | None, given: str | None, known: bool, shape=None) -> str:
    """The axes to read ``path`` with: ``given`` (``--axes``) where the file names none (``known``
    False: ``found`` is only the default for its number of axes), else the file's own ``found``.

    Raises
    ------
    BlocksegError
        When the file names its axes and ``given`` differs, or no axes are known for it.
    """
    if given:
        given = given.lower()
        if known and found and given != found:
            raise BlocksegError(f"{path}: its metadata names the axes {found!r}; --axes {given!r} disagrees (drop --axes)")
        return given
    if found is None:
        got = f"shape {tuple(shape)}" if shape is not None else "another number of axes"
        raise BlocksegError(f"{path}: expected a 3D (z, y, x) volume, got {got}; name its axes with --axes (letters of t c z y x)")
    return found


# ----------------------------------------------------------------------------- what was read
@dataclass
class Source:
    """A (z, y, x) array-like with its voxel size and what blockseg read to get it."""

    array: Any
    voxel_size: tuple[float, float, float] | None  # None: the file says nothing
    format: str
    selection: dict[str, Any] = field(default_factory=dict)
    #: shapes of every pyramid level (z, y, x), or a function returning them (read on demand)
    levels: Any = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _unit_um(unit: str | None, path: str) -> float | None:
    if unit is None:
        return None
    if unit not in UNIT_UM:
        raise BlocksegError(f"{path}: axis unit {unit!r} is not a length blockseg knows ({', '.join(sorted(set(UNIT_UM)))})")
    return UNIT_UM[unit]


def _is_n5(path: str) -> bool:
    return not has_scheme(path) and os.path.isfile(os.path.join(path, "attributes.json")) and not any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zarray")
    )


def open_source(
    path: str,
    mode: str = "r",
    storage_options: dict | None = None,
    level: int | None = None,
    channel: int | None = None,
    timepoint: int | None = None,
    key: str | None = None,
    axes: str | None = None,
) -> Source:
    """Open any supported volume as a (z, y, x) :class:`Source` (see the module docstring).

    ``axes`` names the axes (letters of t, c, z, y, x) of an array without axis metadata (a plain
    zarr array, HDF5, npy / npz, a TIFF whose axes tifffile could not tell); where the file names
    them, a different ``axes`` is refused.
    """
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in FILE_SUFFIXES:
        if mode != "r":
            raise BlocksegError(f"{path}: {suffix} files are read-only inputs for blockseg")
        try:
            if suffix in (".tif", ".tiff"):
                with _tifffile_log_as_warnings(path):
                    return _open_tiff(path, level, channel, timepoint, axes)
            if level not in (None, 0):
                raise BlocksegError(f"{path}: a {suffix} file has no pyramid levels; drop --level")
            if suffix in (".h5", ".hdf5", ".hdf"):
                return _open_h5(path, key, channel, timepoint, axes)
            return _open_numpy(path, key, channel, timepoint, axes)
        except (BlocksegError, MemoryError):
            raise
        except Exception as exc:  # a damaged or foreign file: its header or metadata does not parse
            if "allow_pickle" in str(exc) or "Python objects" in str(exc):
                raise BlocksegError(f"{path}: holds Python objects (a pickle), which blockseg never loads: they could run code") from None
            raise BlocksegError(f"{path}: not a readable {suffix} file ({_first_line(exc)})") from None
    if not has_scheme(path) and os.path.isfile(path):
        raise BlocksegError(
            f"{path}: not a zarr array or group but a file of unsupported format {suffix or '(none)'}; "
            f"use OME-Zarr / zarr, {', '.join(FILE_SUFFIXES)}"
        )
    if _is_n5(path):
        raise BlocksegError(
            f"{path}: an N5 container; zarr-python 3 has no N5 reader, convert it to zarr first "
            "(e.g. with BigDataViewer/Fiji's N5 export or tensorstore)"
        )
    return _open_zarr(path, mode, storage_options, level, channel, timepoint, axes)


# ----------------------------------------------------------------------------- zarr / OME-Zarr
def _open_zarr(path, mode, storage_options, level, channel, timepoint, axes=None) -> Source:
    try:
        node = zarr.open(path, mode=mode, storage_options=storage_options)
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise BlocksegError(_unopenable(path, exc, storage_options, "not a zarr array or group")) from None
    if isinstance(node, zarr.Array):
        if level not in (None, 0):
            raise BlocksegError(f"{path}: a plain zarr array has no pyramid levels; drop --level")
        names = getattr(node.metadata, "dimension_names", None) or node.attrs.get("_ARRAY_DIMENSIONS")
        if names and all(isinstance(n, str) and n for n in names):
            found = "".join(n.lower()[0] for n in names) if all(len(n) == 1 for n in names) else None
            if found is None:
                raise BlocksegError(f"{path}: dimension names {list(names)}; blockseg reads t, c, z, y, x")
            view, sel = select_axes(node, given_axes(path, found, axes, known=True), channel, timepoint, path)
        else:
            view, sel = select_axes(node, given_axes(path, default_axes(node.ndim), axes, False, node.shape), channel, timepoint, path)
        if axes:
            sel["axes"] = axes.lower()
        if mode == "r":
            _check_chunks(node, view, path, dict(node.attrs))
        vs = node.attrs.get("voxel_size_um")
        return Source(view, None if vs is None else tuple(vs), f"zarr v{node.metadata.zarr_format} array", sel, [view.shape])
    try:
        source = _open_ome_group(node, path, level, channel, timepoint, axes)
    except BlocksegError:
        raise
    except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:  # metadata of the wrong shape
        raise BlocksegError(f"{path}: OME-Zarr metadata is malformed ({_first_line(exc)})") from None
    if mode == "r":
        view = source.array
        _check_chunks(getattr(view, "base", view), view, path, node.attrs.asdict() if hasattr(node.attrs, "asdict") else dict(node.attrs))
    return source


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _unopenable(path: str, exc: BaseException, storage_options: dict | None, what: str) -> str:
    """One line for a zarr node that would not open: storage refused, metadata damaged, or ``what``."""

    return storage_failure(exc, path) or bad_metadata(path, storage_options) or f"{path}: {what} ({_first_line(exc)})"


def _open_level(group, path: str, name) -> Any:
    """The array of one pyramid level, or one line saying why it does not open."""
    try:
        return group[name]
    except KeyError:
        raise BlocksegError(f"{path}: multiscale level {name!r} is missing") from None
    except Exception as exc:
        level = f"{path.rstrip('/')}/{name}"
        raise BlocksegError(_unopenable(level, exc, None, f"multiscale level {name!r} does not open as a zarr array")) from None


def _check_chunks(array, view, path: str, attrs: dict) -> None:
    """Missing chunks of a zarr input: refused or reported (:mod:`blockseg.io.chunks`)."""
    def owned() -> bool:
        where = resolve(path)
        return any(owned_kind(p) == "zarr" for p in {where, zarr_root(where)})

    check_complete(array, path, fixed=getattr(view, "fixed", None), attrs=attrs, owned=owned)


def _multiscale(group, path: str) -> tuple[dict, str, list[str]]:
    """The first multiscale as a plain dict, the NGFF version, and notes (validation problems).

    The metadata is validated by ome-zarr-models' ``Multiscale`` model of its version (0.4 or
    0.5) from the attributes alone (no array is opened: workers reopen volumes per task).
    """
    notes: list[str] = []
    attrs = group.attrs.asdict() if hasattr(group.attrs, "asdict") else dict(group.attrs)
    inner = attrs.get("ome", attrs)
    ms = inner.get("multiscales") if isinstance(inner, dict) else None
    if not ms:
        members = sorted(group.array_keys()) + sorted(f"{g}/" for g in group.group_keys())
        hint = f"; it holds {', '.join(members[:8])}: pass PATH/NAME of one" if members else ""
        raise BlocksegError(f"{path}: a zarr group but not an OME-Zarr image (no multiscales metadata){hint}")
    version = str(inner.get("version") or ms[0].get("version") or "0.4")
    try:
        if version.startswith("0.5"):
            from ome_zarr_models.v05.multiscales import Multiscale
        else:
            from ome_zarr_models.v04.multiscales import Multiscale
        return Multiscale.model_validate(ms[0]).model_dump(exclude_none=True, by_alias=True), version, notes
    except ImportError:  # pragma: no cover - a declared dependency
        return ms[0], version, notes
    except Exception as exc:  # not valid NGFF: read what is there, and say so
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = "; ".join(lines[1:3])[:160] if len(lines) > 1 else type(exc).__name__
        notes.append(f"multiscales metadata does not validate as OME-Zarr {version} ({reason}); read leniently")
        return ms[0], version, notes


def _scale_of(transforms) -> list[float] | None:
    for t in transforms or []:
        if t.get("type") == "scale" and t.get("scale") is not None:
            return [float(v) for v in t["scale"]]
    return None


def _open_ome_group(group, path: str, level, channel, timepoint, given=None) -> Source:
    ms, version, notes = _multiscale(group, path)
    raw_axes = ms.get("axes") or ["z", "y", "x"]
    axes = [a if isinstance(a, dict) else {"name": a} for a in raw_axes]
    names = "".join(str(a.get("name", "?")).lower()[:1] if len(str(a.get("name", ""))) == 1 else "?" for a in axes)
    datasets = ms.get("datasets") or []
    if not datasets:
        raise BlocksegError(f"{path}: OME-Zarr multiscales without datasets")
    lvl = 0 if level is None else int(level)
    if not 0 <= lvl < len(datasets):
        raise BlocksegError(f"{path}: --level {lvl} out of range (the pyramid has levels 0..{len(datasets) - 1})")
    ds = datasets[lvl]
    array = _open_level(group, path, ds["path"])
    if "?" in names:
        raise BlocksegError(f"{path}: axes {[a.get('name') for a in axes]}; blockseg reads t, c, z, y, x")
    view, sel = select_axes(array, given_axes(path, names, given, known=True), channel, timepoint, path)
    sel["level"] = lvl
    scale = _scale_of(ds.get("coordinateTransformations"))
    outer = _scale_of(ms.get("coordinateTransformations"))
    if scale is not None and outer is not None:
        scale = [a * b for a, b in zip(scale, outer)]
    voxel_size = None
    if scale is not None:
        spatial = [names.index(a) for a in "zyx"]
        factors = [_unit_um(axes[i].get("unit"), path) for i in spatial]
        if all(f is not None for f in factors):
            voxel_size = tuple(scale[i] * f for i, f in zip(spatial, factors))  # type: ignore[operator]
        else:
            voxel_size = tuple(scale[i] for i in spatial)
            notes.append("axes have no unit: scale read as µm")
    def levels() -> list[tuple[int, ...]]:  # opened only when asked for (info), not per task
        shapes = []
        for d in datasets:
            shp = _open_level(group, path, d["path"]).shape
            shapes.append(tuple(int(shp[names.index(a)]) for a in "zyx"))
        return shapes

    return Source(view, voxel_size, f"OME-Zarr {version}", sel, levels, notes)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- TIFF
class _tifffile_log_as_warnings:
    """tifffile logs what it finds wrong in a file (``invalid offset to first page``) on stderr:
    while a TIFF is opened, such records become one-line warnings if it opens, and are dropped if
    it does not (the error line says why)."""

    def __init__(self, path: str):
        self.path, self.logger, self.records = path, logging.getLogger("tifffile"), []

    def filter(self, record) -> bool:
        self.records.append(record.getMessage())
        return False

    def __enter__(self):
        self.logger.addFilter(self)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.logger.removeFilter(self)
        if kind is None:
            for message in self.records:
                warn(f"{self.path}: tifffile: {' '.join(message.split())[:200]}")
        return False


def _open_tiff(path, level, channel, timepoint, given=None) -> Source:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise BlocksegError(f"{path}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    series = tif.series[0]
    lvl = 0 if level is None else int(level)
    if not 0 <= lvl < len(series.levels):
        raise BlocksegError(f"{path}: --level {lvl} out of range (the file has levels 0..{len(series.levels) - 1})")
    guessed = any(a in series.axes.upper() for a in "QI")  # tifffile could not tell these axes
    axes = series.axes.upper().replace("S", "C").replace("Q", "Z").replace("I", "Z")
    if given:
        axes = given_axes(path, axes.lower(), given, known=not guessed).upper()
    elif axes.count("Z") > 1:
        raise BlocksegError(f"{path}: TIFF axes {series.axes!r} are ambiguous; name them with --axes (e.g. --axes zcyx)")
    array = zarr.open(series.aszarr(level=lvl), mode="r")
    if len(axes) == 3 and axes != "ZYX" and set(axes) == set("ZYX"):
        raise BlocksegError(f"{path}: TIFF axes {series.axes!r}; blockseg needs z, y, x")
    view, sel = select_axes(array, axes.lower(), channel, timepoint, path, chunks=VIRTUAL_CHUNKS)
    sel["level"] = lvl
    if given:
        sel["axes"] = given.lower()
    vs, fmt = None, "TIFF"
    if tif.is_ome:
        fmt = "OME-TIFF"
        vs = _ome_tiff_voxel_size(tif, path)
        if vs is not None and lvl:
            base, this = series.levels[0].shape, series.levels[lvl].shape
            f = [base[axes.index(a)] / this[axes.index(a)] for a in "ZYX"]
            vs = tuple(v * k for v, k in zip(vs, f))
    elif tif.is_imagej:
        fmt = "ImageJ TIFF"
        vs = tiff_imagej_voxel_size(tif)
    levels = [tuple(int(lv.shape[axes.index(a)]) for a in "ZYX") for lv in series.levels]
    return Source(view, vs, fmt, sel, levels)


def _ome_tiff_voxel_size(tif, path) -> tuple[float, float, float] | None:
    import tifffile

    try:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    except Exception:
        return None
    out = []
    for a in "ZYX":
        size = pixels.get(f"PhysicalSize{a}")
        if size is None:
            return None
        out.append(float(size) * _unit_um(pixels.get(f"PhysicalSize{a}Unit", "µm"), path))  # type: ignore[operator]
    return tuple(out)  # type: ignore[return-value]


def tiff_imagej_voxel_size(tif) -> tuple[float, float, float] | None:
    """Voxel size from ImageJ hyperstack metadata (spacing + XResolution), when present."""
    ij = tif.imagej_metadata or {}
    try:
        page = tif.pages[0]
        xres = page.tags["XResolution"].value
        yres = page.tags["YResolution"].value
        vx, vy = xres[1] / xres[0], yres[1] / yres[0]
        vz = float(ij.get("spacing", 1.0))
    except (KeyError, ZeroDivisionError, IndexError, TypeError):
        return None
    if ij.get("unit", "micron") not in ("micron", "um", "µm", "\\u00B5m"):
        return None
    return (vz, vy, vx)


# ----------------------------------------------------------------------------- HDF5, numpy
def _open_h5(path, key, channel, timepoint, given=None) -> Source:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise BlocksegError(f"{path}: not a readable HDF5 file ({exc})") from None
    datasets: list[str] = []
    f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) and o.ndim in (3, 4, 5) else None)
    if key is None:
        key = datasets[0] if len(datasets) == 1 else None
    if key is None:
        f.close()
        raise BlocksegError(f"{path}: holds datasets {datasets}; choose one with --key (or PATH#key=NAME)")
    if key not in f:
        f.close()
        raise BlocksegError(f"{path}: no dataset {key!r} (has {datasets})")
    ds = f[key]
    axes = given_axes(path, default_axes(ds.ndim), given, False, ds.shape)
    vs = None
    for attr in ("element_size_um", "voxel_size_um", "resolution"):
        if attr in ds.attrs:
            vs = tuple(float(v) for v in np.ravel(ds.attrs[attr]))[-3:]
            break
    chunks = tuple(ds.chunks[-3:]) if ds.chunks else VIRTUAL_CHUNKS
    view, sel = select_axes(ds, axes, channel, timepoint, path, chunks=chunks)
    sel["key"] = key
    if given:
        sel["axes"] = given.lower()
    return Source(view, vs, "HDF5", sel, [view.shape])


def _open_numpy(path, key, channel, timepoint, given=None) -> Source:
    if path.lower().endswith(".npy"):
        data = np.load(path, mmap_mode="r")
        vs, fmt, sel0 = None, "npy", {}
    else:
        with np.load(path, allow_pickle=False) as npz:
            arrays = [k for k in npz.files if npz[k].ndim in (3, 4, 5)]
            if key is None:
                key = "image" if "image" in npz.files else (arrays[0] if len(arrays) == 1 else None)
            if key is None:
                raise BlocksegError(f"{path}: holds several arrays {arrays}; choose one with --key (or PATH#key=NAME)")
            if key not in npz.files:
                raise BlocksegError(f"{path}: no array {key!r} (has {npz.files})")
            data = npz[key]
            vs = tuple(float(v) for v in npz["voxel_size_zyx"]) if "voxel_size_zyx" in npz.files else None
        fmt, sel0 = "npz", {"key": key}
    axes = given_axes(path, default_axes(data.ndim), given, False, data.shape)
    view, sel = select_axes(data, axes, channel, timepoint, path, chunks=VIRTUAL_CHUNKS)
    return Source(view, vs, fmt, {**sel0, **sel, **({"axes": given.lower()} if given else {})}, [view.shape])
