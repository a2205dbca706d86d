"""Compiled (numba) kernels of the predict engine's hot loops: blending and quantisation.

Both are single passes without temporaries; they release the GIL, so a block's input read-ahead
thread keeps running while they do.

* :func:`blend_tile` adds one tile's output, weighted by the separable normalised window
  ``wz * wy * wx``, into an accumulator. With float64 weights and accumulator it performs
  exactly the operations of the numpy reference (``(wz * wy) * wx``, product with the float32
  output promoted to float64, then the sum), so it is bit-identical to it; with float32 ones
  it is the fast path for quantised / float16 storage.
* :func:`quantise_into` writes the stored uint8 of a float32 channel directly, with the
  operations of :func:`blockseg.io.predictions.encode_channel` in the same (float32) precision,
  so both give the same bytes.
"""

from __future__ import annotations

import numpy as np

from ..runtime._jit import njit


@njit(nogil=True)
def _blend(acc, out, dst, src, n, wz, wy, wx):  # pragma: no cover - compiled
    wxs = wx[src[2] : src[2] + n[2]]
    for c in range(acc.shape[0]):
        for i in range(n[0]):
            a = wz[src[0] + i]
            for j in range(n[1]):
                b = a * wy[src[1] + j]
                arow = acc[c, dst[0] + i, dst[1] + j, dst[2] : dst[2] + n[2]]
                orow = out[c, src[0] + i, src[1] + j, src[2] : src[2] + n[2]]
                for k in range(n[2]):
                    arow[k] += orow[k] * (b * wxs[k])


def blend_tile(acc: np.ndarray, out: np.ndarray, dst, src, n, weights) -> None:
    """``acc[:, dst:dst+n] += out[:, src:src+n] * wz * wy * wx`` in place.

    Parameters
    ----------
    acc : ndarray ``(C, Z, Y, X)``, float32 or float64
        Accumulator (C-contiguous).
    out : ndarray ``(C, oz, oy, ox)`` float32
        One tile's postprocessed output.
    dst, src, n : sequence of 3 int
        Start in ``acc``, start in ``out`` and size of the box to add.
    weights : sequence of 3 1-D ndarray
        The tile's normalised 1-D windows (full length ``oz``, ``oy``, ``ox``), in the
        accumulator's dtype.
    """
    if min(n) <= 0:
        return
    _blend(acc, out, np.asarray(dst, np.int64), np.asarray(src, np.int64), np.asarray(n, np.int64), *weights)


@njit(nogil=True)
def _quantise(values, dest, lo, shift, scale):  # pragma: no cover - compiled
    hi = np.float32(1.0)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            for k in range(values.shape[2]):
                v = min(max(values[i, j, k], lo), hi)
                dest[i, j, k] = np.uint8(np.rint((v + shift) * scale))


def quantise(values: np.ndarray, kind: str) -> np.ndarray:
    """uint8 encoding of the float32 3-D ``values`` (any strides) of a ``"prob"`` or ``"tanh"`` channel.

    Same bytes as ``encode_channel(values, kind, np.uint8)`` (NaN aside), in one pass.
    """
    if values.dtype != np.float32 or values.ndim != 3:
        raise ValueError(f"quantise takes a 3-D float32 array, got {values.ndim}-D {values.dtype}")
    dest = np.empty(values.shape, dtype=np.uint8)
    if kind == "prob":
        _quantise(values, dest, np.float32(0.0), np.float32(0.0), np.float32(255.0))
    elif kind == "tanh":
        _quantise(values, dest, np.float32(-1.0), np.float32(1.0), np.float32(127.5))
    else:
        raise ValueError(f"only prob / tanh channels are quantised, not {kind!r}")
    return dest
