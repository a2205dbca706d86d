"""Loading ``.pt`` files that may come from someone else: tensors and plain data, never code.

A ``.pt`` file is a pickle, and unpickling may call any Python function the file names: a crafted
checkpoint or training resume file would run code on the machine that loads it (for a checkpoint,
on every dask worker too). blockseg loads every such file through :func:`load_plain`, which is
``torch.load(..., weights_only=True)``: torch's restricted unpickler builds tensors, numbers,
text, lists, tuples and dicts only, and refuses anything else *before* calling it. Everything
blockseg writes (checkpoints, ``resume.pt``) holds nothing else, so its own files always load.
An explicit ``weights_only=True`` is not overridden by ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.

What is still trusted: the Python packages installed with blockseg, and networks that are
programs by nature (TorchScript, :mod:`blockseg.models.foreign`), which run when used.
"""

from __future__ import annotations

import re
import pickle
import warnings
from typing import Any

from ..errors import BlocksegError


def _refusal(exc: BaseException, path) -> str | None:
    """Why torch's restricted unpickler refused a file that is a pickle of other objects, or None
    when the file does not look like a pickle at all (garbage, a truncated file)."""
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if m:
        return f"it names the Python object {m.group(1)}"
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # a pickle's PROTO opcode
        return "it is a general Python pickle, not tensors and plain data"
    return None


def load_plain(path, what: str = "file") -> Any:
    """``torch.load`` a file as tensors and plain data only (on the CPU); one line if it is not.

    Parameters
    ----------
    path : str or path-like
        A file written by ``torch.save``.
    what : str
        How the file is named in messages ("checkpoint", "resume file").

    Returns
    -------
    object
        The loaded tensors, numbers, strings, lists, tuples and dicts.

    Raises
    ------
    BlocksegError
        If the file holds any other Python object (it is refused before anything in it runs,
        saying why), or is not a ``torch.save`` file at all.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on the way to refusing
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = _refusal(exc, path)
        if why is None:
            m = re.search(r"Unsupported (operand|class) ([^\n]{1,60})", str(exc))
            detail = f" (unpickling: unsupported {m.group(1)} {m.group(2).strip()})" if m else ""
            raise BlocksegError(f"{path}: not a {what} that torch can read{detail}") from None
        raise BlocksegError(
            f"{path}: refused to load this {what}: {why}, and loading it could run code "
            "(blockseg loads tensors and plain data only; files blockseg writes hold nothing else)"
        ) from None
    except FileNotFoundError:
        raise BlocksegError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise BlocksegError(f"{path}: a folder, not a {what}") from None
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__
        raise BlocksegError(f"{path}: not a {what} that torch can read ({detail})") from None


__all__ = ["load_plain"]
