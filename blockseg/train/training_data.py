"""Training data as users have it: an image file and a label file -> one OME-Zarr training volume.

``import_pair(IMAGE, LABELS, OUT.zarr)`` writes the image at ``OUT.zarr`` and the labels as an
NGFF label image ``OUT.zarr/labels/<name>`` (``image-label`` metadata, listed in
``OUT.zarr/labels``) and, with ``ignore=``, an ignore mask as ``OUT.zarr/labels/ignore`` (voxels
> 0 are left out of the training loss: the unlabelled nuclei of a partially labelled volume),
through :mod:`blockseg.io.safety` (the output is never an input, an existing output is replaced
only with ``overwrite`` and only when blockseg wrote it; the new volume is written beside it and
swapped in). Missing parent folders of ``OUT`` are created.
``blockseg train`` reads such a volume directly (``data.train: [OUT.zarr]``).
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import zarr

from ..errors import BlocksegError, BlocksegWarning
from ..io.storage import is_url
from ..io.safety import prepare_output
from ..io.selection import split_selection
from ..io.volume import import_volume, open_volume, register_label


def make_parent(path: str) -> None:
    """Create the missing parent folders of a local output path (nothing for URLs)."""
    if not is_url(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def import_pair(
    image: str,
    labels: str,
    out: str,
    name: str = "nuclei",
    voxel_size: float | Sequence[float] | None = None,
    key: str | None = None,
    labels_key: str | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    pyramid_levels: int | None = 1,
    ignore: str | None = None,
):
    """Write ``image`` and its instance ``labels`` (and an ignore mask) as one OME-Zarr training volume.

    Parameters
    ----------
    image, labels : str
        Source files (any format :func:`blockseg.io.volume.open_volume` reads); labels must be
        integers of the image's shape.
    out : str
        Output OME-Zarr image; the labels go to ``out/labels/<name>``.
    name : str
        Name of the label image.
    voxel_size : float or (z, y, x), optional
        µm; default: the image's metadata. The labels always get the image's voxel size (a
        label file with a different voxel size in its metadata is refused).
    key, labels_key : str, optional
        Array names inside npz / h5 sources.
    chunks : sequence of int, optional
    overwrite : bool
        Replace an existing output written by blockseg.
    pyramid_levels : int, optional
        Pyramid levels of both (default 1: training reads level 0 only).
    ignore : str, optional
        An ignore mask of the image's shape (any format the labels may have), written to
        ``out/labels/ignore`` (the default ``data.ignore`` of a training config): its voxels > 0
        contribute nothing to the training loss.

    Returns
    -------
    (Volume, Volume)
        The image and the label volume.
    """

    if not name or "/" in name or name.startswith("."):
        raise BlocksegError(f"label name must be a plain name, got {name!r}")
    src = open_volume(image, key=key, voxel_size=voxel_size)
    with warnings.catch_warnings():  # the labels take the image's voxel size: no "1 µm" warning for them
        warnings.simplefilter("ignore", BlocksegWarning)
        lab = open_volume(labels, key=labels_key)
    if tuple(lab.shape) != tuple(src.shape):
        raise BlocksegError(f"labels {labels} have shape {tuple(lab.shape)}, the image {image} {tuple(src.shape)}")
    if np.dtype(lab.dtype).kind not in "iu":
        raise BlocksegError(f"labels {labels} must be integers, got {lab.dtype}")
    if lab.voxel_size_source not in (None, "default") and not np.allclose(lab.voxel_size, src.voxel_size, rtol=1e-3):
        raise BlocksegError(
            f"labels {labels} have voxel size {tuple(lab.voxel_size)} µm, the image {tuple(src.voxel_size)} µm"
        )
    _check_ignore(ignore, name, src.shape)
    make_parent(str(out))
    sources = [split_selection(p)[0] for p in (image, labels, ignore) if p]
    output = prepare_output(str(out), sources, overwrite)
    with output.writing() as target:
        import_volume(image, target, voxel_size=src.voxel_size, key=key, chunks=chunks, pyramid_levels=pyramid_levels)
        zarr.open_group(f"{target}/labels", mode="a")
        dtype = np.uint32 if np.dtype(lab.dtype).itemsize <= 4 else np.uint64
        import_volume(labels, f"{target}/labels/{name}", voxel_size=src.voxel_size, key=labels_key, chunks=chunks,
                      dtype=dtype, labels=True, pyramid_levels=pyramid_levels)  # fmt: skip
        register_label(target, name)
        if ignore:
            import_volume(ignore, f"{target}/labels/ignore", voxel_size=src.voxel_size, chunks=chunks, labels=True,
                          pyramid_levels=pyramid_levels)  # fmt: skip
            register_label(target, "ignore")
    return open_volume(str(out)), open_volume(f"{str(out).rstrip('/')}/labels/{name}")


def _check_ignore(ignore: str | None, name: str, shape) -> None:
    """Refuse an ignore mask of another shape, or a label image that would share its name."""
    if not ignore:
        return
    if name == "ignore":
        raise BlocksegError("the label image cannot be named 'ignore' when an ignore mask is given (it goes to labels/ignore)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlocksegWarning)
        ign = open_volume(ignore)
    if tuple(ign.shape) != tuple(shape):
        raise BlocksegError(f"ignore mask {ignore} has shape {tuple(ign.shape)}, the image {tuple(shape)}")


def import_label_into(source: str, dest: str, **kwargs):
    """Import a label file to ``IMAGE.zarr/labels/NAME`` of an existing image: creates the
    ``labels`` group and registers the label image (NGFF), so no folder is made by hand."""

    parts = str(dest).rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "labels":
        image = "/".join(parts[:-2])
        try:
            img = open_volume(image)
        except BlocksegError:
            img = None
        if img is not None:
            shape = open_volume(source, key=kwargs.get("key")).shape
            if tuple(shape) != tuple(img.shape):
                raise BlocksegError(f"labels {source} {tuple(shape)} do not match the image {image} {tuple(img.shape)}")
            zarr.open_group(f"{image}/labels", mode="a")
            vol = import_volume(source, dest, labels=True, **kwargs)
            register_label(image, parts[-1])
            return vol
    make_parent(str(dest))
    return import_volume(source, dest, labels=True, **kwargs)
