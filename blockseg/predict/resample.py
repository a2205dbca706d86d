"""Voxel-size aware inference: run the network at its training voxel size, blockwise and exactly.

An image with another voxel size than the network's is resampled to it (per axis, factor
``image voxel size / network voxel size``), the network runs on the resampled *virtual* volume
and its outputs are resampled back to the image grid. Both grids are global (voxel centres
aligned, linear interpolation), and each block computes the network with every lattice tile
that reaches the resampled box its core needs, so a blockwise run equals the whole-volume one
(:func:`predict_array_scaled`) whatever the block shape. Vector channels in voxels (``cpv_*``)
are converted to image voxels, densities to counts per image voxel. Interpolation has no
anti-aliasing filter: fine for factors down to about 0.5.

The grids, what a block reads and why it is exact: ``docs/api/predict.md``, section
*Resampling to the network's voxel size*.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..defaults import DEFAULT_BATCH_SIZE
from ..errors import BlocksegError, warn
from ..zyx import zyx
from .lattice import reflect_index
from .normalise import resolve_array

#: automatic factors within this relative distance of 1 are not applied (resampling by 3 %
#: costs an interpolation and changes nothing a network can tell)
AUTO_TOLERANCE = 0.05
#: voxel-size resampling that changes a nucleus's size in voxels by more than this (geometric
#: mean over the axes, either way) warns, when the checkpoint records its nuclei's diameter: the
#: image's nuclei may not be of that size in µm (another organism or stage), see ``--diameter``
SIZE_WARN_FACTOR = 2.0


@dataclass(frozen=True)
class Scaling:
    """How an image is resampled for the network.

    Attributes
    ----------
    factors : tuple of float
        Effective per-axis factor ``S' / S`` (resampled voxels per image voxel).
    shape : tuple of int
        Image shape ``S``.
    net_shape : tuple of int
        Resampled shape ``S'`` the network's lattice covers.
    description : str
        One line: where the factors came from.
    """

    factors: tuple[float, float, float]
    shape: tuple[int, int, int]
    net_shape: tuple[int, int, int]
    description: str

    def to_dict(self) -> dict:
        return {"factors": list(self.factors), "network_shape": list(self.net_shape), "description": self.description}


def scaled_shape(shape: Sequence[int], factors: Sequence[float]) -> tuple[int, int, int]:
    """``round(S * r)`` per axis, at least 1."""
    return tuple(max(1, int(round(s * f))) for s, f in zip(shape, factors))  # type: ignore[return-value]


def instance_diameters_um(labels: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Equivalent-sphere diameter (µm) of every instance of ``labels`` (0 = background)."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    return (6.0 * counts * float(np.prod(voxel_size)) / np.pi) ** (1.0 / 3.0)


def nucleus_diameter_um(labels: np.ndarray, voxel_size: Sequence[float]) -> float | None:
    """Median equivalent-sphere diameter (µm) of the instances of ``labels`` (None without any)."""
    d = instance_diameters_um(labels, voxel_size)
    return float(np.median(d)) if d.size else None


#: units ``--diameter`` accepts: micrometres (the default for a bare number) and pixels
DIAMETER_UNITS = {"um": "um", "µm": "um", "μm": "um", "micron": "um", "microns": "um", "px": "px", "pixel": "px", "pixels": "px"}


def parse_diameter(value) -> tuple[float, str]:
    """A nucleus diameter with its unit: ``17``, ``"17um"``, ``"17 µm"`` -> ``(17.0, "um")``;
    ``"34px"`` -> ``(34.0, "px")``. A bare number is micrometres (blockseg's unit everywhere;
    Cellpose's ``--diameter`` is pixels: write ``34px`` for that).

    Raises
    ------
    BlocksegError
        For anything else (one line with the accepted forms).
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), "um"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([^\s0-9.]*)\s*", str(value))
        unit = DIAMETER_UNITS.get(m.group(2).lower() if m.group(2) else "um") if m else None
        if m is None or unit is None:
            raise BlocksegError(f"--diameter takes a size with its unit, e.g. 17um, 17µm or 34px (a bare number is µm), got {value!r}")
        number = float(m.group(1))
    if not (np.isfinite(number) and number > 0):
        raise BlocksegError(f"--diameter takes a positive size (17um, 34px), got {value!r}")
    return number, unit


def resolve_scale(
    scale, shape, image_voxel_size, voxel_size_source: str, network_voxel_size, diameter=None, network_diameter=None
) -> tuple[Scaling | None, str]:
    """The resampling of an image for a network, or None; and one line saying why.

    Parameters
    ----------
    scale : None, "auto", float or sequence of 3 floats
        None / "auto": image voxel size / network voxel size, when both are known and some
        axis differs by more than :data:`AUTO_TOLERANCE`. A number or three: those factors
        (1: no resampling).
    shape : sequence of int
        Image shape.
    image_voxel_size : sequence of float
        The image's voxel size (µm).
    voxel_size_source : str
        ``"metadata"``, ``"given"`` or ``"default"`` (unknown: taken as 1 µm).
    network_voxel_size : sequence of float or None
        The checkpoint's training voxel size.
    diameter : float or str, optional
        The image's typical nucleus diameter: a number in µm, or text with its unit (``"17um"``,
        ``"17µm"``, ``"34px"``: pixels of the image's y/x plane, as Cellpose counts them;
        :func:`parse_diameter`). The factors then make a nucleus of this size span as many
        network voxels as the training nuclei did:
        ``(network_diameter / diameter) * (image voxel / network voxel)`` per axis, for nuclei
        of another physical size than the training data's (another organism or stage).
    network_diameter : float, optional
        The checkpoint's training nucleus diameter (µm; ``metadata["nucleus_diameter_um"]``).
    """
    shape = tuple(int(s) for s in shape)
    auto = scale is None or (isinstance(scale, str) and scale == "auto")
    if diameter is not None:
        if not auto:
            raise BlocksegError("give --scale or --diameter, not both")
        number, unit = parse_diameter(diameter)
        if not network_diameter or not network_voxel_size:
            raise BlocksegError("--diameter needs a checkpoint that records its training nucleus diameter and voxel size "
                                "(checkpoints trained since 2026-11-29 do); use --scale")  # fmt: skip
        if voxel_size_source == "default":
            raise BlocksegError("--diameter needs the image's voxel size (pass --voxel-size)")
        in_plane = (float(image_voxel_size[1]) + float(image_voxel_size[2])) / 2  # pixels are counted in y/x
        diameter = number if unit == "um" else number * in_plane
        k = float(network_diameter) / float(diameter)
        factors = tuple(k * float(a) / float(b) for a, b in zip(image_voxel_size, network_voxel_size))
        # said in both units: a Cellpose user's "17" means pixels
        why = (f"nuclei of {diameter:.4g} µm ({diameter / in_plane:.4g} px at {in_plane:.4g} µm in y/x; --diameter "
               f"{number:g}{'px' if unit == 'px' else 'um'}) to the network's {float(network_diameter):.3g} µm, in its voxels")  # fmt: skip
    elif auto:
        if not network_voxel_size:
            return None, "not resampled: the checkpoint records no training voxel size"
        if voxel_size_source == "default":
            return None, "not resampled: the image's voxel size is unknown (pass --voxel-size, or --scale)"
        factors = tuple(float(a) / float(b) for a, b in zip(image_voxel_size, network_voxel_size))
        mean = math.prod(factors) ** (1 / 3)
        if network_diameter and not 1 / SIZE_WARN_FACTOR <= mean <= SIZE_WARN_FACTOR:
            warn(f"resampling by {mean:.2g}x to the checkpoint's voxel size assumes nuclei about {float(network_diameter):.3g} µm "
                 "across, as in its training data; if this image's differ, give --diameter (their typical size in µm)")  # fmt: skip
        why = (f"image voxel size {tuple(round(float(v), 4) for v in image_voxel_size)} µm / network's "
               f"{tuple(round(float(v), 4) for v in network_voxel_size)} µm")  # fmt: skip
    else:
        one = not np.isscalar(scale) and len(scale) == 1  # a one-item list, as nargs="+" gives it
        factors = zyx(scale[0] if one else scale, "--scale", kind=float, above=0)
        if all(f == 1 for f in factors):
            return None, "not resampled (--scale 1)"
        why = "given factors"
    if auto and all(abs(f - 1) <= AUTO_TOLERANCE for f in factors):  # derived factors (--diameter included)
        return None, f"not resampled: {why} within {AUTO_TOLERANCE:.0%} of 1"
    net = scaled_shape(shape, factors)
    eff = tuple(n / s for n, s in zip(net, shape))
    desc = f"resampled by {tuple(round(f, 4) for f in eff)} (z, y, x) to {net} for the network ({why}), outputs back to the image grid"
    return Scaling(eff, shape, net, desc), desc  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- interpolation
def _coords(index: np.ndarray, src_size: int, dst_size: int) -> np.ndarray:
    """Source coordinates of destination voxels (centres aligned), clamped into the source."""
    x = (index.astype(np.float64) + 0.5) * (src_size / dst_size) - 0.5
    return np.clip(x, 0.0, src_size - 1)


def _interp_axis(data: np.ndarray, axis: int, coords: np.ndarray, base: int, size: int) -> np.ndarray:
    """Linear interpolation of ``data`` (whose index 0 on ``axis`` is global ``base``) at ``coords``."""
    i0 = np.floor(coords).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    w = (coords - i0).astype(data.dtype if data.dtype.kind == "f" else np.float64)
    shape = [1] * data.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(data, i0 - base, axis=axis)
    b = np.take(data, i1 - base, axis=axis)
    return a + (b - a) * w


def source_box(lo: Sequence[int], hi: Sequence[int], src_shape, dst_shape) -> tuple[slice, ...]:
    """The source box a destination box ``[lo, hi)`` (inside the destination) interpolates from."""
    box = []
    for l, h, s, d in zip(lo, hi, src_shape, dst_shape):
        c = _coords(np.array([l, h - 1]), s, d)
        box.append(slice(int(np.floor(c[0])), min(int(np.floor(c[1])) + 2, s)))
    return tuple(box)


def interpolate_box(read, lo: Sequence[int], hi: Sequence[int], src_shape, dst_shape, lead: int = 0) -> np.ndarray:
    """Values of the destination grid's box ``[lo, hi)`` (inside it), linearly interpolated.

    ``read(box)`` returns the source array over an in-volume box (with ``lead`` leading
    non-spatial axes, e.g. channels). Each destination voxel's value depends only on its
    global coordinate, never on the box.
    """
    box = source_box(lo, hi, src_shape, dst_shape)
    data = read(box)
    for a in range(3):
        c = _coords(np.arange(lo[a], hi[a]), src_shape[a], dst_shape[a])
        data = _interp_axis(data, lead + a, c, box[a].start, src_shape[a])
    return data


def resample_array(data: np.ndarray, shape: Sequence[int], labels: bool = False) -> np.ndarray:
    """``data`` (3D) on a grid of ``shape`` spanning the same volume (centres aligned, the
    lattice predict resamples on): linear for images (rounded back to an integer dtype),
    nearest for labels and masks (ids are never mixed)."""
    src = tuple(int(s) for s in data.shape)
    shape = tuple(int(s) for s in shape)
    if labels:
        idx = [np.rint(_coords(np.arange(d), s, d)).astype(np.int64) for s, d in zip(src, shape)]
        return np.asarray(data)[np.ix_(*idx)]
    out = interpolate_box(lambda box: np.asarray(data[box], dtype=np.float32), (0, 0, 0), shape, src, shape)
    if np.dtype(data.dtype).kind in "ui":
        info = np.iinfo(data.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(data.dtype)


def scaled_reader(read_image, shape, net_shape, norm: dict | None):
    """``read(lo, hi)`` of the resampled, normalised input (global resampled coordinates,
    reflected at the resampled volume's borders), for :func:`blockseg.predict.infer.predict_region`."""
    from ..models.base import normalise  # torch: loaded when a resampled prediction runs, not with the scale helpers

    def read(lo, hi):
        idx = [reflect_index(np.arange(int(l), int(h)), n) for l, h, n in zip(lo, hi, net_shape)]
        mn = [int(i.min()) for i in idx]
        mx = [int(i.max()) + 1 for i in idx]
        vals = interpolate_box(lambda box: normalise(read_image(box), norm), mn, mx, shape, net_shape)
        for a, (i, m) in enumerate(zip(idx, mn)):
            if not (len(i) == mx[a] - m and (np.diff(i) == 1).all()):
                vals = np.take(vals, i - m, axis=a)
        return np.ascontiguousarray(vals, dtype=np.float32)

    return read


def net_region(core: Sequence[slice], shape, net_shape) -> tuple[slice, ...]:
    """The resampled box whose predictions the image-grid box ``core`` interpolates from."""
    return source_box([s.start for s in core], [s.stop for s in core], net_shape, shape)


def channel_factors(channels: Sequence[str], factors: Sequence[float]) -> np.ndarray:
    """Per-channel multiplier taking values from resampled to image units.

    ``cpv_<axis>`` (voxels of the resampled grid) -> image voxels: divide by that axis' factor;
    their MC variances by its square; ``density`` (per resampled voxel) -> per image voxel:
    multiply by the product of the factors. Everything else is unit-free.
    """
    axis = {"z": 0, "y": 1, "x": 2}
    out = np.ones(len(channels))
    for i, c in enumerate(channels):
        base, _, var = c.partition("_var") if c.endswith("_var") else (c, "", "")
        if base.startswith("cpv_") and base[4:] in axis:
            out[i] = 1 / factors[axis[base[4:]]] ** (2 if c.endswith("_var") else 1)
        elif base == "density":
            out[i] = math.prod(factors) ** (2 if c.endswith("_var") else 1)
    return out


def predict_core_scaled(model, read_image, lattice, core, scaling: Scaling, channels, norm, options, prefetch=True):
    """Final predictions ``(C, *core shape)`` float64 of an image-grid box, via the resampled grid."""
    from .infer import predict_region  # torch, numba: as above

    region = net_region(core, scaling.shape, scaling.net_shape)
    read = scaled_reader(read_image, scaling.shape, scaling.net_shape, norm)
    acc = predict_region(model, read, lattice, region, len(channels), options, prefetch=prefetch)

    def read_acc(box):
        return acc[(slice(None), *(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, region)))]

    out = interpolate_box(read_acc, [s.start for s in core], [s.stop for s in core], scaling.net_shape, scaling.shape, lead=1)
    return out * channel_factors(channels, scaling.factors)[:, None, None, None]


def predict_array_scaled(
    model,
    image: np.ndarray,
    factors: Sequence[float],
    normalisation: dict | None = None,
    patch=None,
    overlap=0.125,
    blending: str = "gaussian",
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    tta: bool = False,
    mc_samples: int = 0,
    amp: bool = True,
    snap: bool = True,
) -> dict[str, np.ndarray]:
    """Whole-volume in-memory prediction through the resampled grid (the blockwise reference).

    Parameters
    ----------
    model : BlocksegNet
    image : ndarray
        ``(z, y, x)`` raw image.
    factors : sequence of float
        Requested per-axis factors (resampled voxels per image voxel); the effective ones are
        ``round(S * r) / S``.
    normalisation : dict, optional
        A checkpoint's ``metadata["normalisation"]`` (any scheme, see :mod:`blockseg.predict.normalise`).
    patch, overlap, blending, batch_size, device, tta, mc_samples, amp, snap
        As :func:`blockseg.predict.predict_array`.
    """
    from .infer import InferenceOptions, check_options, make_lattice, output_channels  # torch, numba: as above

    image = np.asarray(image)
    if image.ndim != 3:
        raise BlocksegError(f"expected a 3D (z, y, x) image, got shape {image.shape}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise BlocksegError("the image holds NaN or infinite values")
    options = InferenceOptions(batch_size, device, tta, mc_samples, amp)
    check_options(model, options)
    net = scaled_shape(image.shape, factors)
    scaling = Scaling(tuple(n / s for n, s in zip(net, image.shape)), image.shape, net, "")  # type: ignore[arg-type]
    lattice = make_lattice(model, net, patch, overlap, blending, snap)
    names, _ = output_channels(model, mc_samples)
    norm = resolve_array(normalisation, image).affine
    core = tuple(slice(0, s) for s in image.shape)
    acc = predict_core_scaled(model, image.__getitem__, lattice, core, scaling, names, norm, options, prefetch=False)
    return {c: acc[i].astype(np.float32) for i, c in enumerate(names)}
