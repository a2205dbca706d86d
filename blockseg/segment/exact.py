"""The exact seeded watershed: a total order every region can evaluate, and its block kernel.

A path from a seed gets the key ``(M, n)``: ``M`` its highest height (the minimax level of the
classical watershed), ``n`` the steps since it first reached ``M``. This path algebra is strictly
monotone and isotone, so every foreground voxel has a unique optimal key ``K*`` (the unique
solution of local Bellman equations), and its label is the smallest seed id among its *optimal
predecessors*. The definition mentions no queue order, so a block can evaluate it on its region
given the values on the region's one-voxel shell.

* :func:`keyed_flood` computes it in one bucket-queue pass (one FIFO per level), with the shell
  values as fixed boundary sources;
* :func:`keyed_update` updates a previous solution after shell values changed (keys only
  decrease), visiting only the voxels whose key or label can change;
* blocks that exchange shell values until none changes reach the whole-volume result for every
  input, block shape and halo (:mod:`.pipeline` runs the rounds).

The definitions and the proofs (uniqueness, the kernel's pop order, the fixed point):
``docs/design/exactness.md`` (the site's *Design notes / Exactness*).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..runtime._jit import njit

#: level of a voxel no seed reached
UNREACHED = 256

#: entries per block of the bucket queue's storage
_QBLOCK = 4096

#: how many FIFO entries ahead of the pop :func:`_keyed_kernel` prefetches: on a 264³ region of
#: the 512³ benchmark (experiments/bench_flood_kernel.py) the kernel's median was 0.44, 0.41, 0.53
#: and 0.54 s with 8, 16, 24 and 32 against 0.97 s without (issue 29 goal 5)
_PREFETCH_AHEAD = 16


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to load the cache line of ``arr[idx]`` (``arr`` 1D) into every cache level.

    A hint only: no value changes and no fault even out of bounds, so results stay identical.
    The flood visits voxels in (level, dist) order, scattered over the whole padded volume, and
    its next pops are already known (the FIFO's next entries); without the hint each visit waits
    on cache misses one after the other (a 264³ region: ~3x slower than when it fits in cache).
    """
    if not isinstance(arr, types.Array) or arr.ndim != 1 or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        aryty, idxty = sig.args
        ary = context.make_array(aryty)(context, builder, args[0])
        i = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [i], wraparound=False)
        i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
        # declare_intrinsic names it for this llvmlite's pointer kind (llvm.prefetch.p0i8 / .p0)
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]))
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@njit(nogil=True)
def _keyed_kernel(h, lab, lev, dist, fixed, seeds, src, pool, sy, sz, wall):
    """Flood flat arrays padded by two voxels (the outer layer is ``wall``; the inner layer
    holds the shell sources or ``wall``). ``seeds`` and ``src`` are flat indices; ``src`` is
    sorted by (level, dist). Keys of seeds and sources are preset by the caller."""
    size = pool.shape[1]
    blk_next = np.empty(pool.shape[0], dtype=np.int64)
    head_blk = np.full(256, -1, dtype=np.int64)
    head_pos = np.zeros(256, dtype=np.int64)
    tail_blk = np.full(256, -1, dtype=np.int64)
    tail_pos = np.zeros(256, dtype=np.int64)
    free = 0
    # seeds: queued at their own height with n = 0
    for t in range(seeds.size):
        j = seeds[t]
        p = lev[j]
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
    ns = src.size
    si = 0
    cur = 0
    while cur < 256:
        # next pop: this level's FIFO head or the next source, whichever has the smaller n
        hb = head_blk[cur]
        hp = head_pos[cur]
        fifo = hb != -1 and not (hb == tail_blk[cur] and hp == tail_pos[cur])
        have_src = si < ns and lev[src[si]] == cur
        if not fifo and not have_src:
            cur += 1
            continue
        if fifo:
            if hp == size:
                hb = blk_next[hb]
                head_blk[cur] = hb
                hp = 0
                head_pos[cur] = 0
            v = pool[hb, hp]
            # prefetch what popping the entry _PREFETCH_AHEAD behind this one reads (its key,
            # its neighbours' labels and heights; +-1 share their lines), if it is queued already
            q = hp + _PREFETCH_AHEAD
            if q < size and (hb != tail_blk[cur] or q < tail_pos[cur]):
                u = pool[hb, q]
                _prefetch(lev, u)
                _prefetch(dist, u)
                _prefetch(lab, u)
                _prefetch(h, u)
                _prefetch(lab, u - sz)
                _prefetch(h, u - sz)
                _prefetch(lab, u + sz)
                _prefetch(h, u + sz)
                _prefetch(lab, u - sy)
                _prefetch(h, u - sy)
                _prefetch(lab, u + sy)
                _prefetch(h, u + sy)
            if have_src and dist[src[si]] < dist[v]:
                v = src[si]
                si += 1
            else:
                head_pos[cur] = hp + 1
        else:
            v = src[si]
            si += 1
        pv = lev[v]
        dv = dist[v]
        lv = lab[v]
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
            lw = lab[w]
            if lw == wall:
                continue
            hw = h[w]
            if hw > pv:
                nl = np.int64(hw)
                nd = np.uint32(0)
            else:
                nl = np.int64(pv)
                nd = np.uint32(dv + 1)
            if lw == 0:
                lab[w] = lv
                lev[w] = nl
                dist[w] = nd
                tb = tail_blk[nl]
                if tb == -1 or tail_pos[nl] == size:
                    nb = free
                    free += 1
                    blk_next[nb] = -1
                    if tb == -1:
                        head_blk[nl] = nb
                        head_pos[nl] = 0
                    else:
                        blk_next[tb] = nb
                    tail_blk[nl] = nb
                    tail_pos[nl] = 0
                    tb = nb
                pool[tb, tail_pos[nl]] = w
                tail_pos[nl] += 1
            elif lv < lw and fixed[w] == 0 and lev[w] == nl and dist[w] == nd:
                lab[w] = lv  # another optimal predecessor with a smaller label


@njit(nogil=True)
def _prepare_padded(height, seeds, mask, wall, hp, lab, lev, dist, fixed):
    """Fill uninitialised padded arrays (two voxels each side): the interior from the
    region (a seed: its id, level = its height, dist 0, fixed; other masked voxels: label 0,
    unreached; voxels outside the mask: ``wall``), the padding as outside (height 0, ``wall``,
    unreached, dist 0, not fixed) -- one pass, no fill before. Returns the number of seed
    voxels, or -1 when a seed carries the reserved ``wall`` value."""
    nz, ny, nx = seeds.shape
    pz, py, px = hp.shape
    count = 0
    bad = 0
    for z in range(pz):
        for y in range(py):
            if z < 2 or z >= nz + 2 or y < 2 or y >= ny + 2:
                hp[z, y, :] = 0
                lab[z, y, :] = wall
                lev[z, y, :] = 256
                dist[z, y, :] = 0
                fixed[z, y, :] = 0
                continue
            for x in (0, 1, nx + 2, nx + 3):
                hp[z, y, x] = 0
                lab[z, y, x] = wall
                lev[z, y, x] = 256
                dist[z, y, x] = 0
                fixed[z, y, x] = 0
            # rows as 1D views and selects instead of branches, and the reserved-seed test
            # counted instead of returning early: the loop compiles to vector code (a 264³
            # region: about half the time of a branch per voxel, issue 29 goal 5)
            hrow, srow, mrow = height[z - 2, y - 2], seeds[z - 2, y - 2], mask[z - 2, y - 2]
            hpr, labr, levr, distr, fixr = hp[z, y], lab[z, y], lev[z, y], dist[z, y], fixed[z, y]
            for x in range(nx):
                hv = hrow[x]
                m = mrow[x]
                s = srow[x]
                seed = m and s != 0
                hpr[x + 2] = hv
                distr[x + 2] = 0
                labr[x + 2] = s if m else wall
                levr[x + 2] = np.uint16(hv) if seed else np.uint16(256)
                fixr[x + 2] = np.uint8(seed)
                count += np.int64(seed)
                bad += np.int64(m and s == wall)
    return -1 if bad else count


@njit(nogil=True)
def _seed_positions(fixed, count):
    """Flat indices of the ``count`` fixed voxels of the padded interior, in raster order."""
    pz, py, px = fixed.shape
    out = np.empty(count, dtype=np.int64)
    k = 0
    for z in range(2, pz - 2):
        for y in range(2, py - 2):
            base = (z * py + y) * px
            for x in range(2, px - 2):
                if fixed[z, y, x]:
                    out[k] = base + x
                    k += 1
    return out


def _place_shell(shell, shape, lab, lev, dist, fixed) -> np.ndarray:
    """Write the shell's reached face voxels into the padded arrays as fixed sources; their flat
    indices ordered by key (level, dist), the order the flood takes them in."""
    ring = _ring_index(tuple(shape))
    nl, nv, nd = _ring_values(shell, tuple(n + 2 for n in shape), ring)
    reached = (nl != 0) & (nv < UNREACHED)
    if not reached.any():
        return np.zeros(0, dtype=np.int64)
    src = _padded_positions(ring[reached], shape)
    lab.reshape(-1)[src], lev.reshape(-1)[src], dist.reshape(-1)[src] = nl[reached], nv[reached], nd[reached]
    fixed.reshape(-1)[src] = 1
    return src[np.lexsort((dist.reshape(-1)[src], lev.reshape(-1)[src]))]


def keyed_flood(
    height: np.ndarray,
    seeds: np.ndarray,
    mask: np.ndarray,
    shell: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    return_state: bool = False,
    with_labels: bool = True,
):
    """Exact seeded watershed of ``height`` inside ``mask`` (6-connected), see the module docstring.

    Parameters
    ----------
    height : ndarray of uint8, 3D
        Height map (low floods first).
    seeds : ndarray of unsigned int, 3D
        Seed ids (0 = no seed); ids order ties, so they must be the global ids. Seeds outside
        ``mask`` are ignored. The dtype's largest value is reserved.
    mask : ndarray of bool, 3D
        Voxels that may be labelled.
    shell : (labels, level, dist), optional
        Values of the voxels just outside the region, as arrays of the region's shape plus one
        voxel on each side (only the six face layers are read; label 0 or level 256 = none), or
        as those positions alone (1-D, in :func:`shell_positions` order), as :func:`keyed_update`.

    Returns
    -------
    labels : ndarray, dtype of ``seeds``
    level : ndarray of uint16
        Minimax height from the seeds (256 where unreached).
    dist : ndarray of uint32
        Steps since the optimal path entered its level (the key's second component).
    state : tuple of ndarray, only with ``return_state``
        The padded solution, shell included, for :func:`keyed_update`.

    Without ``with_labels`` (only with ``return_state``), ``labels`` is None: the caller reads
    them from ``state`` where it needs them (as :func:`keyed_update` allows).
    """
    if height.ndim != 3 or height.shape != seeds.shape or height.shape != mask.shape:
        raise ValueError(f"height, seeds and mask must be 3D of one shape: {height.shape}, {seeds.shape}, {mask.shape}")
    seeds = np.ascontiguousarray(seeds)
    if seeds.dtype.kind != "u":
        raise ValueError(f"seeds must be of an unsigned integer type, got {seeds.dtype}")
    shape = height.shape
    wall = seeds.dtype.type(np.iinfo(seeds.dtype).max)
    if not height.size:
        return seeds.copy(), np.full(shape, UNREACHED, np.uint16), np.zeros(shape, np.uint32)
    pshape = tuple(s + 4 for s in shape)
    # written whole by _prepare_padded (padding included): no fill first (issue 29 goal 5)
    hp = np.empty(pshape, dtype=np.uint8)
    lab = np.empty(pshape, dtype=seeds.dtype)
    lev = np.empty(pshape, dtype=np.uint16)
    dist = np.empty(pshape, dtype=np.uint32)
    fixed = np.empty(pshape, dtype=np.uint8)
    n_seeds = _prepare_padded(
        np.ascontiguousarray(height, dtype=np.uint8), seeds, np.ascontiguousarray(mask, dtype=bool), wall,
        hp, lab, lev, dist, fixed,
    )  # fmt: skip
    if n_seeds < 0:
        raise ValueError(f"seed label {wall} is reserved (the largest {seeds.dtype} value)")
    src = np.zeros(0, dtype=np.int64) if shell is None else _place_shell(shell, shape, lab, lev, dist, fixed)
    # the seeds' flat indices in the padded arrays, in raster order (the shell lies outside)
    seed_idx = _seed_positions(fixed, n_seeds) if n_seeds else np.zeros(0, np.int64)
    n = hp.size
    pool = np.empty((n // _QBLOCK + 258, _QBLOCK), dtype=np.int32 if n < 2**31 else np.int64)
    _keyed_kernel(
        hp.ravel(), lab.ravel(), lev.ravel(), dist.ravel(), fixed.ravel(), seed_idx.astype(np.int64), src,
        pool, pshape[2], pshape[1] * pshape[2], wall,
    )  # fmt: skip
    core = (slice(2, -2),) * 3
    labels = None
    if with_labels or not return_state:
        labels = lab[core].copy()
        labels[labels == wall] = 0
    if return_state:
        return labels, lev[core], dist[core], (lab, lev, dist, hp, fixed)
    return labels, lev[core].copy(), dist[core].copy()


def _ring(shape) -> np.ndarray:
    """The six face layers of a box of ``shape + 2`` (the shell positions)."""
    ring = np.zeros(tuple(s + 2 for s in shape), dtype=bool)
    for ax in range(3):
        for side in (0, -1):
            idx = [slice(1, -1)] * 3
            idx[ax] = side
            ring[tuple(idx)] = True
    return ring


@functools.lru_cache(maxsize=8)
def _ring_index(shape: tuple[int, int, int]) -> np.ndarray:
    """Flat indices, in a box of ``shape + 2``, of its six face layers (the shell positions)."""
    return np.flatnonzero(_ring(shape))


def _padded_positions(ring: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Flat indices, in a region's padded arrays (``shape + 4``), of shell positions given as flat
    indices in the box of ``shape + 2`` (:func:`shell_positions`)."""
    want, pshape = tuple(n + 2 for n in shape), tuple(n + 4 for n in shape)
    z, r = np.divmod(ring, want[1] * want[2])
    y, x = np.divmod(r, want[2])
    return ((z + 1) * pshape[1] + (y + 1)) * pshape[2] + (x + 1)


def shell_positions(shape: Sequence[int]) -> np.ndarray:
    """Flat indices, in a box of ``shape + 2`` (C order), of the shell of a region of ``shape``:
    the voxels sharing a face with the region (its six face layers, edges and corners of the box
    excluded), ascending. The order of a shell given as 1-D arrays to :func:`keyed_update`.

    Examples
    --------
    >>> shell_positions((1, 1, 1))  # the six face neighbours of one voxel in its 3x3x3 box
    array([ 4, 10, 12, 14, 16, 22])
    """
    return _ring_index(tuple(int(n) for n in shape))


def _ring_values(shell, want: tuple, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shell's (labels, level, dist) at the ring positions, from region-sized arrays of shape
    ``want`` or from 1-D arrays already in ring order."""
    s_lab, s_lev, s_dist = (np.asarray(a) for a in shell)
    if s_lab.ndim == 1 and s_lab.shape == s_lev.shape == s_dist.shape == ring.shape:
        return s_lab, s_lev, s_dist
    if s_lab.shape != want or s_lev.shape != want or s_dist.shape != want:
        raise ValueError(f"shell arrays must have shape {want} (or be 1-D, one value per shell position)")
    return s_lab.ravel()[ring], s_lev.ravel()[ring], s_dist.ravel()[ring]


def keyed_update(state, shell, with_labels: bool = True, return_shell: bool = False):
    """:func:`keyed_flood` of a region whose shell values changed, from its previous solution.

    ``state`` is what :func:`keyed_flood` (``return_state=True``) or this function returned
    for the same region -- or for the same region with any *earlier* shell: the padded labels,
    keys, height and fixed-voxel flags, so the update reads nothing else. It is updated in
    place (a copy-on-write memory map is fine). Exact because the shell keys only decrease
    between runs (module docstring, "keys only decrease"): starting from the old solution, the
    voxels whose key or label changes are exactly those reached, in key order, from the changed
    shell voxels through neighbours whose offered key is at most their own (lower: a new key;
    equal: their label is recomputed from all their optimal predecessors). The result is the
    unique solution with the new shell, the same as a fresh flood (``tests/segment/test_exact.py``
    checks it). A shell key that *increased* violates the premise and raises RuntimeError.
    Only the shell positions of ``shell`` are read (elsewhere its arrays may hold anything).
    ``shell`` may also be given as those positions alone: three 1-D arrays in the order of
    :func:`shell_positions` (what a caller that assembles shells from face pieces builds,
    without allocating three region-sized arrays).

    Returns ``(labels, level, dist, state, changed)``: ``labels`` is the core's labels (None
    without ``with_labels``: reading them touches the whole state), ``level`` and ``dist``
    views of the core's keys, ``changed`` the flat indices (into the padded state) of the
    region's voxels whose key or label changed (shell voxels not included). With
    ``return_shell``, a sixth item: the flat indices of the shell positions it wrote (values
    and fixed flags); with ``changed`` they are every entry of ``state`` that differs from
    before, so a caller can keep the update as a delta.
    """
    lab, lev, dist, hp, fixed = state
    pshape = lab.shape
    shape = tuple(n - 4 for n in pshape)
    wall = lab.dtype.type(np.iinfo(lab.dtype).max)
    want = tuple(n + 2 for n in shape)
    ring = _ring_index(shape)  # positions in the (shape + 2) box; in the padded state: + offset
    nl, nv, nd = _ring_values(shell, want, ring)
    pidx = _padded_positions(ring, shape)
    fl, fv, fd = lab.reshape(-1), lev.reshape(-1), dist.reshape(-1)
    ol, ov, od = fl[pidx], fv[pidx], fd[pidx]
    new = (nl != 0) & (nv < UNREACHED)
    old = ol != wall
    key_new = (nv.astype(np.uint64) << np.uint64(32)) | nd.astype(np.uint64)
    key_old = (ov.astype(np.uint64) << np.uint64(32)) | od.astype(np.uint64)
    if (old & ~new).any() or (key_new[old] > key_old[old]).any():
        raise RuntimeError("keyed_update: a shell key increased; the incremental update does not apply")
    changed = new & ((ol != nl) | (key_new != key_old))
    idx = pidx[changed].astype(np.int64)
    fl[idx], fv[idx], fd[idx] = nl[changed], nv[changed], nd[changed]
    fixed.reshape(-1)[pidx[new]] = 1
    moved = _update_kernel(hp.reshape(-1), fl, fv, fd, fixed.reshape(-1), idx, pshape[2], pshape[1] * pshape[2], wall)
    core = (slice(2, -2),) * 3
    labels = None
    if with_labels:
        labels = lab[core].copy()
        labels[labels == wall] = 0
    if return_shell:
        return labels, lev[core], dist[core], (lab, lev, dist, hp, fixed), moved, pidx[new].astype(np.int64)
    return labels, lev[core], dist[core], (lab, lev, dist, hp, fixed), moved


# ---------------------------------------------------------------------------- incremental update
@njit(nogil=True)
def _heap_push(hk, hi, n, key, idx):
    if n == hk.size:
        nk = np.empty(2 * hk.size, dtype=hk.dtype)
        ni = np.empty(2 * hi.size, dtype=hi.dtype)
        nk[:n] = hk
        ni[:n] = hi
        hk, hi = nk, ni
    j = n
    hk[j] = key
    hi[j] = idx
    while j > 0:
        p = (j - 1) >> 1
        if hk[p] <= hk[j]:
            break
        hk[p], hk[j] = hk[j], hk[p]
        hi[p], hi[j] = hi[j], hi[p]
        j = p
    return hk, hi, n + 1


@njit(nogil=True)
def _heap_pop(hk, hi, n):
    key, idx = hk[0], hi[0]
    n -= 1
    hk[0], hi[0] = hk[n], hi[n]
    j = 0
    while True:
        a = 2 * j + 1
        if a >= n:
            break
        b = a + 1
        c = b if b < n and hk[b] < hk[a] else a
        if hk[j] <= hk[c]:
            break
        hk[c], hk[j] = hk[j], hk[c]
        hi[c], hi[j] = hi[j], hi[c]
        j = c
    return key, idx, n


@njit(nogil=True)
def _update_kernel(h, lab, lev, dist, fixed, changed, sy, sz, wall):
    """Bring a flood solution up to date after the shell values at ``changed`` (already written,
    all *lower or equal keys* than before: see the module docstring) changed. Pops in key order
    (a binary heap on ``level << 32 | dist``) only the voxels whose key or label may change;
    a popped voxel takes the smallest label among its optimal predecessors (all final: smaller
    keys), and notifies its neighbours only when its value changed. Returns the flat indices of
    the non-fixed voxels whose value changed."""
    n_changed = 0
    out = np.empty(64, dtype=np.int64)
    hk = np.empty(max(16, 4 * changed.size), dtype=np.uint64)
    hi = np.empty(hk.size, dtype=np.int64)
    n = 0
    done = np.zeros(h.size, dtype=np.bool_)
    moved = np.zeros(h.size, dtype=np.bool_)  # key lowered during this update
    for t in range(changed.size):
        r = changed[t]
        hk, hi, n = _heap_push(hk, hi, n, (np.uint64(lev[r]) << np.uint64(32)) | np.uint64(dist[r]), r)
    while n > 0:
        key, v, n = _heap_pop(hk, hi, n)
        if done[v]:
            continue
        pv = lev[v]
        dv = dist[v]
        if (np.uint64(pv) << np.uint64(32)) | np.uint64(dv) != key:
            continue  # stale entry: the key decreased since
        done[v] = True
        if fixed[v] == 0:
            # the smallest label among the optimal predecessors (ext(K(u), v) == K(v))
            best = lab[v]
            found = False
            for k in range(6):
                if k == 0:
                    u = v - sz
                elif k == 1:
                    u = v + sz
                elif k == 2:
                    u = v - sy
                elif k == 3:
                    u = v + sy
                elif k == 4:
                    u = v - 1
                else:
                    u = v + 1
                lu = lab[u]
                if lu == wall or lu == 0 or lev[u] >= UNREACHED:
                    continue
                if h[v] > lev[u]:
                    ok = pv == h[v] and dv == 0
                else:
                    ok = pv == lev[u] and dv == dist[u] + 1
                if ok and (not found or lu < best):
                    best = lu
                    found = True
            if not moved[v] and best == lab[v]:
                continue  # same key, same label: nothing to tell the neighbours
            lab[v] = best
            if n_changed == out.size:
                grown = np.empty(2 * out.size, dtype=np.int64)
                grown[:n_changed] = out[:n_changed]
                out = grown
            out[n_changed] = v
            n_changed += 1
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
            lw = lab[w]
            if lw == wall or fixed[w] != 0 or done[w]:
                continue
            hw = h[w]
            if hw > pv:
                nl = np.uint64(hw)
                nd = np.uint64(0)
            else:
                nl = np.uint64(pv)
                nd = np.uint64(dv) + np.uint64(1)
            off = (nl << np.uint64(32)) | nd
            cur = (np.uint64(lev[w]) << np.uint64(32)) | np.uint64(dist[w])
            if lw == 0 or off < cur:
                lab[w] = lab[v]
                lev[w] = nl
                dist[w] = nd
                moved[w] = True
                hk, hi, n = _heap_push(hk, hi, n, off, w)
            elif off == cur:
                hk, hi, n = _heap_push(hk, hi, n, cur, w)  # recompute its label
    return out[:n_changed].copy()
