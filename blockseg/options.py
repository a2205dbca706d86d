"""Options models: the field types every stage's options share, and the one door into them.

A stage's options (:class:`blockseg.segment.options.SegmentOptions`, ...) are one pydantic model,
used alike by the Python API (keyword arguments), the run config (its YAML section) and the CLI
(its flags): one default each, one check each. This module holds what those models share: the
strict base class, the per-axis field types (checked by :func:`blockseg.zyx.zyx`, kept as given
so that a config reads back as written) and :func:`validate`, which turns pydantic's errors into
one :class:`~blockseg.errors.BlocksegError` line naming each key as the caller's door spells it.

Examples
--------
>>> class Knobs(Strict):
...     halo: Halo = None
>>> validate(Knobs, {"halo": [2, -1, 2]}, spell=lambda k: f"--{k}")
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: --halo: must be ≥ 0, got [2, -1, 2]
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Callable, Optional, TypeVar, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from .errors import BlocksegError, describe_validation_error
from .zyx import zyx

__all__ = ["Block", "Halo", "Shape", "Strict", "VoxelSize", "WholeNumber", "validate"]


def _per_axis(kind: type = int, at_least=None, above=None, scalar: bool = True):
    """A pydantic check of a ``(z, y, x)`` value by :func:`~blockseg.zyx.zyx`; the value is kept
    as given (a list becomes a tuple), None passes."""

    def check(v):
        try:
            zyx(v, None, kind=kind, at_least=at_least, above=above, scalar=scalar)
        except BlocksegError as e:
            raise ValueError(str(e)) from None
        return tuple(v) if isinstance(v, list) else v

    return BeforeValidator(check)


#: a block shape (one whole number ≥ 1 for every axis, or three)
Block = Annotated[Optional[Union[int, tuple[int, int, int]]], _per_axis(at_least=1)]
#: a halo in voxels (one whole number ≥ 0 for every axis, or three)
Halo = Annotated[Optional[Union[int, tuple[int, int, int]]], _per_axis(at_least=0)]
#: a volume or chunk shape (three whole numbers ≥ 1)
Shape = Annotated[tuple[int, int, int], _per_axis(at_least=1, scalar=False)]
#: a voxel size in µm (three numbers > 0)
VoxelSize = Annotated[Optional[tuple[float, float, float]], _per_axis(float, above=0, scalar=False)]


def _whole_number(v):
    """A whole number as an ``int`` (numpy integers included); booleans, text and fractions refused."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise ValueError(f"must be a whole number, got {v!r}")
    return int(v)


#: a count (voxels, levels, ...): a whole number, never ``True`` or ``"5"``
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class Strict(BaseModel):
    """Options refuse unknown keys and are read-only once checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], values: dict[str, Any], spell: Callable[[str], str] | None = None) -> M:
    """``model`` checked from ``values``; errors as one :class:`BlocksegError` line naming each key
    (``spell`` writes a field's name as the caller's door does: ``--tile-voxels`` for the CLI)."""
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise BlocksegError(describe_validation_error(e, spell)) from None
