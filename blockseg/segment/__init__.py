"""Blockwise seeded watershed with seamless stitching (``blockseg segment``).

Public API: :func:`segment` (prediction store -> label volume, blockwise), :func:`segment_array`
(the same decoder on one in-memory array: the whole-volume reference), :func:`label` (exact
blockwise connected components of a mask volume), the decoders, and the exact keyed flood
(:mod:`.exact`).
"""

from ..runtime._jit import cache_dir as _cache_dir

_cache_dir()  # before any kernel is decorated: numba.njit(cache=True) then finds a writable cache folder
from .decoders import DECODERS, AffinityDecoder, BCDDecoder, Decoder, SDTDecoder, ThreeLabelDecoder, make_decoder
from .exact import keyed_flood
from .components import LabelReport, label
from .pipeline import SegmentReport, segment, segment_array

__all__ = [
    "segment",
    "segment_array",
    "SegmentReport",
    "label",
    "LabelReport",
    "Decoder",
    "BCDDecoder",
    "ThreeLabelDecoder",
    "SDTDecoder",
    "AffinityDecoder",
    "DECODERS",
    "make_decoder",
    "keyed_flood",
]

from .._callable import make_callable as _make_callable

_make_callable(__name__, "segment")
