"""One owner for "one value or a (z, y, x) triple".

Block shapes, halos, chunk shapes, voxel sizes, scale factors, overlaps, patch sizes: every
per-axis option of blockseg is given either as one value (the same on every axis) or as one
value per axis, in the order ``(z, y, x)``. :func:`zyx` turns either form into a tuple and
refuses anything else with one line naming the option.

Examples
--------
>>> zyx(8, "halo", at_least=0)
(8, 8, 8)
>>> zyx([64, 128, 128], "block shape", at_least=1)
(64, 128, 128)
>>> zyx(0.5, "voxel size", kind=float, above=0)
(0.5, 0.5, 0.5)
>>> zyx([16, 32], "--halo")
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: --halo must be one whole number or three (z y x), got [16, 32]
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .errors import BlocksegError

__all__ = ["zyx"]

_NOUN = {int: "whole number", float: "number"}
_COUNT = {1: "one", 2: "two", 3: "three", 4: "four"}


def zyx(
    value: Any,
    name: str | None,
    *,
    kind: type = int,
    at_least: float | None = None,
    above: float | None = None,
    scalar: bool = True,
    axes: int = 3,
) -> tuple | None:
    """``value`` as one ``kind`` per axis, ``(z, y, x)``; None passes through (not given).

    Parameters
    ----------
    value : number or sequence of numbers or None
        One value, meaning the same on every axis (when ``scalar``), or one per axis.
    name : str or None
        The option's name as the user wrote it (``"halo"``, ``"--block-shape"``), which starts
        the error message; None: the message starts at "must", for callers that put their own
        key in front (the run config).
    kind : {int, float}
        ``int``: whole numbers (a float with no fraction, ``4.0``, is taken as ``4``); ``float``:
        finite numbers. Booleans and text are refused either way.
    at_least, above : number, optional
        Every value must be ``>= at_least`` / ``> above``.
    scalar : bool
        Whether one value may stand for every axis.
    axes : int
        Number of axes (3, ``(z, y, x)``, for every option of blockseg; a
        :class:`~blockseg.grid.BlockGrid` of another dimension passes its own).

    Returns
    -------
    tuple of ``kind`` or None

    Raises
    ------
    BlocksegError
        One line naming the option: the wrong form, or a value out of range.

    Examples
    --------
    >>> zyx((1, 0.25, 0.25), "voxel size", kind=float, above=0)
    (1.0, 0.25, 0.25)
    >>> zyx(-1, "halo", at_least=0)
    Traceback (most recent call last):
    ...
    blockseg.errors.BlocksegError: halo must be ≥ 0, got -1
    """
    if value is None:
        return None
    values = _values(value, kind, scalar, axes)
    if values is None:
        noun, count = _NOUN[kind], _COUNT.get(axes, str(axes))
        form = f"one {noun} or {count}" if scalar else f"{count} {noun}s"
        _fail(name, f"must be {form} {_axes_words(axes)}, got {value!r}")
    if at_least is not None and any(v < at_least for v in values):
        _fail(name, f"must be ≥ {at_least:g}, got {value!r}")
    if above is not None and any(not v > above for v in values):
        _fail(name, f"must be > {above:g}, got {value!r}")
    return values


def _axes_words(axes: int) -> str:
    return "(z y x)" if axes == 3 else "(one per axis)"


def _fail(name: str | None, problem: str):
    raise BlocksegError(f"{name} {problem}" if name else problem)


def _values(value, kind: type, scalar: bool, axes: int) -> tuple | None:
    """The values as ``kind``, or None when ``value`` has the wrong form."""
    if _number(value, kind):
        return (kind(value),) * axes if scalar else None
    if isinstance(value, (str, bytes, dict)):
        return None
    try:
        items = list(value)
    except TypeError:
        return None
    if len(items) != axes or not all(_number(v, kind) for v in items):
        return None
    return tuple(kind(v) for v in items)


def _number(v, kind: type) -> bool:
    """Whether ``v`` is one value of ``kind`` (numpy scalars included, booleans not)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return False
    if not math.isfinite(float(v)):
        return False
    return kind is float or isinstance(v, numbers.Integral) or float(v).is_integer()
