"""First-come seeded watershed (priority flood) on a uint8 height map, and its certificate.

Not used by :func:`blockseg.segment.segment` any more: its ties follow queue arrival order,
which a block cannot reproduce, so blockwise runs could only be *certified* voxel by voxel.
``segment`` and ``segment_array`` now use the exact keyed flood of :mod:`.exact` (ties fixed
by geometry and seed id). This module is kept for reference and for its tests.

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


#: entries per block of the bucket queue's storage
_QBLOCK = 4096


@numba.njit(cache=True, nogil=True)
def _flood_kernel(h, lab, lev, pool, sy, sz, wall):
    """Flood on flat, padded arrays. Voxels outside the mask (and the one-voxel border) carry
    the label ``wall`` and are never labelled, so there are no bounds checks. Each level's FIFO
    lives in fixed-size blocks of ``pool`` (sequential reads and writes, no linked voxels)."""
    n = h.size
    size = pool.shape[1]
    blk_next = np.empty(pool.shape[0], dtype=np.int64)
    head_blk = np.full(256, -1, dtype=np.int64)
    head_pos = np.zeros(256, dtype=np.int64)
    tail_blk = np.full(256, -1, dtype=np.int64)
    tail_pos = np.zeros(256, dtype=np.int64)
    free = 0
    cur = 0
    i = 0
    start = True  # first the seeds, in raster order, then the flood
    while True:
        if start:
            if i == n:
                start = False
                continue
            li = lab[i]
            if li == 0 or li == wall:
                lev[i] = UNREACHED
                i += 1
                continue
            j = i
            i += 1
            p = h[j]
        else:
            if cur == 256:
                break
            hb = head_blk[cur]
            hp = head_pos[cur]
            if hb == -1 or (hb == tail_blk[cur] and hp == tail_pos[cur]):
                cur += 1  # this level is exhausted: pushes only go to levels >= cur
                continue
            if hp == size:
                hb = blk_next[hb]
                head_blk[cur] = hb
                hp = 0
            v = pool[hb, hp]
            head_pos[cur] = hp + 1
            lv = lab[v]
            # the 6 neighbours in a fixed order; a new one is handled by the push below
            j = -1
            for k in range(6):
                if k == 0:
                    w = v - sz
                elif k == 1:
                    w = v + sz
                elif k == 2:
                    w = v - sy
                elif k == 3:
                    w = v + sy
                elif k == 4:
                    w = v - 1
                else:
                    w = v + 1
                if lab[w] != 0:
                    continue
                lab[w] = lv
                p = h[w]
                if p < cur:
                    p = cur
                # push w at level p
                lev[w] = p
                tb = tail_blk[p]
                if tb == -1 or tail_pos[p] == size:
                    nb = free
                    free += 1
                    blk_next[nb] = -1
                    if tb == -1:
                        head_blk[p] = nb
                        head_pos[p] = 0
                    else:
                        blk_next[tb] = nb
                    tail_blk[p] = nb
                    tail_pos[p] = 0
                    tb = nb
                pool[tb, tail_pos[p]] = w
                tail_pos[p] += 1
            continue
        # push seed j at its own height p (the same push as for a neighbour above, written out
        # on purpose: a shared numba helper, inlined or not, measured 2-3x slower on 8 M voxels)
        lev[j] = p
        tb = tail_blk[p]
        if tb == -1 or tail_pos[p] == size:
            nb = free
            free += 1
            blk_next[nb] = -1
            if tb == -1:
                head_blk[p] = nb
                head_pos[p] = 0
            else:
                blk_next[tb] = nb
            tail_blk[p] = nb
            tail_pos[p] = 0
            tb = nb
        pool[tb, tail_pos[p]] = j
        tail_pos[p] += 1


@numba.njit(cache=True, nogil=True)
def _pad_labels(seeds, mask, wall, out):
    """``out`` (padded by one) = seeds inside the mask, ``wall`` elsewhere; False if a seed is ``wall``."""
    nz, ny, nx = seeds.shape
    ok = True
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if mask[z, y, x]:
                    v = seeds[z, y, x]
                    ok = ok and v != wall
                    out[z + 1, y + 1, x + 1] = v
                else:
                    out[z + 1, y + 1, x + 1] = wall
    return ok


@numba.njit(cache=True, nogil=True)
def _unpad_labels(padded, wall, out):
    nz, ny, nx = out.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = padded[z + 1, y + 1, x + 1]
                out[z, y, x] = 0 if v == wall else v


def _padded(a: np.ndarray, dtype, fill=0) -> np.ndarray:
    out = np.full(tuple(s + 2 for s in a.shape), fill, dtype=dtype)
    out[1:-1, 1:-1, 1:-1] = a
    return out


def _flood_padded(hp: np.ndarray, lp: np.ndarray, wall) -> np.ndarray:
    """Flood padded arrays in place (labels ``lp``, ``wall`` outside the mask); padded levels."""
    lev = np.empty(hp.shape, dtype=np.int16)
    n = hp.size
    pool = np.empty((n // _QBLOCK + 258, _QBLOCK), dtype=np.int32 if n < 2**31 else np.int64)
    _, ny, nx = hp.shape
    _flood_kernel(hp.ravel(), lp.ravel(), lev.ravel(), pool, nx, ny * nx, lp.dtype.type(wall))
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
    seeds = np.asarray(seeds)
    if seeds.dtype.kind != "u":
        raise ValueError(f"seeds must be of an unsigned integer type, got {seeds.dtype}")
    wall = seeds.dtype.type(np.iinfo(seeds.dtype).max)
    lp = np.full(tuple(s + 2 for s in seeds.shape), wall, dtype=seeds.dtype)
    if not _pad_labels(seeds, np.asarray(mask, dtype=bool), wall, lp):
        raise ValueError(f"seed label {wall} is reserved (the largest {seeds.dtype} value)")
    lev = _flood_padded(_padded(height, np.uint8), lp, wall)
    labels = np.empty(seeds.shape, dtype=seeds.dtype)
    _unpad_labels(lp, wall, labels)
    return labels, lev[inner].copy()


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
