"""Nucleus size of an image, estimated without labels (so ``predict`` needs no ``--diameter``).

The estimator is a scale-space blob census (Lindeberg's scale selection): the image is filtered
with the scale-normalised Laplacian of Gaussian ``-σ² ∇²G_σ`` at diameters ``d = 2√3 σ`` on a
geometric ladder, in micrometres (anisotropic voxels are filtered with σ / voxel size per axis).
A uniform ball of diameter ``d`` gives its strongest response at its centre at exactly
``σ = d / (2√3)``. Every local maximum in (scale, z, y, x) is a blob hypothesis; the estimate is
the median of their diameters *weighted by their volume* (``d³``), i.e. the blob scale that
explains most of the image's volume. Noise specks and chromatin texture make many small maxima
but explain little volume; weighting by count instead let them win on the noisy confocal and the
embryo crops (docs/size-estimate.md has the measurements of the alternatives tried).

Polarity: bright nuclei are maxima of ``-∇²G``, dark ones (micro-CT) of ``+∇²G``; the caller
says which (``predict`` takes it from the model card or ``polarity=``). Large volumes are never
read whole: at most :data:`MAX_BOXES` boxes of at most :data:`BOX_SIDE` voxels (after integer
binning, chosen from the smallest diameter searched) at fixed positions, so the estimate is
deterministic and its memory bounded (about 40 MB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import BlocksegError
from .polarity import card_polarity

#: a ball of diameter d answers the normalised LoG most strongly at σ = d / (2√3)
D_PER_SIGMA = 2.0 * math.sqrt(3.0)
#: scale ladder: diameters a factor 2^(1/7) apart (about 10 %)
LADDER = 2.0 ** (1 / 7)
#: the search range around the network's training diameter: from /8 to x8 (further resampling
#: than 8x is outside what the linear resampling is good for anyway)
RANGE = 8.0
#: a box is at most this many (binned) voxels per axis; at most this many boxes are read
BOX_SIDE = 64
MAX_BOXES = 4
#: the smallest diameter searched spans at least this many (binned) voxels
MIN_VOXELS = 3.0
#: the largest diameter searched is at most this fraction of the box's smallest extent (µm)
MAX_FRACTION = 0.6


@dataclass(frozen=True)
class SizeEstimate:
    """Result of :func:`estimate_diameter` / :func:`estimate_volume_diameter`.

    Attributes
    ----------
    diameter_um : float or None
        Estimated typical nucleus diameter (µm); None when no blob was found.
    blobs : int
        Scale-space maxima that voted.
    boxes : int
        Boxes read.
    polarity : str
        ``"bright"`` or ``"dark"``: which blobs were counted.
    search_um : tuple of float
        The smallest and largest diameter searched (µm).
    """

    diameter_um: float | None
    blobs: int
    boxes: int
    polarity: str
    search_um: tuple[float, float]

    def to_dict(self) -> dict:
        return {"diameter_um": None if self.diameter_um is None else round(self.diameter_um, 4), "blobs": self.blobs,
                "boxes": self.boxes, "polarity": self.polarity, "search_um": [round(v, 4) for v in self.search_um]}  # fmt: skip


def _validate_inputs(voxel_size, polarity, search_um) -> tuple[tuple[float, float, float], tuple[float, float] | None]:
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise BlocksegError(f"the size estimate needs three positive voxel sizes (µm), got {voxel_size!r}")
    if polarity not in ("bright", "dark"):
        raise BlocksegError(f"polarity must be 'bright' or 'dark', got {polarity!r}")
    if search_um is not None:
        lo, hi = (float(v) for v in search_um)
        if not (0 < lo < hi):
            raise BlocksegError(f"the diameter range searched must be 0 < low < high (µm), got {search_um!r}")
        search_um = (lo, hi)
    return vs, search_um  # type: ignore[return-value]


def ladder(low: float, high: float) -> np.ndarray:
    """Diameters (µm) from ``low`` up to ``high``, :data:`LADDER` apart, with one extra level
    on each side (a scale maximum needs neighbours)."""
    n = max(1, int(math.floor(math.log(high / low) / math.log(LADDER))))
    return low * LADDER ** np.arange(-1, n + 2)


def normalised_log(box: np.ndarray, voxel_size: Sequence[float], diameters: Sequence[float]) -> np.ndarray:
    """``-σ² ∇²G_σ * box`` (µm units) for each diameter (``σ = d / 2√3``): shape ``(len(d),) + box.shape``.

    Separable Gaussian derivatives, the box reflected at its faces; positive at the centre of
    a bright ball.

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:40, :40, :40] - 20
    >>> ball = ((z**2 + y**2 + x**2) <= 8**2).astype(np.float32)
    >>> d = np.array([8.0, 16.0, 32.0])
    >>> int(np.argmax(normalised_log(ball, (1, 1, 1), d)[:, 20, 20, 20]))
    1
    """
    from scipy import ndimage as ndi

    box = np.asarray(box, dtype=np.float32)
    out = np.empty((len(diameters),) + box.shape, dtype=np.float32)
    for i, d in enumerate(diameters):
        sigma = float(d) / D_PER_SIGMA
        acc = np.zeros(box.shape, dtype=np.float32)
        for axis in range(3):
            order = [0, 0, 0]
            order[axis] = 2
            acc += ndi.gaussian_filter(box, [sigma / v for v in voxel_size], order=order, mode="reflect") / float(voxel_size[axis]) ** 2
        out[i] = -(sigma**2) * acc
    return out


def blob_votes(box: np.ndarray, voxel_size: Sequence[float], diameters: Sequence[float], polarity: str = "bright") -> np.ndarray:
    """Diameters (µm) of the local maxima in (scale, z, y, x) of the normalised LoG (bright
    blobs; ``polarity="dark"`` counts dark ones); the ladder's end levels only serve as neighbours."""
    from scipy import ndimage as ndi

    response = normalised_log(box, voxel_size, diameters)
    if polarity == "dark":
        response = -response
    peaks = (response == ndi.maximum_filter(response, size=3, mode="nearest")) & (response > 0)
    peaks[0] = peaks[-1] = False
    return np.asarray(diameters, dtype=np.float64)[np.nonzero(peaks)[0]]


def volume_weighted_median(diameters: np.ndarray) -> float | None:
    """Median of ``diameters`` weighted by ``d³`` (the volume each blob explains); None if empty."""
    d = np.sort(np.asarray(diameters, dtype=np.float64))
    if d.size == 0:
        return None
    cw = np.cumsum(d**3)
    return float(d[int(np.searchsorted(cw, 0.5 * cw[-1]))])


def estimate_diameter(image: np.ndarray, voxel_size: Sequence[float], polarity: str = "bright", search_um=None) -> SizeEstimate:
    """Typical nucleus diameter (µm) of a 3-D ``image`` (one box; see :func:`estimate_volume_diameter`
    for large volumes).

    Parameters
    ----------
    image : ndarray
        (z, y, x) intensities.
    voxel_size : sequence of 3 float
        Voxel size (µm).
    polarity : {"bright", "dark"}
        Nuclei brighter (fluorescence, EM) or darker (micro-CT) than around them.
    search_um : (float, float), optional
        Smallest and largest diameter searched (default: 3 voxels to 0.6 of the smallest extent).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = np.zeros((48, 48, 48), np.float32)
    >>> z, y, x = np.mgrid[:48, :48, :48]
    >>> for c in [(12, 12, 12), (12, 36, 30), (36, 14, 34), (34, 34, 12)]:
    ...     img[(z - c[0])**2 + (y - c[1])**2 + (x - c[2])**2 <= 7**2] = 1.0
    >>> est = estimate_diameter(img + 0.05 * rng.standard_normal(img.shape), (1, 1, 1))
    >>> 11 < est.diameter_um < 17.5   # balls of diameter 15 voxels
    True
    """
    vs, search_um = _validate_inputs(voxel_size, polarity, search_um)
    image = np.asarray(image)
    if image.ndim != 3:
        raise BlocksegError(f"the size estimate takes a 3-D (z, y, x) image, got shape {image.shape}")
    low, high = search_um or (MIN_VOXELS * min(vs), MAX_FRACTION * min(n * v for n, v in zip(image.shape, vs)))
    high = min(high, MAX_FRACTION * min(n * v for n, v in zip(image.shape, vs)))
    votes = blob_votes(image, vs, ladder(low, max(high, low * LADDER)), polarity) if high > low else np.zeros(0)
    return SizeEstimate(volume_weighted_median(votes), int(votes.size), 1, polarity, (float(low), float(high)))


def binning(voxel_size: Sequence[float], low_um: float) -> tuple[int, int, int]:
    """Integer bin per axis so that ``low_um`` still spans :data:`MIN_VOXELS` binned voxels."""
    return tuple(max(1, int(low_um / MIN_VOXELS / float(v))) for v in voxel_size)  # type: ignore[return-value]


def box_origins(shape: Sequence[int], side: Sequence[int], n: int = MAX_BOXES) -> list[tuple[int, int, int]]:
    """Origins of at most ``n`` boxes of ``side`` voxels inside ``shape``: centred on the octant
    centres of the volume, in a fixed order (the first four are a tetrahedron), deduplicated
    (a volume no larger than a box gives one box, the whole volume)."""
    order = [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    out: list[tuple[int, int, int]] = []
    for o in order:
        origin = tuple(
            0 if s <= b else int(min(max(round((0.25 + 0.5 * k) * s - b / 2), 0), s - b))
            for k, s, b in zip(o, shape, side)
        )
        if origin not in out:
            out.append(origin)  # type: ignore[arg-type]
        if len(out) == n:
            break
    return out


def _binned(data: np.ndarray, bins: Sequence[int]) -> np.ndarray:
    """Block means over ``bins`` voxels per axis (a trailing remainder is dropped)."""
    data = np.asarray(data, dtype=np.float32)
    shape = [max(1, s // b) for s, b in zip(data.shape, bins)]
    data = data[tuple(slice(0, n * b) for n, b in zip(shape, bins))]
    return data.reshape(shape[0], bins[0], shape[1], bins[1], shape[2], bins[2]).mean(axis=(1, 3, 5))


def estimate_volume_diameter(array, voxel_size: Sequence[float], polarity: str = "bright", expected_um: float | None = None,
                             max_boxes: int = MAX_BOXES) -> SizeEstimate:  # fmt: skip
    """Typical nucleus diameter (µm) of a volume of any size, from a few sampled boxes.

    Parameters
    ----------
    array : array-like
        (z, y, x) volume supporting box reads (numpy, zarr, dask).
    voxel_size : sequence of 3 float
        Voxel size (µm).
    polarity : {"bright", "dark"}
        Nuclei brighter or darker than around them.
    expected_um : float, optional
        A diameter to search around (the network's training nuclei): ``expected / 8`` to
        ``expected * 8``. Without it: 3 voxels up to what a box can hold.
    max_boxes : int
        Boxes read (:func:`box_origins`), each at most :data:`BOX_SIDE` binned voxels a side.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((40, 80, 80), np.float32)
    >>> z, y, x = np.mgrid[:40, :80, :80]
    >>> for c in [(10, 20, 20), (10, 60, 50), (30, 20, 60), (30, 60, 20), (20, 40, 40)]:
    ...     img[((z - c[0]) * 2.0)**2 + (y - c[1])**2 + (x - c[2])**2 <= 8**2] = 1.0
    >>> est = estimate_volume_diameter(img, (2.0, 1.0, 1.0))   # anisotropic voxels, balls of 17 µm
    >>> 13 < est.diameter_um < 21
    True
    """
    vs, _ = _validate_inputs(voxel_size, polarity, None)
    shape = tuple(int(s) for s in array.shape)
    if expected_um is not None and not (math.isfinite(float(expected_um)) and float(expected_um) > 0):
        raise BlocksegError(f"expected_um must be a positive diameter (µm), got {expected_um!r}")
    low = float(expected_um) / RANGE if expected_um else MIN_VOXELS * min(vs)
    bins = binning(vs, low)
    side = [BOX_SIDE * b for b in bins]
    bvs = tuple(v * b for v, b in zip(vs, bins))
    votes = []
    origins = box_origins(shape, side, max_boxes)
    extent = min(min(s, b) // bn * v for s, b, bn, v in zip(shape, side, bins, bvs))
    high = MAX_FRACTION * extent
    if expected_um:
        high = min(high, float(expected_um) * RANGE)
    for origin in origins:
        box = tuple(slice(o, o + min(s, b)) for o, s, b in zip(origin, shape, side))
        data = _binned(np.asarray(array[box]), bins)
        if high > low and min(data.shape) >= 3:
            votes.append(blob_votes(data, bvs, ladder(low, high), polarity))
    votes_all = np.concatenate(votes) if votes else np.zeros(0)
    return SizeEstimate(volume_weighted_median(votes_all), int(votes_all.size), len(origins), polarity, (float(low), float(max(high, low))))


#: an estimate within this factor of the network's training diameter counts as the same size:
#: the image is resampled by voxel size alone (the estimator's error on the real crops is up to
#: about 25 %, docs/size-estimate.md; correcting by less would follow its noise)
SAME_SIZE = 1.25


def _cached_estimate(path: str, shape, voxel_size, polarity: str, expected_um: float, array) -> SizeEstimate:
    key = (path, tuple(shape), tuple(float(v) for v in voxel_size), polarity, float(expected_um))
    if key not in _CACHE:  # predict plans twice (the CLI's dry run, then the run): estimate once
        _CACHE.clear()
        _CACHE[key] = estimate_volume_diameter(array, voxel_size, polarity, expected_um)
    return _CACHE[key]


_CACHE: dict = {}


def resolve_diameter(diameter, scale, vol, path: str, meta: dict, polarity: str | None) -> tuple[object, dict]:
    """What ``predict`` passes on as the image's nucleus diameter, and a record of why.

    ``diameter``: None (no estimate, the library's default), ``"auto"`` (estimate: the CLI's
    default), ``"off"`` (no estimate), or a size (``17um``, ``34px``: given, it overrides).
    Returns ``(diameter for resolve_scale or None, record)``; ``record["line"]`` is the one
    line predict prints, the rest goes into the provenance.
    """
    if diameter is None or (isinstance(diameter, str) and diameter.strip().lower() == "off"):
        why = "--diameter off" if diameter is not None else "not asked for"
        return None, {"source": "off", "line": f"nucleus size: not estimated ({why})"}
    if not (isinstance(diameter, str) and diameter.strip().lower() == "auto"):
        return diameter, {"source": "given", "line": f"nucleus size: {diameter} (given, --diameter)"}
    net_d, net_vs = meta.get("nucleus_diameter_um"), meta.get("voxel_size")
    if scale is not None and not (isinstance(scale, str) and scale == "auto"):
        reason = "--scale given"
    elif not net_d or not net_vs:
        reason = "the checkpoint records no training nucleus diameter and voxel size"
    elif vol.voxel_size_source == "default":
        reason = "the image's voxel size is unknown (pass --voxel-size)"
    else:
        reason = None
    if reason:
        return None, {"source": "off", "line": f"nucleus size: not estimated ({reason})"}

    pol = polarity if polarity in ("bright", "dark") else (card_polarity(meta.get("normalisation")) or "bright")
    est = _cached_estimate(path, vol.shape, vol.voxel_size, pol, float(net_d), vol.array)
    record = {"source": "estimated", **est.to_dict(), "network_diameter_um": round(float(net_d), 4)}
    if est.search_um[1] < SAME_SIZE * float(net_d):  # it could not tell "the same size" from "smaller"
        record["line"] = (f"nucleus size: not estimated (the volume is too thin: blobs up to {est.search_um[1]:.3g} µm fit, "
                          f"the network's nuclei are {float(net_d):.3g} µm); resampled by voxel size alone")  # fmt: skip
        return None, record
    if est.diameter_um is None:
        record["line"] = f"nucleus size: no {pol} blobs found in {est.boxes} box(es); resampled by voxel size alone"
        return None, record
    ratio = est.diameter_um / float(net_d)
    head = (f"nucleus size: estimated {est.diameter_um:.3g} µm ({pol} blobs, scale-space census of {est.boxes} box(es); "
            f"--diameter overrides, --diameter off disables)")  # fmt: skip
    if 1 / SAME_SIZE <= ratio <= SAME_SIZE:
        record["line"] = f"{head}: within {SAME_SIZE - 1:.0%} of the network's {float(net_d):.3g} µm, resampled by voxel size alone"
        return None, record
    record["line"] = f"{head}: the network's nuclei are {float(net_d):.3g} µm, resampled to match"
    return f"{est.diameter_um}um", record
