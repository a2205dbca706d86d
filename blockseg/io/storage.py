"""Small files beside the volumes (tables, reports, scratch) on any fsspec filesystem.

Volumes go through zarr, which already speaks fsspec; the CSV / JSON / npz files blockseg writes
next to them go through these helpers, so a run on ``s3://`` (or ``gs://``, ...) keeps every
file there, readable by workers on other machines. Credentials and endpoints come from the
usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...),
which dask workers must share.
"""

from __future__ import annotations

import io
import os
import uuid
import shutil

import numpy as np
import fsspec

from ..errors import BlocksegError


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a remote fsspec location (``s3://``, ``gs://``, ``http://``, ...):
    one that the local file system cannot see. A plain path or a ``file://`` URL is local: False.

    The one test of blockseg for "is this a remote location"; :func:`has_scheme` is the other
    question, "is this text a URL at all".

    Examples
    --------
    >>> is_url("s3://bucket/img.zarr"), is_url("file:///data/img.zarr"), is_url("img.zarr")
    (True, False, False)
    """
    return "://" in str(path) and not str(path).startswith("file://")


def has_scheme(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written as a URL, ``file://`` included: text that must pass through as
    given, never be made absolute, anchored at a config's folder, or joined like a path.

    Examples
    --------
    >>> has_scheme("file:///data/img.zarr"), has_scheme("/data/img.zarr")
    (True, False)
    """
    return "://" in str(path)


def open_file(path: str, mode: str = "rb", **kwargs):
    """``open`` for local paths and fsspec URLs alike (a context manager)."""
    if not is_url(path):
        return open(path, mode, **kwargs)

    return fsspec.open(str(path), mode, **kwargs)


def makedirs(path: str) -> None:
    """Create a folder (a no-op on object stores, which have none)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def remove_tree(path: str) -> None:
    """Delete a folder and everything under it; nothing if it is not there."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return

    fs, p = fsspec.core.url_to_fs(str(path))
    if fs.exists(p):
        fs.rm(p, recursive=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries of a folder; empty if it is not there."""
    if not is_url(path):
        return os.listdir(path) if os.path.isdir(path) else []

    fs, p = fsspec.core.url_to_fs(str(path))
    if not fs.exists(p):
        return []
    return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]


def remove_file(path: str) -> None:
    """Delete one file; nothing if it is not there."""
    if not is_url(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return

    fs, p = fsspec.core.url_to_fs(str(path))
    if fs.exists(p):
        fs.rm(p)


def free_space(path: str) -> tuple[str, int] | None:
    """``(folder, free bytes)`` of the local disk that ``path`` (existing or not) would be
    written to: its nearest existing parent folder. None for object storage (not checked)."""
    if is_url(path):
        return None
    folder = os.path.dirname(os.path.abspath(path)) or "."
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return folder, shutil.disk_usage(folder).free


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file so that readers see the old or the new content, never a part.

    Local files are written beside and renamed into place; an object store's put is atomic.
    """
    if not is_url(path):
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # two attempts of one task may overlap
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with open_file(path, "wb") as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def save_npz(path: str, **arrays) -> None:
    """``np.savez`` to a local path or URL."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npz(path: str) -> dict:
    """Every array of an npz file (local path or URL) as a dict.

    Arrays of Python objects are refused (``np.load`` without ``allow_pickle``): a work file that
    someone else could write (a shared file system, a bucket) never runs code here.
    """
    with open_file(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as data:
            try:
                return {k: data[k] for k in data.files}
            except ValueError as exc:
                if "allow_pickle" not in str(exc):
                    raise
                raise BlocksegError(
                    f"{path}: holds Python objects (a pickle), which blockseg never loads: they could run code; "
                    "blockseg did not write this file"
                ) from None


__all__ = [
    "free_space", "is_url", "listdir", "load_npz", "makedirs", "open_file", "read_bytes", "remove_file", "remove_tree",
    "save_npz", "write_bytes",
]  # fmt: skip
