"""Intensity normalisation that transfers between volumes: per-volume percentiles.

The field's convention (CSBDeep / StarDist) maps the ``low`` and ``high`` percentiles of *each
volume* (default 1 % and 99.8 %) to 0 and 1, so a network does not depend on the raw units of
the next volume (uint8 vs uint16, another laser power, a float export). The percentiles come
from a sampled histogram of the whole volume, every ``step``-th voxel of the global grid,
counted block by block and merged, so they do not depend on the block shape and every block
applies the same affine map.

Checkpoints record their scheme in ``metadata["normalisation"]``: ``percentile`` (with each
training volume's statistics, used to warn when an input looks far from them), or the older
fixed affine map in raw units, which keeps working unchanged.

The scheme in full: ``docs/api/predict.md``, section *Normalisation*.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from typing import Sequence

import numpy as np

from ..errors import BlocksegError, BlocksegWarning
from ..io.volume import open_volume
from ..grid import default_block_shape
from ..runtime.cluster import run_blocks

PERCENTILE = "percentile"
FIXED = "fixed"
DEFAULT_LOW = 1.0
DEFAULT_HIGH = 99.8
#: at most this many voxels are sampled per volume (a strided sample of the global grid)
MAX_SAMPLES = 2**22
#: added to ``p_high - p_low`` as CSBDeep does, so a constant volume maps to zeros
EPS = 1e-20
#: an input is "far" from the training data when its normalised median differs by more than
#: this, or its normalised standard deviation by more than a factor ``STD_FACTOR``
MEDIAN_TOLERANCE = 0.25
STD_FACTOR = 2.0


@dataclass(frozen=True)
class IntensityStats:
    """Percentile statistics of one volume (raw units unless said otherwise).

    Attributes
    ----------
    low, high : float
        Percentiles used (e.g. 1.0 and 99.8).
    p_low, p_high : float
        Their values in the volume's raw units.
    minimum, maximum : float
        Smallest and largest sampled value.
    median, mean, std : float
        Of the sampled values after normalisation (``p_low`` -> 0, ``p_high`` -> 1).
    samples : int
        Voxels sampled.
    step : int
        Sampling stride along every axis of the global grid.
    """

    low: float
    high: float
    p_low: float
    p_high: float
    minimum: float
    maximum: float
    median: float
    mean: float
    std: float
    samples: int
    step: int

    @property
    def constant(self) -> bool:
        """Whether the sampled volume holds a single value (nothing to normalise)."""
        return not self.maximum > self.minimum

    @property
    def degenerate(self) -> bool:
        """Whether ``p_high == p_low`` (percentile normalisation is undefined)."""
        return not self.p_high > self.p_low

    def affine(self) -> dict:
        """``{"offset", "scale"}`` of :func:`blockseg.models.normalise` for this volume.

        A degenerate range (``p_high == p_low`` but not constant: a few bright voxels on a
        flat background) falls back to the sampled ``[min, max]`` range; a constant volume
        maps to zeros. :func:`check_input` warns about both.
        """
        span = self.p_high - self.p_low
        offset = self.p_low
        if not span > 0 and not self.constant:
            offset, span = self.minimum, self.maximum - self.minimum
        return {"offset": float(offset), "scale": float(max(span, 0.0) + EPS)}

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- histograms
def sample_step(shape: Sequence[int], max_samples: int = MAX_SAMPLES) -> int:
    """Smallest stride along every axis that samples at most ``max_samples`` voxels."""
    if max_samples < 1:
        raise BlocksegError(f"max_samples must be positive, got {max_samples}")
    step = max(1, int(math.ceil((math.prod(shape) / max_samples) ** (1 / 3))))
    while math.prod(-(-int(s) // step) for s in shape) > max_samples:
        step += 1
    return step


def box_histogram(data: np.ndarray, origin: Sequence[int], step: int) -> tuple[np.ndarray, np.ndarray]:
    """Histogram ``(values, counts)`` of the global-grid sample inside one box.

    Parameters
    ----------
    data : ndarray
        The box's voxels, raw values.
    origin : sequence of int
        Global coordinates of ``data[0, 0, 0]``.
    step : int
        Sampling stride: voxels whose global coordinates are all multiples of ``step``.
    """
    first = tuple(slice((-int(o)) % step, None, step) for o in origin)
    sample = np.asarray(data[first]).ravel()
    if sample.dtype.kind == "f" and not np.isfinite(sample).all():
        raise BlocksegError("the image holds NaN or infinite values; clean it first")
    if sample.dtype.kind in "bui" and sample.dtype.itemsize <= 2:
        # 8/16-bit images (nearly all microscopy): count by value instead of sorting the sample
        low = int(np.iinfo(sample.dtype).min) if sample.dtype.kind == "i" else 0
        counts = np.bincount(sample.astype(np.int64) - low if low else sample)
        values = np.flatnonzero(counts)
        return (values + low).astype(sample.dtype), counts[values].astype(np.int64)
    values, counts = np.unique(sample, return_counts=True)
    return values, counts.astype(np.int64)


def merge_histograms(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One histogram from several (exact: counts of equal values are added)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        raise BlocksegError("cannot compute intensity statistics of an empty volume")
    values = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, np.bincount(inverse.ravel(), weights=counts, minlength=len(uniq)).astype(np.int64)


def histogram_percentiles(values: np.ndarray, counts: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Percentiles of the sample a histogram describes (numpy's default linear interpolation)."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    rank = np.asarray(q, dtype=np.float64) / 100.0 * (n - 1)
    below = np.floor(rank).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    v = values.astype(np.float64)
    a = v[np.searchsorted(cum, below, side="right")]
    b = v[np.searchsorted(cum, above, side="right")]
    return a + (b - a) * (rank - below)


def stats_from_histogram(values: np.ndarray, counts: np.ndarray, low: float, high: float, step: int) -> IntensityStats:
    """:class:`IntensityStats` of a merged histogram."""
    if not 0 <= low < high <= 100:
        raise BlocksegError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    p_low, p_high, p_med = histogram_percentiles(values, counts, [low, high, 50.0])
    span = float(p_high - p_low) + EPS
    t = (values.astype(np.float64) - p_low) / span
    n = int(counts.sum())
    mean = float((t * counts).sum() / n)
    std = float(math.sqrt(max(float((counts * (t - mean) ** 2).sum() / n), 0.0)))
    return IntensityStats(float(low), float(high), float(p_low), float(p_high), float(values[0]), float(values[-1]),
                          float((p_med - p_low) / span), mean, std, n, int(step))  # fmt: skip


# ---------------------------------------------------------------------------- volumes
def _boxes(shape: Sequence[int], block_shape: Sequence[int]) -> list[tuple[slice, ...]]:
    ranges = [range(0, s, b) for s, b in zip(shape, block_shape)]
    return [tuple(slice(o, min(o + b, s)) for o, b, s in zip(orig, block_shape, shape)) for orig in itertools.product(*ranges)]


def array_statistics(
    array,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    max_samples: int = MAX_SAMPLES,
    block_shape: Sequence[int] | None = None,
) -> IntensityStats:
    """Percentile statistics of an in-memory (or zarr) array, counted box by box in this process.

    ``block_shape`` only changes how the work is split, never the result.
    """
    shape = tuple(int(s) for s in array.shape)
    if len(shape) != 3:
        raise BlocksegError(f"expected a 3D (z, y, x) image, got shape {shape}")
    step = sample_step(shape, max_samples)
    block_shape = tuple(block_shape) if block_shape is not None else shape
    parts = [box_histogram(array[box], [s.start for s in box], step) for box in _boxes(shape, block_shape)]
    return stats_from_histogram(*merge_histograms(parts), low, high, step)


def _path_box_histogram(path: str, boxes: list, step: int, index: int):
    box = boxes[index]
    return box_histogram(np.asarray(open_volume(path).array[box]), [s.start for s in box], step)


def image_statistics(paths: Sequence[str], max_voxels: int = 2**24) -> dict:
    """Global ``{"offset": mean, "scale": std}`` of the training images (a strided sample).

    Computed once before training and stored in the checkpoint, so inference applies the same
    affine map to every block.
    """
    total, total2, n = 0.0, 0.0, 0
    for p in paths:
        v = open_volume(p)
        size = int(np.prod(v.shape))
        step = max(1, int(np.ceil((size / max_voxels) ** (1 / 3))))
        a = np.asarray(v.array[::step, ::step, ::step], dtype=np.float64)
        total += a.sum()
        total2 += (a * a).sum()
        n += a.size
    mean = total / n
    std = float(np.sqrt(max(total2 / n - mean * mean, 0.0)))
    return {"offset": float(mean), "scale": float(std if std > 0 else 1.0), "method": "mean_std"}


def volume_statistics(
    path: str,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    max_samples: int = MAX_SAMPLES,
    client=None,
    block_shape: Sequence[int] | None = None,
) -> IntensityStats:
    """Percentile statistics of an image volume on disk, one task per block (Dask with ``client``).

    Each task opens the volume itself (nothing large is shipped), counts the global-grid
    sample inside its block and returns a small histogram; the histograms are merged here.
    """
    vol = open_volume(path)
    shape = vol.shape
    step = sample_step(shape, max_samples)
    if block_shape is None:
        block_shape = default_block_shape(shape, tuple(min(c, s) for c, s in zip(vol.write_unit, shape)))
    boxes = _boxes(shape, block_shape)
    parts = run_blocks(partial(_path_box_histogram, path, boxes, step), range(len(boxes)), client,
                       name="intensity-stats", progress=False)  # fmt: skip
    return stats_from_histogram(*merge_histograms(parts), low, high, step)


# ---------------------------------------------------------------------------- schemes
def scheme_of(meta: dict | None) -> str:
    """``"percentile"``, ``"fixed"`` (an affine map in raw units) or ``"none"``."""
    if not meta:
        return "none"
    if meta.get("scheme") == PERCENTILE:
        return PERCENTILE
    if "offset" in meta or "scale" in meta:
        return FIXED
    raise BlocksegError(f"unknown normalisation {meta!r} in the checkpoint")


def percentile_metadata(stats: Sequence[IntensityStats]) -> dict:
    """Checkpoint ``metadata["normalisation"]`` of the percentile scheme from its training volumes."""
    if not stats:
        raise BlocksegError("percentile normalisation needs at least one training volume")
    return {
        "scheme": PERCENTILE,
        "low": stats[0].low,
        "high": stats[0].high,
        "training": [s.to_dict() for s in stats],
        "summary": {k: float(np.mean([getattr(s, k) for s in stats])) for k in ("median", "mean", "std")},
    }


@dataclass
class Resolved:
    """The affine map one volume is normalised with, and where it came from.

    Attributes
    ----------
    affine : dict or None
        ``{"offset", "scale"}`` for :func:`blockseg.models.normalise` (None: identity).
    scheme : str
        ``"percentile"``, ``"fixed"`` or ``"none"``.
    stats : IntensityStats or None
        The volume's statistics (percentile scheme).
    description : str
        One line naming the scheme and its values (printed by the CLI, stored in provenance).
    polarity : dict or None
        How the input's polarity was decided (:func:`blockseg.predict.polarity.orient`); None
        when the checkpoint records none.
    """

    affine: dict | None
    scheme: str
    stats: IntensityStats | None
    description: str
    polarity: dict | None = None

    def provenance(self) -> dict:
        d = {"scheme": self.scheme, "affine": self.affine, "description": self.description}
        if self.stats is not None:
            d["statistics"] = self.stats.to_dict()
        if self.polarity is not None:
            d["polarity"] = self.polarity
        return d


def resolve(meta: dict | None, stats_of) -> Resolved:
    """The normalisation of one volume under a checkpoint's scheme.

    Parameters
    ----------
    meta : dict or None
        The checkpoint's ``metadata["normalisation"]``.
    stats_of : callable
        ``stats_of(low, high)`` returns the volume's :class:`IntensityStats` (called only for
        the percentile scheme, or to compare a fixed scheme's input with its training data).
    """
    scheme = scheme_of(meta)
    if scheme == PERCENTILE:
        stats = stats_of(float(meta.get("low", DEFAULT_LOW)), float(meta.get("high", DEFAULT_HIGH)))
        aff = stats.affine()
        desc = (f"percentile: {stats.low:g}-{stats.high:g} % of this volume -> [{stats.p_low:.6g}, {stats.p_high:.6g}] "
                f"mapped to [0, 1] ({stats.samples} sampled voxels, stride {stats.step})")  # fmt: skip
        return Resolved(aff, scheme, stats, desc)
    if scheme == FIXED:
        aff = {"offset": float(meta.get("offset", 0.0)), "scale": float(meta.get("scale", 1.0))}
        how = meta.get("method", "fixed")
        source = "the sidecar's" if how == "sidecar" else "the checkpoint's training data"
        desc = (f"fixed affine map in raw units from {source} ({how}: offset {aff['offset']:.6g}, "
                f"scale {aff['scale']:.6g}); the input must be in the training data's intensity units")  # fmt: skip
        return Resolved(aff, scheme, None, desc)
    return Resolved(None, "none", None, "none: the checkpoint records no normalisation; raw values are fed to the network")


def check_input(resolved: Resolved, meta: dict | None, name: str = "the image", raw_stats=None) -> list[str]:
    """Warn (one :class:`~blockseg.io.formats.BlocksegWarning` line each) about inputs unlike the training data.

    Percentile scheme: a constant or degenerate volume, or a normalised median / spread far
    from the training volumes' (``MEDIAN_TOLERANCE``, ``STD_FACTOR``). Fixed scheme: a raw
    mean more than 3 training standard deviations from the training mean, or a spread off by
    more than a factor 3 (``raw_stats``: :class:`IntensityStats` of the input, if computed).
    Returns the messages.
    """
    msgs = []
    s = resolved.stats if resolved.stats is not None else raw_stats
    if s is not None and s.constant:
        msgs.append(f"{name} is constant (every sampled voxel is {s.minimum:g}): it holds no signal, the network sees a blank input")
    elif resolved.scheme == PERCENTILE and s is not None:
        if s.degenerate:
            msgs.append(f"{name}: the {s.low:g} and {s.high:g} percentiles are equal ({s.p_low:g}); normalised by the sampled "
                        f"range [{s.minimum:g}, {s.maximum:g}] instead")  # fmt: skip
        ref = (meta or {}).get("summary")
        if ref and not s.degenerate:
            far_median = abs(s.median - ref["median"]) > MEDIAN_TOLERANCE
            ratio = (s.std + 1e-12) / (ref["std"] + 1e-12)
            if far_median or not 1 / STD_FACTOR <= ratio <= STD_FACTOR:
                msgs.append(f"{name}: intensities are far from the training data's (normalised median {s.median:.2f} vs "
                            f"{ref['median']:.2f}, spread {s.std:.2f} vs {ref['std']:.2f}); results may be poor")  # fmt: skip
    elif resolved.scheme == FIXED and raw_stats is not None and (meta or {}).get("method") != "sidecar":
        # offset / scale are the training data's mean / s.d. only for blockseg's own checkpoints
        # (and a sidecar's {mean, std}); a sidecar's {offset, scale} is any affine map
        off, sc = resolved.affine["offset"], resolved.affine["scale"]
        mean, std = raw_stats.p_low + raw_stats.mean * (raw_stats.p_high - raw_stats.p_low), raw_stats.std * (raw_stats.p_high - raw_stats.p_low)
        if abs(mean - off) > 3 * sc or not sc / 3 <= std <= 3 * sc:
            msgs.append(f"{name}: intensities (mean {mean:.6g}, s.d. {std:.6g}) are far from the training data's (mean {off:.6g}, "
                        f"s.d. {sc:.6g}) and this checkpoint normalises in raw units; results may be poor")  # fmt: skip

    for m in msgs:
        warnings.warn(m, BlocksegWarning, stacklevel=2)
    return msgs


def resolve_array(meta: dict | None, image, name: str = "the image", warn: bool = True) -> Resolved:
    """:func:`resolve` (and :func:`check_input`) for an in-memory image."""
    cache = {}

    def stats_of(low=DEFAULT_LOW, high=DEFAULT_HIGH):
        if (low, high) not in cache:
            cache[(low, high)] = array_statistics(image, low, high)
        return cache[(low, high)]

    res = resolve(meta, stats_of)
    if warn:
        check_input(res, meta, name, raw_stats=stats_of() if res.scheme == FIXED else None)
    return res


def resolve_volume(meta: dict | None, path: str, client=None, warn: bool = True) -> Resolved:
    """:func:`resolve` (and :func:`check_input`) for an image volume on disk (statistics on Dask)."""
    cache = {}

    def stats_of(low=DEFAULT_LOW, high=DEFAULT_HIGH):
        if (low, high) not in cache:
            cache[(low, high)] = volume_statistics(path, low, high, client=client)
        return cache[(low, high)]

    res = resolve(meta, stats_of)
    if warn:
        check_input(res, meta, path, raw_stats=stats_of() if res.scheme == FIXED else None)
    return res


# ---------------------------------------------------------------------------- training
def training_normalisation(setting, paths: Sequence[str]) -> tuple[dict, list[dict]]:
    """Checkpoint metadata and per-volume affine maps of a training config's ``normalisation``.

    Parameters
    ----------
    setting : str or dict
        ``"percentile"`` (default 1-99.8 %), ``{"percentile": [low, high]}``, ``"mean_std"``
        (one affine map from the training images, in raw units: the older scheme), or a
        fixed ``{"offset", "scale"}``.
    paths : sequence of str
        Training volumes.

    Returns
    -------
    (dict, list of dict)
        ``metadata["normalisation"]`` and one ``{"offset", "scale"}`` per training volume.
    """
    if setting == PERCENTILE or (isinstance(setting, dict) and PERCENTILE in setting):
        low, high = (DEFAULT_LOW, DEFAULT_HIGH) if setting == PERCENTILE else map(float, setting[PERCENTILE])
        stats = [volume_statistics(p, low, high) for p in paths]
        return percentile_metadata(stats), [s.affine() for s in stats]
    if setting == "mean_std":
        meta = image_statistics(paths)
    else:
        meta = dict(setting)
    return meta, [meta] * len(paths)


def volume_affines(meta: dict, paths: Sequence[str]) -> list[dict]:
    """Per-volume affine maps of recorded checkpoint metadata (a resumed training run)."""
    if scheme_of(meta) == PERCENTILE:
        return [volume_statistics(p, meta["low"], meta["high"]).affine() for p in paths]
    return [meta] * len(paths)
