"""Checks of a whole run config against its data, before the first stage starts.

The schema (:mod:`blockseg.pipeline.config`) checks each value alone; :func:`check_run` checks what
needs the data: the image's shape and chunks as the data stage will make them, the block grids
of predict and segment on them, the ground truth's and the mask's shapes. Every error is one
:class:`BlocksegError` line that names the config key (``config key segment.block_shape: ...``).
"""

from __future__ import annotations

import math
import os

from .config import RunConfig
from .layout import RunLayout, checkpoint_path, segment_decoder
from ..errors import BlocksegError
from ..zyx import zyx
from ..io.storage import has_scheme
from ..grid import BlockGrid, default_block_shape
from ..io.export import parse_region
from ..io.predictions import plan_store
from ..io.volume import DEFAULT_CHUNKS, open_volume
from .tune import labels_cover_volume


def _fail(key: str, message: str):
    raise BlocksegError(f"config key {key}: {message}")


def _decoder_error_key(cfg: RunConfig, message: str) -> tuple[str, str]:
    """The config key a decoder error is about (a parameter of ``segment.params``, the preset,
    else the decoder) and the message without the decoder's name in front."""
    text = message.split(": ", 1)[-1]
    if "unknown parameter" in message:  # as the config's own check says it for a given decoder
        unknown = [n for n in cfg.segment.params if repr(n) in message]
        decoder = message.split(":", 1)[0].replace("decoder", "").strip()
        known = message.split("known: ", 1)[-1].strip("[]").replace("'", "")
        if unknown:
            return f"segment.params.{unknown[0]}", f"not a parameter of the {decoder} decoder (it has {known})"
    for name in cfg.segment.params:
        if text.startswith(f"{name} ") or f" {name}" in text:
            return f"segment.params.{name}", text.split(f"{name} ", 1)[-1] if text.startswith(f"{name} ") else text
    return ("segment.preset" if cfg.segment.preset and cfg.segment.preset in message else "segment.decoder"), message


def planned_image(cfg: RunConfig, image_path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and write unit (chunks, or shards) of the image the data stage will provide.

    Parameters
    ----------
    cfg : RunConfig
    image_path : str
        Where the run reads the image (:class:`blockseg.pipeline.layout.RunLayout` ``image``).
    """

    d = cfg.data
    if d.synth is not None:
        shape = tuple(d.synth.shape)
    elif image_path != os.path.join(os.path.abspath(cfg.run_dir), "image.zarr"):
        try:
            vol = open_volume(image_path)  # a zarr image read in place, with its selection
        except BlocksegError as e:
            _fail("data.image", str(e))
        return tuple(vol.shape), tuple(min(int(c), s) for c, s in zip(vol.write_unit, vol.shape))
    else:  # a file the data stage imports into the run directory
        try:
            src = open_volume(d.image, key=d.image_key, level=d.level, channel=d.channel, timepoint=d.timepoint)
        except BlocksegError as e:
            _fail("data.image", str(e))
        shape = tuple(src.shape)
    chunks = tuple(min(int(c), s) for c, s in zip(d.chunks or DEFAULT_CHUNKS, shape))
    return shape, chunks


def _grid(key: str, shape, block, chunks, what: str):

    if block is None:
        return BlockGrid(shape, default_block_shape(shape, chunks), 0, chunks)
    block = zyx(block, key)
    try:
        return BlockGrid(shape, block, 0, chunks)
    except BlocksegError as e:
        _fail(key, f"{str(e)} ({what} {tuple(shape)}, chunks {tuple(chunks)})")


def check_geometry(cfg: RunConfig, shape, chunks) -> None:
    """The block grids of predict and segment on an image of ``shape`` and write unit
    ``chunks`` (predict keeps the image's chunks; segment reads predict's)."""
    pb = cfg.predict.block_shape
    if pb is not None:  # predict clips a block to the volume (rounded up to whole chunks)
        pb = zyx(pb, "predict.block_shape")
        pb = tuple(min(b, -(-s // c) * c) for b, s, c in zip(pb, shape, chunks))
        if any(b % c for b, c in zip(pb, chunks)):
            bad = ", ".join(axis for axis, b, c in zip("zyx", pb, chunks) if b % c)
            _fail("predict.block_shape", f"{cfg.predict.block_shape} is not a multiple of the image's chunks {tuple(chunks)} "
                  f"on axis {bad} (image {tuple(shape)}): each block must write whole chunks")  # fmt: skip
    _grid("predict.block_shape", shape, pb, chunks, "image")
    sb = cfg.segment.block_shape
    if sb is not None:
        t = zyx(sb, "segment.block_shape")
        bad = [axis for axis, b, c in zip("zyx", t, chunks) if b % c]
        if bad:
            _fail("segment.block_shape", f"{t} is not a multiple of the predictions' chunks {tuple(chunks)} "
                  f"on axis {', '.join(bad)}: each block must write whole chunks")  # fmt: skip
    _grid("segment.block_shape", shape, sb, chunks, "predictions")


def check_predict(cfg: RunConfig, payload: dict) -> None:
    """The predict section against the network: TTA / MC-dropout it supports, the channels
    to keep (``predict.channels``) and their dtype."""
    from ..models import build_model  # torch: loaded when a run checks its network, not with the config
    from ..predict.infer import InferenceOptions, check_options, output_channels

    p = cfg.predict
    model = build_model(payload["architecture"], **payload["config"])
    try:
        check_options(model, InferenceOptions(p.batch_size, "cpu", p.tta, p.mc_samples, True))
    except BlocksegError as e:
        _fail("predict.tta" if p.tta else "predict.mc_samples", str(e))
    names, kinds = output_channels(model, p.mc_samples)
    recommended = ((payload.get("metadata") or {}).get("decoder") or {}).get("name")
    try:
        # no segment.decoder: the one the run will take (the checkpoint's recommendation, else bcd)
        plan_store(names, kinds, cfg.segment.decoder or segment_decoder(cfg, payload).decoder.name, p.channels, p.dtype, recommended)
    except BlocksegError as e:
        m = str(e)
        key = "predict.dtype" if ("stored as" in m or "raw values" in m) else ("predict.channels" if "--channels" in m else "segment.decoder")
        _fail(key, str(e).replace("--channels ", ""))


def check_run(cfg: RunConfig, payload: dict | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Everything about a run that can be checked before its first stage; see the module
    docstring. ``payload``: the checkpoint (:func:`blockseg.models.read_checkpoint`), to check
    the predict section against the network too. Returns the planned image's shape and write
    unit."""
    if payload is not None:
        check_predict(cfg, payload)
    layout = RunLayout.of(cfg)
    shape, chunks = planned_image(cfg, layout.image)
    if math.prod(shape) == 0:
        _fail("data.image", f"the image is empty (shape {shape})")
    check_geometry(cfg, shape, chunks)
    d = cfg.data
    if d.synth is None:
        for key, file_key in (("ground_truth", d.ground_truth_key), ("mask", None)):
            src = getattr(d, key)
            if src is None or has_scheme(src) or not os.path.exists(src.split("#")[0]):
                continue  # none, or remote, or missing (run() reports it)
            try:
                other = tuple(open_volume(src, key=None if src == getattr(layout, key) else file_key).shape)
            except BlocksegError as e:
                _fail(f"data.{key}", str(e))
            if other != shape:
                _fail(f"data.{key}", f"shape {other} differs from the image's {shape}")
    if cfg.segment.tune is not None:
        check_tune(cfg, shape)
    return shape, chunks


def check_tune(cfg: RunConfig, shape) -> None:
    """``segment.tune``: the region lies in the image, the labels exist and fit the image or the region."""

    t = cfg.segment.tune
    try:
        box = parse_region(t.region, shape)
    except BlocksegError as e:
        _fail("segment.tune.region", str(e).replace("--region ", ""))
    try:
        other = tuple(open_volume(t.labels).shape)
    except BlocksegError as e:
        _fail("segment.tune.labels", str(e))
    try:
        labels_cover_volume(other, shape, [(s.start, s.stop) for s in box], "image")
    except BlocksegError as e:
        _fail("segment.tune.labels", str(e))


def check_config(cfg: RunConfig):
    """Every check of a run before its first stage: the checkpoint (exists, is blockseg's), the
    decoder and its parameters against the network's channels, the predict section, the
    geometry against the data (:func:`check_run`).

    Returns
    -------
    payload : dict
        The checkpoint.
    choice : blockseg.segment.params.DecoderChoice
        The segment stage's decoder, with the source of each parameter.
    """
    from ..models import check_decoder_channels, read_checkpoint  # torch, as above

    payload = read_checkpoint(checkpoint_path(cfg))
    try:
        choice = segment_decoder(cfg, payload)
    except BlocksegError as e:  # no segment.decoder: its preset and params are checked here, with the checkpoint's
        _fail(*_decoder_error_key(cfg, str(e)))
    try:
        check_decoder_channels(payload, choice.decoder)
    except BlocksegError as e:
        _fail("segment.decoder", str(e))
    check_run(cfg, payload)
    return payload, choice
