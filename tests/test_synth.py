import json

import numpy as np
import pytest

from blockseg import BlocksegError, open_volume
from blockseg.synth import SynthParams, nucleus_table, render_region, synthesize

SMALL = dict(shape=(40, 96, 88), seed=11)


@pytest.mark.slow  # the shared LocalCluster
@pytest.mark.parametrize("mode, mask", [("em", False), ("uct", True)])
def test_synth_on_disk_is_identical_for_any_block_shape(tmp_path, local_client, mode, mask):
    params = SynthParams(**SMALL, mode=mode, mask=mask)
    outs = []
    for i, (chunks, block) in enumerate([((8, 16, 16), (8, 16, 16)), ((8, 32, 8), (40, 32, 24)), ((40, 96, 88), None)]):
        path = str(tmp_path / f"s{i}.zarr")
        synthesize(path, params, chunks=chunks, block_shape=block, client=local_client if i else None, progress=False)
        outs.append({k: open_volume(p)[:] for k, p in [("image", path), ("labels", f"{path}/labels/nuclei")]})
        if mask:
            outs[-1]["mask"] = open_volume(f"{path}/labels/valid")[:]
    for other in outs[1:]:
        for key in outs[0]:
            assert np.array_equal(outs[0][key], other[key]), key


def test_synth_looks_like_nuclei_at_nucmm_density(tmp_path):
    params = SynthParams(shape=(64, 192, 192), seed=2)
    summary = synthesize(str(tmp_path / "s.zarr"), params, progress=False)
    expected = params.density * np.prod(params.shape)
    # nuclei cut by the border count too, so a small volume holds a few more than its density
    assert 0.9 * expected <= summary.n_nuclei_visible <= 1.2 * expected
    img = open_volume(tmp_path / "s.zarr")[:]
    lab = open_volume(tmp_path / "s.zarr/labels/nuclei")[:]
    # every table id that is visible is a label; labels are exactly the table ids seen
    ids = np.unique(lab[lab > 0])
    assert ids.min() >= 1 and ids.max() <= summary.n_nuclei and len(ids) == summary.n_nuclei_visible
    # EM look: nuclei darker than neuropil by a wide margin
    assert img[lab > 0].mean() + 40 < img[lab == 0].mean()
    # touching nuclei exist (clustered): some label borders another label face-to-face
    touching = (lab[:, :, 1:] != lab[:, :, :-1]) & (lab[:, :, 1:] > 0) & (lab[:, :, :-1] > 0)
    assert touching.sum() > 0
    table = np.loadtxt(tmp_path / "s.zarr/nuclei.csv", delimiter=",", skiprows=1)
    assert table.shape == (summary.n_nuclei, 7)
    assert json.loads((tmp_path / "s.zarr/synth_summary.json").read_text())["n_nuclei"] == summary.n_nuclei


def test_uct_mode_is_low_contrast_and_mask_excludes_nuclei():
    params = SynthParams(shape=(48, 128, 128), voxel_size=0.72, density=4e-5, radius=4.0, mode="uct", mask=True, seed=5)
    out = render_region(params, [slice(0, n) for n in params.shape])
    lab, img, mask = out["labels"], out["image"].astype(float), out["mask"].astype(bool)
    contrast = img[mask & (lab == 0)].mean() - img[lab > 0].mean()
    assert 5 < contrast < 50
    # centres of all nuclei lie in the tissue; only voxels of nuclei cut by its outline fall outside
    assert (lab[~mask] > 0).mean() < 0.01
    assert 0.2 < mask.mean() < 0.95


def test_seed_changes_the_volume_and_same_seed_repeats():
    a = nucleus_table(SynthParams(shape=(32, 64, 64), seed=1))
    b = nucleus_table(SynthParams(shape=(32, 64, 64), seed=2))
    c = nucleus_table.__wrapped__(SynthParams(shape=(32, 64, 64), seed=1))  # uncached recompute
    assert not np.array_equal(a.centre[: min(len(a), len(b))], b.centre[: min(len(a), len(b))])
    assert np.array_equal(a.centre, c.centre) and np.array_equal(a.inv_axes, c.inv_axes)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(0, 4, 4)), "shape"),
        (dict(mode="xray"), "mode"),
        (dict(density=-1), "density"),
        (dict(voxel_size=(1, 0, 1)), "voxel size"),
        (dict(cluster_fraction=2), "cluster_fraction"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(BlocksegError, match=message):
        SynthParams(**kwargs)


def test_region_outside_volume_is_an_error():
    with pytest.raises(BlocksegError, match="not inside the volume"):
        render_region(SynthParams(shape=(8, 8, 8)), (slice(0, 9), slice(0, 8), slice(0, 8)))
