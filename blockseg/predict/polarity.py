"""Polarity: whether nuclei are brighter (fluorescence, EM crops) or darker (micro-CT) than around them.

A network learns one polarity. Its model card records it (``metadata["normalisation"]["polarity"]``,
``"bright"`` or ``"dark"``), and :func:`orient` decides how a volume is fed to it:

* by default the input is taken to have the card's polarity (fed as it is);
* ``polarity="bright"`` / ``"dark"`` states the input's polarity; when it differs from the card's,
  the normalisation is inverted, ``x' = (p_high - x) / (p_high - p_low)`` (the affine map's offset
  moves to the top of the range and its scale changes sign), so the network sees its own polarity;
* ``polarity="auto"`` takes the polarity :func:`detect_polarity` finds (refused when it is unsure).

Whatever decides, the choice and its source go into the normalisation's description (printed by
``predict``) and provenance. A label-free check (:func:`detect_polarity`) runs whenever the card
records a polarity: when it finds the other polarity than the one used, one warning line says so;
nothing switches silently.

The check is a blob test at the card's nucleus size: the scale-normalised Laplacian of Gaussian
of the percentile-normalised image at σ = r / √3 (r the nucleus radius times 0.7, 1 and 1.4); at
each scale the mean of the strongest ``k`` bright-blob extrema is compared with that of the ``k``
strongest dark-blob extrema (``k`` = the number of nuclei the box could hold), and the log ratios are
summed. Positive: bright nuclei. On the real dev crops (``../shared/data/real``) at their nuclei's
median diameter it is right for all seven (confocal, X-ray micro-CT, EM), with margins 0.33 (EM)
to 1.97 (BBBC050); ``|score| <`` :data:`UNSURE` reports "unsure". At a model card's nucleus size
(``xct`` 4.4 µm, ``em`` 2.8 µm) on the same crops it was unsure 3 times in 14, wrong never
(docs/results-modalities.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..errors import BlocksegError, warn
from ..io.volume import open_volume
from .normalise import check_input

POLARITIES = ("bright", "dark")
#: below this absolute blob-test score the check says "unsure" (and ``auto`` is refused)
UNSURE = 0.2
#: the check reads at most this many voxels per axis (a central box of a large volume)
MAX_SIDE = 96
#: nucleus radius multiples of the blob test's scales
SCALES = (0.7, 1.0, 1.4)


@dataclass(frozen=True)
class PolarityCheck:
    """Result of :func:`detect_polarity`.

    Attributes
    ----------
    polarity : str or None
        ``"bright"``, ``"dark"``, or None when unsure.
    score : float
        Summed log ratio of bright- to dark-blob responses (positive: bright nuclei).
    diameter_um : float
        Nucleus diameter the test looked for.
    """

    polarity: str | None
    score: float
    diameter_um: float

    def describe(self) -> str:
        found = f"nuclei look {self.polarity}" if self.polarity else "unsure"
        return f"{found} (blob test score {self.score:+.2f} at a {self.diameter_um:.3g} µm nucleus size)"

    def to_dict(self) -> dict:
        return {"polarity": self.polarity, "score": self.score, "diameter_um": self.diameter_um}


def _validate_polarity(polarity, allow_auto: bool = True) -> None:
    allowed = POLARITIES + (("auto",) if allow_auto else ())
    if polarity is not None and polarity not in allowed:
        raise BlocksegError(f"polarity must be one of {', '.join(allowed)}, got {polarity!r}")


def card_polarity(meta: dict | None) -> str | None:
    """The polarity a checkpoint's ``metadata["normalisation"]`` records (None: not recorded)."""
    p = (meta or {}).get("polarity")
    _validate_polarity(p, allow_auto=False)
    return p


def detect_polarity(image: np.ndarray, voxel_size: Sequence[float], diameter_um: float) -> PolarityCheck:
    """Whether the nuclei of ``image`` are brighter or darker than their surroundings (no labels).

    Parameters
    ----------
    image : ndarray, 3D
        Raw intensities, axes (z, y, x).
    voxel_size : sequence of 3 float
        µm per voxel.
    diameter_um : float
        Typical nucleus diameter (µm), e.g. the model card's.

    Returns
    -------
    PolarityCheck

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.mgrid[:32, :32, :32]
    >>> img = np.full((32, 32, 32), 100.0)
    >>> for c in ((8, 8, 8), (8, 22, 20), (22, 10, 22), (22, 22, 9)):
    ...     img[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 25] = 40.0
    >>> img += np.random.default_rng(0).normal(0, 3, img.shape)
    >>> detect_polarity(img, (1, 1, 1), 10.0).polarity
    'dark'
    >>> detect_polarity(-img, (1, 1, 1), 10.0).polarity
    'bright'
    """
    from scipy import ndimage as ndi

    x = np.asarray(image, np.float32)
    if x.ndim != 3:
        raise BlocksegError(f"detect_polarity needs a 3D image, got {x.ndim}D")
    if not diameter_um > 0:
        raise BlocksegError(f"detect_polarity needs a positive nucleus diameter, got {diameter_um}")
    vs = np.asarray(voxel_size, float)
    lo, hi = np.percentile(x, [1.0, 99.8])
    x = (x - lo) / max(float(hi - lo), 1e-12)
    k = max(3, int(x.size * np.prod(vs) / (np.pi / 6 * diameter_um**3)))
    score = 0.0
    for f in SCALES:
        r_um = f * diameter_um / 2
        sigma = r_um / np.sqrt(3) / vs
        log = ndi.gaussian_laplace(x, sigma) * float(np.mean(sigma * vs)) ** 2
        radius = np.maximum(1, np.round(r_um / vs)).astype(int)
        footprint = np.ones(tuple(2 * q + 1 for q in radius), bool)
        score += float(np.log(_top_extrema(-log, footprint, k) / _top_extrema(log, footprint, k)))
    polarity = None if abs(score) < UNSURE else ("bright" if score > 0 else "dark")
    return PolarityCheck(polarity, round(score, 3), float(diameter_um))


def _top_extrema(response: np.ndarray, footprint: np.ndarray, k: int) -> float:
    """Mean of the ``k`` largest positive local maxima of ``response`` (a tiny floor when none)."""
    from scipy import ndimage as ndi

    peaks = response[(response == ndi.maximum_filter(response, footprint=footprint)) & (response > 0)]
    return float(np.sort(peaks)[::-1][:k].mean()) + 1e-12 if peaks.size else 1e-12


def detect_volume_polarity(path: str, voxel_size: Sequence[float], diameter_um: float) -> PolarityCheck:
    """:func:`detect_polarity` on a central box (at most :data:`MAX_SIDE` voxels a side) of a volume."""

    arr = open_volume(path).array
    box = tuple(slice(max(0, (n - MAX_SIDE) // 2), max(0, (n - MAX_SIDE) // 2) + min(n, MAX_SIDE)) for n in arr.shape)
    return detect_polarity(np.asarray(arr[box]), voxel_size, diameter_um)


def orient(resolved, card: str | None, polarity: str | None = None, check: PolarityCheck | None = None, name: str = "the image"):
    """A :class:`~blockseg.predict.normalise.Resolved` normalisation fed in the network's polarity.

    Parameters
    ----------
    resolved : Resolved
        The volume's normalisation under the checkpoint's scheme.
    card : str or None
        The checkpoint's recorded polarity (:func:`card_polarity`).
    polarity : {None, "bright", "dark", "auto"}
        The input's polarity: None, the card's; ``"auto"``, the check's.
    check : PolarityCheck, optional
        The label-free check of this volume; it warns (one line) when it disagrees with the
        polarity used.

    Returns
    -------
    Resolved
        With an inverted affine map when the input's polarity differs from the card's, its
        description naming the polarity used and why, and ``polarity`` (provenance) set.
    """

    _validate_polarity(polarity)
    if card is None:
        if polarity is not None:
            raise BlocksegError("this checkpoint's model card records no polarity (bright or dark nuclei): "
                                "--polarity cannot be applied to it")  # fmt: skip
        return resolved
    if polarity == "auto":
        if check is None or check.polarity is None:
            raise BlocksegError(f"{name}: polarity auto: the check is {check.describe() if check else 'not available'}; "
                                "give --polarity bright or dark")  # fmt: skip
        used, source = check.polarity, "detected"
    elif polarity is not None:
        used, source = polarity, "given"
    else:
        used, source = card, "the model card's"
    inverted = used != card
    affine = resolved.affine
    if inverted:
        if affine is None:
            raise BlocksegError("this checkpoint records no normalisation: an inverted polarity cannot be applied")
        affine = {"offset": affine["offset"] + affine["scale"], "scale": -affine["scale"]}
    desc = (f"{resolved.description}; polarity: {used} nuclei ({source}), "
            + (f"inverted for this network (trained on {card} nuclei)" if inverted else "fed as it is")
            + (f"; check: {check.describe()}" if check else ""))  # fmt: skip
    if check is not None and check.polarity is not None and check.polarity != used:
        warn(f"{name}: {check.describe()}, but they are taken as {used} ({source}); "
             f"if they are {check.polarity}, pass --polarity {check.polarity}")  # fmt: skip
    record = {"network": card, "input": used, "source": source, "inverted": inverted,
              "check": check.to_dict() if check else None}  # fmt: skip
    return replace(resolved, affine=affine, description=desc, polarity=record)


def orient_volume(resolved, norm_meta: dict | None, path: str, voxel_size, diameter_um: float | None, polarity: str | None = None):
    """:func:`orient` for a volume on disk: the check (when the card records a polarity and a
    nucleus size), then the input check of :func:`~blockseg.predict.normalise.check_input` on the
    intensities as the network sees them (inverted ones too)."""

    card = card_polarity(norm_meta)
    check = detect_volume_polarity(path, voxel_size, diameter_um) if card is not None and diameter_um else None
    out = orient(resolved, card, polarity, check, path)
    stats = out.stats
    if stats is not None and out.polarity and out.polarity["inverted"]:
        stats = replace(stats, median=1 - stats.median, mean=1 - stats.mean)
    check_input(replace(out, stats=stats), norm_meta, path)
    return out
