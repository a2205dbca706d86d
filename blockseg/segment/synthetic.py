"""Synthetic nuclei and predictions for tests and benchmarks.

Nuclei are balls (in physical units) cut against each other where they overlap: a voxel
belongs to the nucleus minimising ``distance / radius`` if that ratio is below 1, so
overlapping balls become distinct *touching* nuclei. Any sub-region can be rasterised on its
own (:func:`rasterise`), which is how large volumes are generated blockwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from ..train.targets import bcd_targets


def random_nuclei(
    shape: Sequence[int], n: int, radius: tuple[float, float] = (6.0, 10.0), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random centres (float, voxel coordinates) and radii (physical units)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, size=(n, 3)) * np.asarray(shape, dtype=float)
    radii = rng.uniform(radius[0], radius[1], size=n)
    return centres, radii


def rasterise(
    shape: Sequence[int],
    centres: np.ndarray,
    radii: np.ndarray,
    region: Sequence[slice] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    k: int = 4,
) -> np.ndarray:
    """Labels (uint32, nucleus i -> i + 1) of ``region`` of a volume of ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Volume shape.
    centres : ndarray, (n, 3)
        Nucleus centres in voxel coordinates.
    radii : ndarray, (n,)
        Radii in physical units.
    region : tuple of slice, optional
        Part of the volume to rasterise (default: all of it).
    voxel_size : sequence of float
        Physical voxel size.
    k : int
        Nearest centres considered per voxel (enough when radii vary by less than ~2x).
    """
    region = region or tuple(slice(0, s) for s in shape)
    vs = np.asarray(voxel_size, dtype=float)
    out_shape = tuple(s.stop - s.start for s in region)
    out = np.zeros(out_shape, dtype=np.uint32)
    if len(centres) == 0:
        return out
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in region], indexing="ij")
    pts = np.stack([g.ravel() for g in grids], axis=1) * vs
    tree = cKDTree(centres * vs)
    kk = min(k, len(centres))
    rmax = float(np.max(radii))
    dist, idx = tree.query(pts, k=kk, distance_upper_bound=rmax)
    dist, idx = dist.reshape(len(pts), kk), idx.reshape(len(pts), kk)
    valid = idx < len(centres)
    ratio = np.where(valid, dist / radii[np.minimum(idx, len(centres) - 1)], np.inf)
    best = np.argmin(ratio, axis=1)
    rows = np.arange(len(pts))
    inside = ratio[rows, best] < 1.0
    lab = np.where(inside, idx[rows, best] + 1, 0)
    out[...] = lab.reshape(out_shape)
    return out


def noisy_predictions(
    labels: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    noise: float = 0.0,
    blur: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """B, C, D predictions of ``labels``: perfect targets, optionally blurred and noised.

    ``blur`` is a Gaussian sigma (voxels) applied to each channel, ``noise`` the standard
    deviation of additive Gaussian noise; results are clipped to the channels' ranges.
    """
    t = bcd_targets(labels, voxel_size)
    rng = np.random.default_rng(seed)
    for name, lo in (("B", 0.0), ("C", 0.0), ("D", -1.0)):
        v = t[name]
        if blur:
            v = ndi.gaussian_filter(v, blur)
        if noise:
            v = v + rng.normal(0.0, noise, size=v.shape).astype(np.float32)
        t[name] = np.clip(v, lo, 1.0).astype(np.float32)
    return t
