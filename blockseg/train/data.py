"""Random training crops from zarr volumes, augmentation, and targets computed afterwards.

A crop is drawn as follows:

1. draw the geometric augmentation (in-plane transpose, flips, 90-degree rotations): it fixes
   the shape that has to be read so that the augmented crop has the patch shape;
2. read image + labels of that shape plus ``target_context`` voxels per side, centred on a
   random valid voxel (``labels/valid`` when present);
3. apply the geometric augmentation (and the optional elastic deformation) to image, labels and
   the global instance centres of the labels present (for ``cpv``);
4. compute the targets on the augmented labels, then drop the context;
5. scale / shift the normalised intensities.

Targets are computed after augmentation, so contours, distances and centre vectors are those
of the augmented nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import BlocksegError
from ..io import open_volume
from ..models.base import REPRESENTATIONS, normalise
from .config import AugmentConfig


# ---------------------------------------------------------------------------- centres
def centre_table(labels_path: str) -> dict[int, np.ndarray]:
    """``{id: centre (z, y, x) in voxels}`` of a label volume (blockseg.targets.volume_centres)."""
    from ..targets import volume_centres

    ids, cen = volume_centres(labels_path)
    return {int(i): c for i, c in zip(ids, np.asarray(cen, dtype=np.float64))}


def compute_targets(
    labels: np.ndarray,
    representations: Sequence[str],
    voxel_size=None,
    centres: dict[int, np.ndarray] | None = None,
    **params,
) -> dict[str, np.ndarray]:
    """Targets of one (augmented) crop via :func:`blockseg.targets.compute_targets`.

    ``centres`` maps the ids present to their centres in the crop's coordinates (already
    transformed by the augmentation); a nucleus cut by the crop keeps its true centre.
    """
    from ..targets import compute_targets as _ct

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
    lab = ndi.map_coordinates(labels, coords, order=0, mode="mirror").astype(labels.dtype)
    return img, lab


def elastic_points(points: np.ndarray, field: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Where points go under the warp: solve ``x + u(x) = p`` by fixed-point iteration."""
    x = np.array(points, dtype=np.float64, copy=True)
    for _ in range(iterations):
        u = np.stack([ndi.map_coordinates(field[a], x.T, order=1, mode="nearest") for a in range(3)], 1)
        x = points - u
    return x


# ---------------------------------------------------------------------------- sampler
class CropSampler:
    """Draws augmented ``(image, targets)`` crops from training volumes.

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
    target_context : int
        Voxels per side read around the crop for the target computation.
    min_foreground : float
        Redraw crops with less foreground (up to 10 times).
    target_params : dict
        Passed to the target computation.
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
    ):
        self.representations = tuple(representations)
        #: representations whose targets need the global centre table
        self.needs_centres = bool({"cpv", "gauss", "density"} & set(self.representations))
        self.channels = tuple(c for r in self.representations for c in REPRESENTATIONS[r][0])
        self.patch = tuple(int(p) for p in patch)
        self.normalisation = normalisation
        self.augment = augment or AugmentConfig()
        self.context = int(target_context)
        self.min_foreground = float(min_foreground)
        self.target_params = dict(target_params or {})
        self.images, self.labels, self.valid, self.centres = [], [], [], []
        for p in paths:
            img = open_volume(p)
            lab_path = f"{str(p).rstrip('/')}/{labels}"
            try:
                lab = open_volume(lab_path)
            except BlocksegError:
                raise BlocksegError(f"training volume {p} has no labels at {lab_path}") from None
            if lab.shape != img.shape:
                raise BlocksegError(f"{lab_path} has shape {lab.shape}, image {img.shape}")
            if any(s < q for s, q in zip(img.shape, self.patch)):
                raise BlocksegError(f"training volume {p} {img.shape} is smaller than the patch {self.patch}")
            self.images.append(img)
            self.labels.append(lab)
            self.valid.append(self._valid_centres(p, mask, img.shape))
            self.centres.append(centre_table(lab_path) if self.needs_centres else {})
        self.voxel_sizes = [tuple(v.voxel_size) for v in self.images]

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

    def _origin(self, rng, k: int, shape: Sequence[int]) -> np.ndarray:
        vol_shape = np.array(self.images[k].shape)
        shape = np.array(shape)
        if self.valid[k] is None:
            return np.array([rng.integers(0, s - p + 1) for s, p in zip(vol_shape, shape)])
        c = self.valid[k][rng.integers(len(self.valid[k]))]
        return np.clip(c - shape // 2, 0, vol_shape - shape)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One crop: ``image (z, y, x)`` float32 and ``{channel: (z, y, x)}`` + ``labels_fg``."""
        for _ in range(10):
            out = self._sample(rng)
            if self.min_foreground <= 0 or out[1]["labels_fg"].mean() >= self.min_foreground:
                break
        return out

    def _sample(self, rng):
        cfg = self.augment
        k = int(rng.integers(len(self.images)))
        square = self.patch[1] == self.patch[2]
        geo = draw_geometric(rng, cfg, square)
        ctx = self.context
        src = np.array(geo.source_shape(self.patch))
        o = self._origin(rng, k, src)
        vol_shape = np.array(self.images[k].shape)
        lo = np.maximum(o - ctx, 0)
        hi = np.minimum(o + src + ctx, vol_shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        img = np.asarray(self.images[k].array[sl])
        lab = np.asarray(self.labels[k].array[sl])
        # pad to the full context with reflection so every crop has the same shape
        pad = [(int(a), int(b)) for a, b in zip(lo - (o - ctx), (o + src + ctx) - hi)]
        if any(p != (0, 0) for p in pad):
            img = np.pad(img, pad, mode="reflect")
            lab = np.pad(lab, pad, mode="constant")  # outside the volume: no labels
        start = o - ctx  # coordinates of the padded crop's first voxel
        centres = None
        ids = np.zeros(0, np.uint64)
        if self.needs_centres:
            ids = np.unique(lab)
            ids = ids[ids != 0]
            if ids.size:
                pts = np.stack([self.centres[k][int(i)] for i in ids]) - start
                pts = geo.apply_points(pts, lab.shape)
        img, lab = geo.apply(img), geo.apply(lab)
        if cfg.elastic and rng.random() < cfg.elastic_p:
            field = elastic_field(rng, lab.shape, cfg.elastic_spacing, cfg.elastic_sigma)
            img, lab = elastic_apply(img, lab, field)
            if ids.size:
                pts = elastic_points(pts, field)
        if self.needs_centres:
            centres = {int(i): p for i, p in zip(ids, pts)} if ids.size else {}
        vs = self.voxel_sizes[k]
        vs = (vs[0], vs[2], vs[1]) if geo.transpose else vs
        targets = compute_targets(lab, self.representations, vs, centres, **self.target_params)
        core = tuple(slice(ctx, ctx + p) for p in self.patch)
        targets = {c: np.ascontiguousarray(targets[c][core], dtype=np.float32) for c in self.channels}
        targets["labels_fg"] = (lab[core] != 0).astype(np.float32)
        # one affine map per volume (blockseg.normalise.training_normalisation) or one for all
        norm = self.normalisation[k] if isinstance(self.normalisation, (list, tuple)) else self.normalisation
        x = normalise(img[core], norm)
        if cfg.intensity_scale > 0 or cfg.intensity_shift > 0:
            x = x * np.float32(1 + rng.uniform(-cfg.intensity_scale, cfg.intensity_scale)) + np.float32(
                rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
            )
        return np.ascontiguousarray(x, dtype=np.float32), targets

    def batch(self, rng: np.random.Generator, n: int):
        """``(x (n, 1, z, y, x), {channel: (n, z, y, x)})`` as numpy arrays."""
        items = [self.sample(rng) for _ in range(n)]
        x = np.stack([i[0] for i in items])[:, None]
        t = {c: np.stack([i[1][c] for i in items]) for c in items[0][1]}
        return x, t


def image_statistics(paths: Sequence[str], max_voxels: int = 2**24) -> dict:
    """Global ``{"offset": mean, "scale": std}`` of the training images (a strided sample).

    Computed once before training and stored in the checkpoint, so inference applies the same
    affine map to every block.
    """
    total, total2, n = 0.0, 0.0, 0
    for p in paths:
        v = open_volume(p)
        size = int(np.prod(v.shape))
        step = max(1, int(np.ceil((size / max_voxels) ** (1 / 3))))
        a = np.asarray(v.array[::step, ::step, ::step], dtype=np.float64)
        total += a.sum()
        total2 += (a * a).sum()
        n += a.size
    mean = total / n
    std = float(np.sqrt(max(total2 / n - mean * mean, 0.0)))
    return {"offset": float(mean), "scale": float(std if std > 0 else 1.0), "method": "mean_std"}
