"""Training / test targets computed from instance labels.

Each target is a pure function of a label array (and the voxel size). Used on a block with a
halo of at least :func:`target_halo` voxels, the core of the result equals the core of the
whole-volume result exactly (see :func:`write_bcd_targets`).

Targets (NucMM "BCD", Lin et al. 2021):

* **B** -- foreground: ``labels > 0``.
* **C** -- instance contour: every voxel with a 6-neighbour of a different label (background
  included), i.e. a two-voxel band straddling each label change, computed in 3D.
* **D** -- signed tanh distance: inside an instance ``tanh(d_in / alpha)``, outside
  ``-tanh(d_out / beta)``; ``d_out`` is the distance to the nearest foreground voxel, ``d_in``
  the distance to the nearest voxel not of the same instance (see :func:`distance_target` for
  how this is computed). Distances are physical (voxel size aware), expressed in units of the
  smallest voxel edge, and clipped at ``max_distance`` so that the target has bounded support.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import BlocksegError

#: NucMM defaults for the tanh distance target
ALPHA = 8.0
BETA = 50.0
#: default clip of both distances (in units of the smallest voxel edge)
MAX_DISTANCE = 32.0


def _spacing(voxel_size: Sequence[float] | None, ndim: int) -> np.ndarray:
    vs = np.ones(ndim) if voxel_size is None else np.asarray(voxel_size, dtype=float)
    if vs.shape != (ndim,) or np.any(vs <= 0):
        raise BlocksegError(f"voxel size must be {ndim} positive numbers, got {voxel_size}")
    return vs / vs.min()


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


def contour_target(labels: np.ndarray) -> np.ndarray:
    """C: 1 on both sides of every label change (6-neighbourhood, 3D), else 0, as float32."""
    return label_changes(labels).astype(np.float32)


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
    ``d_in`` is ``min(distance to background, distance to a contact voxel + 1)`` where contact
    voxels are foreground voxels with a 6-neighbour of another instance. This equals the
    distance to the nearest voxel not of the same instance up to at most one voxel, is 1 on
    every instance surface, and needs two Euclidean distance transforms whatever the number of
    instances. Outside, ``d_out`` is the distance to the nearest foreground voxel.
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


def target_halo(voxel_size: Sequence[float] | None = None, max_distance: float = MAX_DISTANCE) -> tuple[int, ...]:
    """Halo (voxels per axis) that makes :func:`bcd_targets` exact blockwise.

    The distances are clipped at ``max_distance`` (units of the smallest voxel edge), so a
    voxel's value depends only on labels within that physical radius, plus one voxel for the
    contact test.
    """
    sp = _spacing(voxel_size, 3 if voxel_size is None else len(voxel_size))
    return tuple(int(math.ceil(max_distance / s)) + 2 for s in sp)


def _targets_block(block_id, labels_path, pred_path, block_shape, halo, alpha, beta, max_distance):
    from .io import open_volume
    from .predictions import encode_channel, open_predictions, prediction_kind

    lab = open_volume(labels_path)
    grid = lab.grid(block_shape, halo)
    block = grid[block_id]
    t = bcd_targets(lab.array[block.outer], lab.voxel_size, alpha, beta, max_distance)
    for name, vol in open_predictions(pred_path, mode="r+").items():
        vol.array[block.core] = encode_channel(t[name][block.core_in_outer], prediction_kind(vol, name), vol.dtype)
    return None


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
    """Write perfect B, C, D predictions of a label volume as a prediction store, blockwise.

    Each block reads its core plus :func:`target_halo` voxels, so the store equals the
    whole-volume :func:`bcd_targets` (quantised to ``dtype``).
    """
    from .cluster import run_blocks
    from .io import open_volume
    from .predictions import create_predictions

    lab = open_volume(labels_path)
    halo = target_halo(lab.voxel_size, max_distance)
    grid = lab.grid(block_shape)
    halo = tuple(min(h, b) for h, b in zip(halo, grid.block_shape))
    if any(h < t for h, t in zip(halo, target_halo(lab.voxel_size, max_distance))):
        raise BlocksegError(f"blocks {grid.block_shape} are smaller than the targets' halo; use larger blocks")
    vols = create_predictions(
        pred_path, ("B", "C", "D"), lab.shape, dtype, lab.voxel_size, lab.chunks, overwrite=overwrite
    )
    func = partial(
        _targets_block,
        labels_path=str(labels_path),
        pred_path=str(pred_path),
        block_shape=grid.block_shape,
        halo=halo,
        alpha=alpha,
        beta=beta,
        max_distance=max_distance,
    )
    run_blocks(func, grid.block_ids, client=client, name="targets", progress=False)
    return vols
