"""Volumes on disk: OME-Zarr (NGFF 0.5, zarr v3) with axes (z, y, x) and voxel size in µm.

A blockseg *volume* is an NGFF multiscale image group whose level ``0`` holds the data::

    cells.zarr/                    <- image group   (attributes: ome.multiscales)
    cells.zarr/0                   <- the (z, y, x) array
    cells.zarr/labels/nuclei/      <- a label image (attributes: ome.image-label, multiscales)
    cells.zarr/labels/nuclei/0

The voxel size travels in the multiscale ``coordinateTransformations`` (a ``scale``), so napari
and ome-zarr-py read it too. A plain zarr array is also accepted for reading; its voxel size
comes from a ``voxel_size_um`` attribute when present.

Paths may be local or any URL zarr understands through fsspec (``s3://``, ``gcs://``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from .errors import BlocksegError
from .grid import BlockGrid, write_unit
from .safety import install_chunk_errors

install_chunk_errors()  # a corrupt chunk reads as one line naming the array and chunk key

NGFF_VERSION = "0.5"
AXES = ("z", "y", "x")
#: chunk shape used when none is given: 64 slices of 128 x 128 (1 Mi voxels)
DEFAULT_CHUNKS = (64, 128, 128)


# ---------------------------------------------------------------------------- metadata
def parse_voxel_size(value: float | Sequence[float] | None) -> tuple[float, float, float]:
    """Voxel size in µm as ``(z, y, x)``; a single number means isotropic."""
    if value is None:
        return (1.0, 1.0, 1.0)
    if np.isscalar(value):
        value = (value,) * 3  # type: ignore[assignment]
    try:
        out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise BlocksegError(f"voxel size must be numbers in µm, got {value!r}") from None
    if len(out) != 3 or not all(np.isfinite(v) and v > 0 for v in out):
        raise BlocksegError(f"voxel size must be three positive numbers (z, y, x) in µm, got {value!r}")
    return out  # type: ignore[return-value]


def multiscales_metadata(voxel_size: Sequence[float], name: str = "") -> list[dict[str, Any]]:
    """NGFF ``multiscales`` for one (z, y, x) level at ``voxel_size`` µm."""
    return [
        {
            "name": name,
            "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in AXES],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(map(float, voxel_size))}]}
            ],
        }
    ]


def _level0(group: zarr.Group, path: str) -> tuple[zarr.Array, tuple[float, float, float]]:
    ome = group.attrs.get("ome", group.attrs)  # NGFF 0.5 nests under "ome"; 0.4 did not
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if not ms:
        raise BlocksegError(f"{path}: a zarr group but not an OME-Zarr image (no multiscales metadata)")
    dataset = ms[0]["datasets"][0]
    axes = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", AXES)]
    if [a.lower() for a in axes] != list(AXES):
        raise BlocksegError(f"{path}: axes are {axes}, blockseg expects (z, y, x)")
    scale = [1.0, 1.0, 1.0]
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = t["scale"]
    try:
        array = group[dataset["path"]]
    except KeyError:
        raise BlocksegError(f"{path}: multiscale level {dataset['path']!r} is missing") from None
    return array, parse_voxel_size(scale)


# ---------------------------------------------------------------------------- Volume
@dataclass
class Volume:
    """A (z, y, x) zarr array with its voxel size in µm.

    Attributes
    ----------
    array : zarr.Array
        The data (level 0 of an OME-Zarr image, or a plain array).
    voxel_size : tuple of float
        ``(z, y, x)`` voxel size in micrometres.
    path : str
        Where it was opened from.
    """

    array: zarr.Array
    voxel_size: tuple[float, float, float]
    path: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def write_unit(self) -> tuple[int, ...]:
        """Shards when sharded, else chunks: the unit one task writes alone."""
        return write_unit(self.array)

    @property
    def attrs(self):
        return self.array.attrs

    def __getitem__(self, key):
        return self.array[key]

    def __setitem__(self, key, value):
        self.array[key] = value

    def grid(self, block_shape: int | Sequence[int] | None = None, halo: int | Sequence[int] = 0) -> BlockGrid:
        """The :class:`BlockGrid` of this volume (blocks aligned to its write unit)."""
        return BlockGrid.for_array(self.array, block_shape, halo)

    def to_dask(self, block_shape: Sequence[int] | None = None):
        """A dask array over the data, one dask chunk per block (or per zarr chunk)."""
        import dask.array as da

        chunks = self.grid(block_shape).dask_chunks if block_shape is not None else self.chunks
        return da.from_zarr(self.array, chunks=chunks)

    def __repr__(self) -> str:
        vs = "x".join(f"{v:g}" for v in self.voxel_size)
        return f"Volume({self.path!r}, shape={self.shape}, dtype={self.dtype}, chunks={self.chunks}, voxel_size={vs} µm)"


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _check_exists(path: str) -> None:
    if not _is_url(path) and not os.path.exists(path):
        raise BlocksegError(f"{path}: no such file or directory")


def open_volume(path: str | os.PathLike, mode: str = "r", storage_options: dict | None = None) -> Volume:
    """Open a blockseg volume (OME-Zarr image group or plain zarr array).

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL.
    mode : {"r", "r+"}
        ``"r+"`` to write into an existing volume.
    storage_options : dict, optional
        Passed to fsspec for URLs.

    Raises
    ------
    BlocksegError
        If nothing is there, it is not zarr, not 3D, or has axes other than (z, y, x).
    """
    path = str(path)
    _check_exists(path)
    try:
        node = zarr.open(path, mode=mode, storage_options=storage_options)
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise BlocksegError(f"{path}: not a zarr array or group ({type(exc).__name__})") from None
    if isinstance(node, zarr.Group):
        array, voxel_size = _level0(node, path)
    else:
        array = node
        voxel_size = parse_voxel_size(node.attrs.get("voxel_size_um"))
    if array.ndim != 3:
        raise BlocksegError(f"{path}: expected a 3D (z, y, x) volume, got {array.ndim} axes of shape {array.shape}")
    return Volume(array, voxel_size, path)


def check_destination(
    path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()
) -> None:
    """Raise :class:`BlocksegError` unless an output can be created at ``path``.

    Call it before any work starts, so bad output paths fail fast and nothing is touched.
    The rules are :func:`blockseg.safety.prepare_output`'s: never an input, inside or around
    one; an existing output only with ``overwrite`` and only when blockseg wrote it.
    """
    from .safety import prepare_output

    prepare_output(path, inputs, overwrite)


def _prepare_destination(path: str, overwrite: bool) -> None:
    """Make room for a new output at ``path`` (low-level API: an own output is deleted in place;
    the commands replace outputs new-then-swap through :mod:`blockseg.safety` instead)."""
    from .safety import _remove, prepare_output

    out = prepare_output(path, (), overwrite)
    if out.action == "replace" or (out.action == "create" and not _is_url(path) and os.path.isdir(path)):
        _remove(path)


def create_volume(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    voxel_size: float | Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    fill_value: Any = 0,
    overwrite: bool = False,
    name: str = "",
    attributes: dict | None = None,
    storage_options: dict | None = None,
) -> Volume:
    """Create an empty OME-Zarr image volume (zarr v3) and return it open for writing.

    Parameters
    ----------
    path : str or path-like
        Where to create it. Must not exist unless ``overwrite``.
    shape : sequence of int
        ``(z, y, x)`` shape.
    dtype : dtype-like
        Data type of the voxels.
    voxel_size : float or sequence of float, optional
        ``(z, y, x)`` in µm (default 1 µm isotropic).
    chunks : sequence of int, optional
        Chunk shape (default :data:`DEFAULT_CHUNKS`, clipped to the volume).
    shards : sequence of int, optional
        Shard shape (a multiple of ``chunks``) for huge volumes: many chunks in one file.
        Blocks must then be whole shards.
    fill_value : scalar
        Value of never-written voxels.
    overwrite : bool
        Replace whatever is at ``path``.
    name : str
        Name recorded in the multiscales metadata.
    attributes : dict, optional
        Extra attributes stored on the group (under ``"blockseg"``).
    """
    path = str(path)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s <= 0 for s in shape):
        raise BlocksegError(f"volume shape must be three positive sizes (z, y, x), got {shape}")
    voxel_size = parse_voxel_size(voxel_size)
    chunks = tuple(min(int(c), s) for c, s in zip(chunks or DEFAULT_CHUNKS, shape))
    if len(chunks) != 3 or any(c <= 0 for c in chunks):
        raise BlocksegError(f"chunk shape must be three positive sizes, got {chunks}")
    if shards is not None:
        shards = tuple(int(s) for s in shards)
        if len(shards) != 3 or any(s <= 0 or s % c for s, c in zip(shards, chunks)):
            raise BlocksegError(f"shard shape {shards} must be a positive multiple of the chunk shape {chunks}")
    _prepare_destination(path, overwrite)
    group = zarr.open_group(path, mode="w" if overwrite else "w-", storage_options=storage_options)
    from .safety import stamp_json

    attrs: dict[str, Any] = {"ome": {"version": NGFF_VERSION, "multiscales": multiscales_metadata(voxel_size, name)}}
    attrs["blockseg"] = stamp_json(attributes)  # marks the volume as blockseg's (see blockseg.safety)
    group.attrs.update(attrs)
    array = group.create_array(
        "0",
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        fill_value=fill_value,
        dimension_names=AXES,
    )
    return Volume(array, voxel_size, path)


def create_label_volume(
    image_path: str | os.PathLike,
    name: str,
    shape: Sequence[int],
    dtype: Any = np.uint32,
    voxel_size: float | Sequence[float] | None = None,
    **kwargs,
) -> Volume:
    """Create a label image ``IMAGE/labels/NAME`` following the NGFF labels spec."""
    labels_path = f"{str(image_path).rstrip('/')}/labels"
    zarr.open_group(labels_path, mode="a")
    vol = create_volume(f"{labels_path}/{name}", shape, dtype, voxel_size, name=name, **kwargs)
    register_label(image_path, name)
    return vol


def register_label(image_path: str | os.PathLike, name: str) -> None:
    """Declare the volume ``IMAGE/labels/NAME`` a label image of ``IMAGE`` (NGFF labels spec).

    Adds ``NAME`` to the ``labels`` list of ``IMAGE/labels`` and the ``image-label`` metadata to
    the label volume, which must already exist (e.g. written by ``segment``).
    """
    labels_path = f"{str(image_path).rstrip('/')}/labels"
    labels = zarr.open_group(labels_path, mode="a")
    ome = dict(labels.attrs.get("ome", {"version": NGFF_VERSION}))
    names = list(ome.get("labels", []))
    if name not in names:
        names.append(name)
    ome["labels"] = names
    labels.attrs["ome"] = ome
    group = zarr.open_group(f"{labels_path}/{name}", mode="r+")
    ome = dict(group.attrs["ome"])
    ome["image-label"] = {"source": {"image": "../../"}}
    if ome.get("multiscales"):
        ome["multiscales"] = [{**ome["multiscales"][0], "name": name}, *ome["multiscales"][1:]]
    group.attrs["ome"] = ome


# ---------------------------------------------------------------------------- import
SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".zarr")


def _read_source(path: str, key: str | None):
    """Return (array-like, voxel size or None, closer) for a file of a supported format."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return np.load(path, mmap_mode="r"), None, None
    if suffix == ".npz":
        npz = np.load(path, allow_pickle=False)
        arrays = [k for k in npz.files if npz[k].ndim == 3]
        if key is None:
            key = "image" if "image" in npz.files else (arrays[0] if len(arrays) == 1 else None)
        if key is None:
            raise BlocksegError(f"{path}: holds several 3D arrays {arrays}; choose one with --key")
        if key not in npz.files:
            raise BlocksegError(f"{path}: no array {key!r} (has {npz.files})")
        vs = npz["voxel_size_zyx"] if "voxel_size_zyx" in npz.files else None
        return npz[key], vs, npz.close
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            vs = _tiff_voxel_size(tif)
        try:
            data = tifffile.memmap(path, mode="r")
        except (ValueError, OSError):  # compressed or non-contiguous: read it whole
            data = tifffile.imread(path)
        return data, vs, None
    if suffix in (".h5", ".hdf5", ".hdf"):
        import h5py

        f = h5py.File(path, "r")
        datasets: list[str] = []
        f.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 3 else None)
        if key is None:
            key = datasets[0] if len(datasets) == 1 else None
        if key is None:
            f.close()
            raise BlocksegError(f"{path}: holds 3D datasets {datasets}; choose one with --key")
        if key not in f:
            f.close()
            raise BlocksegError(f"{path}: no dataset {key!r} (has {datasets})")
        ds = f[key]
        vs = None
        for attr in ("element_size_um", "voxel_size_um", "resolution"):
            if attr in ds.attrs:
                vs = ds.attrs[attr]
                break
        return ds, vs, f.close
    if suffix == ".zarr" or os.path.isdir(path):
        vol = open_volume(path)
        return vol.array, vol.voxel_size, None
    raise BlocksegError(f"{path}: unsupported format {suffix or '(none)'}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def _tiff_voxel_size(tif) -> tuple[float, float, float] | None:
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


def import_volume(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    voxel_size: float | Sequence[float] | None = None,
    key: str | None = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    dtype: Any = None,
    overwrite: bool = False,
) -> Volume:
    """Copy a tif / npy / npz / h5 / zarr volume into a chunked OME-Zarr volume.

    The copy goes block by block (one block = one shard, or a few chunks) on dask's threaded
    scheduler, so memory stays bounded for memory-mappable sources (npy, uncompressed tif,
    h5, zarr). Voxel size comes from ``voxel_size`` if given, else from the file's metadata
    (npz ``voxel_size_zyx``, h5 ``element_size_um``, ImageJ tif spacing), else 1 µm.

    Raises
    ------
    BlocksegError
        For a missing or unsupported source, a non-3D array, a non-numeric dtype, or an
        existing destination without ``overwrite``.
    """
    import dask.array as da

    from .safety import prepare_output

    source, dest = str(source), str(dest)
    _check_exists(source)
    output = prepare_output(dest, [source], overwrite)
    data, file_vs, close = _read_source(source, key)
    try:
        if data.ndim != 3:
            raise BlocksegError(f"{source}: expected a 3D (z, y, x) array, got shape {data.shape}")
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(data.dtype)
        if out_dtype.kind not in "biuf":
            raise BlocksegError(f"{source}: unsupported dtype {out_dtype} (need integers or floats)")
        vs = parse_voxel_size(voxel_size if voxel_size is not None else file_vs)
        with output.writing() as target:
            out = create_volume(target, data.shape, out_dtype, vs, chunks, shards, name=Path(source).stem,
                                attributes={"import": {"source": source}})  # fmt: skip
            grid = out.grid()
            src = da.from_array(data, chunks=grid.dask_chunks, lock=False, asarray=True)
            da.store(src.astype(out_dtype), out.array, lock=False, scheduler="threads")
        return open_volume(dest)
    finally:
        if close is not None:
            close()

