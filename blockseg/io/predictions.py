"""Prediction zarrs: the layout ``segment`` reads and ``predict`` writes.

A prediction store is a zarr group holding one NGFF image volume per channel::

    cells_pred.zarr/            <- plain zarr group (attributes: blockseg.channels)
    cells_pred.zarr/B/          <- OME-Zarr image volume of channel B (see blockseg.io.volume)
    cells_pred.zarr/B/0         <- its (z, y, x) array
    cells_pred.zarr/C/ ...
    cells_pred.zarr/D/ ...

All channels have the same shape, chunks and voxel size. Each channel is stored as float32 /
float16 (the value itself) or as uint8 by its kind: ``"prob"`` (B, C, ...: ``round(p * 255)``),
``"tanh"`` (D, sdt: ``round((d + 1) * 127.5)``); ``"raw"`` channels (cpv_z, ...) are float only
(the layout in full: ``docs/guide/segment.md``, *Prediction store layout*).

The kind of a channel is recorded in the volume's ``blockseg.kind`` attribute; channels named
``D`` default to ``"tanh"``, every other name to ``"prob"``. :func:`decode_channel` turns stored
values back into float32 values; :func:`encode_channel` does the reverse.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import zarr

from ..errors import BlocksegError
from .volume import Volume, _check_exists, _prepare_destination, create_volume, open_volume
from .access import bad_metadata, probe, storage_failure

#: predict's per-block done-markers in a store: one uint8 per block, 1 once its core is final
DONE_ARRAY = "_done"
#: scaling kinds and the channel names that default to them
KINDS = ("prob", "tanh", "raw")
DEFAULT_KIND = {"D": "tanh", "sdt": "tanh", "cpv_z": "raw", "cpv_y": "raw", "cpv_x": "raw", "density": "raw"}
STORED_DTYPES = (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32))


def channel_kind(name: str) -> str:
    """Default scaling kind of a channel name: ``"tanh"`` for D / sdt, else ``"prob"``."""
    return DEFAULT_KIND.get(name, "prob")


def encode_channel(values: np.ndarray, kind: str, dtype=np.uint8) -> np.ndarray:
    """Convert float channel values into their stored representation.

    Parameters
    ----------
    values : ndarray
        Probabilities in [0, 1] (``kind="prob"``) or tanh values in [-1, 1] (``kind="tanh"``).
        Out-of-range values are clipped.
    kind : {"prob", "tanh"}
        Scaling kind.
    dtype : dtype
        uint8 (quantised) or float16 / float32 (stored as is, clipped).

    Returns
    -------
    ndarray of ``dtype``

    Examples
    --------
    >>> encode_channel(np.array([0.0, 0.5, 1.0]), "prob")
    array([  0, 128, 255], dtype=uint8)
    >>> encode_channel(np.array([-1.0, 0.0, 1.5]), "tanh")
    array([  0, 128, 255], dtype=uint8)
    """
    dtype = np.dtype(dtype)
    if kind not in KINDS:
        raise BlocksegError(f"unknown channel kind {kind!r}; use one of {KINDS}")
    if dtype not in STORED_DTYPES:
        raise BlocksegError(f"prediction channels are stored as uint8, float16 or float32, not {dtype}")
    if kind == "raw":
        if dtype.kind != "f":
            raise BlocksegError("raw channels (e.g. cpv vectors) are stored as float16 or float32, not uint8")
        return np.asarray(values).astype(dtype)
    lo = 0.0 if kind == "prob" else -1.0
    v = np.clip(np.asarray(values, dtype=np.float32), lo, 1.0)
    if dtype.kind == "f":
        return v.astype(dtype)
    scaled = v * 255.0 if kind == "prob" else (v + 1.0) * 127.5
    return np.rint(scaled).astype(np.uint8)


def decode_channel(stored: np.ndarray, kind: str) -> np.ndarray:
    """Convert stored channel values back to float32 probabilities / tanh values.

    Floats are returned as float32 unchanged; uint8 is unscaled (``u / 255`` for ``"prob"``,
    ``u / 127.5 - 1`` for ``"tanh"``).

    Examples
    --------
    >>> decode_channel(np.array([0, 255], dtype=np.uint8), "prob")
    array([0., 1.], dtype=float32)
    >>> decode_channel(np.array([0, 255], dtype=np.uint8), "tanh")
    array([-1.,  1.], dtype=float32)
    """
    if kind not in KINDS:
        raise BlocksegError(f"unknown channel kind {kind!r}; use one of {KINDS}")
    stored = np.asarray(stored)
    if stored.dtype.kind == "f":
        return stored.astype(np.float32, copy=False)
    if stored.dtype != np.uint8:
        raise BlocksegError(f"prediction channels are stored as uint8, float16 or float32, not {stored.dtype}")
    if kind == "raw":
        raise BlocksegError("a raw channel (e.g. cpv vectors) must be stored as float16 or float32")
    if kind == "prob":
        return np.multiply(stored, np.float32(1 / 255), dtype=np.float32)
    f = np.multiply(stored, np.float32(1 / 127.5), dtype=np.float32)
    f -= np.float32(1.0)
    return f


def create_predictions(
    path: str | os.PathLike,
    channels: Sequence[str],
    shape: Sequence[int],
    dtype=np.uint8,
    voxel_size: float | Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    kinds: Mapping[str, str] | None = None,
    overwrite: bool = False,
    complete: bool | None = None,
) -> dict[str, Volume]:
    """Create an empty prediction store with one volume per channel.

    Parameters
    ----------
    path : str or path-like
        The group to create (``*.zarr``).
    channels : sequence of str
        Channel names, e.g. ``("B", "C", "D")``.
    shape, voxel_size, chunks
        As for :func:`blockseg.io.volume.create_volume`; shared by all channels.
    dtype : uint8, float16 or float32, or a mapping ``{channel: dtype}``
        Storage dtype of every channel (a mapping gives one per channel, e.g. uint8 for
        probabilities and float32 for raw cpv vectors).
    kinds : mapping, optional
        Scaling kind per channel; default from :func:`channel_kind`.
    overwrite : bool
        Replace an existing store.
    complete : bool, optional
        Record the store as unfinished (``False``: ``predict`` fills it block by block and
        marks it complete at the end, :func:`mark_complete`); readers refuse an unfinished
        store (:func:`open_predictions`). None records nothing: the caller fills it at once.

    Returns
    -------
    dict of str to Volume
    """

    path = str(path)
    if not channels or len(set(channels)) != len(channels):
        raise BlocksegError(f"give distinct channel names, got {list(channels)}")
    if isinstance(dtype, Mapping):
        missing = [c for c in channels if c not in dtype]
        if missing:
            raise BlocksegError(f"no dtype given for channel(s) {missing}")
        dtypes = {c: np.dtype(dtype[c]) for c in channels}
    else:
        dtypes = {c: np.dtype(dtype) for c in channels}
    for dt in dtypes.values():
        if dt not in STORED_DTYPES:
            raise BlocksegError(f"prediction channels are stored as uint8, float16 or float32, not {dt}")
    kinds = {c: (kinds or {}).get(c, channel_kind(c)) for c in channels}
    for c, k in kinds.items():
        if k not in KINDS:
            raise BlocksegError(f"channel {c}: unknown kind {k!r}; use one of {KINDS}")
        if k == "raw" and dtypes[c].kind != "f":
            raise BlocksegError(f"channel {c} holds raw values: store it as float16 or float32, not {dtypes[c]}")
    _prepare_destination(path, overwrite)
    group = zarr.open_group(path, mode="w")
    meta = {"channels": list(channels), "kinds": kinds, **({} if complete is None else {"complete": bool(complete)})}
    group.attrs["blockseg"] = {"predictions": meta}
    out = {}
    for c in channels:
        out[c] = create_volume(
            f"{path.rstrip('/')}/{c}", shape, dtypes[c], voxel_size, chunks, name=c, attributes={"kind": kinds[c]}
        )
    return out


def open_predictions(
    path: str | os.PathLike, channels: Sequence[str] | None = None, mode: str = "r", unfinished_ok: bool = False
) -> dict[str, Volume]:
    """Open a prediction store; return ``{channel: Volume}`` (``mode="r+"`` to write into it).

    An unfinished store (``predict`` interrupted: its ``complete`` flag is False) is refused
    unless ``unfinished_ok`` (``blockseg info`` shows it): its channels hold zeros where blocks
    are missing, and segmenting them would count nothing there without a word.

    Raises
    ------
    BlocksegError
        If the store is missing, is not a prediction store, is unfinished, lacks a requested
        channel, or its channels disagree in shape.
    """
    path = str(path)
    _check_exists(path)

    probe(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        line = storage_failure(exc, path) or bad_metadata(path)  # refused by object storage, damaged metadata
        raise BlocksegError(line or f"{path}: not a zarr group of prediction channels") from None
    meta = checked_metadata(group.attrs.asdict() if hasattr(group.attrs, "asdict") else dict(group.attrs), path)
    if not meta:
        raise BlocksegError(f"{path}: not a blockseg prediction store (no blockseg.predictions attribute)")
    if not unfinished_ok and meta.get("complete") is False:
        raise BlocksegError(_unfinished_message(path))
    names = list(meta["channels"])
    wanted = names if channels is None else list(channels)
    missing = [c for c in wanted if c not in names]
    if missing:
        raise BlocksegError(f"{path}: has channels {names}, missing {missing}")
    out = {c: open_volume(f"{path.rstrip('/')}/{c}", mode=mode) for c in wanted}
    shapes = {c: v.shape for c, v in out.items()}
    if len(set(shapes.values())) > 1:
        raise BlocksegError(f"{path}: channels differ in shape {shapes}")
    return out


#: the keys of a store's ``blockseg.predictions`` attribute, and the JSON type each must have
_META_TYPES = {"channels": list, "kinds": dict, "complete": bool, "run": dict, "decoder": dict}


def checked_metadata(attrs: Mapping, path: str) -> dict | None:
    """A store's ``blockseg.predictions`` attribute (None if absent), its types checked.

    Raises
    ------
    BlocksegError
        One line naming the damaged key (``blockseg.predictions.decoder is int, not an object``)
        instead of a traceback wherever the value is used.
    """
    names = {list: "a list", dict: "an object", bool: "true or false"}

    def damaged(key: str, value, want: type) -> BlocksegError:
        return BlocksegError(f"{path}: damaged prediction store metadata: {key} is {type(value).__name__}, not {names[want]}")

    outer = attrs.get("blockseg", {})
    if not isinstance(outer, dict):
        raise damaged("attribute blockseg", outer, dict)
    meta = outer.get("predictions")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise damaged("blockseg.predictions", meta, dict)
    for key, want in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and not isinstance(value, want):
            raise damaged(f"blockseg.predictions.{key}", value, want)
    bad = [c for c in meta.get("channels") or [] if not isinstance(c, str)]
    if bad:
        raise BlocksegError(f"{path}: damaged prediction store metadata: blockseg.predictions.channels holds {bad[0]!r}, not a name")
    decoder = meta.get("decoder") or {}
    if "name" in decoder and not isinstance(decoder["name"], str):
        raise BlocksegError(
            f"{path}: damaged prediction store metadata: blockseg.predictions.decoder.name is {type(decoder['name']).__name__}, not a name"
        )
    if decoder.get("params") is not None and not isinstance(decoder["params"], dict):
        raise damaged("blockseg.predictions.decoder.params", decoder["params"], dict)
    return meta


def read_metadata(path: str | os.PathLike) -> dict | None:
    """:func:`checked_metadata` of the store at ``path``; None if it is no zarr group."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a group: open_predictions says what is wrong with it
        return None
    return checked_metadata(group.attrs.asdict() if hasattr(group.attrs, "asdict") else dict(group.attrs), str(path))


def blocks_done(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(done, total)`` of ``predict``'s per-block done-markers in a store (None without them)."""
    try:
        markers = zarr.open_array(f"{str(path).rstrip('/')}/{DONE_ARRAY}", mode="r")[...]
    except Exception:  # a store written at once (save_predictions), or no markers yet
        return None
    return int(np.count_nonzero(markers)), int(markers.size)


def _unfinished_message(path: str) -> str:
    counts = blocks_done(path)
    done = f"blocks done: {counts[0]} of {counts[1]}" if counts else "blocks done: none recorded"
    if counts and counts[0] == counts[1]:
        done += ", its multiscale levels unfinished"
    return f"{path}: unfinished prediction store ({done}); rerun predict to resume it"


def check_complete(path: str | os.PathLike) -> None:
    """Refuse (one line, :class:`BlocksegError`) a prediction store ``predict`` has not finished.

    Reads the ``complete`` flag, and for stores written before the flag existed, ``predict``'s
    done-markers (one read per block: call it once, on the driver, not in every task).
    """
    path = str(path)
    try:
        group = zarr.open_group(path, mode="r")
        meta = dict(dict(group.attrs.get("blockseg", {})).get("predictions") or {})
    except Exception:
        return  # open_predictions says what is wrong with it
    if meta.get("complete") is False:
        raise BlocksegError(_unfinished_message(path))
    if "complete" not in meta and meta.get("run"):
        counts = blocks_done(path)
        if counts is not None and counts[0] < counts[1]:
            raise BlocksegError(_unfinished_message(path))


def mark_complete(path: str | os.PathLike) -> None:
    """Record a prediction store as complete (``predict``, once every block and level is written)."""
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["blockseg"])
    attrs["predictions"] = {**dict(attrs["predictions"]), "complete": True}
    group.attrs["blockseg"] = attrs


def prediction_kind(volume: Volume, name: str) -> str:
    """Scaling kind of an opened channel volume (its attribute, else the name's default)."""
    group_attrs = zarr.open_group(volume.path, mode="r").attrs
    return dict(group_attrs.get("blockseg", {})).get("kind", channel_kind(name))


def read_channels(volumes: Mapping[str, Volume], region) -> dict[str, np.ndarray]:
    """Read ``region`` (global slices) of every channel, decoded to float32."""
    return {c: decode_channel(v.array[region], prediction_kind(v, c)) for c, v in volumes.items()}


def save_predictions(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    dtype=np.uint8,
    voxel_size: float | Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    kinds: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Volume]:
    """Write in-memory float channels (``{name: array}``) as a prediction store."""
    names = list(arrays)
    shapes = {np.shape(a) for a in arrays.values()}
    if len(shapes) != 1:
        raise BlocksegError(f"channels differ in shape: {sorted(shapes)}")
    shape = shapes.pop()
    kinds = {c: (kinds or {}).get(c, channel_kind(c)) for c in names}
    if np.dtype(dtype) == np.uint8 and "raw" in kinds.values():
        dtype = np.float32  # raw channels cannot be quantised: store the whole set as float32
    vols = create_predictions(path, names, shape, dtype, voxel_size, chunks, kinds, overwrite)
    for name, vol in vols.items():
        vol.array[...] = encode_channel(arrays[name], prediction_kind(vol, name), vol.dtype)
    return vols


def default_dtype(kind: str) -> str:
    """Storage of a channel by default: uint8 for probabilities and tanh maps (quantised,
    1/255 resp. 1/127.5 steps), float16 for raw values (cpv vectors, density)."""
    return "float16" if kind == "raw" else "uint8"


def plan_store(
    names: Sequence[str],
    kinds: Mapping[str, str],
    decoder: str | None = None,
    extra: Sequence[str] | str | None = None,
    dtype: str | None = None,
    recommended: str | None = None,
) -> tuple[list[str], dict[str, str], str]:
    """Which of a network's channels a prediction store keeps, and each one's dtype.

    Parameters
    ----------
    names, kinds
        The network's output channels (in order) and their kinds.
    decoder : str, optional
        Keep the channels this decoder reads (:data:`blockseg.segment.DECODERS`). Default: the
        checkpoint's ``recommended`` decoder, else the first decoder the channels can feed;
        when none can, every channel is kept.
    extra : sequence of str or "all", optional
        Channels kept besides the decoder's (``"all"``: every channel). A variance channel
        ``X_var`` (MC dropout) is kept with its channel ``X``.
    dtype : {"uint8", "float16", "float32"}, optional
        One storage dtype for every kept channel (raw channels must be float); default per
        channel from :func:`default_dtype`.

    Returns
    -------
    keep : list of str
        Kept channels, in the network's order.
    dtypes : dict
        Storage dtype per kept channel.
    why : str
        One line saying what was kept and why (shown by the dry run, stored in provenance).

    Raises
    ------
    BlocksegError
        For an unknown decoder or channel, a decoder whose channels the network lacks, or a
        uint8 dtype for a raw channel.
    """
    from ..segment import DECODERS  # defers numba and scipy (segment.decoders) until a store is planned

    names = list(names)
    base = [n for n in names if not n.endswith("_var")]
    if decoder is not None and decoder not in DECODERS:
        raise BlocksegError(f"unknown decoder {decoder!r}; choose one of {sorted(DECODERS)}")
    chosen, how = decoder, "asked for"
    if chosen is None and recommended in DECODERS and set(DECODERS[recommended].channels) <= set(base):
        chosen, how = recommended, "recommended by the checkpoint"
    if chosen is None:
        chosen = next((d for d, c in DECODERS.items() if set(c.channels) <= set(base)), None)
        how = "the first decoder the network can feed"
    if extra == "all" or (isinstance(extra, (list, tuple)) and "all" in extra):
        wanted, why = set(names), "all channels (asked for)"
    elif chosen is None:
        wanted, why = set(names), "all channels (no decoder can read this network's channels)"
    else:
        need = DECODERS[chosen].channels
        missing = [c for c in need if c not in base]
        if missing:
            raise BlocksegError(f"decoder {chosen} reads channels {list(need)}; the network predicts {base}, not {missing}")
        wanted = set(need)
        why = f"the {chosen} decoder's channels ({how})"
    extra_list = [] if extra in (None, "all") else [c for c in extra if c != "all"]
    unknown = [c for c in extra_list if c not in names]
    if unknown:
        raise BlocksegError(f"--channels {unknown}: the network predicts {names}")
    if extra_list:
        wanted |= set(extra_list)
        why += " + " + ", ".join(extra_list)
    wanted |= {f"{c}_var" for c in wanted if f"{c}_var" in names}
    keep = [n for n in names if n in wanted]
    if dtype is not None:
        dtype = np.dtype(dtype).name
        if np.dtype(dtype) not in STORED_DTYPES:
            raise BlocksegError(f"prediction channels are stored as uint8, float16 or float32, not {dtype}")
        raw = [c for c in keep if kinds[c] == "raw"]
        if dtype == "uint8" and raw:
            raise BlocksegError(f"channels {raw} are raw values (not probabilities): store them as float16 or float32")
    dtypes = {c: dtype or default_dtype(kinds[c]) for c in keep}
    dropped = [n for n in names if n not in wanted]
    if dropped:
        why += f"; not stored: {', '.join(dropped)}"
    return keep, dtypes, why


def describe_dtypes(dtypes: Mapping[str, str]) -> str:
    """``B, C, D uint8; cpv_z, cpv_y, cpv_x float16``."""
    groups: dict[str, list[str]] = {}
    for c, d in dtypes.items():
        groups.setdefault(d, []).append(c)
    return "; ".join(f"{', '.join(cs)} {d}" for d, cs in groups.items())
