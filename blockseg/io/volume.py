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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import zarr

from ..errors import BlocksegError, warn
from ..grid import BlockGrid, write_unit
from ..zyx import zyx
from .storage import is_url
from ..runtime.costs import chunk_cost, settle
from .access import probe
from .formats import open_source
from .pyramid import finish_volume
from .safety import _remove, prepare_output, stamp_json
from .selection import SELECT_KEYS, check_axes, split_selection, with_selection


NGFF_VERSION = "0.5"
AXES = ("z", "y", "x")
#: chunk shape used when none is given: 64 slices of 128 x 128 (1 Mi voxels)
DEFAULT_CHUNKS = (64, 128, 128)


# ---------------------------------------------------------------------------- metadata
def parse_voxel_size(value: float | Sequence[float] | None) -> tuple[float, float, float]:
    """Voxel size in µm as ``(z, y, x)``; a single number means isotropic."""
    if value is None:
        return (1.0, 1.0, 1.0)
    return zyx(value, "voxel size (µm)", kind=float, above=0)  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------- Volume
@dataclass
class Volume:
    """A (z, y, x) zarr array with its voxel size in µm.

    Attributes
    ----------
    array : zarr.Array or array-like
        The data (a level of an OME-Zarr image, a plain array, or a (z, y, x) view of a
        TIFF / HDF5 / numpy source); indexable like a numpy array.
    voxel_size : tuple of float
        ``(z, y, x)`` voxel size in micrometres.
    path : str
        Where it was opened from.
    """

    array: Any
    voxel_size: tuple[float, float, float]
    path: str
    #: where the voxel size came from: "metadata", "given" or "default" (1 µm, warned)
    voxel_size_source: str = "metadata"
    #: level / channel / timepoint / key read (see :mod:`blockseg.io.formats`)
    selection: dict = field(default_factory=dict)
    #: the file format read, e.g. "OME-Zarr 0.4", "OME-TIFF"
    format: str = "OME-Zarr 0.5"
    #: (z, y, x) shapes of every pyramid level of the source (or a function giving them)
    _levels: Any = field(default_factory=list, repr=False)

    @property
    def levels(self) -> list:
        """(z, y, x) shapes of every pyramid level of the source, read on first use."""
        if callable(self._levels):
            self._levels = self._levels()
        return list(self._levels)

    @levels.setter
    def levels(self, value) -> None:
        self._levels = value

    @property
    def ref(self) -> str:
        """The path with its selection as a fragment: reopens this exact view anywhere."""

        sel = {k: v for k, v in self.selection.items() if not (k in ("level", "channel", "timepoint") and v == 0)}
        return with_selection(self.path, sel)

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
        if isinstance(self.array, zarr.Array):
            return da.from_zarr(self.array, chunks=chunks)
        return da.from_array(self.array, chunks=chunks, lock=False, asarray=True)

    def __repr__(self) -> str:
        vs = "x".join(f"{v:g}" for v in self.voxel_size)
        return f"Volume({self.path!r}, shape={self.shape}, dtype={self.dtype}, chunks={self.chunks}, voxel_size={vs} µm)"


def _check_exists(path: str) -> None:

    path = split_selection(path)[0]
    if not is_url(path) and not os.path.exists(path):
        raise BlocksegError(f"{path}: no such file or directory")


def open_volume(
    path: str | os.PathLike,
    mode: str = "r",
    storage_options: dict | None = None,
    *,
    level: int | None = None,
    channel: int | None = None,
    timepoint: int | None = None,
    key: str | None = None,
    voxel_size: float | Sequence[float] | None = None,
    axes: str | None = None,
) -> Volume:
    """Open a (z, y, x) volume of any supported format (see :mod:`blockseg.io.formats`).

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL: an OME-Zarr image (NGFF 0.4 or 0.5), a plain zarr array, a
        TIFF / OME-TIFF, HDF5, npy or npz file. May end with a selection fragment,
        ``#level=1&channel=0&timepoint=2&key=NAME``.
    mode : {"r", "r+"}
        ``"r+"`` to write into an existing zarr volume.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    level : int, optional
        Pyramid level (default 0, full resolution).
    channel, timepoint : int, optional
        Index on the channel / time axis; required when that axis is longer than 1.
    key : str, optional
        Array inside an npz / dataset inside an HDF5 file (when there are several).
    voxel_size : float or sequence of float, optional
        Overrides the file's voxel size (µm).
    axes : str, optional
        The axes (letters of t, c, z, y, x, e.g. ``"zcyx"``) of an array whose file does not name
        them (a plain zarr array, HDF5, npy / npz); default (c,) z, y, x by the number of axes. A
        file that names its axes is read by its own names (a different ``axes`` is refused).

    Raises
    ------
    BlocksegError
        If nothing is there, it is not readable, not 3-D after the selection, or the selection
        is ambiguous or out of range (one line naming the option to use).

    Notes
    -----
    A voxel size the file does not give falls back to 1 µm with a :class:`BlocksegWarning`;
    ``Volume.voxel_size_source`` records it ("default") for provenance.

    Examples
    --------
    >>> vol = create_volume("cells.zarr", (16, 64, 64), "uint16", voxel_size=(1.0, 0.5, 0.5))
    >>> vol[:, :32, :32] = 7
    >>> again = open_volume("cells.zarr")
    >>> again.shape, again.voxel_size, again.voxel_size_source, str(again.dtype)
    ((16, 64, 64), (1.0, 0.5, 0.5), 'metadata', 'uint16')
    >>> int(again[0, 0, 0]), int(again[0, 63, 63])
    (7, 0)
    """

    path = str(path)
    bare, fragment = split_selection(path)
    given = {"level": level, "channel": channel, "timepoint": timepoint, "key": key,
             "axes": None if axes is None else check_axes(axes)}  # fmt: skip
    for k in SELECT_KEYS:
        if given[k] is not None and fragment.get(k) is not None and given[k] != fragment[k]:
            raise BlocksegError(f"{path}: {k} {fragment[k]} in the path but {given[k]} given")
        if given[k] is None:
            given[k] = fragment.get(k)
    _check_exists(bare)

    probe(bare, storage_options)  # object storage: credentials, bucket and endpoint, in one line
    src = open_source(bare, mode, storage_options, **given)
    if src.array.ndim != 3:
        raise BlocksegError(f"{path}: expected a 3D (z, y, x) volume, got shape {tuple(src.array.shape)}")
    for note in src.notes:
        warn(f"{bare}: {note}")
    if voxel_size is not None:
        vs, source = parse_voxel_size(voxel_size), "given"
    elif src.voxel_size is None:
        vs, source = (1.0, 1.0, 1.0), "default"
        warn(f"{bare}: no voxel size in the file ({src.format}); using 1 µm (pass --voxel-size to set it)")
    else:
        try:
            vs = parse_voxel_size(src.voxel_size)
            source = "metadata (no unit, read as µm)" if any("no unit" in n for n in src.notes) else "metadata"
        except BlocksegError as exc:
            raise BlocksegError(f"{bare}: bad voxel size in the file's metadata ({exc})") from None
    return Volume(src.array, vs, bare, source, src.selection, src.format, src.levels)


def check_destination(
    path: str | os.PathLike, overwrite: bool = False, inputs: Sequence[str | os.PathLike | None] = ()
) -> None:
    """Raise :class:`BlocksegError` unless an output can be created at ``path``.

    Call it before any work starts, so bad output paths fail fast and nothing is touched.
    The rules are :func:`blockseg.io.safety.prepare_output`'s: never an input, inside or around
    one; an existing output only with ``overwrite`` and only when blockseg wrote it.
    """

    prepare_output(path, inputs, overwrite).release()  # a check: another command writing it is refused too


def _prepare_destination(path: str, overwrite: bool) -> None:
    """Make room for a new output at ``path`` (low-level API: an own output is deleted in place;
    the commands replace outputs new-then-swap through :mod:`blockseg.io.safety` instead)."""

    out = prepare_output(path, (), overwrite, lock=False)  # inside a command's output, or a low-level call
    if out.action == "replace" or (out.action == "create" and not is_url(path) and os.path.isdir(path)):
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

    Examples
    --------
    >>> vol = create_volume("empty.zarr", (8, 64, 64), "uint8", voxel_size=0.5, chunks=(8, 32, 32))
    >>> vol.shape, vol.voxel_size, int(vol[:].max())
    ((8, 64, 64), (0.5, 0.5, 0.5), 0)
    """
    path = str(path)
    shape = zyx(shape, "volume shape", at_least=1, scalar=False)
    voxel_size = parse_voxel_size(voxel_size)
    chunks = tuple(min(c, s) for c, s in zip(zyx(chunks or DEFAULT_CHUNKS, "chunk shape", at_least=1), shape))
    shards = zyx(shards, "shard shape", at_least=1)
    if shards is not None and any(s % c for s, c in zip(shards, chunks)):
        raise BlocksegError(f"shard shape {shards} must be a multiple of the chunk shape {chunks}")

    # a quarter of a million 1-voxel chunk files is refused before the first is written
    settle([chunk_cost(shape, shards or chunks, np.dtype(dtype).itemsize, path)])
    _prepare_destination(path, overwrite)
    group = zarr.open_group(path, mode="w" if overwrite else "w-", storage_options=storage_options)

    attrs: dict[str, Any] = {"ome": {"version": NGFF_VERSION, "multiscales": multiscales_metadata(voxel_size, name)}}
    attrs["blockseg"] = stamp_json(attributes)  # marks the volume as blockseg's (see blockseg.io.safety)
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
    ome["image-label"] = {**ome.get("image-label", {}), "source": {"image": "../../"}}
    if ome.get("multiscales"):
        ome["multiscales"] = [{**ome["multiscales"][0], "name": name}, *ome["multiscales"][1:]]
    group.attrs["ome"] = ome


# ---------------------------------------------------------------------------- import
SUPPORTED_SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".h5", ".hdf5", ".hdf", ".zarr", ".ome.zarr")


def import_volume(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    voxel_size: float | Sequence[float] | None = None,
    key: str | None = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    dtype: Any = None,
    overwrite: bool = False,
    level: int | None = None,
    channel: int | None = None,
    timepoint: int | None = None,
    labels: bool = False,
    pyramid_levels: int | None = None,
    client=None,
) -> Volume:
    """Copy a tif / npy / npz / h5 / zarr volume into a chunked OME-Zarr volume.

    The copy goes block by block (one block = one shard, or a few chunks) on dask's threaded
    scheduler, so memory stays bounded for memory-mappable sources (npy, uncompressed tif,
    h5, zarr, TIFF read page by page). Voxel size comes from ``voxel_size`` if given, else from
    the file's metadata (OME-Zarr scale, OME-TIFF PhysicalSize, ImageJ spacing, npz
    ``voxel_size_zyx``, h5 ``element_size_um``), else 1 µm with a warning. ``level``,
    ``channel``, ``timepoint`` choose the view of a pyramid / multi-channel / time-lapse source
    (see :func:`open_volume`). The copy gets a multiscale pyramid (``pyramid_levels``, None:
    automatic, 1: none; :mod:`blockseg.io.pyramid`): averaged, or sampled and marked as an NGFF
    label image when ``labels``. The copy reads the source in this process (it may be a file
    only this machine sees); the pyramid is built on ``client`` (None: dask's threads).

    Raises
    ------
    BlocksegError
        For a missing or unsupported source, a non-3D array, a non-numeric dtype, or an
        existing destination without ``overwrite``.
    """
    import dask.array as da


    source, dest = str(source), str(dest)
    output = prepare_output(dest, [split_selection(source)[0]], overwrite)
    src = open_volume(source, key=key, level=level, channel=channel, timepoint=timepoint, voxel_size=voxel_size)
    out_dtype = np.dtype(dtype) if dtype is not None else src.dtype
    if out_dtype.kind not in "biuf":
        raise BlocksegError(f"{source}: unsupported dtype {out_dtype} (need integers or floats)")

    with output.writing() as target:
        out = create_volume(target, src.shape, out_dtype, src.voxel_size, chunks, shards,
                            name=Path(src.path.rstrip("/")).stem, attributes={"source": {
                                "path": src.ref, "format": src.format, "voxel_size_source": src.voxel_size_source}})  # fmt: skip
        grid = out.grid()
        data = da.from_array(src.array, chunks=grid.dask_chunks, lock=False, asarray=True)
        da.store(data.astype(out_dtype), out.array, lock=False, scheduler="threads")
        levels = finish_volume(target, labels=labels, levels=pyramid_levels, client=client)
    out = open_volume(dest)
    out.levels = levels
    out.voxel_size_source = src.voxel_size_source
    return out
