"""Blockwise ``segment`` against the whole-volume reference, on adversarial geometry."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg import BlocksegError
from blockseg.io.volume import open_volume
from blockseg.io.predictions import open_predictions, read_channels, save_predictions
from blockseg.segment import BCDDecoder, segment, segment_array
from blockseg.io.tables import read_table
from blockseg.segment.synthetic import noisy_predictions, random_nuclei, rasterise
from blockseg.train.targets import bcd_targets

from _helpers import REAL_DATA as REAL, differing_voxels, matched_at, same_partition

CHUNKS = (8, 8, 8)
#: test nuclei have radii 5-7 voxels, too small for NucMM's seed_d = 0.5 (d_in > 4.4 voxels)
#: with 32-voxel seeds; the same decoder is used on both sides of every comparison
DECODER = BCDDecoder(seed_d=0.3, min_seed_size=8, min_size=64)


# ---------------------------------------------------------------------------- helpers
def run_blockwise(tmp_path, channels, block_shape, halo, voxel_size=None, **kw):
    kw.setdefault("decoder", DECODER)
    pred = tmp_path / "pred.zarr"
    if not pred.exists():
        save_predictions(pred, channels, voxel_size=voxel_size, chunks=CHUNKS)
    out = tmp_path / f"seg_{'x'.join(map(str, block_shape))}_{halo}.zarr"
    report = segment(pred, out, block_shape=block_shape, halo=halo, overwrite=True, **kw)
    return open_volume(out).array[:], report, pred


def stored(channels, tmp_path, voxel_size=None):
    """Channels as the pipeline sees them after uint8 storage."""
    pred = tmp_path / "pred.zarr"
    save_predictions(pred, channels, voxel_size=voxel_size, chunks=CHUNKS)
    return read_channels(open_predictions(pred), (slice(None),) * 3)


# ---------------------------------------------------------------------------- geometry
SHAPE = (40, 48, 56)


def adversarial_labels() -> np.ndarray:
    """Nuclei on 2-, 4- and 8-block junctions of an 8/16/24 grid, touching pairs across a
    face, an elongated nucleus, plus random filler."""
    centres = [
        (16.0, 24.0, 24.0),  # 8-block corner (z=16, y=24, x=24 are junctions of 8 / 16 / 24 grids)
        (16.0, 24.0, 44.0),  # 4-block edge (z, y junction)
        (30.0, 10.0, 24.0),  # 2-block face (x junction)
        (8.0, 40.0, 10.4),  # touching pair straddling x = 16 ...
        (8.0, 40.0, 21.4),  # ... distinct nuclei
        (32.0, 36.0, 8.0),  # elongated nucleus: a chain of balls merged below
        (32.0, 36.0, 16.0),
        (32.0, 36.0, 24.0),
        (32.0, 36.0, 32.0),
        (32.0, 36.0, 40.0),
    ]
    radii = [7.0, 6.0, 6.0, 6.0, 6.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    fill_c, fill_r = random_nuclei(SHAPE, 12, (5.0, 7.0), seed=3)
    centres = np.concatenate([np.asarray(centres), fill_c])
    radii = np.concatenate([np.asarray(radii), fill_r])
    labels = rasterise(SHAPE, centres, radii)
    lut = np.arange(len(centres) + 1, dtype=np.uint32)
    lut[7:11] = 6  # balls 6..10 form one elongated nucleus (36 voxels long, > every halo)
    return lut[labels]


@pytest.fixture(scope="module")
def adversarial():
    labels = adversarial_labels()
    return labels, noisy_predictions(labels, blur=0.5, noise=0.02, seed=1)


def test_adversarial_geometry_is_present():
    labels = adversarial_labels()
    assert labels[16, 24, 24] == 1 and labels[8, 40, 15] != labels[8, 40, 16] != 0
    zz, yy, xx = np.nonzero(labels == 6)
    assert xx.max() - xx.min() > 32


@pytest.mark.parametrize(
    "block_shape, halo",
    [
        ((16, 24, 24), 4),  # halo below the nucleus diameter, non-divisor grid
        ((24, 16, 32), 16),  # halo above the nucleus diameter
        pytest.param((8, 8, 8), 8, marks=pytest.mark.slow),  # blocks smaller than the nuclei (slow: the most blocks)
    ],
)
def test_blockwise_equals_whole_volume(tmp_path, adversarial, block_shape, halo):
    labels, channels = adversarial
    ref = segment_array(stored(channels, tmp_path), DECODER)
    out, report, _ = run_blockwise(tmp_path, channels, block_shape, halo)
    assert ref.max() >= 16
    assert differing_voxels(ref, out) == 0
    assert np.array_equal(ref, out)  # exact, ids included
    assert report.n_instances == ref.max()
    # the touching pair straddling a face stays two nuclei
    assert out[8, 40, 12] != out[8, 40, 27] and out[8, 40, 12] and out[8, 40, 27]
    # the elongated nucleus stays one
    assert len(np.unique(out[32, 36, 6:43])) == 1


def test_single_block_needs_one_round_and_is_equal(tmp_path, adversarial):
    labels, channels = adversarial
    ref = segment_array(stored(channels, tmp_path), DECODER)
    out, report, _ = run_blockwise(tmp_path, channels, SHAPE, 0)
    assert report.rounds == [{"round": 1, "blocks": 1, "woken": 0}] and report.blocks_rerun == 0
    assert np.array_equal(ref, out)  # same numbering too: seeds in raster order


@pytest.mark.slow  # segments perfect predictions of many nuclei blockwise and whole
def test_identity_perfect_predictions(tmp_path):
    """Decoding perfect B, C, D made from ground truth recovers it (AP@0.9 = 1)."""
    centres, radii = random_nuclei(SHAPE, 30, (6.0, 9.0), seed=7)
    gt = rasterise(SHAPE, centres, radii)
    # drop pieces that BCD's own size limits would remove (tiny cut-offs at the border)
    ids, n = np.unique(gt, return_counts=True)
    gt[np.isin(gt, ids[(n < 400) & (ids > 0)])] = 0
    out, _, _ = run_blockwise(tmp_path, bcd_targets(gt), (16, 16, 24), 8)
    m, n_gt, n_pred = matched_at(gt, out, 0.9)
    assert n_gt > 15 and m == n_gt == n_pred


@pytest.mark.slow  # segments the volume and checks every table column
def test_instance_table(tmp_path, adversarial):
    labels, channels = adversarial
    out, report, _ = run_blockwise(tmp_path, channels, (16, 24, 24), 8)
    table = read_table(report.table_path)
    ids, counts = np.unique(out[out > 0], return_counts=True)
    assert np.array_equal(table["id"], ids) and np.array_equal(table["voxels"], counts)
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    z, y, x = np.nonzero(out == 1)
    assert table["bbox_z0"][0] == z.min() and table["bbox_x1"][0] == x.max() + 1
    assert np.isclose(table["centroid_y"][0], y.mean())
    assert np.all((table["score"] > 0.5) & (table["score"] <= 1.0))


@pytest.mark.slow  # segments the volume several times
def test_report_counts_rounds_and_reruns(tmp_path, adversarial):
    labels, channels = adversarial
    _, report, _ = run_blockwise(tmp_path, channels, (16, 16, 16), 2)
    rounds = report.rounds
    assert len(rounds) >= 2 and rounds[0]["blocks"] == 36 and rounds[-1]["woken"] == 0
    assert [r["blocks"] for r in rounds[1:]] == [r["woken"] for r in rounds[:-1]]
    assert report.blocks_rerun == sum(r["blocks"] for r in rounds) - 36 > 0
    assert report.flood_amplification > 1.0


def test_errors(tmp_path, adversarial):
    _, channels = adversarial
    save_predictions(tmp_path / "p.zarr", {"B": channels["B"]}, chunks=CHUNKS)
    with pytest.raises(BlocksegError, match="missing"):
        segment(tmp_path / "p.zarr", tmp_path / "o.zarr")
    with pytest.raises(BlocksegError, match="no such file"):
        segment(tmp_path / "nope.zarr", tmp_path / "o.zarr")
    save_predictions(tmp_path / "q.zarr", channels, chunks=CHUNKS)
    with pytest.raises(BlocksegError, match="halo"):
        segment(tmp_path / "q.zarr", tmp_path / "o.zarr", block_shape=8, halo=-1)
    with pytest.raises(BlocksegError, match="multiple of the chunk"):
        segment(tmp_path / "q.zarr", tmp_path / "o.zarr", block_shape=12)


# ---------------------------------------------------------------------------- real data
@pytest.mark.slow  # real nuclei, blockwise and whole
@pytest.mark.skipif(not (REAL / "gonuclear_1135_mini.npz").exists(), reason="real data not present")
def test_real_nuclei_blockwise_equals_whole(tmp_path):
    data = np.load(REAL / "gonuclear_1135_mini.npz")
    gt, vs = data["labels"][:64, :64, :64].astype(np.uint32), tuple(data["voxel_size_zyx"])
    channels = noisy_predictions(gt, voxel_size=vs)
    decoder = BCDDecoder(min_seed_size=8, min_size=32)
    ref = segment_array(stored(channels, tmp_path, vs), decoder)
    out, report, _ = run_blockwise(tmp_path, channels, (16, 32, 32), 8, voxel_size=vs, decoder=decoder)
    assert same_partition(ref, out)
    m, n_gt, n_pred = matched_at(gt, out, 0.5)
    assert m >= 0.8 * n_gt


def test_empty_prediction_gives_empty_labels_and_table(tmp_path):
    zeros = {c: np.zeros((16, 16, 16), np.float32) for c in "BC"}
    zeros["D"] = -np.ones((16, 16, 16), np.float32)
    out, report, _ = run_blockwise(tmp_path, zeros, (8, 8, 8), 4)
    assert out.max() == 0 and report.n_instances == 0 and report.n_seeds == 0
    assert read_table(report.table_path)["id"].size == 0


@pytest.mark.parametrize("block_shape", [pytest.param((4, 4, 4), marks=pytest.mark.slow), (12, 4, 8)])  # (4, 4, 4) slow: many blocks
def test_seed_components_across_faces_edges_and_corners_equal_whole_volume(tmp_path, block_shape):
    """Blockwise 26-connected seed labelling + union-find == whole-volume cc3d (as partitions)."""
    import cc3d

    from blockseg.segment import ThreeLabelDecoder
    from blockseg.segment.pipeline import _Job, _global_seeds, _pairs_task, _seed_task, _write_tables, merge_seeds

    rng = np.random.default_rng(sum(block_shape))
    shape = (20, 22, 24)
    mask = rng.random(shape) < 0.12  # sparse: many components joined only through edges / corners
    zeros = np.zeros(shape, np.float32)
    save_predictions(tmp_path / "p.zarr", {"P_bg": zeros, "P_boundary": zeros, "P_interior": mask.astype(np.float32)},
                     chunks=(4, 4, 4))  # fmt: skip
    import zarr

    work = str(tmp_path / "work")
    zarr.open_group(work, mode="w")
    zarr.create_array(f"{work}/seeds", shape=shape, chunks=(4, 4, 4), dtype=np.uint64, fill_value=0)
    zarr.create_array(f"{work}/height", shape=shape, chunks=(4, 4, 4), dtype=np.uint8, fill_value=0)
    decoder = ThreeLabelDecoder(min_seed_size=1)
    job = _Job(str(tmp_path / "p.zarr"), work, shape, block_shape, (0, 0, 0), (4, 4, 4), decoder,
               (("P_bg", "prob"), ("P_boundary", "prob"), ("P_interior", "prob")))  # fmt: skip
    grid = job.grid()
    seeds = [_seed_task(b, job) for b in grid.block_ids]
    edges = np.concatenate([_pairs_task(b, job) for b in grid.block_ids])
    values, n = merge_seeds([s[0] for s in seeds], [s[1] for s in seeds], edges, 1)
    _write_tables(f"{work}/seed_tables", {b: (s[0], v) for b, s, v in zip(grid.block_ids, seeds, values)})
    blockwise, _ = _global_seeds(job, grid, tuple(slice(0, s) for s in shape))
    whole, n_whole = cc3d.connected_components(mask, connectivity=26, return_N=True)
    assert n == n_whole and same_partition(whole, blockwise)
    assert any(True for _ in grid.interfaces()) and len(edges) > 0
