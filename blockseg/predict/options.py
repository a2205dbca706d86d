"""The options of :func:`blockseg.predict.predict`: one model for every door.

:class:`PredictOptions` is what the Python API's keyword arguments, the run config's ``predict``
section and ``blockseg predict``'s flags fill in: one default and one check per option, here. The
checks that need the network (MC-dropout layers, flips of affinities) or the machine (a C++
compiler for ``runtime: compile``) stay with the run (:func:`blockseg.predict.infer.check_options`).
Which decoder's channels a store keeps, and whether an output is replaced or resumed, are the
run's own arguments (the run config takes them from ``segment.decoder`` and its stage records).

One door defaults an option its own way, on purpose: ``blockseg predict`` estimates the image's
nucleus size unless told otherwise (``--diameter`` :data:`CLI_DIAMETER`, a scale-space blob census
of a few boxes), while the API and the run config do not (``diameter=None``): a script or a
config says what it wants, and a run's fingerprint must not depend on an estimate.

Examples
--------
>>> PredictOptions().overlap, PredictOptions().batch_size
(0.125, 2)
>>> predict_options(overlap=4).overlap  # whole voxels
4
>>> predict_options(overlap=1.5)
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: overlap: must be a fraction below 1 (0.125) or whole voxels (4), got 1.5
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Callable, Literal, Optional, Union

import numpy as np
from pydantic import BeforeValidator, Field, field_validator

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import BlocksegError
from ..options import Block, Strict, WholeNumber, validate
from ..zyx import zyx
from .resample import parse_diameter

__all__ = ["CLI_DIAMETER", "DEFAULT_OVERLAP", "PredictOptions", "predict_options"]

#: overlap of neighbouring output tiles: a fraction of the network's training output patch
DEFAULT_OVERLAP = 0.125
#: ``blockseg predict``'s default ``--diameter`` (the API's and the run config's is None: no estimate)
CLI_DIAMETER = "auto"
#: storage dtypes of prediction channels
DTYPES = ("uint8", "float16", "float32")


def _overlap(v):
    """One value or three (z, y, x), each a fraction in [0, 1) of the training output patch or
    a whole number of voxels; kept as given (a list becomes a tuple)."""
    values = list(v) if isinstance(v, (list, tuple)) else [v]
    ok = len(values) in (1, 3) and all(
        isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and 0 <= x and (x < 1 or float(x).is_integer())
        for x in values
    )  # fmt: skip
    if not ok:
        raise ValueError(f"must be a fraction below 1 (0.125) or whole voxels (4), one value or three (z y x), got {v}"
                         if len(values) != 1 else f"must be a fraction below 1 (0.125) or whole voxels (4), got {v}")  # fmt: skip
    return tuple(v) if isinstance(v, list) else v


def _patch(v):
    """``"auto"``, ``"train"`` (None: the same), or one size or three (z, y, x) ≥ 1."""
    if v is None or v in ("auto", "train"):
        return v
    if isinstance(v, str):
        raise ValueError(f"must be auto, train or 1 or 3 sizes, got {v!r}")
    try:
        zyx(v, None, at_least=1)
    except BlocksegError as e:
        raise ValueError(f"must be auto, train or 1 or 3 sizes ({e})") from None
    return tuple(v) if isinstance(v, list) else v


def _dtype(v):
    """A storage dtype by name (a numpy dtype is named)."""
    if v is None:
        return v
    try:
        name = np.dtype(v).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"must be one of {', '.join(DTYPES)}, got {v!r}")
    return name


def _diameter(v):
    """``auto``, ``off`` or a size with its unit (:func:`blockseg.predict.resample.parse_diameter`)."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "off")):
        return v
    try:
        parse_diameter(v)
    except BlocksegError as e:
        raise ValueError(str(e).replace("--diameter takes ", "takes ")) from None
    return v


def _scale(v):
    """None, ``"auto"``, or one factor or three (z, y, x) > 0."""
    if v is None or (isinstance(v, str) and v == "auto"):
        return v
    try:
        zyx(v, None, kind=float, above=0)
    except BlocksegError as e:
        raise ValueError(str(e)) from None
    return tuple(v) if isinstance(v, list) else v


_Number = Union[int, float]  # an int stays an int: whole voxels, kept as given
Overlap = Annotated[Union[_Number, tuple[_Number, _Number, _Number]], BeforeValidator(_overlap)]
Patch = Annotated[Any, BeforeValidator(_patch)]
Scale = Annotated[Optional[Union[float, tuple[float, float, float], Literal["auto"]]], BeforeValidator(_scale)]


class PredictOptions(Strict):
    """Geometry, numerics and speed knobs of predict (see :func:`blockseg.predict.predict` for each)."""

    block_shape: Block = Field(None, description="block core shape, 1 or 3 values (z y x), a multiple of the chunks")
    dtype: Annotated[Optional[Literal["uint8", "float16", "float32"]], BeforeValidator(_dtype)] = Field(
        None, description="one storage dtype for every kept channel (default per channel: uint8 for probabilities / tanh "
        "maps, float16 for raw vectors such as cpv)",
    )  # fmt: skip
    channels: Optional[Union[list[str], Literal["all"]]] = Field(
        None, description="channels to store besides the decoder's (default: only the decoder's); 'all' keeps every channel"
    )
    patch: Patch = Field("auto", description="inference patch: auto (default), train, or 1 or 3 sizes (z y x)")
    overlap: Overlap = Field(
        DEFAULT_OVERLAP, description=f"overlap of neighbouring output tiles, 1 or 3 values (z y x): a fraction of the "
        f"training output patch, or whole voxels; default {DEFAULT_OVERLAP}",
    )  # fmt: skip
    blending: Literal["gaussian", "bump", "constant"] = Field("gaussian", description="blending window (default gaussian)")
    tta: bool = Field(False, description="test-time augmentation: average the 8 flips")
    mc_samples: WholeNumber = Field(
        0, ge=0, description="MC-dropout samples (0: off, else at least 2): adds a <channel>_var variance channel per channel"
    )
    batch_size: WholeNumber = Field(
        DEFAULT_BATCH_SIZE, ge=1,
        description=f"patches per forward pass (default {DEFAULT_BATCH_SIZE}); a speed knob: the output is the same for every batch size",
    )  # fmt: skip
    device: str = Field("auto", description="auto (CUDA where visible), cpu, cuda (default auto)")
    amp: bool = Field(True, description="on CUDA, run the network in bf16 (fp16 where bf16 is unsupported) autocast")
    runtime: Literal["eager", "compile"] = Field("eager", description="torch eager (default) or torch.compile")
    chunks: Block = Field(None, description="output chunk shape (default: the image's)")
    torch_threads: Optional[WholeNumber] = Field(None, ge=1, description="torch threads per task (default: leave them)")
    prefetch: bool = Field(True, description="read a block's next input row during compute")
    pyramid_levels: Optional[int] = Field(
        None, ge=1, description="multiscale levels of every prediction channel (default: automatic; 1: none)"
    )
    scale: Scale = Field(None, description="resample the input by this factor, 1 or 3 values (default: from the voxel sizes; 1: off)")
    diameter: Annotated[Optional[Union[float, str]], BeforeValidator(_diameter)] = Field(
        None, description="the image's typical nucleus diameter (17um, 34px; a bare number is µm), auto (estimated) or "
        f"off (default: off; blockseg predict's: {CLI_DIAMETER})",
    )  # fmt: skip
    polarity: Optional[Literal["bright", "dark", "auto"]] = Field(
        None, description="nuclei brighter or darker than around them (default: the checkpoint's model card; auto: detected)"
    )

    @field_validator("mc_samples")
    @classmethod
    def _mc_samples(cls, v: int) -> int:
        if v == 1:
            raise ValueError("MC-dropout needs at least 2 samples (or 0 for off), got 1")
        return v


def predict_options(spell: Callable[[str], str] | None = None, **values) -> PredictOptions:
    """:class:`PredictOptions` from keyword values, as given (None is a value: ``patch=None`` is
    the training patch). One :class:`~blockseg.errors.BlocksegError` line for a bad value, its
    key spelled by ``spell`` (the CLI's flags)."""
    return validate(PredictOptions, values, spell)
