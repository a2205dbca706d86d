"""Deterministic seeded watershed (priority flood) on a uint8 height map, and its certificate.

The flood uses a bucket queue with one FIFO list per height level (0..255):

1. every seed voxel inside the mask is queued, in C (raster) order, at its own height;
2. the lowest non-empty level is popped first, FIFO within a level; popping voxel ``v`` at
   level ``p`` looks at its 6 neighbours in the fixed order -z, +z, -y, +y, -x, +x; each
   unlabelled neighbour ``w`` inside the mask takes ``v``'s label at once and is queued at
   level ``max(p, height[w])``.

Every tie is thus broken by the global raster order of the seeds and the fixed neighbour
order, and both survive cropping: the relative raster order of two voxels is the same in a
block and in the whole volume. :func:`flood` also returns each voxel's *level* (the level it
was queued at, its minimax height from the seeds).

Certificate (why a block's result equals the whole-volume result). Let ``h`` be the level of a
core voxel ``v``, and ``K`` the 6-connected component of ``v`` in ``mask & (height <= h)``. All
flooding events of ``K`` up to level ``h`` involve only voxels of ``K`` (a voxel outside ``K``
next to ``K`` is higher than ``h``), and they happen in the same relative order in any region
that contains ``K``. So when ``K`` does not reach the artificial faces of the block's outer
region (faces that are not the volume border), ``v`` gets the same label locally as in the
whole volume. ``K`` reaches a face voxel exactly when the minimax height ``f(v)`` of a path from
the face to ``v`` is at most ``h``; ``f`` is one more flood, seeded on the face
(:func:`uncertain_voxels`). Voxels no seed reaches have ``h = ∞``: they are certain when no
face reaches them either (their whole mask component lies in the block).
"""

from __future__ import annotations

import numba
import numpy as np

#: level of a voxel no seed reached / no face reached
UNREACHED = 256
FACE_UNREACHED = 257


@numba.njit(cache=True, nogil=True)
def _flood_kernel(height, labels, mask, level):
    nz, ny, nx = height.shape
    n = nz * ny * nx
    h = height.ravel()
    lab = labels.ravel()
    m = mask.ravel()
    lev = level.ravel()
    nxt = np.full(n, -1, dtype=np.int64)
    head = np.full(256, -1, dtype=np.int64)
    tail = np.full(256, -1, dtype=np.int64)
    sy = nx
    sz = ny * nx
    for i in range(n):
        lev[i] = UNREACHED
    for i in range(n):
        if lab[i] != 0 and m[i]:
            p = h[i]
            lev[i] = p
            if tail[p] == -1:
                head[p] = i
            else:
                nxt[tail[p]] = i
            tail[p] = i
        elif not m[i]:
            lab[i] = 0
    cur = 0
    while cur < 256:
        i = head[cur]
        if i == -1:
            cur += 1
            continue
        head[cur] = nxt[i]
        if head[cur] == -1:
            tail[cur] = -1
        z = i // sz
        r = i - z * sz
        y = r // sy
        x = r - y * sy
        li = lab[i]
        for k in range(6):
            if k == 0:
                if z == 0:
                    continue
                j = i - sz
            elif k == 1:
                if z == nz - 1:
                    continue
                j = i + sz
            elif k == 2:
                if y == 0:
                    continue
                j = i - sy
            elif k == 3:
                if y == ny - 1:
                    continue
                j = i + sy
            elif k == 4:
                if x == 0:
                    continue
                j = i - 1
            else:
                if x == nx - 1:
                    continue
                j = i + 1
            if m[j] and lab[j] == 0:
                lab[j] = li
                p = h[j]
                if p < cur:
                    p = cur
                lev[j] = p
                if tail[p] == -1:
                    head[p] = j
                else:
                    nxt[tail[p]] = j
                tail[p] = j


def flood(height: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seeded watershed of ``height`` restricted to ``mask``, 6-connected, deterministic.

    Parameters
    ----------
    height : ndarray of uint8, 3D
        Height map (low values flood first).
    seeds : ndarray of unsigned int, 3D
        Seed labels (0 = no seed). Seeds outside ``mask`` are ignored.
    mask : ndarray of bool, 3D
        Voxels that may be labelled.

    Returns
    -------
    labels : ndarray, same dtype as ``seeds``
        Each mask voxel reached from a seed carries that seed's label; others are 0.
    level : ndarray of int16
        Level each voxel was reached at (its minimax height from the seeds), 256 if unreached.
    """
    height = np.ascontiguousarray(height, dtype=np.uint8)
    mask = np.ascontiguousarray(mask, dtype=bool)
    if height.ndim != 3 or height.shape != seeds.shape or height.shape != mask.shape:
        raise ValueError(f"height, seeds and mask must be 3D of one shape: {height.shape}, {seeds.shape}, {mask.shape}")
    labels = np.array(seeds, copy=True, order="C")
    level = np.empty(height.shape, dtype=np.int16)
    if height.size:
        _flood_kernel(height, labels, mask, level)
    return labels, level


def artificial_faces(outer: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask (of the outer region's shape) of its faces that are not the volume border."""
    oshape = tuple(s.stop - s.start for s in outer)
    face = np.zeros(oshape, dtype=bool)
    for ax, (s, size) in enumerate(zip(outer, shape)):
        idx = [slice(None)] * len(oshape)
        if s.start > 0:
            idx[ax] = 0
            face[tuple(idx)] = True
        if s.stop < size:
            idx[ax] = oshape[ax] - 1
            face[tuple(idx)] = True
    return face


def uncertain_voxels(height: np.ndarray, mask: np.ndarray, level: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Mask voxels whose flooded label may differ from the whole-volume one (the certificate).

    Parameters
    ----------
    height, mask : ndarray
        As given to :func:`flood`.
    level : ndarray of int16
        Levels returned by :func:`flood`.
    faces : ndarray of bool
        Artificial faces of the region (:func:`artificial_faces`).

    Returns
    -------
    ndarray of bool
        True where the component of the voxel at its own level reaches an artificial face,
        i.e. ``f <= level`` with ``f`` the minimax height from the faces.
    """
    if not faces.any():
        return np.zeros(height.shape, dtype=bool)
    seeds = (faces & mask).astype(np.uint8)
    _, f = flood(height, seeds, mask)
    f[f == UNREACHED] = FACE_UNREACHED
    return mask & (f <= level)
