"""Decoders: pure per-block functions from prediction channels to watershed inputs.

A decoder turns the float32 prediction channels of a region into three arrays of that region:

* ``seeds`` -- bool, voxels that become seeds (their 26-connected components, made global
  across blocks, are the markers);
* ``foreground`` -- bool, voxels the watershed may label;
* ``height`` -- uint8, the flooding height (low floods first).

Seeds are always restricted to the foreground. Every decoder is *pointwise* (``support`` 0)
unless it declares a larger ``support``: then the masks are valid only ``support`` voxels
inside the region it was given, and blocks read that much more.

The thresholds and sizes are the decoders' parameters; sizes (``min_seed_size``,
``min_size``) are applied to global objects, never per block.

Defaults recover perfect maps (the targets of ground truth decode to its nuclei, one to one), so
seeds are kept at any size and only specks under 8 voxels removed; published settings are named
presets (:data:`PRESETS`: ``nucmm``, the NucMM reference decoder). Each decoder's thresholds and
the rules they share: ``docs/guide/segment.md``, *Decoders and defaults*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Mapping

import numpy as np
from scipy import ndimage as ndi

from ..runtime._jit import njit
from ..errors import BlocksegError


@njit(nogil=True, inline="always")
def _level(value, lo, scale):
    """``value`` mapped linearly from ``[lo, lo + 255 / scale]`` onto 0..255 (rounded, clipped)."""
    x = (value - lo) * scale
    if x < 0:
        x = 0
    elif x > 255:
        x = 255
    return np.uint8(np.rint(x))


@njit(nogil=True)
def _quantise_kernel(values, lo, scale, out):
    v = values.ravel()
    o = out.ravel()
    for i in range(v.size):
        o[i] = _level(v[i], lo, scale)


def quantise_height(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``values`` linearly from ``[lo, hi]`` onto uint8 0..255 (rounded, clipped)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    out = np.empty(values.shape, dtype=np.uint8)
    _quantise_kernel(values, np.float32(lo), np.float32(255.0 / (hi - lo)), out)
    return out


@njit(nogil=True)
def _bcd_kernel(b, c, d, seed_b, seed_c, seed_d, fg_b, fg_d, seeds, fg, height):
    bb, cc, dd = b.ravel(), c.ravel(), d.ravel()
    s, f, h = seeds.ravel(), fg.ravel(), height.ravel()
    for i in range(bb.size):
        fi = bb[i] > fg_b and dd[i] > fg_d
        f[i] = fi
        s[i] = fi and bb[i] > seed_b and cc[i] < seed_c and dd[i] > seed_d
        h[i] = _level(-dd[i], np.float32(-1.0), np.float32(127.5))  # -D over [-1, 1] onto 0..255


@njit(nogil=True)
def _bcd_lut_kernel(b, c, d, lut_b, lut_c, lut_d, lut_h, seeds, fg, height):
    """:func:`_bcd_kernel` on stored uint8 channels, through per-byte tables (bit 0: the
    foreground test, bit 1: the seed test of the channel; ``lut_h``: the height of a D byte)."""
    bb, cc, dd = b.ravel(), c.ravel(), d.ravel()
    s, f, h = seeds.ravel(), fg.ravel(), height.ravel()
    for i in range(bb.size):
        x = lut_b[bb[i]] & lut_d[dd[i]]
        f[i] = (x & 1) != 0
        s[i] = (x & lut_c[cc[i]]) == 3
        h[i] = lut_h[dd[i]]


def _bound(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_param(cls, name: str, value):
    """``value`` checked against the range of parameter ``name`` of decoder class ``cls``.

    Returns the value (an integral float as an int for integer parameters); raises one-line
    :class:`BlocksegError` ``"bcd: fg_b must be between 0 and 1, got 1.5"`` otherwise.
    """
    what = f"{cls.name}: {name}"
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) or not np.isfinite(value):
        raise BlocksegError(f"{what} must be a number, got {value!r}")
    if name in cls.integers:
        if float(value) != int(value):
            raise BlocksegError(f"{what} must be a whole number (a count of voxels or votes), got {value!r}")
        value = int(value)
    else:
        value = float(value)
    lo, hi = cls.bounds.get(name, (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            rule = f"between {_bound(lo)} and {_bound(hi)}"
        else:
            rule = f">= {_bound(lo)}" if lo is not None else f"<= {_bound(hi)}"
        raise BlocksegError(f"{what} must be {rule}, got {_bound(value)}")
    return value


@dataclass(frozen=True)
class Decoder:
    """Base class: parameters common to all seeded-watershed decoders.

    Attributes
    ----------
    min_seed_size : int
        Seeds (26-connected components of the seed mask, across blocks) under this many
        voxels are dropped.
    min_size : int
        Instances under this many voxels are removed (set to background).
    """

    min_seed_size: int = 1
    min_size: int = 8

    name: ClassVar[str] = ""
    channels: ClassVar[tuple[str, ...]] = ()
    #: channel the per-voxel score (averaged over an instance) is computed from
    score_channel: ClassVar[str] = ""
    #: voxels of context the masks need beyond the voxel itself
    support: ClassVar[int] = 0

    #: valid range ``(low, high)`` of each parameter, both ends included (None: unbounded)
    bounds: ClassVar[dict] = {"min_seed_size": (0, None), "min_size": (0, None)}
    #: parameters that count voxels or votes: whole numbers (an integral float such as 4.0,
    #: as JSON / YAML may give it, is taken as the integer)
    integers: ClassVar[frozenset] = frozenset({"min_seed_size", "min_size"})

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, check_param(type(self), f.name, getattr(self, f.name)))

    def params(self) -> dict:
        """Parameters as a plain dict (for metadata)."""
        return asdict(self)

    def decode(self, ch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(seeds, foreground, height)`` of a region; see the module docstring."""
        raise NotImplementedError

    def score(self, ch: Mapping[str, np.ndarray]) -> np.ndarray:
        """Per-voxel foreground probability used as instance score (from ``score_channel`` only)."""
        return ch[self.score_channel]

    def decode_bytes(self, stored: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]):
        """:meth:`decode` of channels stored as uint8 (``stored``), given the float32 value
        each byte decodes to (``values[c]``: 256 entries) -- without making the float channels.
        None where a decoder has no such path (the caller decodes and calls :meth:`decode`);
        where it has one, the result is :meth:`decode` of the decoded channels, bit for bit."""
        return None


@dataclass(frozen=True)
class BCDDecoder(Decoder):
    """NucMM binary / contour / distance decoder (Lin et al., MICCAI 2021).

    seeds = ``B > seed_b`` and ``C < seed_c`` and ``D > seed_d``; foreground = ``B > fg_b`` and
    ``D > fg_d``; the watershed floods ``-D`` (quantised to 256 levels over [-1, 1]) inside the
    foreground. NucMM reports results insensitive to the seed thresholds and sensitive to the
    foreground threshold ``fg_b``.

    ``seed_d`` 0.3 (the reference uses 0.5, preset ``nucmm``): in the perfect D target
    (``tanh(d / 8)``) a voxel with a 26-neighbour of another instance or of the background has
    ``d <= 1 + sqrt(2)`` (isotropic voxels), i.e. ``D <= 0.293``, so seeds above 0.3 never join
    two touching nuclei, and every nucleus deeper than 2.5 voxels has one; at 0.5 (``d > 4.4``)
    nuclei of radius under ~5 voxels get no seed and are lost.
    """

    seed_b: float = 0.9
    seed_c: float = 0.8
    seed_d: float = 0.3
    fg_b: float = 0.85
    fg_d: float = 0.0

    name: ClassVar[str] = "bcd"
    channels: ClassVar[tuple[str, ...]] = ("B", "C", "D")
    #: B and C are probabilities, D a tanh map
    bounds: ClassVar[dict] = {**Decoder.bounds, "seed_b": (0.0, 1.0), "seed_c": (0.0, 1.0), "fg_b": (0.0, 1.0),
                              "seed_d": (-1.0, 1.0), "fg_d": (-1.0, 1.0)}  # fmt: skip
    score_channel: ClassVar[str] = "B"

    def decode(self, ch):
        b, c, d = (np.ascontiguousarray(ch[k], dtype=np.float32) for k in ("B", "C", "D"))
        seeds = np.empty(b.shape, dtype=bool)
        fg = np.empty(b.shape, dtype=bool)
        height = np.empty(b.shape, dtype=np.uint8)
        f32 = np.float32
        _bcd_kernel(b, c, d, f32(self.seed_b), f32(self.seed_c), f32(self.seed_d), f32(self.fg_b), f32(self.fg_d),
                    seeds, fg, height)  # fmt: skip
        return seeds, fg, height

    def decode_bytes(self, stored, values):
        # One pass over the bytes instead of three float32 channels and a pass over them (the
        # seed pass's decode: ~0.1 s CPU of a 256³ block, issue 29 goal 5). The tables are
        # :meth:`decode` of the 256 values each byte stands for, so the result is the same: the
        # tests are per channel (B > fg_b, B > seed_b, C < seed_c, D > fg_d, D > seed_d) and
        # the height is a function of D alone.
        b, c, d = (stored[k] for k in ("B", "C", "D"))
        if any(a.dtype != np.uint8 for a in (b, c, d)) or not (b.shape == c.shape == d.shape):
            return None
        vb, vc, vd = (np.asarray(values[k], dtype=np.float32) for k in ("B", "C", "D"))
        f32 = np.float32
        lut_b = ((vb > f32(self.fg_b)) | ((vb > f32(self.seed_b)) << 1)).astype(np.uint8)
        lut_c = np.where(vc < f32(self.seed_c), 3, 1).astype(np.uint8)  # with bit 0 set: ANDs away nothing
        lut_d = ((vd > f32(self.fg_d)) | ((vd > f32(self.seed_d)) << 1)).astype(np.uint8)
        _, _, lut_h = self.decode({"B": vd, "C": vd, "D": vd})  # the height of each D byte
        b, c, d = (np.ascontiguousarray(a) for a in (b, c, d))
        seeds = np.empty(b.shape, dtype=bool)
        fg = np.empty(b.shape, dtype=bool)
        height = np.empty(b.shape, dtype=np.uint8)
        _bcd_lut_kernel(b, c, d, lut_b, lut_c, lut_d, np.ascontiguousarray(lut_h), seeds, fg, height)
        return seeds, fg, height


@dataclass(frozen=True)
class ThreeLabelDecoder(Decoder):
    """3-label (background / boundary / interior) decoder.

    Channels ``P_bg``, ``P_boundary``, ``P_interior`` (probabilities). seeds =
    ``P_interior > seed_t``; foreground = ``1 - P_bg > fg_t``; height = ``1 - P_interior``.
    """

    seed_t: float = 0.5
    fg_t: float = 0.5

    name: ClassVar[str] = "3label"
    channels: ClassVar[tuple[str, ...]] = ("P_bg", "P_boundary", "P_interior")
    bounds: ClassVar[dict] = {**Decoder.bounds, "seed_t": (0.0, 1.0), "fg_t": (0.0, 1.0)}
    score_channel: ClassVar[str] = "P_bg"

    def decode(self, ch):
        fg = (1.0 - ch["P_bg"]) > self.fg_t
        seeds = (ch["P_interior"] > self.seed_t) & fg
        return seeds, fg, quantise_height(1.0 - ch["P_interior"], 0.0, 1.0)

    def score(self, ch):
        return 1.0 - ch["P_bg"]


def _foreground(mask: np.ndarray, dilation: int) -> np.ndarray:
    """``mask`` dilated ``dilation`` times (6-connected); the decoders' ``support``."""
    if not dilation:
        return mask
    return ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(3, 1), iterations=int(dilation))


@dataclass(frozen=True)
class SDTDecoder(Decoder):
    """Signed distance decoder (negative inside, tanh-scaled, channel ``sdt``).

    seeds = ``sdt < seed_t``; foreground = ``sdt < fg_t`` dilated ``dilation`` times
    (6-connected); height = ``sdt``. The perfect target is 0 on instance boundary voxels and
    ``>= tanh(1 / 9) = 0.11`` outside, so ``fg_t`` 0.05 keeps exactly the nuclei (also after
    uint8 storage, where 0 reads as 0.004) and no dilation is needed.
    """

    seed_t: float = -0.1
    fg_t: float = 0.05
    dilation: int = 0

    name: ClassVar[str] = "sdt"
    channels: ClassVar[tuple[str, ...]] = ("sdt",)
    #: sdt is a tanh map; dilation a count of voxels
    bounds: ClassVar[dict] = {**Decoder.bounds, "seed_t": (-1.0, 1.0), "fg_t": (-1.0, 1.0), "dilation": (0, None)}
    integers: ClassVar[frozenset] = Decoder.integers | {"dilation"}
    score_channel: ClassVar[str] = "sdt"

    @property
    def support(self) -> int:  # type: ignore[override]
        return int(self.dilation)

    def decode(self, ch):
        s = ch["sdt"]
        fg = _foreground(s < self.fg_t, self.dilation)
        seeds = (s < self.seed_t) & fg
        return seeds, fg, quantise_height(s, -1.0, 1.0)

    def score(self, ch):
        return np.clip(-ch["sdt"], 0, 1)


@dataclass(frozen=True)
class AffinityDecoder(Decoder):
    """Nearest-neighbour affinity decoder (channels ``aff_z``, ``aff_y``, ``aff_x``, ``fg``).

    ``aff_a[v]`` links ``v`` to its predecessor along axis ``a``. A voxel is *linked* when all
    six affinities touching it (its own three and those of its three successors) are
    ``> seed_t``; seeds = linked voxels whose six neighbours are all linked (so a seed's
    city-block 2-ball lies in one nucleus: seeds of touching nuclei are never 26-adjacent);
    foreground = ``fg > fg_t`` dilated ``dilation`` times; height = 1 - the mean of the six
    links touching the voxel.
    """

    seed_t: float = 0.9
    fg_t: float = 0.5
    dilation: int = 0

    name: ClassVar[str] = "affinities"
    channels: ClassVar[tuple[str, ...]] = ("aff_z", "aff_y", "aff_x", "fg")
    bounds: ClassVar[dict] = {**Decoder.bounds, "seed_t": (0.0, 1.0), "fg_t": (0.0, 1.0), "dilation": (0, None)}
    integers: ClassVar[frozenset] = Decoder.integers | {"dilation"}
    score_channel: ClassVar[str] = "fg"

    @property
    def support(self) -> int:  # type: ignore[override]
        return max(int(self.dilation), 3)  # successors' affinities (1) + one erosion (1), + margin

    def decode(self, ch):
        az, ay, ax = ch["aff_z"], ch["aff_y"], ch["aff_x"]
        fg = _foreground(ch["fg"] > self.fg_t, self.dilation)
        linked = (az > self.seed_t) & (ay > self.seed_t) & (ax > self.seed_t)
        total = (az + ay + ax).astype(np.float32)
        for axis, a in enumerate((az, ay, ax)):  # the successor's link back to v
            nxt = np.ones(a.shape, dtype=np.float32)  # no successor in the volume: no evidence against
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            src[axis], dst[axis] = slice(1, None), slice(None, -1)
            nxt[tuple(dst)] = a[tuple(src)]
            linked &= nxt > self.seed_t
            total += nxt
        seeds = ndi.binary_erosion(linked, structure=ndi.generate_binary_structure(3, 1), border_value=1) & fg
        # height: 1 - mean of the six links touching the voxel (symmetric: a contact between two
        # nuclei is high on both sides)
        return seeds, fg, quantise_height(1.0 - total / np.float32(6.0), 0.0, 1.0)


def vote_map(vectors: tuple[np.ndarray, np.ndarray, np.ndarray], voters: np.ndarray) -> np.ndarray:
    """Votes per voxel: each voter adds one vote at its position plus its rounded vector.

    Parameters
    ----------
    vectors : tuple of three ndarrays
        Predicted offsets (z, y, x) in voxels from each voxel to its nucleus centre.
    voters : ndarray of bool
        Voxels that vote (the foreground).

    Returns
    -------
    ndarray of int32
        Number of votes landing on each voxel (votes leaving the array are dropped).
    """
    shape = voters.shape
    idx = np.nonzero(voters)
    target = [np.rint(v[idx]).astype(np.int64) + i for v, i in zip(vectors, idx)]
    inside = np.ones(idx[0].size, dtype=bool)
    for t, n in zip(target, shape):
        inside &= (t >= 0) & (t < n)
    flat = np.ravel_multi_index(tuple(t[inside] for t in target), shape)
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(np.int32)


@dataclass(frozen=True)
class CPVDecoder(Decoder):
    """Centre-point-vector voting decoder (channels ``B``, ``cpv_z``, ``cpv_y``, ``cpv_x``).

    Every foreground voxel (``B > fg_b``) votes at its position plus its rounded vector (in
    voxels); seeds = vote count ``>= min_votes`` inside the foreground; the watershed floods
    the vector length (distance to the predicted centre, quantised over [0, max_vector]).
    Votes travel up to ``max_vector`` voxels (longer vectors are clipped), which is the
    decoder's support: blocks read that much more context.
    """

    fg_b: float = 0.5
    min_votes: int = 3
    max_vector: int = 16

    name: ClassVar[str] = "cpv"
    channels: ClassVar[tuple[str, ...]] = ("B", "cpv_z", "cpv_y", "cpv_x")
    bounds: ClassVar[dict] = {**Decoder.bounds, "fg_b": (0.0, 1.0), "min_votes": (1, None), "max_vector": (1, None)}
    integers: ClassVar[frozenset] = Decoder.integers | {"min_votes", "max_vector"}
    score_channel: ClassVar[str] = "B"

    @property
    def support(self) -> int:  # type: ignore[override]
        return int(self.max_vector) + 1

    def decode(self, ch):
        fg = ch["B"] > self.fg_b
        m = np.float32(self.max_vector)
        vec = tuple(np.clip(ch[c], -m, m) for c in ("cpv_z", "cpv_y", "cpv_x"))
        votes = vote_map(vec, fg)
        seeds = (votes >= self.min_votes) & fg
        length = np.sqrt(vec[0] ** 2 + vec[1] ** 2 + vec[2] ** 2)
        return seeds, fg, quantise_height(length, 0.0, float(m))


DECODERS: dict[str, type[Decoder]] = {
    d.name: d for d in (BCDDecoder, ThreeLabelDecoder, SDTDecoder, AffinityDecoder, CPVDecoder)
}

#: named parameter sets: preset -> decoder name -> parameters (the rest keep their defaults)
PRESETS: dict[str, dict[str, dict]] = {
    # NucMM's reference thresholds and size filters (Lin et al., MICCAI 2021)
    "nucmm": {
        "bcd": dict(seed_b=0.9, seed_c=0.8, seed_d=0.5, fg_b=0.85, fg_d=0.0, min_seed_size=32, min_size=128),
    },
}


def make_decoder(name: str, preset: str | None = None, **params) -> Decoder:
    """Decoder ``name`` with parameters ``params`` over the defaults, or over a named preset
    (:data:`PRESETS`); unknown names raise BlocksegError."""
    if name not in DECODERS:
        raise BlocksegError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    cls = DECODERS[name]
    known = {f.name for f in fields(cls)}
    bad = sorted(set(params) - known)
    if bad:
        raise BlocksegError(f"decoder {name}: unknown parameter(s) {bad}; known: {sorted(known)}")
    if preset is not None:
        if preset not in PRESETS:
            raise BlocksegError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        if name not in PRESETS[preset]:
            raise BlocksegError(f"preset {preset!r} has no {name} decoder; it has {sorted(PRESETS[preset])}")
        params = {**PRESETS[preset][name], **params}
    return cls(**params)
