"""Random training crops from zarr volumes, augmentation, and targets computed afterwards.

A crop is drawn as follows:

1. draw the geometric augmentation (in-plane transpose, flips, 90-degree rotations): it fixes
   the shape that has to be read so that the augmented crop has the patch shape;
2. read image of that shape and labels plus the targets' halo (at least ``target_context``)
   per side, centred on a random valid voxel (``labels/valid`` when present), clipped at the
   volume's faces and at any validation region (a face is "unknown", not a label change);
3. apply the geometric augmentation (and the optional elastic deformation) to image, labels and
   the global instance centres of the labels present (for ``cpv``);
4. compute the targets on the augmented labels, then drop the context;
5. scale / shift the normalised intensities.

A training volume may carry an *ignore* array (``labels/ignore`` by default, e.g. unlabelled
nuclei of a partially labelled volume): it goes through the same geometric (and elastic)
transform as the labels, and the crop's ``loss_mask`` target is 1 where the loss counts and 0
where the ignore array is > 0. When no training volume has one, crops have no ``loss_mask``.

Targets are computed after augmentation, so contours, distances and centre vectors are those
of the augmented nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import BlocksegError
from ..io.volume import open_volume
from ..models.base import REPRESENTATIONS, normalise
from .config import AugmentConfig
from .targets import compute_targets as _ct, target_halo, volume_centres


# ---------------------------------------------------------------------------- centres
def centre_table(labels_path: str) -> dict[int, np.ndarray]:
    """``{id: centre (z, y, x) in voxels}`` of a label volume (blockseg.train.targets.volume_centres)."""

    ids, cen = volume_centres(labels_path)
    return {int(i): c for i, c in zip(ids, np.asarray(cen, dtype=np.float64))}


def compute_targets(
    labels: np.ndarray,
    representations: Sequence[str],
    voxel_size=None,
    centres: dict[int, np.ndarray] | None = None,
    **params,
) -> dict[str, np.ndarray]:
    """Targets of one (augmented) crop via :func:`blockseg.train.targets.compute_targets`.

    ``centres`` maps the ids present to their centres in the crop's coordinates (already
    transformed by the augmentation); a nucleus cut by the crop keeps its true centre.
    """

    table = None
    if centres is not None:
        ids = np.array(sorted(centres), dtype=np.uint64)
        cen = np.array([centres[int(i)] for i in ids], dtype=np.float64).reshape(-1, 3)
        table = (ids, cen)
    return _ct(labels, tuple(representations), voxel_size=voxel_size, centres=table, **params)


# ---------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Geometric:
    """An in-plane dihedral transform: optional (y, x) transpose, then flips per axis."""

    transpose: bool = False
    flips: tuple[bool, bool, bool] = (False, False, False)

    def source_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Shape to read so that the transformed array has ``shape``."""
        z, y, x = shape
        return (z, x, y) if self.transpose else (z, y, x)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Transform the last three axes of ``a``."""
        if self.transpose:
            a = np.swapaxes(a, -1, -2)
        for ax, f in enumerate(self.flips):
            if f:
                a = np.flip(a, ax - 3)
        return np.ascontiguousarray(a)

    def apply_points(self, p: np.ndarray, source_shape: Sequence[int]) -> np.ndarray:
        """Transform ``(n, 3)`` voxel coordinates of an array of ``source_shape``."""
        p = np.array(p, dtype=np.float64, copy=True).reshape(-1, 3)
        shape = list(source_shape)
        if self.transpose:
            p[:, [1, 2]] = p[:, [2, 1]]
            shape[1], shape[2] = shape[2], shape[1]
        for ax, f in enumerate(self.flips):
            if f:
                p[:, ax] = shape[ax] - 1 - p[:, ax]
        return p


def appearance(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random gamma, blur and noise of a normalised crop (``cfg.gamma``, ``blur_sigma``,
    ``noise_sigma``; each drawn only when set, so runs without them keep their random stream).

    Gamma acts on the crop's own [min, max] range and keeps that range; blur is separable,
    mirrored at the crop's faces; noise is added last, in normalised units.
    """
    if cfg.gamma > 0 and rng.random() < cfg.appearance_p:
        lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            g = np.exp(rng.uniform(-cfg.gamma, cfg.gamma))
            x = (((x - lo) / (hi - lo)) ** g * (hi - lo) + lo).astype(np.float32)
    if cfg.blur_sigma > 0 and rng.random() < cfg.appearance_p:
        x = ndi.gaussian_filter(x, rng.uniform(0, cfg.blur_sigma, 3), mode="mirror").astype(np.float32)
    if cfg.noise_sigma > 0 and rng.random() < cfg.appearance_p:
        x = x + rng.normal(0, rng.uniform(0, cfg.noise_sigma), x.shape).astype(np.float32)
    return x


def draw_geometric(rng: np.random.Generator, cfg: AugmentConfig, square: bool) -> Geometric:
    """Random in-plane transform allowed by ``cfg`` (transposes only for square y/x patches).

    A 90-degree rotation is a transpose followed by a flip, so ``rot90`` adds those.
    """
    t = bool(square and (cfg.transpose or cfg.rot90) and rng.random() < 0.5)
    if cfg.flip:
        flips = tuple(bool(f) for f in rng.random(3) < 0.5)
    elif t and cfg.rot90 and not cfg.transpose:
        flips = (False, False, True) if rng.random() < 0.5 else (False, True, False)  # +-90 degrees
    else:
        flips = (False, False, False)
    return Geometric(t, flips)  # type: ignore[arg-type]


def elastic_field(rng: np.random.Generator, shape: Sequence[int], spacing: int, sigma: float) -> np.ndarray:
    """Smooth random displacement ``(3, z, y, x)`` (voxels): normal control points, cubic zoom."""
    coarse = tuple(max(2, int(np.ceil(s / spacing)) + 1) for s in shape)
    out = np.empty((3,) + tuple(shape), np.float32)
    for a in range(3):
        c = rng.normal(0.0, sigma, coarse).astype(np.float32)
        out[a] = ndi.zoom(c, [s / k for s, k in zip(shape, coarse)], order=3, mode="nearest")[
            : shape[0], : shape[1], : shape[2]
        ]
    return out


def elastic_apply(image: np.ndarray, labels: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp: ``out(x) = in(x + u(x))``; linear for the image, nearest for labels."""
    coords = np.indices(labels.shape, dtype=np.float32) + field
    img = ndi.map_coordinates(image, coords, order=1, mode="mirror").astype(image.dtype)
    return img, elastic_nearest(labels, field)


def elastic_nearest(labels: np.ndarray, field: np.ndarray) -> np.ndarray:
    """The warp of :func:`elastic_apply` with nearest interpolation (labels, masks)."""
    coords = np.indices(labels.shape, dtype=np.float32) + field
    return ndi.map_coordinates(labels, coords, order=0, mode="mirror").astype(labels.dtype)


def elastic_points(points: np.ndarray, field: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Where points go under the warp: solve ``x + u(x) = p`` by fixed-point iteration."""
    x = np.array(points, dtype=np.float64, copy=True)
    for _ in range(iterations):
        u = np.stack([ndi.map_coordinates(field[a], x.T, order=1, mode="nearest") for a in range(3)], 1)
        x = points - u
    return x


# ---------------------------------------------------------------------------- sampler
@dataclass(frozen=True)
class View:
    """The part ``[lo, hi)`` of training volume ``k`` that crops may read (a box, voxels).

    A validation region carved out of a training volume leaves one or two such boxes; their
    faces are treated exactly like the volume's faces (nothing beyond them is read).
    """

    k: int
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(b - a) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


def core_in_transformed(geo: Geometric, start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """Where the box ``[start, start + size)`` of an array of ``shape`` lands after ``geo.apply``."""
    start, size, shape = list(start), list(size), list(shape)
    if geo.transpose:
        for a in (start, size, shape):
            a[1], a[2] = a[2], a[1]
    for ax, f in enumerate(geo.flips):
        if f:
            start[ax] = shape[ax] - start[ax] - size[ax]
    return tuple(slice(int(a), int(a + n)) for a, n in zip(start, size))


class CropSampler:
    """Draws augmented ``(image, targets)`` crops from training volumes.

    Targets of a crop equal the targets of the whole (augmented) volume on that crop: labels are
    read with :func:`blockseg.train.targets.target_halo` voxels of context per side (at least
    ``target_context``), never beyond a volume face or a validation region, and targets are
    computed on that clipped read -- a face is "unknown", never a label change, exactly as for
    the whole volume (``tests/train/test_train_crops.py``). With the elastic deformation the read is
    padded to the full context by edge replication (the continuation that adds no boundary at
    the face) before warping.

    Parameters
    ----------
    paths : list of str
        Image volumes; labels under ``PATH/<labels>``, optional mask under ``PATH/<mask>``.
    representations : sequence of str
    patch : (z, y, x)
        Crop shape given to the network.
    normalisation : dict or list of dict
        ``{"offset", "scale"}`` applied to the image (see :func:`blockseg.models.normalise`),
        one for all volumes or one per volume.
    augment : AugmentConfig
    labels, mask : str
        Sub-paths of labels and mask.
    ignore : str, optional
        Sub-path of a volume's ignore array (voxels > 0 are left out of the loss: the crops get a
        ``loss_mask`` target, 0 there); volumes without one count everywhere.
    target_context : int
        Smallest context (voxels per side) read around the crop for the target computation.
    min_foreground : float
        Redraw crops with less foreground (up to 10 times).
    target_params : dict
        Passed to the target computation.
    exclude : dict, optional
        ``{volume index: (lo, hi)}``: a box (e.g. a validation region) that crops never read;
        it must span the volume in two axes (a slab).
    cache_mb : float
        When the targets of every view under all 16 in-plane transforms fit in this many MiB,
        each (view, transform)'s targets are computed once on the whole view and crops are
        slices of them (the same values: a crop's targets are the whole view's); 0 disables.
        Elastic crops are always computed afresh.
    """

    def __init__(
        self,
        paths: Sequence[str],
        representations: Sequence[str],
        patch: Sequence[int],
        normalisation: dict,
        augment: AugmentConfig | None = None,
        labels: str = "labels/nuclei",
        mask: str | None = "labels/valid",
        target_context: int = 8,
        min_foreground: float = 0.0,
        target_params: dict | None = None,
        exclude: dict | None = None,
        cache_mb: float = 1024,
        ignore: str | None = "labels/ignore",
    ):

        self.representations = tuple(representations)
        #: representations whose targets need the global centre table
        self.needs_centres = bool({"cpv", "gauss", "density"} & set(self.representations))
        #: representations whose targets need every centre (not only those of the labels read)
        self.blob_centres = bool({"gauss", "density"} & set(self.representations))
        self.channels = tuple(c for r in self.representations for c in REPRESENTATIONS[r][0])
        self.patch = tuple(int(p) for p in patch)
        self.normalisation = normalisation
        self.augment = augment or AugmentConfig()
        self.min_foreground = float(min_foreground)
        self.target_params = dict(target_params or {})
        self.images, self.labels, self.valid, self.centres, self.views, self.contexts = [], [], [], [], [], []
        exclude = dict(exclude or {})
        for k, p in enumerate(paths):
            img = open_volume(p)
            lab_path = f"{str(p).rstrip('/')}/{labels}"
            try:
                lab = open_volume(lab_path)
            except BlocksegError:
                raise BlocksegError(f"training volume {p} has no labels at {lab_path}") from None
            if lab.shape != img.shape:
                raise BlocksegError(f"{lab_path} has shape {lab.shape}, image {img.shape}")
            views = split_views(k, img.shape, exclude.get(k))
            views = [v for v in views if all(s >= q for s, q in zip(v.shape, self._max_source()))]
            if not views:
                raise BlocksegError(f"training volume {p} {img.shape} (less any validation region) is smaller than the patch {self.patch}")
            self.views.extend(views)
            self.images.append(img)
            self.labels.append(lab)
            self.valid.append(self._valid_centres(p, mask, img.shape))
            self.centres.append(centre_table(lab_path) if self.needs_centres else {})
            halo = target_halo(self.representations, img.voxel_size, **self.target_params)
            self.contexts.append(np.maximum(np.array(halo), int(target_context)))
        self.voxel_sizes = [tuple(v.voxel_size) for v in self.images]
        #: per volume, its ignore array (a Volume) or None; crops get ``loss_mask`` when any has one
        self.ignores = [self._ignore_volume(p, ignore, img.shape) for p, img in zip(paths, self.images)]
        self.has_ignore = any(v is not None for v in self.ignores)
        #: kept for callers that read it: the smallest context asked for
        self.context = int(target_context)
        need = sum(int(np.prod(v.shape)) for v in self.views) * (len(self.channels) + 1 + self.has_ignore) * 4 * 16
        #: targets of whole views are cached per (view, transform)
        self.cache_targets = bool(cache_mb > 0 and need <= cache_mb * 2**20)
        self._cache: dict = {}

    def _max_source(self) -> tuple[int, int, int]:
        """Largest source shape a crop may need (the patch, or its in-plane transpose)."""
        z, y, x = self.patch
        return (z, max(y, x), max(y, x)) if (y == x and (self.augment.transpose or self.augment.rot90)) else (z, y, x)

    @staticmethod
    def _ignore_volume(path, ignore, shape):
        """The ignore array of a training volume, or None when it has none."""
        if not ignore:
            return None
        ipath = f"{str(path).rstrip('/')}/{ignore}"
        try:
            vol = open_volume(ipath)
        except BlocksegError:
            return None
        if tuple(vol.shape) != tuple(shape):
            raise BlocksegError(f"ignore array {ipath} has shape {tuple(vol.shape)}, the image {tuple(shape)}")
        return vol

    def _keep(self, k: int, sl: tuple, geo: Geometric, shape, pad=None, field=None) -> np.ndarray:
        """``loss_mask`` (float32 0/1) of the read ``sl`` of volume ``k``, transformed like its
        labels (edge padding ``pad``, elastic ``field``) to the transformed labels' ``shape``."""
        if self.ignores[k] is None:
            return np.ones(shape, np.float32)
        ign = (np.asarray(self.ignores[k].array[sl]) > 0).astype(np.uint8)
        if pad is not None:
            ign = np.pad(ign, pad, mode="edge")
        ign = geo.apply(ign)
        if field is not None:
            ign = elastic_nearest(ign, field)
        return (ign == 0).astype(np.float32)

    def _valid_centres(self, path, mask, shape) -> np.ndarray | None:
        """Coarse list of voxels inside the mask (stride 4), or None for "anywhere"."""
        if not mask:
            return None
        mpath = f"{str(path).rstrip('/')}/{mask}"
        try:
            m = open_volume(mpath)
        except BlocksegError:
            return None
        sub = np.asarray(m.array[::4, ::4, ::4]) > 0
        pts = np.argwhere(sub) * 4
        if len(pts) == 0:
            raise BlocksegError(f"valid mask {mpath} is empty")
        return pts

    def _origin(self, rng, view: View, shape: Sequence[int]) -> np.ndarray:
        """Crop origin inside ``view`` (centred on a valid voxel of the view when there is a mask)."""
        lo, hi = np.array(view.lo), np.array(view.hi)
        shape = np.array(shape)
        pts = self.valid[view.k]
        if pts is not None:
            pts = pts[np.all((pts >= lo) & (pts < hi), axis=1)]
        if pts is None or len(pts) == 0:
            return np.array([rng.integers(a, b - p + 1) for a, b, p in zip(lo, hi, shape)])
        c = pts[rng.integers(len(pts))]
        return np.clip(c - shape // 2, lo, hi - shape)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One crop: ``image (z, y, x)`` float32 and ``{channel: (z, y, x)}`` + ``labels_fg``."""
        for _ in range(10):
            out = self._sample(rng)
            if self.min_foreground <= 0 or out[1]["labels_fg"].mean() >= self.min_foreground:
                break
        return out

    def draw(self, rng: np.random.Generator) -> tuple[View, Geometric, np.ndarray]:
        """The random choices of one crop: view, geometric transform and source origin."""
        view = self.views[int(rng.integers(len(self.views)))]
        geo = draw_geometric(rng, self.augment, self.patch[1] == self.patch[2])
        src = np.array(geo.source_shape(self.patch))
        return view, geo, self._origin(rng, view, src)

    def _sample(self, rng):
        view, geo, o = self.draw(rng)
        elastic = self.augment.elastic and rng.random() < self.augment.elastic_p
        x, targets = self.crop(view, geo, o, rng if elastic else None)
        cfg = self.augment
        if cfg.intensity_scale > 0 or cfg.intensity_shift > 0:
            x = x * np.float32(1 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale)) + np.float32(
                rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
            )
        x = appearance(x, rng, cfg)
        return np.ascontiguousarray(x, dtype=np.float32), targets

    def _normalise(self, k: int, img: np.ndarray) -> np.ndarray:
        """``img`` of volume ``k`` through its affine map (one per volume, or one for all)."""
        norm = self.normalisation[k] if isinstance(self.normalisation, (list, tuple)) else self.normalisation
        return normalise(img, norm)

    def crop(self, view: View, geo: Geometric, o: Sequence[int], elastic_rng=None):
        """Normalised image and targets of the crop at source origin ``o`` under ``geo``.

        Without ``elastic_rng`` the targets equal those of the whole transformed view on the
        crop; with it, the read is edge-padded to the full context, warped, then targeted.
        """
        k = view.k
        ctx = self.contexts[k]
        src = np.array(geo.source_shape(self.patch))
        o = np.asarray(o)
        vlo, vhi = np.array(view.lo), np.array(view.hi)
        if elastic_rng is None and self.cache_targets:
            return self._cached_crop(view, geo, o, src)
        lo = np.maximum(o - ctx, vlo)
        hi = np.minimum(o + src + ctx, vhi)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        lab = np.asarray(self.labels[k].array[sl])
        pad, field = None, None
        vs = self.voxel_sizes[k]
        vs = (vs[0], vs[2], vs[1]) if geo.transpose else vs
        if elastic_rng is None:
            core_sl = tuple(slice(int(a), int(a + s)) for a, s in zip(o, src))
            img = geo.apply(np.asarray(self.images[k].array[core_sl]))
            pts_shape = lab.shape
            start = lo
        else:
            img = np.asarray(self.images[k].array[sl])
            pad = [(int(a), int(b)) for a, b in zip(lo - (o - ctx), (o + src + ctx) - hi)]
            if any(p != (0, 0) for p in pad):
                img = np.pad(img, pad, mode="reflect" if all(s > max(p) for s, p in zip(img.shape, pad)) else "edge")
                lab = np.pad(lab, pad, mode="edge")  # no false boundary at the face
            else:
                pad = None
            start = o - ctx
            pts_shape = lab.shape
        centres = None
        ids = np.zeros(0, np.uint64)
        if self.needs_centres:
            if self.blob_centres:  # gauss / density: blobs of nuclei outside the read reach into it
                ids = np.fromiter(self.centres[k], dtype=np.uint64, count=len(self.centres[k]))
            else:
                ids = np.unique(lab)
                ids = ids[ids != 0]
            if ids.size:
                pts = geo.apply_points(np.stack([self.centres[k][int(i)] for i in ids]) - start, pts_shape)
        lab = geo.apply(lab)
        if elastic_rng is not None:
            img = geo.apply(img)
            cfg = self.augment
            field = elastic_field(elastic_rng, lab.shape, cfg.elastic_spacing, cfg.elastic_sigma)
            img, lab = elastic_apply(img, lab, field)
            if ids.size:
                pts = elastic_points(pts, field)
        if self.needs_centres:
            centres = {int(i): p for i, p in zip(ids, pts)} if ids.size else {}
        targets = compute_targets(lab, self.representations, vs, centres, **self.target_params)
        core = core_in_transformed(geo, o - start, src, pts_shape)
        if elastic_rng is not None:
            img = img[core]
        targets = {c: np.ascontiguousarray(targets[c][core], dtype=np.float32) for c in self.channels}
        targets["labels_fg"] = (lab[core] != 0).astype(np.float32)
        if self.has_ignore:
            targets["loss_mask"] = np.ascontiguousarray(self._keep(k, sl, geo, lab.shape, pad, field)[core])
        return self._normalise(k, img), targets

    def _cached_crop(self, view: View, geo: Geometric, o: np.ndarray, src: np.ndarray):
        """:meth:`crop` without elastic deformation, its targets sliced from the cached whole view's."""
        if (view, geo) not in self._cache:
            self._cache[(view, geo)] = self._view_targets(view, geo)
        whole = self._cache[(view, geo)]
        core = core_in_transformed(geo, o - np.array(view.lo), src, view.shape)
        core_sl = tuple(slice(int(a), int(a + s)) for a, s in zip(o, src))
        img = geo.apply(np.asarray(self.images[view.k].array[core_sl]))
        return self._normalise(view.k, img), {c: np.ascontiguousarray(whole[c][core]) for c in whole}

    def _view_targets(self, view: View, geo: Geometric) -> dict[str, np.ndarray]:
        """Targets (and ``labels_fg``) of a whole view under ``geo``, for the cache."""
        k = view.k
        lab = np.asarray(self.labels[k].array[tuple(slice(a, b) for a, b in zip(view.lo, view.hi))])
        centres = None
        if self.needs_centres:
            ids = np.fromiter(self.centres[k], dtype=np.uint64, count=len(self.centres[k]))
            if not self.blob_centres:
                present = np.unique(lab)
                ids = ids[np.isin(ids, present)]
            pts = geo.apply_points(np.stack([self.centres[k][int(i)] for i in ids]) - np.array(view.lo), lab.shape) if ids.size else None
            centres = {int(i): p for i, p in zip(ids, pts)} if ids.size else {}
        vs = self.voxel_sizes[k]
        vs = (vs[0], vs[2], vs[1]) if geo.transpose else vs
        lab = geo.apply(lab)
        t = compute_targets(lab, self.representations, vs, centres, **self.target_params)
        out = {c: np.ascontiguousarray(t[c], dtype=np.float32) for c in self.channels}
        out["labels_fg"] = (lab != 0).astype(np.float32)
        if self.has_ignore:
            out["loss_mask"] = self._keep(k, tuple(slice(a, b) for a, b in zip(view.lo, view.hi)), geo, lab.shape)
        return out

    def batch(self, rng: np.random.Generator, n: int):
        """``(x (n, 1, z, y, x), {channel: (n, z, y, x)})`` as numpy arrays."""
        items = [self.sample(rng) for _ in range(n)]
        x = np.stack([i[0] for i in items])[:, None]
        t = {c: np.stack([i[1][c] for i in items]) for c in items[0][1]}
        return x, t


def split_views(k: int, shape: Sequence[int], box=None) -> list[View]:
    """The boxes of volume ``k`` left when the box ``(lo, hi)`` is removed (a slab: it must span two axes)."""
    shape = tuple(int(s) for s in shape)
    if box is None:
        return [View(k, (0, 0, 0), shape)]
    lo, hi = (tuple(int(v) for v in b) for b in box)
    cut = [a for a in range(3) if not (lo[a] <= 0 and hi[a] >= shape[a])]
    if len(cut) > 1:
        raise BlocksegError(
            f"a validation region inside a training volume must be a slab (span the volume in two axes), got {list(lo)}..{list(hi)}"
        )
    if not cut:
        return []
    a = cut[0]
    out = []
    for s, e in ((0, lo[a]), (hi[a], shape[a])):
        if e > s:
            vlo, vhi = [0, 0, 0], list(shape)
            vlo[a], vhi[a] = s, e
            out.append(View(k, tuple(vlo), tuple(vhi)))  # type: ignore[arg-type]
    return out


