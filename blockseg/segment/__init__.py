"""Blockwise seeded watershed with seamless stitching (``blockseg segment``).

Public API: :func:`segment` (prediction store -> label volume, blockwise), :func:`segment_array`
(the same decoder on one in-memory array: the whole-volume reference), :func:`label` (exact
blockwise connected components of a mask volume), the decoders, and the exact keyed flood
(:mod:`.exact`).
"""

from .._lazy import attach

#: public name -> submodule; imported on first use (``import blockseg`` compiles no kernel)
_EXPORTS = {
    "DECODERS": "decoders", "AffinityDecoder": "decoders", "BCDDecoder": "decoders", "Decoder": "decoders",
    "SDTDecoder": "decoders", "ThreeLabelDecoder": "decoders", "make_decoder": "decoders",
    "keyed_flood": "exact", "LabelReport": "components", "label": "components",
    "SegmentReport": "pipeline", "segment": "pipeline", "segment_array": "pipeline",
}  # fmt: skip
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
