"""Tables: the one reader and writer of blockseg's CSV files, local paths and URLs alike.

Every table blockseg writes (segment's ``instances.csv``, evaluate's ``instances.csv``, synth's
``nuclei.csv``) or reads (``evaluate --scores`` / ``--points``, ``run``'s evaluation of the
segment table) goes through :func:`write_table` and :func:`read_table`, which open files through
:func:`blockseg.io.storage.open_file`: a table on ``s3://`` is written and read back like a local
one.

A table is a mapping of column name to a 1-d array, one row per entry; the file is plain CSV: a
header line with the column names, then one line per row, numbers written with a printf format
per column.

Examples
--------
>>> import tempfile, numpy as np
>>> path = tempfile.mkdtemp() + "/t.csv"
>>> write_table({"id": np.array([1, 2]), "size": np.array([10.5, 3.0])}, path)
>>> print(open(path).read(), end="")
id,size
1,10.5
2,3
>>> read_table(path)
{'id': array([1., 2.]), 'size': array([10.5,  3. ])}
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping, Sequence

import numpy as np

from ..errors import BlocksegError
from .storage import is_url, open_file

__all__ = ["count_rows", "read_table", "table_header", "write_table"]

#: printf format of a float column when none is given (six significant digits)
FLOAT_FORMAT = "%.6g"


def write_table(table: Mapping[str, np.ndarray], path: str | os.PathLike, formats: Mapping[str, str] | None = None) -> None:
    """Write ``table`` as CSV to ``path`` (a local path or an fsspec URL).

    Parameters
    ----------
    table : mapping of str to 1-d array
        Columns in file order, all of one length.
    path : str or path-like
        Where to write; an existing file is replaced.
    formats : mapping of str to str, optional
        A printf format per column (``{"x": "%.3f"}``); a column without one is written with
        ``%.6g`` when it holds floats, else as text (integers in full).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/t.csv"
    >>> write_table({"id": np.array([7]), "z": np.array([1.25])}, path, formats={"z": "%.3f"})
    >>> open(path).read()
    'id,z\\n7,1.250\\n'
    """
    formats = dict(formats or {})
    cols = [_column_text(np.asarray(v), formats.get(k)) for k, v in table.items()]
    if len({len(c) for c in cols}) > 1:
        raise BlocksegError(f"{path}: the columns of a table must have one length, got {[len(c) for c in cols]}")
    with open_file(str(path), "w") as fh:
        fh.write(",".join(table) + "\n")
        if cols and len(cols[0]):
            rows = cols[0]
            for c in cols[1:]:
                rows = np.char.add(np.char.add(rows, ","), c)
            fh.write("\n".join(rows.tolist()) + "\n")


def read_table(path: str | os.PathLike, columns: Sequence[str] | None = None, what: str = "a table") -> dict[str, np.ndarray]:
    """Read a numeric CSV table from ``path`` (a local path or an fsspec URL).

    Parameters
    ----------
    path : str or path-like
    columns : sequence of str, optional
        The columns to return (default: all); a missing one is an error.
    what : str
        What the table is for, named in errors (``"--scores"``).

    Returns
    -------
    dict of str to float64 array
        One array per column, in file order (or in the order of ``columns``).

    Raises
    ------
    BlocksegError
        One line: no such file, a missing column, a value that is not a number.
    """
    path = str(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    rows = [r for r in reader if r]
    wanted = list(header) if columns is None else list(columns)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise BlocksegError(f"{path}: {what} needs columns {wanted}, missing {missing} (found {header})")
    index = [header.index(c) for c in wanted]
    try:
        data = np.array([[r[i] for i in index] for r in rows], dtype=np.float64).reshape(len(rows), len(wanted))
    except (ValueError, IndexError):
        raise BlocksegError(f"{path}: non-numeric or missing values in columns {wanted}") from None
    return {c: data[:, k] for k, c in enumerate(wanted)}


def table_header(path: str | os.PathLike) -> list[str]:
    """The column names of the CSV table at ``path``."""
    return next(csv.reader(io.StringIO(_read_text(str(path)))), [])


def count_rows(path: str | os.PathLike) -> int:
    """The number of rows (lines after the header) of the CSV table at ``path``, read as text
    only: a table with a damaged value still counts."""
    return max(sum(1 for line in _read_text(str(path)).splitlines() if line) - 1, 0)


def _read_text(path: str) -> str:
    if not is_url(path) and not os.path.isfile(path):
        raise BlocksegError(f"{path}: no such file or directory")
    try:
        with open_file(path, "r", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        raise BlocksegError(f"{path}: no such file or directory") from None


def _column_text(values: np.ndarray, fmt: str | None) -> np.ndarray:
    """One column as text, one string per row."""
    if values.ndim != 1:
        raise BlocksegError(f"a table column must be 1-d, got shape {values.shape}")
    if fmt is None and values.dtype.kind == "f":
        fmt = FLOAT_FORMAT
    if fmt is None:
        return values.astype(str)
    return np.char.mod(fmt, values) if len(values) else np.zeros(0, dtype=str)
