"""Synthetic NucMM-like volumes: EM or micro-CT images of nuclei with exact instance labels.

Everything is a pure function of *global* voxel coordinates and the seed, so a volume is
identical whatever block shape renders it: :func:`nucleus_table` draws one global list of
nuclei (a clustered point process with hard-core rejection), :func:`render_region` paints the
nuclei intersecting a region and builds the image from noise fields of global coordinates,
blurred over the region plus a 4-sigma halo, and :func:`synthesize` writes a volume block by
block. Modes: ``"em"`` (serial-section EM, NucMM-Z), ``"uct"`` (micro-CT, NucMM-M) and
``"fluo"`` (a fluorescence nuclear stain with an anisotropic PSF, intensity drift and shot
noise).

Examples
--------
>>> p = preset_params("nucmm-m", shape=(64, 64, 64))
>>> p.voxel_size, p.mode
((0.72, 0.72, 0.72), 'uct')

How a volume is rendered and what each mode looks like: ``docs/api/synth.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .runtime._jit import njit
from .errors import BlocksegError
from .grid import BlockGrid, default_block_shape
from .io.volume import DEFAULT_CHUNKS, create_label_volume, create_volume, open_volume, parse_voxel_size
from .io.safety import aborts_on_error, prepare_output
from .io.tables import write_table
from .zyx import zyx
from .io.pyramid import finish_volume
from .io.storage import open_file
from .runtime.cluster import block_voxels, run_blocks

MODES = ("em", "uct", "fluo")
#: fluorescence PSF sigma (z, y, x) in µm, depth over which the signal falls by 1/e (µm),
#: relative amplitude and length scale (µm) of the uneven illumination
FLUO_PSF_UM = (0.6, 0.2, 0.2)
FLUO_DEPTH_UM = 80.0
FLUO_DRIFT, FLUO_DRIFT_UM = 0.3, 40.0
#: relative size of the tissue blob of the valid-region mask (about 70 % of the volume)
TISSUE_RADIUS = 1.08


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a synthetic volume (all sizes in µm unless noted).

    Defaults match NucMM-Z: 0.48 x 0.51 x 0.51 µm voxels and ~170 k nuclei per 1.15 G voxels.
    """

    shape: tuple[int, int, int] = (397, 1450, 2000)
    voxel_size: tuple[float, float, float] = (0.48, 0.51, 0.51)
    #: nuclei per voxel (NucMM-Z: 170 000 / (397 * 1450 * 2000))
    density: float = 1.48e-4
    #: mean nucleus radius and its relative spread
    radius: float = 2.6
    radius_spread: float = 0.15
    #: relative difference between the ellipsoid's semi-axes
    elongation: float = 0.2
    #: fraction of nuclei born in clusters, mean cluster size and spread
    cluster_fraction: float = 0.7
    cluster_size: float = 8.0
    cluster_spread: float = 3.0
    #: two centres closer than this fraction of their radii sum are not both kept
    min_separation: float = 0.85
    #: relative amplitude of the surface perturbation
    roughness: float = 0.08
    mode: str = "em"
    #: also write a valid-region mask (a smooth tissue-shaped region; no nuclei outside)
    mask: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "shape", zyx(self.shape, "shape", at_least=1, scalar=False))
        object.__setattr__(self, "voxel_size", parse_voxel_size(self.voxel_size))
        if self.mode not in MODES:
            raise BlocksegError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("density", "radius"):
            if not getattr(self, name) > 0:
                raise BlocksegError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("radius_spread", "elongation", "roughness", "cluster_spread", "min_separation"):
            if not getattr(self, name) >= 0:
                raise BlocksegError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.cluster_fraction <= 1:
            raise BlocksegError(f"cluster_fraction must be in [0, 1], got {self.cluster_fraction}")
        if self.radius_spread >= 0.5 or self.elongation >= 0.5:
            raise BlocksegError("radius_spread and elongation must be below 0.5")
        if self.cluster_size < 1:
            raise BlocksegError(f"cluster_size must be at least 1, got {self.cluster_size}")
        if not 0 <= int(self.seed) < 2**63:
            raise BlocksegError(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def blur_sigma(self) -> float:
        """Gaussian PSF sigma in voxels."""
        return 0.7 if self.mode == "em" else 1.2

    @property
    def psf_sigma(self) -> tuple[float, float, float]:
        """Gaussian PSF sigma in voxels per axis (anisotropic for ``"fluo"``)."""
        if self.mode == "fluo":
            return tuple(max(0.5, um / v) for um, v in zip(FLUO_PSF_UM, self.voxel_size))  # type: ignore[return-value]
        return (self.blur_sigma,) * 3  # type: ignore[return-value]

    @property
    def halo(self) -> tuple[int, int, int]:
        """Context a region needs for the PSF blur to be exact in its core."""
        return tuple(int(math.ceil(4 * s)) for s in self.psf_sigma)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: presets named after the volumes they imitate
PRESETS: dict[str, dict[str, Any]] = {
    "nucmm-z": dict(shape=(397, 1450, 2000), voxel_size=(0.48, 0.51, 0.51), density=1.48e-4, radius=2.6, mode="em"),
    # NucMM-M: ~7000 nuclei in 700 x 996 x 968 at 0.72 µm isotropic
    # fluorescence nuclei (confocal-like sampling, ~5 µm nuclei, moderately dense), for pre-training
    "fluo": dict(shape=(64, 256, 256), voxel_size=(0.5, 0.25, 0.25), density=4e-4, radius=2.6, cluster_fraction=0.5,
                 mode="fluo"),
    "nucmm-m": dict(
        shape=(700, 996, 968), voxel_size=(0.72, 0.72, 0.72), density=1.04e-5, radius=4.5, cluster_fraction=0.4, mode="uct"
    ),
}


def preset_params(preset: str, **overrides) -> SynthParams:
    """:class:`SynthParams` of a named preset, with every override that is not None applied."""
    if preset not in PRESETS:
        raise BlocksegError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return SynthParams(**kw)


# ----------------------------------------------------------------------------- nuclei
@dataclass(frozen=True)
class NucleusTable:
    """The global nuclei of a synthetic volume (ids 1..n, in (z, y, x) order of centres).

    ``centre`` is in voxel coordinates; ``inv_axes[i]`` maps a physical offset (µm) from the
    centre to the unit-ball frame of nucleus ``i``; ``lo``/``hi`` bound its voxels.
    """

    centre: np.ndarray  # (n, 3) float64, voxels
    radii: np.ndarray  # (n, 3) float64, µm, semi-axes
    inv_axes: np.ndarray  # (n, 3, 3) float64
    lo: np.ndarray  # (n, 3) int64
    hi: np.ndarray  # (n, 3) int64, exclusive

    def __len__(self) -> int:
        return len(self.centre)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(1, len(self) + 1, dtype=np.uint32)

    def in_region(self, region: Sequence[slice]) -> np.ndarray:
        """Indices of nuclei whose bounding box intersects ``region``."""
        start = np.array([s.start for s in region])
        stop = np.array([s.stop for s in region])
        return np.flatnonzero(np.all((self.hi > start) & (self.lo < stop), axis=1))


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform random rotation matrices (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def tissue_mask(params: SynthParams, region: Sequence[slice]) -> np.ndarray:
    """The valid-region mask over ``region``: a smooth tissue-like blob filling most of the volume."""
    origin = np.array([s.start for s in region], dtype=np.int64)
    shape = tuple(s.stop - s.start for s in region)
    scale, seed = _tissue_noise(params)
    warp = _value_noise(origin, shape, scale, seed)
    z, y, x = [np.arange(o, o + n) for o, n in zip(origin, shape)]
    return _tissue_inside(params, z[:, None, None], y[None, :, None], x[None, None, :], warp)


def _in_tissue(params: SynthParams, centres_vox: np.ndarray) -> np.ndarray:
    """Whether each centre (voxel coordinates) lies inside :func:`tissue_mask`."""
    idx = np.clip(np.floor(centres_vox).astype(np.int64), 0, np.asarray(params.shape) - 1)
    scale, seed = _tissue_noise(params)
    warp = np.empty(len(idx), np.float32)
    _value_noise_points(idx, scale, seed, warp)
    return _tissue_inside(params, idx[:, 0], idx[:, 1], idx[:, 2], warp)


def _tissue_fraction(params: SynthParams) -> float:
    """Fraction of the volume inside the tissue mask, estimated on a coarse lattice."""
    step = np.maximum(np.asarray(params.shape) // 48, 1)
    pts = np.stack(np.meshgrid(*[np.arange(0, s, st) for s, st in zip(params.shape, step)], indexing="ij"), -1)
    return float(_in_tissue(params, pts.reshape(-1, 3).astype(np.float64)).mean())


def _tissue_noise(params: SynthParams) -> tuple[np.ndarray, int]:
    """Lattice spacing (voxels, ~3 cells per axis) and seed of the tissue outline's noise."""
    return np.maximum(np.asarray(params.shape) / 3.0, 1.0), params.seed + 7


def _tissue_inside(params: SynthParams, z, y, x, warp) -> np.ndarray:
    """The tissue rule shared by :func:`tissue_mask` and :func:`_in_tissue` (voxel indices)."""
    rz, ry, rx = [(2.0 * (c + 0.5) / n - 1.0) for c, n in zip((z, y, x), params.shape)]
    r = np.sqrt(0.5 * rz**2 + ry**2 + rx**2)
    return (r + 0.35 * (warp - 0.5)) < TISSUE_RADIUS


@lru_cache(maxsize=4)
def nucleus_table(params: SynthParams) -> NucleusTable:
    """Draw the global nuclei of ``params`` (deterministic in ``params.seed``; cached).

    A Thomas cluster process (``cluster_fraction`` of nuclei around cluster parents, the rest
    uniform) is thinned by hard-core rejection: of two centres closer than ``min_separation``
    times the sum of their radii, the later one is dropped. Centres may lie up to one radius
    outside the volume, so nuclei are cut by its border as in a real crop.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(params.seed), 0x5EED]))
    vs = np.asarray(params.voxel_size)
    shape = np.asarray(params.shape, dtype=np.float64)
    extent = shape * vs
    r_max = params.radius * (1 + 3 * params.radius_spread) * (1 + params.elongation)
    lo_um, hi_um = -0.5 * params.radius, extent + 0.5 * params.radius
    target = params.density * float(np.prod(shape)) * float(np.prod(hi_um - lo_um) / np.prod(extent))
    # draw more than needed: rejection removes some; the surplus is cut at the end
    n_draw = rng.poisson(target * 2.5)
    n_clustered = int(n_draw * params.cluster_fraction)
    n_parents = max(1, int(round(n_clustered / params.cluster_size)))
    parents = rng.uniform(lo_um, hi_um, size=(n_parents, 3))
    members = rng.integers(0, n_parents, size=n_clustered)
    pts = np.concatenate(
        [
            parents[members] + rng.normal(0, params.cluster_spread, size=(n_clustered, 3)),
            rng.uniform(lo_um, hi_um, size=(n_draw - n_clustered, 3)),
        ]
    )
    pts = pts[np.all((pts >= lo_um) & (pts < hi_um), axis=1)]
    pts = pts[rng.permutation(len(pts))]
    radius = params.radius * np.clip(1 + params.radius_spread * rng.standard_normal(len(pts)), 0.5, 1.5)

    # hard-core thinning: drop the later of every too-close pair (vectorised over pairs)
    pairs = cKDTree(pts).query_pairs(2 * r_max * params.min_separation, output_type="ndarray")
    if len(pairs):
        d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
        close = d < params.min_separation * (radius[pairs[:, 0]] + radius[pairs[:, 1]])
        drop = np.zeros(len(pts), bool)
        drop[np.maximum(pairs[close, 0], pairs[close, 1])] = True
        pts, radius = pts[~drop], radius[~drop]
    centre = pts / vs - 0.5  # voxel i covers [i, i+1) µm/vs; its centre is at i + 0.5
    if params.mask:
        inside = _in_tissue(params, centre)
        pts, radius, centre = pts[inside], radius[inside], centre[inside]
        target *= _tissue_fraction(params)  # the density counts per voxel of tissue
    n = min(len(pts), int(round(target)))
    pts, radius, centre = pts[:n], radius[:n], centre[:n]

    axes = radius[:, None] * (1 + params.elongation * rng.uniform(-1, 1, size=(n, 3)))
    rot = _random_rotations(rng, n)
    # u = diag(1/axes) @ R^T @ offset_um  maps the ellipsoid to the unit ball
    inv_axes = rot.transpose(0, 2, 1) / axes[:, :, None]
    reach = axes.max(axis=1) * (1 + 2 * params.roughness)
    lo = np.floor(centre - reach[:, None] / vs).astype(np.int64)
    hi = np.ceil(centre + reach[:, None] / vs).astype(np.int64) + 1

    order = np.lexsort((centre[:, 2], centre[:, 1], centre[:, 0]))
    return NucleusTable(centre[order], axes[order], inv_axes[order], lo[order], hi[order])


# ----------------------------------------------------------------------------- kernels
@njit(inline="always")
def _mix(h):
    # splitmix64 finaliser
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@njit(inline="always")
def _hash01(seed, a, b, c):
    off = np.int64(1) << np.int64(32)  # keep coordinates positive before the cast
    h = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    h = _mix(h ^ np.uint64(a + off))
    h = _mix(h ^ np.uint64(b + off))
    h = _mix(h ^ np.uint64(c + off))
    return (h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(inline="always")
def _smooth(p):
    """Integer cell and smoothstep weight of a lattice coordinate."""
    i = int(math.floor(p))
    f = p - i
    return i, f * f * (3.0 - 2.0 * f)


@njit(inline="always")
def _trilinear(c000, c001, c010, c011, c100, c101, c110, c111, fz, fy, fx):
    c00 = c000 + fx * (c001 - c000)
    c01 = c010 + fx * (c011 - c010)
    c10 = c100 + fx * (c101 - c100)
    c11 = c110 + fx * (c111 - c110)
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


@njit
def _value_noise_kernel(origin, shape, scale, seed, out):
    """Smooth value noise in [0, 1): hashed lattice values, smoothstep-interpolated.

    The lattice values of the region are hashed once into a small table; the result at a
    voxel depends only on its global coordinates, never on the region.
    """
    lo = np.empty(3, np.int64)
    n = np.empty(3, np.int64)
    for a in range(3):
        lo[a] = int(math.floor((origin[a] + 0.5) / scale[a]))
        n[a] = int(math.floor((origin[a] + shape[a] - 0.5) / scale[a])) - lo[a] + 2
    lat = np.empty((n[0], n[1], n[2]), np.float64)
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                lat[i, j, k] = _hash01(seed, lo[0] + i, lo[1] + j, lo[2] + k)
    for z in range(shape[0]):
        iz, fz = _smooth((origin[0] + z + 0.5) / scale[0])
        iz -= lo[0]
        for y in range(shape[1]):
            iy, fy = _smooth((origin[1] + y + 0.5) / scale[1])
            iy -= lo[1]
            for x in range(shape[2]):
                ix, fx = _smooth((origin[2] + x + 0.5) / scale[2])
                ix -= lo[2]
                out[z, y, x] = _trilinear(
                    lat[iz, iy, ix], lat[iz, iy, ix + 1], lat[iz, iy + 1, ix], lat[iz, iy + 1, ix + 1],
                    lat[iz + 1, iy, ix], lat[iz + 1, iy, ix + 1], lat[iz + 1, iy + 1, ix], lat[iz + 1, iy + 1, ix + 1],
                    fz, fy, fx,
                )  # fmt: skip


@njit
def _value_noise_points(points, scale, seed, out):
    """:func:`_value_noise_kernel` evaluated at single voxels ``points`` (n, 3)."""
    for p in range(points.shape[0]):
        iz, fz = _smooth((points[p, 0] + 0.5) / scale[0])
        iy, fy = _smooth((points[p, 1] + 0.5) / scale[1])
        ix, fx = _smooth((points[p, 2] + 0.5) / scale[2])
        out[p] = _trilinear(
            _hash01(seed, iz, iy, ix), _hash01(seed, iz, iy, ix + 1),
            _hash01(seed, iz, iy + 1, ix), _hash01(seed, iz, iy + 1, ix + 1),
            _hash01(seed, iz + 1, iy, ix), _hash01(seed, iz + 1, iy, ix + 1),
            _hash01(seed, iz + 1, iy + 1, ix), _hash01(seed, iz + 1, iy + 1, ix + 1),
            fz, fy, fx,
        )  # fmt: skip


def _value_noise(origin, shape, scale_vox, seed) -> np.ndarray:
    """Value noise over a region; ``scale_vox`` is the lattice spacing in voxels per axis."""
    out = np.empty(shape, np.float32)
    _value_noise_kernel(
        np.asarray(origin, np.int64), np.asarray(shape, np.int64), np.asarray(scale_vox, np.float64), int(seed), out
    )
    return out


@njit
def _white_noise_kernel(origin, seed, out):
    """Approximately standard normal noise per voxel (sum of 4 hashed uniforms)."""
    for z in range(out.shape[0]):
        for y in range(out.shape[1]):
            for x in range(out.shape[2]):
                gz, gy, gx = origin[0] + z, origin[1] + y, origin[2] + x
                s = 0.0
                for k in range(4):
                    s += _hash01(seed + k, gz, gy, gx)
                out[z, y, x] = (s - 2.0) * 1.7320508075688772  # var of the sum is 4/12


@njit
def _paint_kernel(origin, centre, inv_axes, lo, hi, ids, vs, warp, roughness, labels, d1, d2):
    """Assign voxels to the nucleus of smallest normalised distance (< 1); keep the 2nd best."""
    sz, sy, sx = labels.shape
    for n in range(len(ids)):
        z0 = max(lo[n, 0] - origin[0], 0)
        z1 = min(hi[n, 0] - origin[0], sz)
        y0 = max(lo[n, 1] - origin[1], 0)
        y1 = min(hi[n, 1] - origin[1], sy)
        x0 = max(lo[n, 2] - origin[2], 0)
        x1 = min(hi[n, 2] - origin[2], sx)
        m = inv_axes[n]
        for z in range(z0, z1):
            oz = (origin[0] + z - centre[n, 0]) * vs[0]
            for y in range(y0, y1):
                oy = (origin[1] + y - centre[n, 1]) * vs[1]
                for x in range(x0, x1):
                    ox = (origin[2] + x - centre[n, 2]) * vs[2]
                    u0 = m[0, 0] * oz + m[0, 1] * oy + m[0, 2] * ox
                    u1 = m[1, 0] * oz + m[1, 1] * oy + m[1, 2] * ox
                    u2 = m[2, 0] * oz + m[2, 1] * oy + m[2, 2] * ox
                    d = math.sqrt(u0 * u0 + u1 * u1 + u2 * u2) * (1.0 + roughness * (2.0 * warp[z, y, x] - 1.0))
                    if d < d1[z, y, x]:
                        d2[z, y, x] = d1[z, y, x]
                        d1[z, y, x] = d
                        if d < 1.0:
                            labels[z, y, x] = ids[n]
                    elif d < d2[z, y, x]:
                        d2[z, y, x] = d


# ----------------------------------------------------------------------------- rendering
def _region(region: Sequence[slice], shape: Sequence[int]) -> tuple[slice, ...]:
    out = tuple(slice(int(s.start or 0), int(s.stop if s.stop is not None else n)) for s, n in zip(region, shape))
    if len(out) != 3 or any(not 0 <= s.start < s.stop <= n for s, n in zip(out, shape)):
        raise BlocksegError(f"region {region} is not inside the volume {tuple(shape)}")
    return out


def render_labels(params: SynthParams, region: Sequence[slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance labels over ``region`` plus the best and second-best normalised distances."""
    region = _region(region, params.shape)
    table = nucleus_table(params)
    origin = np.array([s.start for s in region], np.int64)
    shape = tuple(s.stop - s.start for s in region)
    sel = table.in_region(region)
    vs = np.asarray(params.voxel_size, np.float64)
    warp = _value_noise(origin, shape, 1.5 / vs, params.seed + 1)
    labels = np.zeros(shape, np.uint32)
    d1 = np.full(shape, 1e9, np.float32)  # "no nucleus": finite, so differences stay finite
    d2 = np.full(shape, 1e9, np.float32)
    _paint_kernel(
        origin, table.centre[sel], table.inv_axes[sel], table.lo[sel], table.hi[sel],
        (sel + 1).astype(np.uint32), vs, warp, float(params.roughness), labels, d1, d2,
    )  # fmt: skip
    return labels, d1, d2


def _image(params: SynthParams, region: tuple[slice, ...], labels, d1, d2, mask) -> np.ndarray:
    """Unblurred float32 image over ``region`` (see module docstring for the looks)."""
    origin = np.array([s.start for s in region], np.int64)
    shape = labels.shape
    vs = np.asarray(params.voxel_size)
    seed = params.seed
    coarse = _value_noise(origin, shape, 3.0 / vs, seed + 2)
    fine = _value_noise(origin, shape, 0.8 / vs, seed + 3)
    inside = labels > 0
    # thin seam where two nuclei meet: second-best distance close to the best one
    seam = inside & (d2 < 1.0) & (d2 - d1 < 0.08)
    envelope = inside & (d1 > 0.86)
    if params.mode == "em":
        img = 150 + 60 * coarse + 35 * fine  # neuropil
        chroma = 70 + 45 * fine + 20 * coarse
        img = np.where(inside, chroma, img)
        img[envelope | seam] = 45 + 15 * fine[envelope | seam]
        noise_sd, resin = 9.0, 225.0
    elif params.mode == "uct":
        img = 120 + 25 * coarse + 10 * fine
        img = np.where(inside, img - 22 + 10 * fine, img)
        img[seam] += 6  # a faint bright gap between touching nuclei
        noise_sd, resin = 14.0, 60.0
    else:  # fluo: shot noise and drift come after the PSF (render_region)
        ids = labels.astype(np.uint64)
        hashed = (ids * np.uint64(2654435761) + np.uint64(int(seed) % 65521 * 40503 + 17)) % np.uint64(10007)
        level = 0.55 + 0.9 * hashed.astype(np.float32) / 10007  # each nucleus its own brightness
        chroma = 130 * level * (1 + 0.25 * fine + 0.1 * coarse)
        img = np.where(inside, chroma, 6 + 4 * coarse)  # dark background, faint autofluorescence
        img[seam] *= 0.45
        noise_sd, resin = 1.0, 4.0
    if mask is not None:
        img = np.where(mask, img, resin + 8 * fine)
    white = np.empty(shape, np.float32)
    _white_noise_kernel(origin, seed + 4, white)
    return (img + noise_sd * white).astype(np.float32)


def _fluo_detection(params: SynthParams, region: tuple[slice, ...], img: np.ndarray) -> np.ndarray:
    """Intensity drift and shot noise of the fluorescence look over ``region`` (after the PSF).

    Drift: ``exp(-depth / FLUO_DEPTH_UM)`` along z times ``1 + FLUO_DRIFT * value noise`` of
    ``FLUO_DRIFT_UM`` spacing (uneven illumination); shot noise: Gaussian with variance equal to
    the signal (grey levels as photon counts). Both are functions of global coordinates.
    """
    origin = np.array([s.start for s in region], np.int64)
    vs = np.asarray(params.voxel_size)
    depth = (origin[0] + np.arange(img.shape[0])) * vs[0]
    light = 1 + FLUO_DRIFT * _value_noise(origin, img.shape, FLUO_DRIFT_UM / vs, params.seed + 5)
    signal = np.maximum(img * np.exp(-depth / FLUO_DEPTH_UM)[:, None, None] * light, 0)
    white = np.empty(img.shape, np.float32)
    _white_noise_kernel(origin, params.seed + 6, white)
    return (signal + np.sqrt(signal) * white).astype(np.float32)


def render_region(params: SynthParams, region: Sequence[slice]) -> dict[str, np.ndarray]:
    """Image, labels and (if ``params.mask``) mask over ``region`` of the synthetic volume.

    The result is bit-identical to the same region cut out of a whole-volume render.

    Returns
    -------
    dict
        ``"image"`` (uint8), ``"labels"`` (uint32), and ``"mask"`` (uint8, 0/1) when asked for.
    """
    core = _region(region, params.shape)
    outer = tuple(
        slice(max(s.start - h, 0), min(s.stop + h, n)) for s, h, n in zip(core, params.halo, params.shape)
    )
    inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
    labels, d1, d2 = render_labels(params, outer)
    mask = tissue_mask(params, outer) if params.mask else None
    img = _image(params, outer, labels, d1, d2, mask)
    img = ndimage.gaussian_filter(img, params.psf_sigma, mode="reflect", truncate=4.0)[inner]
    if params.mode == "fluo":
        img = _fluo_detection(params, core, img)
    out = {
        "image": np.clip(np.rint(img), 0, 255).astype(np.uint8),
        "labels": labels[inner],
    }
    if mask is not None:
        out["mask"] = mask[inner].astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- on disk
@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    path: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    n_nuclei: int
    n_nuclei_visible: int
    foreground_fraction: float
    n_blocks: int
    seconds: float
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _synth_block(block_id: int, path: str, params: SynthParams, grid: BlockGrid) -> tuple[int, np.ndarray]:
    """Render one block's core and write it into the three arrays; return (fg voxels, ids seen)."""
    core = grid[block_id].core
    out = render_region(params, core)
    open_volume(path, mode="r+")[core] = out["image"]
    open_volume(f"{path}/labels/nuclei", mode="r+")[core] = out["labels"]
    if "mask" in out:
        open_volume(f"{path}/labels/valid", mode="r+")[core] = out["mask"]
    labels = out["labels"]
    return int(np.count_nonzero(labels)), np.unique(labels[labels > 0])


@aborts_on_error
def synthesize(
    path: str,
    params: SynthParams,
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    client=None,
    overwrite: bool = False,
    progress: bool = True,
    pyramid_levels: int | None = None,
) -> SynthSummary:
    """Write a synthetic volume to ``path`` as OME-Zarr, block by block on Dask.

    Layout: ``PATH`` (image, uint8), ``PATH/labels/nuclei`` (uint32 instance labels),
    ``PATH/labels/valid`` (uint8 mask, when ``params.mask``) and ``PATH/nuclei.csv`` (the
    global nucleus table: id, centre in voxels, semi-axes in µm). Each block task renders its
    core (plus the blur halo) and writes it; memory per task is bounded by the block size.

    Parameters
    ----------
    path : str
        Output OME-Zarr path; must not exist unless ``overwrite``.
    params : SynthParams
        What to generate.
    chunks, shards : sequence of int, optional
        Storage layout (default chunks :data:`blockseg.io.volume.DEFAULT_CHUNKS`).
    block_shape : sequence of int, optional
        Block (task) shape, a multiple of the chunks (or shards).
    client : distributed.Client, optional
        Dask client; None renders in this process.
    pyramid_levels : int, optional
        Levels of the multiscale pyramid of every volume (None: automatic; 1: none), built
        blockwise once the blocks are written (:mod:`blockseg.io.pyramid`).
    """
    t0 = time.perf_counter()
    output = prepare_output(path, (), overwrite)
    final_path, path = path, output.begin()  # a replacement is written beside the old one
    unit = _create_volumes(path, params, tuple(chunks or DEFAULT_CHUNKS), shards)
    grid = BlockGrid(params.shape, block_shape or default_block_shape(params.shape, unit), 0, unit)

    table = nucleus_table(params)
    _write_table(f"{path}/nuclei.csv", table)
    results = run_blocks(
        partial(_synth_block, path=path, params=params, grid=grid),
        grid.block_ids,
        client=client,
        name="synth",
        progress=progress,
        voxels=block_voxels(grid, grid.block_ids),
    )
    finish_volume(path, levels=pyramid_levels, client=client)
    finish_volume(f"{path}/labels/nuclei", labels=True, levels=pyramid_levels, client=client)
    if params.mask:
        finish_volume(f"{path}/labels/valid", labels=True, levels=pyramid_levels, client=client)
    fg = sum(r[0] for r in results)
    visible = np.unique(np.concatenate([r[1] for r in results])) if results else np.empty(0)
    summary = SynthSummary(
        path=final_path,
        shape=params.shape,
        voxel_size=params.voxel_size,
        n_nuclei=len(table),
        n_nuclei_visible=int(len(visible)),
        foreground_fraction=fg / float(np.prod(params.shape)),
        n_blocks=len(grid),
        seconds=time.perf_counter() - t0,
        params=params.to_dict(),
    )

    with open_file(f"{path}/synth_summary.json", "w") as f:
        json.dump(summary.to_dict(), f, indent=2)
    output.commit()
    return summary


def _create_volumes(path: str, params: SynthParams, chunks: tuple, shards) -> tuple[int, ...]:
    """The empty image and label volumes of a synthetic dataset; returns the image's write unit."""
    meta = {"synth": params.to_dict()}
    image = create_volume(
        path, params.shape, np.uint8, params.voxel_size, chunks, shards,
        name="synthetic " + params.mode, attributes=meta,
    )  # fmt: skip
    label_kw = dict(voxel_size=params.voxel_size, chunks=chunks, shards=shards, attributes=meta)
    create_label_volume(path, "nuclei", params.shape, np.uint32, **label_kw)
    if params.mask:
        create_label_volume(path, "valid", params.shape, np.uint8, **label_kw)
    return image.write_unit


def _write_table(path: str, table: NucleusTable) -> None:
    columns = {"id": table.ids}
    columns.update({f"centre_{a}": table.centre[:, i] for i, a in enumerate("zyx")})
    columns.update({f"axis_{a}_um": table.radii[:, i] for i, a in enumerate("abc")})
    write_table(columns, path, formats={k: "%d" if k == "id" else "%.3f" for k in columns})
