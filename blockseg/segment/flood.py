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

Certificate (why a block's result equals the whole-volume result). Write ``l(v)`` for the level
of ``v`` in the flood of the block's outer region ``R`` (core + halo) and ``L(v)`` for its level
in the whole-volume flood. Three facts about the flood hold in any region:

(F1) voxels are popped in non-decreasing level order, and ``L(v)`` is the minimax height of a
     path from a seed to ``v`` (heights of both ends included);
(F2) a non-seed voxel takes the label of the *first popped* of its mask neighbours, which is one
     of the neighbours of least level;
(F3) the flood restricted to a set of voxels that nothing outside it touches below some level
     performs, up to that level, the same events in the same relative order (FIFO buckets,
     seeds queued in raster order, fixed neighbour order).

Let ``f(v)`` be the minimax height of a path inside ``R`` from an *artificial* face of ``R``
(a face that is not the volume border) to ``v`` -- one more flood, seeded on those faces. A
whole-volume path reaching ``v`` either stays in ``R`` (cost >= ``l(v)``: ``R`` holds the same
global seeds) or last enters ``R`` through a face voxel (cost >= ``f(v)``), so

    ``L(v) >= min(l(v), f(v))``  and  ``L(v) = l(v)`` whenever ``l(v) <= f(v)``.      (LB)

A mask voxel ``v`` is *certain* (same label and same level as in the whole volume) when

(C0) it is a seed (its label is its global seed id), or it is outside the mask (label 0);
(C1) ``l(v) < f(v)``: the component ``K`` of ``v`` in ``mask & (height <= l(v))`` does not
     reach an artificial face, so by (F3) all events of ``K`` up to level ``l(v)`` happen
     identically in ``R`` and in the whole volume (this includes ``l(v) = 256``, unreached,
     with ``f(v) = 257``: its mask component lies in ``R`` and holds no seed);
(C2) ``v`` is not on an artificial face, and, with ``m`` the least lower bound
     ``min(l(w), f(w))`` over its mask neighbours ``w``, every neighbour whose bound equals
     ``m`` is certain, has ``l(w) = m`` and carries one common label ``λ``. Then the
     whole-volume levels of those neighbours are exactly ``m`` and every other neighbour's is
     ``> m`` (LB), so by (F1)/(F2) the first popped neighbour of ``v`` is one of them, in the
     whole volume as in ``R``: both give ``v`` the label ``λ`` and the level ``max(m, h(v))``.

(C2) is applied repeatedly (a work list) until nothing changes; it certifies, e.g., the outer
shell of a nucleus whose equal-height contact with a neighbour nucleus links it, at its own
level, to a nucleus crossing the face -- the case (C1) alone cannot decide, because of the tie
at that level. :func:`uncertain_voxels` returns the mask voxels neither rule certifies.
"""

from __future__ import annotations

import numba
import numpy as np

#: level of a voxel no seed reached / no face reached
UNREACHED = 256
FACE_UNREACHED = 257


@numba.njit(cache=True, nogil=True)
def _flood_kernel(h, lab, m, lev, nxt, sy, sz):
    """Flood on flat, padded arrays (the one-voxel border is outside the mask: no bounds checks)."""
    n = h.size
    head = np.full(256, -1, dtype=np.int64)
    tail = np.full(256, -1, dtype=np.int64)
    for i in range(n):
        if not m[i]:
            lab[i] = 0
            lev[i] = UNREACHED
        elif lab[i] != 0:
            p = h[i]
            lev[i] = p
            nxt[i] = -1
            if tail[p] == -1:
                head[p] = i
            else:
                nxt[tail[p]] = i
            tail[p] = i
        else:
            lev[i] = UNREACHED
    cur = 0
    while cur < 256:
        i = head[cur]
        if i == -1:
            cur += 1
            continue
        head[cur] = nxt[i]
        if head[cur] == -1:
            tail[cur] = -1
        li = lab[i]
        for k in range(6):
            if k == 0:
                j = i - sz
            elif k == 1:
                j = i + sz
            elif k == 2:
                j = i - sy
            elif k == 3:
                j = i + sy
            elif k == 4:
                j = i - 1
            else:
                j = i + 1
            if m[j] and lab[j] == 0:
                lab[j] = li
                p = h[j]
                if p < cur:
                    p = cur
                lev[j] = p
                nxt[j] = -1
                if tail[p] == -1:
                    head[p] = j
                else:
                    nxt[tail[p]] = j
                tail[p] = j


def _padded(a: np.ndarray, dtype) -> np.ndarray:
    out = np.zeros(tuple(s + 2 for s in a.shape), dtype=dtype)
    out[1:-1, 1:-1, 1:-1] = a
    return out


def _flood_padded(hp: np.ndarray, lp: np.ndarray, mp: np.ndarray) -> np.ndarray:
    """Flood padded arrays in place (labels ``lp``); return the padded levels."""
    lev = np.empty(hp.shape, dtype=np.int16)
    n = hp.size
    nxt = np.empty(n, dtype=np.int32 if n < 2**31 else np.int64)
    _, ny, nx = hp.shape
    _flood_kernel(hp.ravel(), lp.ravel(), mp.ravel(), lev.ravel(), nxt, nx, ny * nx)
    return lev


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
    if height.ndim != 3 or height.shape != seeds.shape or height.shape != mask.shape:
        raise ValueError(f"height, seeds and mask must be 3D of one shape: {height.shape}, {seeds.shape}, {mask.shape}")
    if not height.size:
        return np.array(seeds, copy=True), np.full(height.shape, UNREACHED, dtype=np.int16)
    inner = (slice(1, -1),) * 3
    lp = _padded(seeds, seeds.dtype)
    lev = _flood_padded(_padded(height, np.uint8), lp, _padded(mask, bool))
    return lp[inner].copy(), lev[inner].copy()


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




@numba.njit(cache=True, nogil=True)
def _certify_kernel(labels, mask, seeds, level, face_level, face, certain):
    nz, ny, nx = labels.shape
    n = nz * ny * nx
    lab = labels.ravel()
    m = mask.ravel()
    sd = seeds.ravel()
    lev = level.ravel()
    fl = face_level.ravel()
    fc = face.ravel()
    ok = certain.ravel()
    sy = nx
    sz = ny * nx
    queued = np.zeros(n, dtype=np.bool_)
    top = 0
    for i in range(n):
        if not m[i] or sd[i] != 0 or lev[i] < fl[i]:  # (C0), (C1)
            ok[i] = True
        else:
            ok[i] = False
            if not fc[i]:
                queued[i] = True
                top += 1
    # a voxel is on the stack at most once at a time, and only candidates ever are
    stack = np.empty(top, dtype=np.int64)
    top = 0
    for i in range(n):
        if queued[i]:
            stack[top] = i
            top += 1
    nb = np.empty(6, dtype=np.int64)
    while top > 0:
        top -= 1
        i = stack[top]
        queued[i] = False
        if ok[i]:
            continue
        z = i // sz
        r = i - z * sz
        y = r // sy
        x = r - y * sy
        k = 0
        if z > 0:
            nb[k] = i - sz
            k += 1
        if z < nz - 1:
            nb[k] = i + sz
            k += 1
        if y > 0:
            nb[k] = i - sy
            k += 1
        if y < ny - 1:
            nb[k] = i + sy
            k += 1
        if x > 0:
            nb[k] = i - 1
            k += 1
        if x < nx - 1:
            nb[k] = i + 1
            k += 1
        best = FACE_UNREACHED + 1
        for t in range(k):
            j = nb[t]
            if m[j]:
                b = lev[j] if lev[j] < fl[j] else fl[j]
                if b < best:
                    best = b
        if best >= UNREACHED:
            continue
        good = True
        lam = lab[i]
        for t in range(k):
            j = nb[t]
            if m[j]:
                b = lev[j] if lev[j] < fl[j] else fl[j]
                if b == best and not (ok[j] and lev[j] == best and lab[j] == lam):
                    good = False
                    break
        if not good:
            continue
        ok[i] = True  # (C2)
        for t in range(k):
            j = nb[t]
            if m[j] and not ok[j] and not queued[j] and not fc[j]:
                stack[top] = j
                top += 1
                queued[j] = True


def uncertain_voxels(
    height: np.ndarray,
    mask: np.ndarray,
    level: np.ndarray,
    faces: np.ndarray,
    labels: np.ndarray | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Mask voxels whose flooded label may differ from the whole-volume one (the certificate).

    Parameters
    ----------
    height, mask : ndarray
        As given to :func:`flood`.
    level : ndarray of int16
        Levels returned by :func:`flood`.
    faces : ndarray of bool
        Artificial faces of the region (:func:`artificial_faces`).
    labels, seeds : ndarray, optional
        Labels returned by :func:`flood` and the seeds given to it. With both, rules (C0)-(C2)
        of the module docstring apply; without, only (C1) (a coarser certificate).

    Returns
    -------
    ndarray of bool
        True where no rule certifies the voxel.
    """
    if not (faces & mask).any():
        return np.zeros(height.shape, dtype=bool)
    _, f = flood(height, (faces & mask).view(np.uint8), mask)
    f[f == UNREACHED] = FACE_UNREACHED
    if labels is None or seeds is None:
        return mask & (f <= level)
    certain = np.empty(height.shape, dtype=bool)
    _certify_kernel(
        np.ascontiguousarray(labels), np.ascontiguousarray(mask, dtype=bool), np.ascontiguousarray(seeds),
        level, f, np.ascontiguousarray(faces), certain,
    )  # fmt: skip
    return ~certain
