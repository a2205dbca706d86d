"""Training / test targets computed from instance labels.

Every representation of :data:`blockseg.models.base.REPRESENTATIONS` has a target here, computed
by :func:`compute_targets` from a label array (0 = background), its voxel size and, for the
centre-based targets, a *global* table of instance centres (:func:`instance_centres`,
:func:`volume_centres`). Computed on a block with a halo of at least :func:`target_halo` voxels
(and the global centre table), the core of the result equals the core of the whole-volume
result exactly; :func:`write_targets` relies on this to write perfect predictions blockwise.

The representations: **B** (foreground), **C** (contour band), **D** (NucMM's signed tanh
distance, inside to the nearest voxel *not of the same instance*), **cpv** (vector to the
instance's centre), **3label** (background / boundary / interior), **sdt** (signed distance
to the boundary), **aff** (affinities, offset -1), **gauss** (unit peaks at centres) and
**density** (unit-sum Gaussians). The volume border is never a label change. All arrays are
float32; per-voxel loss weights are in :func:`loss_weights`.

Each definition in full: ``docs/api/train.md``, section *Training targets: the definitions*.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Mapping, Sequence

import fastremap
import numpy as np
import zarr
from scipy import ndimage as ndi

from ..runtime._jit import njit
from ..errors import BlocksegError
from ..zyx import zyx
from ..io.predictions import create_predictions, encode_channel, open_predictions, prediction_kind
from ..io.volume import open_volume
from ..models.base import channels_of, check_representations, kinds_of
from ..runtime.cluster import run_blocks

#: NucMM defaults for the tanh distance target
ALPHA = 8.0
BETA = 50.0
#: default clip of the D and sdt distances (in units of the smallest voxel edge)
MAX_DISTANCE = 32.0
#: representations whose targets need instance centres
CENTRE_REPRESENTATIONS = ("cpv", "gauss", "density")

Centres = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TargetParams:
    """Parameters of the targets (defaults are the papers').

    Attributes
    ----------
    contour_width : int
        C: city-block width (voxels) of the contour on each side of a label change.
    alpha, beta : float
        D: inside / outside tanh scales (NucMM: 8 and 50).
    max_distance : float
        D and sdt: distances are clipped here (units of the smallest voxel edge); this bounds
        the halo that makes blockwise targets exact.
    sdt_scale : float
        sdt: ``tanh(distance / sdt_scale)`` (aux-task paper: 9).
    gauss_sigma : float
        gauss: sigma in voxels (aux-task paper: 2).
    density_sigma : float
        density: sigma in micrometres (1).
    truncate : float
        gauss / density: blobs are cut at this many sigmas per axis.
    """

    contour_width: int = 1
    alpha: float = ALPHA
    beta: float = BETA
    max_distance: float = MAX_DISTANCE
    sdt_scale: float = 9.0
    gauss_sigma: float = 2.0
    density_sigma: float = 1.0
    truncate: float = 4.0

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise BlocksegError(f"target parameter {f.name} must be a positive number, got {v!r}")
        if int(self.contour_width) != self.contour_width:
            raise BlocksegError(f"contour_width must be an integer, got {self.contour_width}")

    @classmethod
    def make(cls, params: Mapping | None = None) -> "TargetParams":
        """From keyword parameters; unknown names raise BlocksegError."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(params) - known)
        if bad:
            raise BlocksegError(f"unknown target parameter(s) {bad}; known: {sorted(known)}")
        return cls(**params)

    def to_dict(self) -> dict:
        return asdict(self)


def _spacing(voxel_size: Sequence[float] | None, ndim: int) -> np.ndarray:
    vs = np.ones(ndim) if voxel_size is None else np.asarray(zyx(voxel_size, "voxel size", kind=float, above=0, scalar=False, axes=ndim))
    return vs / vs.min()


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise BlocksegError(f"labels must be a 3D integer array, got {labels.ndim}D {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise BlocksegError("labels must not be negative")
    return labels


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels renumbered 0..n (0 kept) and ``ids`` with ``ids[k]`` = original id of ``k``."""
    compact, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    ids = np.zeros(len(mapping) + (0 not in mapping), dtype=np.uint64)
    old = np.fromiter(mapping.keys(), dtype=np.uint64, count=len(mapping))
    new = np.fromiter(mapping.values(), dtype=np.int64, count=len(mapping))
    ids[new] = old
    return compact, ids


# ---------------------------------------------------------------------------------- centres
@njit(nogil=True)
def _centre_sums_kernel(lab, out):
    nz, ny, nx = lab.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                k = lab[z, y, x]
                if k:
                    out[k, 0] += 1.0
                    out[k, 1] += z
                    out[k, 2] += y
                    out[k, 3] += x


def centre_partials(labels: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial centre-of-mass sums of the non-zero labels of a block.

    Parameters
    ----------
    labels : ndarray of int, 3D
        Labels of a block's core (each voxel must be counted by exactly one block).
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]``.

    Returns
    -------
    ids : ndarray of uint64, (n,)
        Sorted non-zero ids present.
    counts : ndarray of int64, (n,)
        Voxels per id.
    sums : ndarray of float64, (n, 3)
        Sums of the global (z, y, x) coordinates of those voxels.
    """
    labels = _check_labels(labels)
    compact, ids = _compact(labels)
    acc = np.zeros((len(ids), 4), dtype=np.float64)
    _centre_sums_kernel(np.ascontiguousarray(compact), acc)
    acc, ids = acc[1:], ids[1:]
    order = np.argsort(ids, kind="stable")
    counts = acc[order, 0].astype(np.int64)
    sums = acc[order, 1:] + counts[:, None] * np.asarray(origin, dtype=np.float64)[None, :]
    return ids[order], counts, sums


def reduce_centres(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Centres:
    """Merge :func:`centre_partials` of blocks into the global table ``(ids, centres)``."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros((0, 3), np.float64)
    ids = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    sums = np.concatenate([p[2] for p in parts])
    order = np.argsort(ids, kind="stable")
    ids, counts, sums = ids[order], counts[order], sums[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    n = np.add.reduceat(counts, starts).astype(np.float64)
    return ids[starts], np.add.reduceat(sums, starts, axis=0) / n[:, None]


def instance_centres(labels: np.ndarray, origin: Sequence[int] = (0, 0, 0)) -> Centres:
    """Centre of mass of every instance of an in-memory label array.

    Parameters
    ----------
    labels : ndarray of int, 3D
        Instance labels, 0 = background.
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]`` (added to the centres).

    Returns
    -------
    ids : ndarray of uint64, (n,)
        Sorted instance ids.
    centres : ndarray of float64, (n, 3)
        Centres (z, y, x) in voxels. An instance cut by the array border gets the centre of
        its visible part: use :func:`volume_centres` (or a table of the whole volume) for the
        true centre.
    """
    return reduce_centres([centre_partials(labels, origin)])


def _centre_block(block_id, labels_path, block_shape):

    lab = open_volume(labels_path)
    block = lab.grid(block_shape)[block_id]
    return centre_partials(lab.array[block.core], block.origin)


def volume_centres(labels_path: str, block_shape: Sequence[int] | None = None, client=None) -> Centres:
    """Global centre table ``(ids, centres)`` of a label volume, computed blockwise.

    Each block sums the coordinates of its core voxels per label; the partial sums are reduced
    per id, so nuclei cut by block borders get their true centre of mass.
    """

    lab = open_volume(labels_path)
    grid = lab.grid(block_shape)
    func = partial(_centre_block, labels_path=str(labels_path), block_shape=grid.block_shape)
    return reduce_centres(run_blocks(func, grid.block_ids, client=client, name="centres", progress=False))


def _check_centres(centres) -> Centres:
    try:
        ids, c = centres
        ids = np.asarray(ids).astype(np.uint64, copy=False)
        c = np.asarray(c, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise BlocksegError("centres must be a pair (ids, centres) with centres of shape (n, 3)") from None
    if ids.shape != (c.shape[0],):
        raise BlocksegError(f"centre table: {ids.size} ids but {c.shape[0]} centres")
    if ids.size > 1 and np.any(ids[1:] <= ids[:-1]):
        order = np.argsort(ids, kind="stable")
        ids, c = ids[order], c[order]
        if np.any(ids[1:] == ids[:-1]):
            raise BlocksegError("centre table has repeated ids")
    return ids, c


# ---------------------------------------------------------------------------------- B, C, D
def binary_target(labels: np.ndarray) -> np.ndarray:
    """B: foreground mask ``labels > 0`` as float32."""
    return (np.asarray(labels) > 0).astype(np.float32)


def label_changes(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels having a 6-neighbour (inside the array) with a different label."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for ax in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def contour_target(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """C: 1 within city-block distance ``width`` of a label change (3D), else 0, as float32.

    A voxel is contour iff some voxel of a different label (background included) lies within
    ``width`` 6-steps; ``width=1`` is the two-voxel band straddling every label change.
    """
    width = int(width)
    if width < 1:
        raise BlocksegError(f"contour width must be a positive integer, got {width}")
    c = label_changes(labels)
    if width > 1:
        c = ndi.binary_dilation(c, structure=ndi.generate_binary_structure(c.ndim, 1), iterations=width - 1)
    return c.astype(np.float32)


def distance_target(
    labels: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    max_distance: float = MAX_DISTANCE,
) -> np.ndarray:
    """D: signed tanh distance, in [-1, 1], as float32.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background.
    voxel_size : sequence of float, optional
        Physical voxel size per axis; distances are in units of its smallest entry.
    alpha, beta : float
        Inside / outside scale (NucMM: 8 and 50).
    max_distance : float
        Both distances are clipped here; results are exact blockwise for halos of
        :func:`target_halo` voxels.

    Notes
    -----
    Which definition, and why. NucMM's eq. 1 is ``tanh(d_in / alpha)`` inside and
    ``-tanh(d_out / beta)`` outside. Its reference code took ``d_in`` per 2D slice on the
    *merged* foreground mask, so touching nuclei form one hill and the watershed cannot split
    them; a later version normalised the distance per instance (and mislabelled background for
    years). Here ``d_in`` is the 3D, anisotropy-aware distance to the nearest voxel that is not
    of the same instance, unnormalised (so D means the same physical depth in every nucleus and
    every block), computed as ``min(distance to background, distance to a contact voxel + 1)``
    where contact voxels are foreground voxels with a 6-neighbour of another instance. This
    needs two Euclidean distance transforms whatever the number of instances (an exact
    per-instance transform needs one per nucleus), is 1 on every instance surface, contacts
    included, so touching nuclei are separated by a valley of D exactly like a nucleus and
    background, and differs from the exact per-instance distance by less than one voxel.
    Outside, ``d_out`` is the distance to the nearest foreground voxel.
    """
    labels = np.asarray(labels)
    sp = _spacing(voxel_size, labels.ndim)
    fg = labels > 0
    out = np.empty(labels.shape, dtype=np.float32)
    if not fg.any():
        out[:] = -math.tanh(max_distance / beta)
        return out
    if fg.all():
        d_bg = np.full(labels.shape, np.inf)
    else:
        d_bg = ndi.distance_transform_edt(fg, sampling=sp)
    contact = _touches_other_instance(labels)
    if contact.any():
        d_in = np.minimum(d_bg, ndi.distance_transform_edt(~contact, sampling=sp) + 1.0)
    else:
        d_in = d_bg
    d_in = np.minimum(d_in, max_distance)
    out[fg] = np.tanh(d_in[fg] / alpha)
    if (~fg).any():
        d_out = np.minimum(ndi.distance_transform_edt(~fg, sampling=sp), max_distance)
        out[~fg] = -np.tanh(d_out[~fg] / beta)
    return out


def _touches_other_instance(labels: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour of a different non-zero label."""
    out = np.zeros(labels.shape, dtype=bool)
    for ax in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        diff = (a != b) & (a > 0) & (b > 0)
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def bcd_targets(
    labels: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    max_distance: float = MAX_DISTANCE,
) -> dict[str, np.ndarray]:
    """B, C and D targets of ``labels`` as a dict of float32 arrays."""
    return {
        "B": binary_target(labels),
        "C": contour_target(labels),
        "D": distance_target(labels, voxel_size, alpha, beta, max_distance),
    }


# ---------------------------------------------------------------------------------- cpv
@njit(nogil=True)
def _cpv_kernel(compact, centres, origin, oz, oy, ox):
    nz, ny, nx = compact.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                k = compact[z, y, x]
                if k:
                    oz[z, y, x] = centres[k, 0] - np.float64(origin[0] + z)
                    oy[z, y, x] = centres[k, 1] - np.float64(origin[1] + y)
                    ox[z, y, x] = centres[k, 2] - np.float64(origin[2] + x)


def cpv_target(
    labels: np.ndarray, centres: Centres | None = None, origin: Sequence[int] = (0, 0, 0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cpv: vectors (z, y, x, voxels) from each foreground voxel to its instance centre.

    Parameters
    ----------
    labels : ndarray of int, 3D
        Instance labels, 0 = background.
    centres : (ids, centres), optional
        Global centre table (global voxel coordinates), e.g. from :func:`volume_centres`.
        Default: the centres of ``labels`` itself.
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]``.

    Returns
    -------
    tuple of three float32 ndarrays
        ``centre - position`` per axis, 0 on background.

    Raises
    ------
    BlocksegError
        If a label of ``labels`` is missing from the table.
    """
    labels = _check_labels(labels)
    origin = np.asarray(origin, dtype=np.int64).reshape(3)
    if centres is None:
        centres = instance_centres(labels, origin)
    tab_ids, tab_c = _check_centres(centres)
    compact, ids = _compact(labels)
    local = np.zeros((len(ids), 3), dtype=np.float64)
    if len(ids) > 1:
        pos = np.searchsorted(tab_ids, ids[1:])
        pos = np.minimum(pos, max(len(tab_ids) - 1, 0))
        found = (tab_ids[pos] == ids[1:]) if len(tab_ids) else np.zeros(len(ids) - 1, bool)
        if not found.all():
            missing = ids[1:][~found]
            more = "..." if missing.size > 5 else ""
            raise BlocksegError(f"labels {missing[:5].tolist()}{more} have no centre in the table")
        local[1:] = tab_c[pos]
    out = tuple(np.zeros(labels.shape, dtype=np.float32) for _ in range(3))
    _cpv_kernel(np.ascontiguousarray(compact), local, origin, *out)
    return out


# ---------------------------------------------------------------------------------- 3label, sdt, aff
def interior_mask(labels: np.ndarray) -> np.ndarray:
    """Instance voxels whose 26 neighbours (inside the array) all carry their label.

    Each instance eroded once with the 26-neighbourhood; the array border does not erode.
    """
    labels = np.asarray(labels)
    lo = ndi.minimum_filter(labels, size=3, mode="nearest")
    hi = ndi.maximum_filter(labels, size=3, mode="nearest")
    return (labels > 0) & (lo == labels) & (hi == labels)


def three_label_target(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3label: one-hot ``(P_bg, P_boundary, P_interior)`` as float32 arrays."""
    labels = np.asarray(labels)
    fg = labels > 0
    interior = interior_mask(labels)
    return (~fg).astype(np.float32), (fg & ~interior).astype(np.float32), interior.astype(np.float32)


def sdt_target(
    labels: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    scale: float = 9.0,
    max_distance: float = MAX_DISTANCE,
) -> np.ndarray:
    """sdt: ``tanh(s / scale)``, ``s`` = distance to the nearest boundary voxel, negative inside.

    Boundary voxels are 3label's boundary class (0 here); distances are physical in units of
    the smallest voxel edge, clipped at ``max_distance``.
    """
    labels = np.asarray(labels)
    fg = labels > 0
    boundary = fg & ~interior_mask(labels)
    if boundary.any():
        d = ndi.distance_transform_edt(~boundary, sampling=_spacing(voxel_size, labels.ndim))
        d = np.minimum(d, max_distance)
    else:
        d = np.full(labels.shape, float(max_distance))
    d[fg] *= -1.0
    return np.tanh(d / scale).astype(np.float32)


def affinity_target(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """aff: ``(aff_z, aff_y, aff_x)``; ``aff_z[z, y, x] = 1`` iff it and ``(z - 1, y, x)`` share a
    non-zero label (offset -1 per axis; 0 on the first slice of each axis), as float32."""
    labels = np.asarray(labels)
    out = []
    for ax in range(3):
        a = np.zeros(labels.shape, dtype=np.float32)
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[ax], prev[ax] = slice(1, None), slice(None, -1)
        lc = labels[tuple(cur)]
        a[tuple(cur)] = (lc > 0) & (lc == labels[tuple(prev)])
        out.append(a)
    return tuple(out)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- gauss, density
@njit(nogil=True)
def _splat_kernel(out, origin, centres, sigma, radius, rmax, normalise, use_max):
    """Separable blobs: per centre, 1-D profiles per axis, then their outer product over the
    window's part inside ``out`` (max or add)."""
    nz, ny, nx = out.shape
    shape = (nz, ny, nx)
    g = np.zeros((3, rmax), dtype=np.float64)
    start = np.zeros(3, dtype=np.int64)
    lo = np.zeros(3, dtype=np.int64)
    hi = np.zeros(3, dtype=np.int64)
    for i in range(centres.shape[0]):
        inside = True
        norm = 1.0
        for a in range(3):
            c = centres[i, a]
            s0 = np.int64(np.ceil(c - radius[a]))
            start[a] = s0
            tot = 0.0
            for j in range(rmax):
                k = s0 + j
                dk = (k - c) / sigma[a]
                if abs(k - c) <= radius[a]:
                    g[a, j] = np.exp(-0.5 * dk * dk)
                else:
                    g[a, j] = 0.0
                tot += g[a, j]
            if normalise:
                norm *= tot
            lo[a] = max(s0 - origin[a], 0)
            hi[a] = min(s0 + rmax - origin[a], shape[a])
            if lo[a] >= hi[a]:
                inside = False
        if not inside:
            continue
        scale = 1.0 / norm if normalise else 1.0
        dz, dy, dx = origin[0] - start[0], origin[1] - start[1], origin[2] - start[2]
        gx = g[2, lo[2] + dx : hi[2] + dx]
        for z in range(lo[0], hi[0]):
            gz = g[0, z + dz] * scale
            for y in range(lo[1], hi[1]):
                gzy = gz * g[1, y + dy]
                row = out[z, y, lo[2] : hi[2]]
                if use_max:
                    for x in range(row.size):
                        v = out.dtype.type(gzy * gx[x])
                        row[x] = v if v > row[x] else row[x]
                else:
                    for x in range(row.size):
                        row[x] += gzy * gx[x]


def _splat(
    shape: Sequence[int],
    centres: np.ndarray,
    sigma: np.ndarray,
    truncate: float,
    origin,
    normalise: bool,
    use_max: bool,
) -> np.ndarray:
    """Separable Gaussian blobs at ``centres`` (global voxel coords) over a region of ``shape``."""
    sigma = np.asarray(sigma, dtype=np.float64)
    radius_f = truncate * sigma
    origin = np.asarray(origin, dtype=np.int64).reshape(3)
    c = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    # blobs whose window meets the region, in table order (sums add in the same order anywhere)
    keep = np.all((c + radius_f >= origin) & (c - radius_f <= origin + np.asarray(shape) - 1), axis=1)
    # max: exact in float32; sums: accumulated in float64 (same blob order in blocks and whole)
    acc = np.zeros(tuple(shape), dtype=np.float32 if use_max else np.float64)
    rmax = int(2 * np.floor(radius_f.max())) + 2  # window length covering [c - r, c + r] on every axis
    _splat_kernel(acc, origin, np.ascontiguousarray(c[keep]), sigma, radius_f, rmax, normalise, use_max)
    return acc.astype(np.float32, copy=False)


def gauss_target(
    shape: Sequence[int], centres: np.ndarray, sigma: float = 2.0, truncate: float = 4.0, origin=(0, 0, 0)
) -> np.ndarray:
    """gauss: blobs ``exp(-r^2 / 2 sigma^2)`` (sigma in voxels) at the voxels nearest to ``centres``.

    Each blob peaks at exactly 1 on its centre voxel; overlapping blobs take the maximum.
    ``centres`` is ``(n, 3)`` in global voxel coordinates, ``origin`` the global coordinate of
    the region's first voxel.
    """
    c = np.floor(np.asarray(centres, dtype=np.float64).reshape(-1, 3) + 0.5)
    return _splat(shape, c, np.full(3, float(sigma)), truncate, origin, normalise=False, use_max=True)


def density_target(
    shape: Sequence[int],
    centres: np.ndarray,
    voxel_size: Sequence[float] | None = None,
    sigma: float = 1.0,
    truncate: float = 4.0,
    origin=(0, 0, 0),
) -> np.ndarray:
    """density: one Gaussian of ``sigma`` µm per centre, each summing to 1 over its voxels.

    Per-axis sigma in voxels is ``sigma / voxel_size``; blobs sit at the exact (sub-voxel)
    centres and add where they overlap, so the map sums to the number of centres whose blobs
    lie inside the region.
    """
    vs = np.ones(3) if voxel_size is None else np.asarray(zyx(voxel_size, "voxel size", kind=float, above=0, scalar=False))
    return _splat(shape, centres, float(sigma) / vs, truncate, origin, normalise=True, use_max=False)


# ---------------------------------------------------------------------------------- all of them
def compute_targets(
    labels: np.ndarray,
    representations: Sequence[str],
    voxel_size: Sequence[float] | None = None,
    centres: Centres | None = None,
    origin: Sequence[int] = (0, 0, 0),
    **params,
) -> dict[str, np.ndarray]:
    """Targets of ``labels`` for a list of representations.

    Parameters
    ----------
    labels : ndarray of int, 3D
        Instance labels, 0 = background.
    representations : sequence of str
        Names from :data:`blockseg.models.base.REPRESENTATIONS`, e.g. ``("B", "C", "D", "cpv")``.
    voxel_size : sequence of float, optional
        Physical voxel size (µm, z, y, x); default 1 µm isotropic.
    centres : (ids, centres), optional
        Global instance-centre table in global voxel coordinates (:func:`volume_centres`),
        used by cpv / gauss / density. Default: computed from ``labels`` itself (right only
        when ``labels`` holds whole nuclei).
    origin : tuple of int
        Global coordinate of ``labels[0, 0, 0]``.
    **params
        :class:`TargetParams` fields (``contour_width``, ``alpha``, ``beta``, ``max_distance``,
        ``sdt_scale``, ``gauss_sigma``, ``density_sigma``, ``truncate``).

    Returns
    -------
    dict of str to float32 ndarray
        One array per channel, named and ordered as ``channels_of(representations)``.
    """

    reps = check_representations(representations)
    p = TargetParams.make(params)
    labels = _check_labels(labels)
    origin = zyx(origin, "origin", scalar=False)
    if voxel_size is not None:
        _spacing(voxel_size, 3)
    if any(r in CENTRE_REPRESENTATIONS for r in reps):
        centres = instance_centres(labels, origin) if centres is None else _check_centres(centres)
    out: dict[str, np.ndarray] = {}
    for r in reps:
        if r == "B":
            out["B"] = binary_target(labels)
        elif r == "C":
            out["C"] = contour_target(labels, p.contour_width)
        elif r == "D":
            out["D"] = distance_target(labels, voxel_size, p.alpha, p.beta, p.max_distance)
        elif r == "cpv":
            out["cpv_z"], out["cpv_y"], out["cpv_x"] = cpv_target(labels, centres, origin)
        elif r == "3label":
            out["P_bg"], out["P_boundary"], out["P_interior"] = three_label_target(labels)
        elif r == "sdt":
            out["sdt"] = sdt_target(labels, voxel_size, p.sdt_scale, p.max_distance)
        elif r == "aff":
            out["aff_z"], out["aff_y"], out["aff_x"] = affinity_target(labels)
            out["fg"] = binary_target(labels)
        elif r == "gauss":
            out["gauss"] = gauss_target(labels.shape, centres[1], p.gauss_sigma, p.truncate, origin)
        elif r == "density":
            out["density"] = density_target(labels.shape, centres[1], voxel_size, p.density_sigma, p.truncate, origin)
    return {c: out[c] for c in channels_of(reps)}


def target_halo(
    representations: Sequence[str] = ("B", "C", "D"), voxel_size: Sequence[float] | None = None, **params
) -> tuple[int, int, int]:
    """Halo (voxels per axis) for which blockwise :func:`compute_targets` is exact.

    With this halo (and the global centre table for cpv / gauss / density), the core of the
    targets of core + halo equals the same region of the whole-volume targets. Per
    representation: B, cpv, gauss, density 0 (pointwise given the table); aff, 3label 1; C
    ``contour_width``; sdt ``ceil(m / s)`` and D ``max(ceil((m - 1) / s), ceil(m / s) - 1)``
    with ``m = max_distance`` and ``s`` the voxel edge over the smallest edge. Why: the
    distances are clipped at ``m``, so only voxels closer than ``m`` matter (offsets
    ``k < m / s``): background / foreground voxels are pointwise; sdt's boundary voxels need
    their neighbours (+1); D's contact voxels need their neighbours (+1) but matter only closer
    than ``m - 1`` since ``d_in = d_contact + 1``. Each of these values is the smallest that
    works (tests show one voxel less breaks blockwise exactness).
    """

    reps = check_representations(representations)
    p = TargetParams.make(params)
    sp = _spacing(voxel_size, 3)
    m = p.max_distance
    dist = np.ceil(m / sp - 1e-9).astype(int)
    # D: background is pointwise (needs offsets k with k * s < m), contacts need a neighbour and
    # matter only closer than m - 1 (d_in = d_contact + 1)
    dist_d = np.maximum(np.maximum(np.ceil((m - 1) / sp - 1e-9).astype(int), dist - 1), 0)
    halo = np.zeros(3, dtype=int)
    for r in reps:
        if r in ("aff", "3label"):
            h = np.ones(3, int)
        elif r == "C":
            h = np.full(3, int(p.contour_width))
        elif r == "sdt":
            h = dist
        elif r == "D":
            h = dist_d
        else:
            h = np.zeros(3, int)
        halo = np.maximum(halo, h)
    return tuple(int(h) for h in halo)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- loss weights
def loss_weights(
    labels: np.ndarray, targets: Mapping[str, np.ndarray], representations: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-voxel loss weights the papers define from the labels / targets alone.

    * cpv (aux-task paper): 1 inside nuclei, 0.01 on background (``clip(labels, 0.01, 1)``),
      one array shared by ``cpv_z``, ``cpv_y``, ``cpv_x``, returned under key ``"cpv"``;
    * gauss: 1 where the target is >= 0.01, 1e-5 elsewhere, under ``"gauss"``.

    Batch-dependent weights (class balancing for 3label / aff / B, C) are computed by the trainer
    from the batch (see :func:`class_balance_weights`); representations without per-voxel weights
    are absent from the result.
    """
    out = {}
    if "cpv" in representations:
        out["cpv"] = np.where(np.asarray(labels) > 0, np.float32(1.0), np.float32(0.01)).astype(np.float32)
    if "gauss" in representations:
        out["gauss"] = np.where(targets["gauss"] >= 0.01, np.float32(1.0), np.float32(1e-5)).astype(np.float32)
    return out


def class_balance_weights(classes: np.ndarray, n_classes: int, clip: tuple[float, float] = (0.05, 0.95)) -> np.ndarray:
    """Inverse-frequency weights: voxel of class k gets ``1 / (n_classes * f_k)``, ``f_k`` clipped.

    ``classes`` holds integer classes ``0..n_classes-1`` (e.g. ``argmax`` of a one-hot 3label
    target, or a binary mask); every class then carries the same total weight (as gunpowder's
    BalanceLabels, fractions clipped to ``clip``).
    """
    classes = np.asarray(classes).astype(np.intp, copy=False)
    f = np.bincount(classes.ravel(), minlength=n_classes)[:n_classes] / max(classes.size, 1)
    w = 1.0 / (n_classes * np.clip(f, clip[0], clip[1]))
    return w.astype(np.float32)[classes]


# ---------------------------------------------------------------------------------- writing
CENTRES_GROUP = "instance_centres"


def _save_centres(pred_path: str, centres: Centres) -> None:
    g = zarr.open_group(f"{pred_path.rstrip('/')}/{CENTRES_GROUP}", mode="w")
    ids, c = centres
    g.create_array("id", data=np.asarray(ids, dtype=np.uint64))
    g.create_array("zyx", data=np.asarray(c, dtype=np.float64).reshape(-1, 3))


def load_centres(pred_path: str) -> Centres:
    """The centre table :func:`write_targets` stored beside the channels (``instance_centres``)."""
    try:
        g = zarr.open_group(f"{str(pred_path).rstrip('/')}/{CENTRES_GROUP}", mode="r")
        return np.asarray(g["id"][:], dtype=np.uint64), np.asarray(g["zyx"][:], dtype=np.float64)
    except Exception:
        raise BlocksegError(f"{pred_path}: has no instance centre table") from None


def _targets_block(block_id, labels_path, pred_path, representations, block_shape, halo, params, with_centres):

    lab = open_volume(labels_path)
    block = lab.grid(block_shape, halo)[block_id]
    centres = load_centres(pred_path) if with_centres else None
    origin = tuple(s.start for s in block.outer)
    t = compute_targets(lab.array[block.outer], representations, lab.voxel_size, centres, origin, **params)
    for name, vol in open_predictions(pred_path, list(t), mode="r+").items():
        vol.array[block.core] = encode_channel(t[name][block.core_in_outer], prediction_kind(vol, name), vol.dtype)
    return None


def write_targets(
    labels_path: str,
    pred_path: str,
    representations: Sequence[str] = ("B", "C", "D"),
    dtype=np.uint8,
    raw_dtype=np.float32,
    block_shape: Sequence[int] | None = None,
    centres: Centres | None = None,
    client=None,
    overwrite: bool = False,
    **params,
):
    """Write perfect predictions (the targets) of a label volume as a prediction store, blockwise.

    Parameters
    ----------
    labels_path, pred_path : str
        Label volume to read; prediction store to create (channels of ``representations``).
    representations : sequence of str
        As for :func:`compute_targets`.
    dtype : uint8, float16 or float32
        Storage of the probability / tanh channels (uint8 quantises, see
        :mod:`blockseg.io.predictions`).
    raw_dtype : float16 or float32
        Storage of the raw channels (cpv vectors, density), which cannot be uint8.
    block_shape : sequence of int, optional
        Core shape of the blocks (default: the volume's default grid).
    centres : (ids, centres), optional
        Global centre table; computed blockwise (:func:`volume_centres`) when a centre-based
        representation needs it. Stored in the store's ``instance_centres`` group.
    client : distributed.Client, optional
        Where blocks run (None: in this process).
    overwrite : bool
        Replace an existing store.
    **params
        :class:`TargetParams` fields.

    Returns
    -------
    dict of str to Volume
        The created channels. Each block reads its core plus :func:`target_halo` voxels, so the
        store equals the whole-volume :func:`compute_targets` (encoded to its dtype).
    """

    reps = check_representations(representations)
    p = TargetParams.make(params)
    if np.dtype(raw_dtype).kind != "f":
        raise BlocksegError(f"raw channels (cpv, density) are stored as float16 or float32, not {np.dtype(raw_dtype)}")
    lab = open_volume(labels_path)
    need = target_halo(reps, lab.voxel_size, **p.to_dict())
    grid = lab.grid(block_shape)
    if any(h > b for h, b in zip(need, grid.block_shape)):
        raise BlocksegError(f"blocks {grid.block_shape} are smaller than the targets' halo {need}; use larger blocks")
    kinds = kinds_of(reps)
    dtypes = {c: (raw_dtype if k == "raw" else dtype) for c, k in kinds.items()}
    with_centres = any(r in CENTRE_REPRESENTATIONS for r in reps)
    if with_centres:
        centres = volume_centres(labels_path, grid.block_shape, client) if centres is None else _check_centres(centres)
    vols = create_predictions(
        pred_path, channels_of(reps), lab.shape, dtypes, lab.voxel_size, lab.chunks, kinds, overwrite=overwrite
    )
    if with_centres:
        _save_centres(str(pred_path), centres)
    func = partial(
        _targets_block,
        labels_path=str(labels_path),
        pred_path=str(pred_path),
        representations=reps,
        block_shape=grid.block_shape,
        halo=need,
        params=p.to_dict(),
        with_centres=with_centres,
    )
    run_blocks(func, grid.block_ids, client=client, name="targets", progress=False)
    return vols


def write_bcd_targets(
    labels_path: str,
    pred_path: str,
    dtype=np.uint8,
    block_shape: Sequence[int] | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    max_distance: float = MAX_DISTANCE,
    client=None,
    overwrite: bool = False,
):
    """Write perfect B, C, D predictions of a label volume: :func:`write_targets` for ``B, C, D``."""
    return write_targets(
        labels_path, pred_path, ("B", "C", "D"), dtype, block_shape=block_shape, client=client,
        overwrite=overwrite, alpha=alpha, beta=beta, max_distance=max_distance,
    )  # fmt: skip
