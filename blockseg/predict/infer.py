"""Running a network over lattice patches and blending them into a region: the shared core of
:func:`predict_array` (whole volume in memory) and the blockwise engine.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import BlocksegError
from ..models.base import BlocksegNet, normalise
from ..zyx import zyx
from .kernels import blend_tile
from .lattice import Lattice, read_reflected, resolve_overlap
from .normalise import resolve_array

#: flips used by test-time augmentation: every subset of the axes (z, y, x) -> 8 passes
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    tuple(a for a, on in zip((0, 1, 2), bits) if on) for bits in itertools.product((0, 1), repeat=3)
)
#: channels that hold a vector component along an axis: flipping that axis negates them
VECTOR_AXIS = {"cpv_z": 0, "cpv_y": 1, "cpv_x": 2}
#: how predict runs the network: torch eager, or torch.compile (inductor)
RUNTIMES = ("eager", "compile")


@dataclass(frozen=True)
class InferenceOptions:
    """How patches are run (everything except where they are).

    Attributes
    ----------
    batch_size : int
        Patches per forward pass.
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    tta : bool
        Average the outputs of the 8 flips (z, y, x subsets), flipped back.
    mc_samples : int
        MC-dropout forward passes (0: off). Outputs mean and variance per channel.
    amp : bool
        bf16 (or fp16 where bf16 is unsupported) autocast on CUDA; ignored on CPU.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "cpu"
    tta: bool = False
    mc_samples: int = 0
    amp: bool = True


def output_channels(model: BlocksegNet, mc_samples: int = 0) -> tuple[list[str], dict[str, str]]:
    """Names and kinds of the stored channels: the model's, plus ``<ch>_var`` with MC-dropout.

    A variance keeps the kind "raw" for raw channels; for prob / tanh channels it lies in
    [0, 1] and is stored with the "prob" scaling.
    """
    names = list(model.channels)
    kinds = dict(model.kinds)
    if mc_samples:
        for c in model.channels:
            names.append(f"{c}_var")
            kinds[f"{c}_var"] = "raw" if kinds[c] == "raw" else "prob"
    return names, kinds


def check_options(model: BlocksegNet, options: InferenceOptions) -> None:
    if options.batch_size < 1:
        raise BlocksegError(f"batch size must be at least 1, got {options.batch_size}")
    if options.mc_samples < 0 or options.mc_samples == 1:
        raise BlocksegError(f"MC-dropout needs at least 2 samples (or 0 for off), got {options.mc_samples}")
    if options.mc_samples and not model.supports_mc_dropout:
        raise BlocksegError(f"architecture {model.architecture!r} has no dropout layers: MC-dropout is not available")
    if options.tta and "aff" in model.representations:
        raise BlocksegError("test-time flips are not supported for affinity outputs (they point to one neighbour)")


def check_runtime(runtime: str, device: str = "auto") -> None:
    """Raise a one-line error for an unknown ``runtime`` (:data:`RUNTIMES`), or for
    ``"compile"`` on a CPU device where inductor finds no C++ compiler to build its kernels."""
    if runtime not in RUNTIMES:
        raise BlocksegError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "compile" and not device.startswith("cuda"):
        cxx = os.environ.get("CXX", "").split(" ")[0]
        if not any(shutil.which(c) for c in filter(None, (cxx, "g++", "c++", "clang++"))):
            raise BlocksegError("runtime 'compile' on CPU needs a C++ compiler (g++ or clang++, or $CXX); none was found")


def compile_model(model: BlocksegNet) -> BlocksegNet:
    """Compile ``model``'s forward in place with ``torch.compile`` (inductor, static shapes).

    Each new input shape (patch, batch) compiles once per process on its first forward; the
    lattice has one patch shape and at most two batch sizes. Postprocessing stays eager.
    """
    model.compile(dynamic=False)
    return model


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def forward_batch(model: BlocksegNet, t: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Postprocessed outputs ``(N, C[, +C], ...)`` float32, on the batch's device, of a
    normalised batch tensor ``(N, 1, ...)`` already on ``options.device``."""
    device = t.device
    vector_sign = None
    if options.tta:
        chans = list(model.channels)
        vector_sign = {a: [i for i, c in enumerate(chans) if VECTOR_AXIS.get(c) == a] for a in (0, 1, 2)}
    with torch.inference_mode():
        if device.type == "cuda":
            # channels-last feeds cuDNN's fast 3-D kernels; on CPU, single-thread workers ran this
            # project's U-Nets as fast or faster in the default layout (benchmarks/results/predict.md)
            t = t.contiguous(memory_format=torch.channels_last_3d)

        def forward(inp: torch.Tensor) -> torch.Tensor:
            with _autocast(device, options.amp):
                raw = model(inp)
            raw = raw.float()
            # in place unless the network hands back (a view of) its input, which TTA reuses
            own = raw.untyped_storage().data_ptr() != inp.untyped_storage().data_ptr()
            return model.postprocess(raw, inplace=own)

        def one_pass(inp: torch.Tensor) -> torch.Tensor:
            if not options.tta:
                return forward(inp)
            acc = None
            for flips in TTA_FLIPS:
                dims = [2 + a for a in flips]
                y = forward(torch.flip(inp, dims) if dims else inp)
                if dims:
                    y = torch.flip(y, dims)
                    for a in flips:
                        if vector_sign[a]:
                            y[:, vector_sign[a]] = -y[:, vector_sign[a]]
                acc = y if acc is None else acc + y
            return acc / len(TTA_FLIPS)

        if options.mc_samples:
            model.set_mc_dropout(True)
            try:
                s1 = s2 = None
                for _ in range(options.mc_samples):
                    y = one_pass(t).double()
                    s1 = y if s1 is None else s1 + y
                    s2 = y * y if s2 is None else s2 + y * y
            finally:
                model.set_mc_dropout(False)
            n = options.mc_samples
            mean = s1 / n
            var = torch.clamp(s2 / n - mean * mean, min=0) * (n / (n - 1))
            out = torch.cat([mean, var], dim=1).float()
        else:
            out = one_pass(t)
        return out.contiguous()


def run_batch(model: BlocksegNet, x: np.ndarray, options: InferenceOptions) -> np.ndarray:
    """Postprocessed outputs ``(N, C[, +C], ...)`` float32 of a normalised batch ``(N, 1, ...)``."""
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.device(options.device), non_blocking=True)
    return forward_batch(model, t, options).cpu().numpy()


def predict_region(
    model: BlocksegNet,
    read: Callable[[Sequence[int], Sequence[int]], np.ndarray],
    lattice: Lattice,
    core: Sequence[slice],
    n_channels: int,
    options: InferenceOptions,
    prefetch: bool = True,
    tiles: Sequence[range] | None = None,
    dtype=np.float64,
    on_device: bool | None = None,
) -> np.ndarray:
    """Blend lattice patches into an array ``(C, *core shape)`` covering the region ``core``.

    Parameters
    ----------
    read : callable
        ``read(lo, hi)`` returns the normalised float32 input box ``[lo, hi)`` (global
        coordinates, possibly outside the volume: the reader reflects).
    lattice : Lattice
        The volume's patch lattice.
    core : tuple of slice
        Region to fill (global, inside the volume).
    n_channels : int
        Output channels of :func:`run_batch`.
    prefetch : bool
        Read the input of the next z-row of tiles on a background thread while this row runs.
    tiles : sequence of range, optional
        Per-axis tile ranges to run (default: every tile overlapping ``core``, which makes the
        result final). With a subset (a block's own tiles) the result is a partial sum.
    dtype : {float64, float32}
        Accumulator. float64 (the default, and the reference) makes the normalised weights
        (summing to one) reproduce an identity network's input exactly once cast to float32;
        float32 halves the memory traffic and is within one storage step of it for uint8 and
        float16 storage (the engine's choice for those).
    on_device : bool, optional
        Keep the input slab, patch extraction and the accumulator on ``options.device``
        (:func:`_predict_region_torch`): one pinned, asynchronous host-to-device copy per z-row,
        no per-batch round trips. Default: on for CUDA devices.

    Notes
    -----
    Tiles are processed one z-row at a time (all tiles sharing a z start), so the input held
    is at most two z-slabs of the read region. Blending is one compiled pass per tile
    (:func:`.kernels.blend_tile`).
    """
    if on_device is None:
        on_device = torch.device(options.device).type == "cuda"
    if on_device:
        return _predict_region_torch(model, read, lattice, core, n_channels, options, prefetch, tiles, dtype)
    ranges = lattice.tiles_for(core) if tiles is None else tuple(tiles)
    lz, ly, lx = lattice.axes
    shape = tuple(s.stop - s.start for s in core)
    acc = np.zeros((n_channels, *shape), dtype=dtype)
    if any(len(r) == 0 for r in ranges):
        return acc
    weights = [np.ascontiguousarray(a.weights, dtype=dtype) for a in lattice.axes]
    ylo, yhi = ly.input_extent(ranges[1])
    xlo, xhi = lx.input_extent(ranges[2])
    rows = list(ranges[0])

    def read_row(kz: int) -> np.ndarray:
        z0 = int(lz.starts[kz]) - lz.crop
        return read((z0, ylo, xlo), (z0 + lz.patch, yhi, xhi))

    pool = ThreadPoolExecutor(max_workers=1) if prefetch and len(rows) > 1 else None
    try:
        pending = pool.submit(read_row, rows[0]) if pool else None
        for i, kz in enumerate(rows):
            slab = pending.result() if pool else read_row(kz)
            if pool and i + 1 < len(rows):
                pending = pool.submit(read_row, rows[i + 1])
            tiles = list(itertools.product(ranges[1], ranges[2]))
            for b0 in range(0, len(tiles), options.batch_size):
                batch = tiles[b0 : b0 + options.batch_size]
                x = np.empty((len(batch), 1, *lattice.patch), dtype=np.float32)
                for j, (ky, kx) in enumerate(batch):
                    y0 = int(ly.starts[ky]) - ly.crop - ylo
                    x0 = int(lx.starts[kx]) - lx.crop - xlo
                    x[j, 0] = slab[:, y0 : y0 + ly.patch, x0 : x0 + lx.patch]
                out = run_batch(model, x, options)
                expect = (len(batch), n_channels, *lattice.out)
                if out.shape != expect:
                    raise BlocksegError(
                        f"network output {out.shape[1:]} does not match its geometry: expected {expect[1:]} "
                        f"for input patch {lattice.patch}"
                    )
                for j, (ky, kx) in enumerate(batch):
                    _accumulate(acc, out[j], (kz, ky, kx), lattice, core, weights)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return acc


def _tile_boxes(lattice: Lattice, tile: tuple[int, int, int], core) -> tuple[list[slice], list[slice]]:
    """Source box in the tile's output and destination box in ``core`` of a tile (clipped)."""
    src, dst = [], []
    for ax, k, s in zip(lattice.axes, tile, core):
        t = int(ax.starts[k])
        lo, hi = max(t, s.start), min(t + ax.out, s.stop)
        src.append(slice(lo - t, hi - t))
        dst.append(slice(lo - s.start, hi - s.start))
    return src, dst


def _predict_region_torch(model, read, lattice: Lattice, core, n_channels: int, options: InferenceOptions,
                          prefetch: bool, tiles, dtype) -> np.ndarray:  # fmt: skip
    """:func:`predict_region` with the slab, the patches and the accumulator on ``options.device``.

    Each z-row's normalised input goes to the device once (pinned host memory, non-blocking
    copy, the next row read on a background thread meanwhile); patches are views of the device
    slab; blending is three broadcast multiplies and an add per tile on the device; only the
    final accumulator comes back. Same operations, in the same order, as the host path.
    """
    device = torch.device(options.device)
    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    ranges = lattice.tiles_for(core) if tiles is None else tuple(tiles)
    lz, ly, lx = lattice.axes
    shape = tuple(s.stop - s.start for s in core)
    acc = torch.zeros((n_channels, *shape), dtype=tdtype, device=device)
    if any(len(r) == 0 for r in ranges):
        return acc.cpu().numpy()
    weights = [torch.as_tensor(a.weights, dtype=tdtype, device=device) for a in lattice.axes]
    ylo, yhi = ly.input_extent(ranges[1])
    xlo, xhi = lx.input_extent(ranges[2])
    rows = list(ranges[0])
    pin = device.type == "cuda"

    def read_row(kz: int) -> torch.Tensor:
        z0 = int(lz.starts[kz]) - lz.crop
        host = torch.from_numpy(np.ascontiguousarray(read((z0, ylo, xlo), (z0 + lz.patch, yhi, xhi)), dtype=np.float32))
        return host.pin_memory() if pin else host

    pool = ThreadPoolExecutor(max_workers=1) if prefetch and len(rows) > 1 else None
    try:
        pending = pool.submit(read_row, rows[0]) if pool else None
        for i, kz in enumerate(rows):
            host = pending.result() if pool else read_row(kz)
            if pool and i + 1 < len(rows):
                pending = pool.submit(read_row, rows[i + 1])
            slab = host.to(device, non_blocking=True)
            tiles_yx = list(itertools.product(ranges[1], ranges[2]))
            for b0 in range(0, len(tiles_yx), options.batch_size):
                batch = tiles_yx[b0 : b0 + options.batch_size]
                parts = []
                for ky, kx in batch:
                    y0 = int(ly.starts[ky]) - ly.crop - ylo
                    x0 = int(lx.starts[kx]) - lx.crop - xlo
                    parts.append(slab[:, y0 : y0 + ly.patch, x0 : x0 + lx.patch])
                out = forward_batch(model, torch.stack(parts)[:, None], options)
                expect = (len(batch), n_channels, *lattice.out)
                if tuple(out.shape) != expect:
                    raise BlocksegError(
                        f"network output {tuple(out.shape[1:])} does not match its geometry: expected {expect[1:]} "
                        f"for input patch {lattice.patch}"
                    )
                for j, (ky, kx) in enumerate(batch):
                    tile = (kz, ky, kx)
                    src, dst = _tile_boxes(lattice, tile, core)
                    if any(d.stop <= d.start for d in dst):
                        continue
                    wz, wy, wx = (w[k, s] for w, k, s in zip(weights, tile, src))
                    w = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
                    acc[(slice(None), *dst)] += out[j][(slice(None), *src)] * w
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return acc.cpu().numpy()


def _accumulate(acc: np.ndarray, out: np.ndarray, tile: tuple[int, int, int], lattice: Lattice, core,
                weights: Sequence[np.ndarray]) -> None:  # fmt: skip
    """Add one tile's weighted output (clipped to ``core``) into ``acc``."""
    src, dst, n = [], [], []
    for ax, k, s in zip(lattice.axes, tile, core):
        t = int(ax.starts[k])
        lo, hi = max(t, s.start), min(t + ax.out, s.stop)
        src.append(lo - t)
        dst.append(lo - s.start)
        n.append(hi - lo)
    blend_tile(acc, out, dst, src, n, [w[k] for w, k in zip(weights, tile)])


def make_lattice(model: BlocksegNet, shape: Sequence[int], patch=None, overlap=0.125, blending="gaussian",
                 snap: bool = True) -> Lattice:  # fmt: skip
    """The lattice of a volume of ``shape`` for ``model`` (patch default: its trained patch).

    ``snap=False``: the last tile of each axis overhangs the volume's end rather than being
    snapped back (see :meth:`.AxisLattice.build`); predict uses it for auto and explicit patches.

    Overlap fractions (< 1) are fractions of the network's *training* output patch: the overlap
    blending needs is set by the network, not by the patch it runs on, so a larger inference
    patch keeps the overlap in voxels and computes fewer voxels twice.
    """
    geo = model.geometry
    patch = geo.input_patch if patch is None else zyx(patch, "patch", at_least=1)
    out = geo.output_for(patch)
    vox = resolve_overlap(overlap, out, reference=geo.output_patch)
    return Lattice.build(shape, patch, geo.crop, vox, geo.margin, blending, snap)


def predict_array(
    model: BlocksegNet,
    image: np.ndarray,
    normalisation: dict | None = None,
    patch: Sequence[int] | None = None,
    overlap: float | Sequence[float] = 0.125,
    blending: str = "gaussian",
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    tta: bool = False,
    mc_samples: int = 0,
    amp: bool = True,
    snap: bool = True,
) -> dict[str, np.ndarray]:
    """Whole-volume sliding-window prediction in memory (the reference for the blockwise engine).

    Parameters
    ----------
    model : BlocksegNet
        Network in eval mode, on ``device``.
    image : ndarray
        3-D ``(z, y, x)`` image, raw values.
    normalisation : dict, optional
        The checkpoint's ``metadata["normalisation"]``: a fixed ``{"offset", "scale"}`` map, or
        the percentile scheme, applied with this image's own percentiles
        (:mod:`blockseg.predict.normalise`).
    patch : sequence of int, optional
        Input patch (default ``model.geometry.input_patch``); must be admissible for the model.
    overlap : float or sequence
        Overlap of neighbouring output tiles: values < 1 are fractions of the output patch,
        values >= 1 voxels.
    blending : {"gaussian", "bump", "constant"}
        1-D window whose separable product weights each tile; weights are normalised.
    batch_size, device, tta, mc_samples, amp
        See :class:`InferenceOptions`.
    snap : bool
        Snap the last tile of each axis to the volume's end (False: let it overhang, as
        predict does with auto and explicit patches; its ``plan.lattice_snap`` says which).

    Returns
    -------
    dict of str to float32 ndarray
        One array per output channel (``model.channels``, plus ``<ch>_var`` with MC-dropout).
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise BlocksegError(f"expected a 3D (z, y, x) image, got shape {image.shape}")
    options = InferenceOptions(batch_size, device, tta, mc_samples, amp)
    check_options(model, options)
    lattice = make_lattice(model, image.shape, patch, overlap, blending, snap)
    names, _ = output_channels(model, mc_samples)

    def read(lo, hi):
        return normalise(read_reflected(image.__getitem__, image.shape, lo, hi), normalisation)

    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise BlocksegError("the image holds NaN or infinite values")

    normalisation = resolve_array(normalisation, image).affine  # a percentile scheme: this image's own
    core = tuple(slice(0, s) for s in image.shape)
    acc = predict_region(model, read, lattice, core, len(names), options, prefetch=False)
    return {c: acc[i].astype(np.float32) for i, c in enumerate(names)}
