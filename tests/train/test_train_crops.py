"""Training crops carry the whole-volume targets: no false boundary at a volume face (issue 15).

Every crop of :class:`blockseg.train.CropSampler` (corners and faces included, every geometric
augmentation, every target kind) must equal the targets computed on the whole augmented volume,
sliced to the crop; a validation slab carved out of a training volume is a face like any other
and is never read.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from blockseg.io.volume import open_volume
from blockseg.models.base import channels_of
from blockseg.synth import SynthParams, synthesize
from blockseg.train.targets import compute_targets, instance_centres
from blockseg.train.config import AugmentConfig
from blockseg.train.data import CropSampler, Geometric, View, split_views

ALL = ["B", "C", "D", "cpv", "3label", "sdt", "aff", "gauss", "density"]
NO_INTENSITY = dict(intensity_scale=0.0, intensity_shift=0.0)
PATCH = (6, 16, 16)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """Dense anisotropic nuclei: many are cut by the volume's faces."""
    path = tmp_path_factory.mktemp("crops") / "vol.zarr"
    p = SynthParams(shape=(14, 34, 34), voxel_size=(1.0, 0.5, 0.5), density=2e-3, radius=2.4, seed=3)
    synthesize(str(path), p, chunks=(14, 34, 34), progress=False)
    lab = np.asarray(open_volume(f"{path}/labels/nuclei").array[...])
    return str(path), lab


def _whole(lab, geo: Geometric, vs, reps, params):
    """Targets of the whole transformed volume, and the global centres moved with it."""
    ids, cen = instance_centres(lab)
    t_lab = geo.apply(lab)
    t_cen = geo.apply_points(cen, lab.shape)
    vs_t = (vs[0], vs[2], vs[1]) if geo.transpose else tuple(vs)
    return compute_targets(t_lab, reps, vs_t, (ids, t_cen), **params), t_lab


def _cases(shape):
    """Origins at the 8 corners, face centres and the middle, under several transforms."""
    hi = [s - p for s, p in zip(shape, PATCH)]
    origins = list(itertools.product(*[(0, h) for h in hi])) + [(0, hi[1] // 2, hi[2] // 2), (hi[0] // 2, 0, hi[2]), (hi[0] // 2, hi[1] // 2, hi[2] // 2)]
    geos = [Geometric(), Geometric(True, (False, False, True)), Geometric(False, (True, True, False)), Geometric(True, (True, False, True))]
    return [(o, g) for i, o in enumerate(origins) for g in (geos if i % 3 == 0 else geos[i % 4 : i % 4 + 1])]


@pytest.mark.slow  # every crop position of a volume, four target settings
@pytest.mark.parametrize("cache_mb", [0, 1024], ids=["computed", "cached"])
@pytest.mark.parametrize("params", [{"max_distance": 5.0, "contour_width": 2}, {}], ids=["short", "defaults"])
def test_crop_targets_equal_whole_volume_targets(dense, params, cache_mb):
    path, lab = dense
    assert lab[0].any() and lab[:, 0].any() and lab[:, :, -1].any(), "nuclei must touch the faces"
    aug = AugmentConfig(**NO_INTENSITY)
    s = CropSampler([path], ALL, PATCH, {"offset": 0.0, "scale": 1.0}, aug, mask=None, target_context=0, target_params=params, cache_mb=cache_mb)
    assert s.cache_targets == (cache_mb > 0)
    vs = s.voxel_sizes[0]
    checked = 0
    for o, geo in _cases(lab.shape):
        _, t = s.crop(s.views[0], geo, o)
        whole, t_lab = _whole(lab, geo, vs, ALL, params)
        src = geo.source_shape(PATCH)
        # where the crop lies in the transformed volume
        from blockseg.train.data import core_in_transformed

        sl = core_in_transformed(geo, o, src, lab.shape)
        for c in channels_of(ALL):
            np.testing.assert_array_equal(t[c], whole[c][sl], err_msg=f"{c} at {o} {geo}")
        np.testing.assert_array_equal(t["labels_fg"], (t_lab[sl] > 0).astype(np.float32))
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("cache_mb", [0, 1024], ids=["computed", "cached"])
def test_sampled_crops_equal_whole_volume_targets(dense, cache_mb):
    """The random path (draw + crop) too, over many seeds: the image is the volume's window."""
    path, lab = dense
    img = np.asarray(open_volume(path).array[...])
    aug = AugmentConfig(**NO_INTENSITY)
    reps = ["B", "C", "D", "cpv"]
    s = CropSampler([path], reps, PATCH, {"offset": 0.0, "scale": 1.0}, aug, mask=None, target_context=0, cache_mb=cache_mb)
    from blockseg.train.data import core_in_transformed

    for seed in range(6):
        rng = np.random.default_rng(seed)
        view, geo, o = s.draw(rng)
        x, t = s.crop(view, geo, o)
        whole, _ = _whole(lab, geo, s.voxel_sizes[0], reps, {})
        sl = core_in_transformed(geo, o, geo.source_shape(PATCH), lab.shape)
        np.testing.assert_array_equal(x, geo.apply(img)[sl].astype(np.float32))
        for c in channels_of(reps):
            np.testing.assert_array_equal(t[c], whole[c][sl])


def test_face_nuclei_get_no_false_boundary(dense):
    """The issue's symptom: a corner crop's contour target is the whole volume's, not 1 on the face."""
    path, lab = dense
    s = CropSampler([path], ["B", "C", "D"], PATCH, {"offset": 0.0, "scale": 1.0}, AugmentConfig(**NO_INTENSITY), mask=None, cache_mb=0)
    _, t = s.crop(s.views[0], Geometric(), (0, 0, 0))
    face = lab[0, : PATCH[1], : PATCH[2]] > 0
    assert face.any()
    whole = compute_targets(lab, ["C"], s.voxel_sizes[0])["C"][0, : PATCH[1], : PATCH[2]]
    np.testing.assert_array_equal(t["C"][0], whole)
    assert t["C"][0][face].mean() < 1.0  # with label-0 padding every face voxel was contour


@pytest.mark.parametrize("cache_mb", [0, 1024], ids=["computed", "cached"])
def test_validation_slab_is_a_face_and_never_read(dense, cache_mb):
    path, lab = dense
    box = ((0, 0, 12), (14, 34, 22))  # x 12..22 held out
    views = split_views(0, lab.shape, box)
    assert views == [View(0, (0, 0, 0), (14, 34, 12)), View(0, (0, 0, 22), (14, 34, 34))]
    s = CropSampler([path], ["B", "C", "D", "cpv", "aff"], (6, 12, 12), {"offset": 0.0, "scale": 1.0}, AugmentConfig(**NO_INTENSITY), mask=None, exclude={0: box}, cache_mb=cache_mb)
    reads = []
    orig = s.labels[0].array

    class Spy:
        shape = orig.shape

        def __getitem__(self, sl):
            reads.append(sl)
            return orig[sl]

    s.labels[0].array = Spy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        view, geo, o = s.draw(rng)
        _, t = s.crop(view, geo, o)
        # targets of the part left: the slab is a face
        sub = lab[tuple(slice(a, b) for a, b in zip(view.lo, view.hi))]
        whole, _ = _whole(sub, geo, s.voxel_sizes[0], ["B", "C", "D", "cpv", "aff"], {})
        # the global centre table is the whole volume's, so compare the centre-free channels
        from blockseg.train.data import core_in_transformed

        sl = core_in_transformed(geo, np.asarray(o) - view.lo, geo.source_shape((6, 12, 12)), sub.shape)
        for c in ("B", "C", "D", "aff_z", "aff_y", "aff_x"):
            np.testing.assert_array_equal(t[c], whole[c][sl])
    assert reads and all(r[2].stop <= 12 or r[2].start >= 22 for r in reads)


def test_a_box_that_is_not_a_slab_is_refused(dense):
    from blockseg import BlocksegError

    with pytest.raises(BlocksegError, match="slab"):
        split_views(0, (14, 34, 34), ((0, 5, 5), (14, 10, 10)))


def test_elastic_crops_have_the_patch_shape_and_finite_targets(dense):
    path, _ = dense
    aug = AugmentConfig(elastic=True, elastic_p=1.0, elastic_spacing=4, elastic_sigma=1.5)
    s = CropSampler([path], ALL, PATCH, {"offset": 0.0, "scale": 1.0}, aug, mask=None, target_params={"max_distance": 5.0})
    x, t = s.batch(np.random.default_rng(1), 3)
    assert x.shape == (3, 1, *PATCH)
    assert all(v.shape == (3, *PATCH) and np.isfinite(v).all() for v in t.values())
