"""Voxel-size aware inference (blockseg.predict.resample): blockwise == whole-volume through the
resampled grid, and a volume at twice the voxel size gives nearly the same nuclei."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from blockseg import BlocksegError
from blockseg.io.volume import create_volume, open_volume
from blockseg.models import IdentityNet, TinyConvNet, demo_checkpoint_path, load_checkpoint, save_checkpoint
from blockseg.predict import predict, predict_array
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.predict.resample import channel_factors, interpolate_box, predict_array_scaled, resolve_scale

torch.set_num_threads(1)


def write(path, data, voxel_size, chunks=(12, 24, 24)) -> str:
    vol = create_volume(path, data.shape, data.dtype, voxel_size, chunks=chunks)
    vol.array[...] = data
    return str(path)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    net = TinyConvNet(("B", "C", "D", "cpv"), width=3, valid=True, input_patch=(12, 20, 20), dropout=0.0, seed=4)
    path = tmp_path_factory.mktemp("rs") / "tiny.pt"
    save_checkpoint(path, net, normalisation={"scheme": "percentile", "low": 1.0, "high": 99.8}, voxel_size=[1.0, 1.0, 1.0])
    return str(path)


@pytest.mark.parametrize("voxel_size, block", [((2.0, 1.5, 1.5), (12, 24, 24)), ((0.7, 1.3, 0.8), (24, 24, 48))])
def test_blockwise_resampled_predict_equals_whole_volume(tmp_path, tiny_ckpt, voxel_size, block):
    rng = np.random.default_rng(0)
    img = (ndi.gaussian_filter(rng.normal(size=(30, 50, 46)), 2) * 4000 + 1000).clip(0, 65535).astype(np.uint16)
    path = write(tmp_path / "img.zarr", img, voxel_size)
    out = tmp_path / "p.pred"
    rep = predict(path, tiny_ckpt, out, block_shape=block, channels="all", progress=False, pyramid_levels=1)
    assert rep.plan.resampling.startswith("resampled by")
    assert len(rep.plan.grid) > 1
    got = read_channels(open_predictions(out), (slice(None),) * 3)
    model, payload = load_checkpoint(tiny_ckpt)
    ref = predict_array_scaled(model, img, voxel_size, payload["metadata"]["normalisation"])
    for c, v in ref.items():
        step = 1 / 255 if c in ("B", "C") else (2 / 255 if c == "D" else 1e-3 * max(1.0, np.abs(v).max()))
        assert np.abs(got[c] - v).max() <= step + 1e-6, c


def test_resampled_plan_counts_work_on_the_networks_grid(tmp_path, tiny_ckpt):
    """A resampled run exchanges no partial sums, and its lattice overlap is per resampled voxel
    (the dry run once said 4117 MiB of scratch and 403 output voxels per voxel for BBBC050 via fluo)."""
    img = write(tmp_path / "i.zarr", np.zeros((24, 48, 48), np.uint8), (2.0, 1.5, 1.5))
    plan = predict(img, tiny_ckpt, str(tmp_path / "o.pred"), block_shape=(12, 24, 24), dry_run=True)
    assert plan.lattice_shape == (48, 72, 72) and plan.scratch_bytes == 0
    assert plan.memory_bytes["scratch row"] == 0  # resampled blocks exchange nothing
    assert 1.0 <= plan.compute_factor < 3.0
    text = plan.describe()
    assert "partial sums exchanged between blocks: none (resampled" in text and "output voxels per resampled voxel" in text


def test_interpolation_is_exact_per_voxel_whatever_the_box():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(9, 13, 11))
    dst = (20, 7, 30)
    whole = interpolate_box(src.__getitem__, (0, 0, 0), dst, src.shape, dst)
    part = interpolate_box(src.__getitem__, (3, 2, 11), (17, 6, 29), src.shape, dst)
    assert np.array_equal(part, whole[3:17, 2:6, 11:29])
    # linear data is reproduced (interpolation is exact on ramps, away from the clamped borders)
    ramp = np.indices(src.shape)[2].astype(np.float64)
    up = interpolate_box(ramp.__getitem__, (0, 0, 0), dst, src.shape, dst)
    x = (np.arange(30) + 0.5) * 11 / 30 - 0.5
    inside = (x >= 0) & (x <= 10)
    np.testing.assert_allclose(up[0, 0, inside], x[inside])


def test_scale_option_resolution():
    s, why = resolve_scale(None, (10, 20, 20), (2.0, 1.0, 1.0), "metadata", [1.0, 1.0, 1.0])
    assert s.net_shape == (20, 20, 20) and "resampled" in why
    assert resolve_scale(1, (10, 20, 20), (2.0, 1.0, 1.0), "metadata", [1.0, 1.0, 1.0])[0] is None
    assert resolve_scale(None, (10, 20, 20), (2.0, 1.0, 1.0), "default", [1.0, 1.0, 1.0])[0] is None
    assert resolve_scale(None, (10, 20, 20), (1.02, 1.0, 1.0), "metadata", [1.0, 1.0, 1.0])[0] is None
    assert resolve_scale([0.5, 1, 2], (10, 20, 20), (1, 1, 1), "metadata", None)[0].net_shape == (5, 20, 40)
    with pytest.raises(BlocksegError, match="--scale"):
        resolve_scale([0, 1, 1], (10, 20, 20), (1, 1, 1), "metadata", None)
    np.testing.assert_allclose(channel_factors(["B", "cpv_z", "cpv_x", "density"], (2.0, 1.0, 0.5)), [1, 0.5, 2, 1.0])


def test_large_voxel_size_resampling_warns_that_it_assumes_the_training_nucleus_size(recwarn):
    """BBBC050 (1.75x0.8x0.8 µm, 17 µm nuclei) through a GoNuclear-trained network (0.28x0.13x0.13 µm,
    3 µm nuclei): voxel-size resampling alone makes the nuclei ~6x too large, so predict says so."""
    from blockseg.errors import BlocksegWarning

    args = ((51, 120, 122), (1.75, 0.8, 0.8), "metadata", [0.284, 0.127, 0.127])
    s, _ = resolve_scale(None, *args, network_diameter=2.97)
    assert s is not None
    msgs = [str(w.message) for w in recwarn.list if issubclass(w.category, BlocksegWarning)]
    assert len(msgs) == 1 and "assumes nuclei about 2.97 µm" in msgs[0] and "--diameter" in msgs[0]
    recwarn.clear()
    resolve_scale(None, *args, diameter=16.8, network_diameter=2.97)  # the size is given
    resolve_scale((6, 6, 6), *args, network_diameter=2.97)  # factors given
    resolve_scale(None, *args)  # the checkpoint knows no nucleus size: nothing to compare
    resolve_scale(None, (51, 120, 122), (0.5, 0.2, 0.2), "metadata", [0.284, 0.127, 0.127], network_diameter=2.97)  # < 2x
    assert not [w for w in recwarn.list if issubclass(w.category, BlocksegWarning)]


@pytest.mark.slow  # the demo network over two synthetic volumes
def test_twice_the_voxel_size_gives_nearly_the_same_nuclei(tmp_path):
    """The demo network (trained at 0.48 x 0.51 x 0.51 µm) on a synthetic volume at its voxel size,
    and on the same volume averaged 2x2x2 (0.96 x 1.02 x 1.02 µm): resampled to its voxel
    size and back, the coarse volume's nuclei match the fine volume's (AP-50 >= 0.9)."""
    from blockseg.evaluate import evaluate
    from blockseg.segment import make_decoder, segment_array
    from blockseg.synth import SynthParams, synthesize

    # nuclei of radius 3.5 µm stay resolved (~3.4 voxels) at the coarse voxel size; at the demo
    # data's 2.6 µm the coarse image itself loses the detail (AP-50 0.77-0.89 measured)
    params = SynthParams(shape=(24, 80, 80), seed=4, radius=3.5)
    synthesize(str(tmp_path / "fine.zarr"), params, chunks=(24, 80, 80), progress=False)
    fine = np.asarray(open_volume(str(tmp_path / "fine.zarr")).array[...])
    coarse = fine.reshape(12, 2, 40, 2, 40, 2).astype(np.float32).mean((1, 3, 5)).round().astype(np.uint8)
    model, payload = load_checkpoint(demo_checkpoint_path())
    meta = payload["metadata"]
    params = dict(meta["decoder"]["params"])
    seg_fine = segment_array(predict_array(model, fine, meta["normalisation"]), make_decoder("bcd", **params))
    params.update(min_size=params["min_size"] / 8, min_seed_size=1)  # sizes in (8x larger) coarse voxels
    coarse_dec = make_decoder("bcd", **params)
    scaled = segment_array(predict_array_scaled(model, coarse, (2, 2, 2), meta["normalisation"]), coarse_dec)

    def up(s):  # each coarse voxel covers its 2x2x2 fine voxels
        return s.repeat(2, 0).repeat(2, 1).repeat(2, 2)

    assert seg_fine.max() >= 12
    ap_scaled = evaluate(seg_fine, up(scaled)).coco["AP50"]
    assert ap_scaled >= 0.9, ap_scaled

    def dice(a, b):
        return 2 * ((a > 0) & (b > 0)).sum() / ((a > 0).sum() + (b > 0).sum())

    # the masks lie where the fine ones do (blocky at the coarse voxel size: Dice ~0.87 measured);
    # one coarse voxel of misregistration costs more than 0.05
    assert dice(seg_fine, up(scaled)) >= 0.8, dice(seg_fine, up(scaled))
    shifted = dice(seg_fine, np.roll(up(scaled), 2, axis=2))
    assert shifted < dice(seg_fine, up(scaled)) - 0.05, shifted


def test_cli_scale_option_and_what_it_prints(tmp_path, tiny_ckpt, capsys, no_cluster):
    import json

    import zarr
    from blockseg_cli.main import main

    img = (np.random.default_rng(2).random((12, 24, 24)) * 200).astype(np.uint8)
    path = write(tmp_path / "i.zarr", img, (2.0, 1.0, 1.0))
    out = str(tmp_path / "o.pred")
    assert main(["predict", path, tiny_ckpt, out, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "normalisation: percentile" in err and "voxel size: resampled by (2.0, 1.0, 1.0)" in err
    assert main(["predict", path, tiny_ckpt, str(tmp_path / "p.pred"), "--scale", "1", "--no-progress", "--json"]) == 0
    assert "voxel size: not resampled (--scale 1)" in capsys.readouterr().err
    run = dict(zarr.open_group(str(tmp_path / "p.pred"), mode="r").attrs["blockseg"])["predictions"]["run"]
    assert run["resampling"] == {"description": "not resampled (--scale 1)"}
    assert main(["predict", path, tiny_ckpt, str(tmp_path / "q.pred"), "--scale", "0", "--no-progress"]) == 2
    assert "--scale" in capsys.readouterr().err
    plan = main(["predict", path, tiny_ckpt, str(tmp_path / "r.pred"), "--scale", "1", "2", "2", "--dry-run", "--json"])
    assert plan == 0 and json.loads(capsys.readouterr().out)["resampling"].startswith("resampled by (1.0, 2.0, 2.0)")


# ----------------------------------------------------------------------------- --diameter
def test_diameter_resolves_factors_from_nucleus_sizes():
    """Nuclei of 16 µm at 0.8 µm voxels for a network trained on 2.7 µm nuclei at 0.127 µm voxels
    (BBBC050 and GoNuclear): both span ~21 voxels, so the factors are ~1, where voxel-size
    resampling alone would be 6.3x."""
    s, why = resolve_scale(None, (51, 120, 122), (1.75, 0.8, 0.8), "metadata", [0.284, 0.127, 0.127], 16.8, 2.7)
    assert s is None and "not resampled" in why and "16.8 µm" in why
    s, why = resolve_scale(None, (10, 20, 20), (1.0, 1.0, 1.0), "metadata", [1.0, 1.0, 1.0], 5.0, 10.0)
    assert s.net_shape == (20, 40, 40) and "nuclei of 5 µm" in why  # half the size: twice the voxels
    with pytest.raises(BlocksegError, match="not both"):
        resolve_scale(2.0, (10, 20, 20), (1, 1, 1), "metadata", [1, 1, 1], 5.0, 10.0)
    with pytest.raises(BlocksegError, match="records its training nucleus diameter"):
        resolve_scale(None, (10, 20, 20), (1, 1, 1), "metadata", [1, 1, 1], 5.0, None)
    with pytest.raises(BlocksegError, match="voxel size"):
        resolve_scale(None, (10, 20, 20), (1, 1, 1), "default", [1, 1, 1], 5.0, 10.0)
    with pytest.raises(BlocksegError, match="positive"):
        resolve_scale(None, (10, 20, 20), (1, 1, 1), "metadata", [1, 1, 1], -1.0, 10.0)


@pytest.mark.slow  # a training run, then the network over a volume
def test_training_records_the_nucleus_diameter_and_predict_uses_it(tmp_path, capsys):
    from blockseg.predict.resample import nucleus_diameter_um
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train import parse_config, train
    from blockseg_cli.main import main

    vol = tmp_path / "v.zarr"
    synthesize(str(vol), SynthParams(shape=(24, 48, 48), seed=3), chunks=(24, 48, 48), progress=False)
    cfg = {"data": {"train": [str(vol)], "target_context": 2},
           "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}},
           "output": str(tmp_path / "run"), "iterations": 2, "patch": [8, 16, 16], "batch_size": 1,
           "checkpoint_every": 2, "threads": 1, "targets": {"max_distance": 4.0}}  # fmt: skip
    ckpt = train(parse_config(cfg), progress=False).checkpoint
    meta = load_checkpoint(ckpt)[1]["metadata"]
    lab = open_volume(f"{vol}/labels/nuclei")
    assert meta["nucleus_diameter_um"] == pytest.approx(nucleus_diameter_um(lab.array[...], lab.voxel_size))
    d = meta["nucleus_diameter_um"]
    # the image's nuclei are half the training size: the network sees it at twice the resolution
    assert main(["predict", str(vol), ckpt, str(tmp_path / "p.pred"), "--diameter", str(d / 2), "--dry-run", "--json"]) == 0
    plan = __import__("json").loads(capsys.readouterr().out)
    assert plan["resampling"].startswith("resampled by (2.0, 2.0, 2.0)") and "in its voxels" in plan["resampling"]
    # a checkpoint that records no training diameter is refused in one line
    plain = tmp_path / "plain.pt"
    save_checkpoint(plain, IdentityNet(("B",), input_patch=(8, 16, 16)))
    assert main(["predict", str(vol), str(plain), str(tmp_path / "q.pred"), "--diameter", "5", "--dry-run"]) == 2
    assert "records its training nucleus diameter" in capsys.readouterr().err
    # the shipped checkpoints record theirs (experiments/shipped_diameters.py): --diameter works with them
    assert main(["predict", str(vol), demo_checkpoint_path(), str(tmp_path / "r.pred"), "--diameter", "9.9", "--dry-run", "--json"]) == 0
    assert "resampled by" in __import__("json").loads(capsys.readouterr().out)["resampling"]
