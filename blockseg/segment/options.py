"""The options of :func:`blockseg.segment.segment`: one model for every door.

:class:`SegmentOptions` is what the Python API's keyword arguments, the run config's ``segment``
section and ``blockseg segment``'s flags fill in: one default and one check per option, here.
None of them changes the labels (the halo, the blocks and the tiles only set speed, memory and
disk; :mod:`blockseg.segment.exact`); the decoder and its parameters, which do, are chosen by
:mod:`blockseg.segment.params`.

Examples
--------
>>> SegmentOptions().halo
8
>>> segment_options(halo=(4, 8, 8), tile_voxels=None).halo
(4, 8, 8)
>>> segment_options(halo=-1)
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: halo: must be ≥ 0, got -1
"""

from __future__ import annotations

from typing import Callable, Optional

from pydantic import Field

from ..options import Block, Halo, Strict, WholeNumber, validate
from ..zyx import zyx

__all__ = ["DEFAULT_HALO", "DEFAULT_TILE_VOXELS", "SegmentOptions", "segment_options"]

#: default halo in voxels per axis (a performance knob: any halo gives the same result)
DEFAULT_HALO = 8

#: core voxels of the tiles later exchange rounds run in (a performance knob, like the halo):
#: a flooding path that crosses block faces inside one tile costs one round, not one per face;
#: a tile's task holds the solutions of the blocks it runs in memory (about 12 bytes per core +
#: halo voxel: ~0.5 GB at this default), so this bounds its memory
DEFAULT_TILE_VOXELS = 2**25


class SegmentOptions(Strict):
    """Speed, memory and output knobs of segment (none changes the labels)."""

    block_shape: Block = Field(
        None, description="block core shape, one value or three (z y x), a multiple of the chunks (default: about 16 M voxels)"
    )
    halo: Halo = Field(
        DEFAULT_HALO,
        description=f"halo in voxels, one value or three (z y x) (default {DEFAULT_HALO}; any value, 0 included, gives the "
        "same result: it trades exchange rounds for voxels read and flooded)",
    )
    tile_voxels: WholeNumber = Field(
        DEFAULT_TILE_VOXELS, ge=1,
        description=f"core voxels of the tiles that exchange rounds after the first run in (default {DEFAULT_TILE_VOXELS}; "
        "any value gives the same result: a path crossing many block faces inside one tile costs one round)",
    )  # fmt: skip
    pyramid_levels: Optional[int] = Field(
        None, ge=1, description="multiscale levels of the label volume, full resolution included (default: automatic; 1: none)"
    )
    keep_work: bool = Field(
        False, description="keep the work directory OUTPUT.work (a run that stops early always keeps it, and the next "
        "run with the same settings continues from it)",
    )  # fmt: skip

    @property
    def halo_zyx(self) -> tuple[int, int, int]:
        """The halo per axis."""
        return zyx(self.halo, "halo")  # type: ignore[return-value]


def segment_options(spell: Callable[[str], str] | None = None, **values) -> SegmentOptions:
    """:class:`SegmentOptions` from keyword values; None means "the default" (as in the API's
    signature). One :class:`~blockseg.errors.BlocksegError` line for a bad value, its key spelled
    by ``spell`` (the CLI's flags)."""
    return validate(SegmentOptions, {k: v for k, v in values.items() if v is not None}, spell)
