"""Training features of issue 15: validation regions, fine-tuning, capacity, loss units, tuner edges, import of pairs."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest
import torch

import blockseg_cli
from blockseg import BlocksegError
from blockseg.io.volume import open_volume
from blockseg.train.losses import MultiLoss
from blockseg.models import load_checkpoint
from blockseg.synth import SynthParams, synthesize
from blockseg.train.targets import compute_targets
from blockseg.train import parse_config, train
from blockseg.train.config import ValidationConfig
from blockseg.train.trainer import make_model, tune_decoder, widen

from _helpers import CLI_DIR

blockseg_cli.__path__.insert(0, str(CLI_DIR))
_spec = importlib.util.spec_from_file_location("_blockseg_cli_main_trainfeat", CLI_DIR / "main.py")
cli_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_main)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("feat") / "vol.zarr"
    synthesize(str(path), SynthParams(shape=(24, 48, 48), seed=7), chunks=(24, 48, 48), progress=False)
    return str(path)


def _config(volume, out, **over):
    cfg = {
        "data": {"train": [volume], "target_context": 2},
        "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}},
        "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "output": str(out), "iterations": 3, "patch": [8, 16, 16], "batch_size": 1, "log_every": 1,
        "checkpoint_every": 3, "threads": 1, "targets": {"max_distance": 4.0},
    }  # fmt: skip
    cfg.update(over)
    return cfg


def test_volumes_of_different_voxel_sizes_are_refused_before_anything_is_written(volume, tmp_path):
    """The checkpoint records one training voxel size (predict resamples to it), so volumes of
    different voxel sizes are one line, and the output folder is not even made."""
    other = tmp_path / "coarse.zarr"
    synthesize(str(other), SynthParams(shape=(24, 48, 48), seed=8, voxel_size=(0.96, 0.51, 0.51)), chunks=(24, 48, 48),
               progress=False)  # fmt: skip
    cfg = _config(volume, tmp_path / "out")
    cfg["data"]["train"] = [volume, str(other)]
    with pytest.raises(BlocksegError, match=r"different voxel sizes: .*vol\.zarr \(0\.48, 0\.51, 0\.51\) µm, .*coarse\.zarr \(0\.96"):
        train(parse_config(cfg), progress=False)
    assert not (tmp_path / "out").exists()
    # with data.voxel_size the coarse volume is resampled (z doubled) and the checkpoint records it
    cfg["data"]["voxel_size"] = [0.48, 0.51, 0.51]
    cfg["data"]["validation"] = {"volume": str(other), "region": [[6, 12], None, None]}
    res = train(parse_config(cfg), progress=False)
    assert tuple(load_checkpoint(res.checkpoint)[1]["metadata"]["voxel_size"]) == (0.48, 0.51, 0.51)
    made = open_volume(tmp_path / "out" / "resampled" / "0.zarr")
    assert made.shape == (48, 48, 48) and tuple(made.voxel_size) == (0.48, 0.51, 0.51)
    src = open_volume(f"{other}/labels/nuclei").array[:]
    lab = open_volume(tmp_path / "out" / "resampled" / "0.zarr" / "labels" / "nuclei").array[:]
    assert np.array_equal(lab[1::2], src) and np.array_equal(lab[0::2], src)  # nearest: each slice twice
    # the original volume (already at the voxel size) is used as it is
    assert not (tmp_path / "out" / "resampled" / "1.zarr").exists()
    # the validation region is scaled with its volume (z 6..12 at 0.96 µm -> 12..24 at 0.48 µm)
    from blockseg.train.trainer import resample_training_data

    again = resample_training_data(parse_config(cfg), tmp_path / "again")
    assert again.data.train == [volume, str(tmp_path / "again" / "0.zarr")]
    assert again.data.validation.volume == str(tmp_path / "again" / "0.zarr")
    assert [tuple(r) if r else r for r in again.data.validation.region] == [(12, 24), None, None]


def test_resample_array_follows_predicts_lattice():
    from blockseg.predict.resample import resample_array

    a = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    up = resample_array(a, (8, 6, 8))  # centres aligned: z' = (z + 0.5) / 2 - 0.5, clamped
    assert up.dtype == np.uint16 and up.shape == (8, 6, 8)
    assert np.array_equal(up[0], a[0]) and np.array_equal(up[-1], a[-1])
    np.testing.assert_allclose(up[1].astype(float), 0.75 * a[0] + 0.25 * a[1], atol=0.5)
    down = resample_array(a, (2, 3, 4), labels=True)
    assert np.array_equal(down, a[np.ix_([0, 2], [0, 2, 4], [0, 2, 4, 6])])  # nearest to (i + 0.5) * 2 - 0.5, half to even


# ----------------------------------------------------------------------------- validation region
def test_validation_region_and_fraction_boxes():
    assert ValidationConfig(volume="v", fraction=0.25).box((40, 10, 10)) == ((30, 0, 0), (40, 10, 10))
    assert ValidationConfig(volume="v", fraction=0.5, axis=2).box((4, 10, 10)) == ((0, 0, 5), (4, 10, 10))
    assert ValidationConfig(volume="v", region=[[2, 5], None, [1, 3]]).box((8, 8, 8)) == ((2, 0, 1), (5, 8, 3))
    with pytest.raises(BlocksegError, match="exceeds"):
        ValidationConfig(volume="v", region=[[2, 50], None, None]).box((8, 8, 8))
    with pytest.raises(BlocksegError, match="data.validation"):
        parse_config(_config("v", "o", data={"train": ["v"], "validation": {"volume": "v", "region": [[5, 2], None, None]}}))


@pytest.fixture
def crops_read(monkeypatch):
    """The views every training crop is read from (the crop sampler, spied on)."""
    from blockseg.train import data as data_mod

    seen = []
    orig = data_mod.CropSampler.crop

    def spy(self, view, geo, o, elastic_rng=None):
        seen.append(view)
        return orig(self, view, geo, o, elastic_rng)

    monkeypatch.setattr(data_mod.CropSampler, "crop", spy)
    return seen


def test_training_with_a_held_out_slab_never_reads_it(volume, tmp_path, crops_read):
    seen = crops_read
    cfg = _config(volume, tmp_path / "r", iterations=4, validate_every=2,
                  data={"train": [volume], "validation": {"volume": volume, "fraction": 0.25}, "target_context": 2})  # fmt: skip
    res = train(parse_config(cfg), progress=False)
    assert seen and all(v.hi[0] <= 18 for v in seen)  # z 18..24 is the validation slab
    log = [json.loads(x) for x in (tmp_path / "r" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "validation" in r] == [2, 4]
    assert (tmp_path / "r" / "train_log.png").stat().st_size > 1000
    assert set(res.validation) >= {"AP50", "AP75"}


def test_validation_on_several_volumes_holds_out_each_and_scores_their_mean(volume, tmp_path, crops_read):
    """A list of validation entries (e.g. one slab of each real crop): each training volume's
    slab is held out, and the validation scores are the mean over the volumes."""
    seen = crops_read
    other = tmp_path / "other.zarr"
    synthesize(str(other), SynthParams(shape=(24, 48, 48), seed=9), chunks=(24, 48, 48), progress=False)
    val = [{"volume": volume, "fraction": 0.25}, {"volume": str(other), "region": [[0, 8], None, None]}]
    cfg = _config(volume, tmp_path / "r", iterations=4, data={"train": [volume, str(other)], "validation": val, "target_context": 2},
                  decoder={"name": "bcd", "tune": {"fg_b": [0.5, 0.7]}})  # fmt: skip
    res = train(parse_config(cfg), progress=False)
    # crops of the first volume stay below z 18; those of the second above z 8
    assert {v.k for v in seen} == {0, 1}
    assert all(v.hi[0] <= 18 for v in seen if v.k == 0) and all(v.lo[0] >= 8 for v in seen if v.k == 1)
    per = res.validation["volumes"]
    assert len(per) == 2 and per[0]["n_true"] != per[1]["n_true"]
    assert res.validation["AP50"] == pytest.approx((per[0]["AP50"] + per[1]["AP50"]) / 2)
    assert res.validation["n_true"] == per[0]["n_true"] + per[1]["n_true"]
    with pytest.raises(BlocksegError, match="one validation region per training volume"):
        train(parse_config(_config(volume, tmp_path / "two", data={"train": [volume], "target_context": 2, "validation": [
            {"volume": volume, "fraction": 0.25}, {"volume": volume, "region": [[0, 4], None, None]}]})), progress=False)  # fmt: skip


def test_tuner_on_several_volumes_maximises_their_mean():
    lab, pred = _perfect_prediction()
    empty = {k: np.zeros_like(v) for k, v in pred.items()}
    msgs = []
    params, scores = tune_decoder([pred, empty], [lab, lab], "bcd", {"seed_b": 0.5}, {"fg_b": [0.5, 0.7]}, warn=msgs.append)
    assert scores["AP50"] == pytest.approx(0.5) and [v["AP50"] for v in scores["volumes"]] == [1.0, 0.0]
    with pytest.raises(ValueError, match="one entry per volume"):
        tune_decoder([pred], [lab, lab], "bcd", {}, {"fg_b": [0.5]})


# ----------------------------------------------------------------------------- fine-tuning
def test_init_from_checkpoint_and_freeze_encoder(volume, tmp_path):
    first = train(parse_config(_config(volume, tmp_path / "a")), progress=False)
    w0 = load_checkpoint(first.checkpoint)[0].state_dict()
    cfg = _config(volume, tmp_path / "b", model={
        "representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1},
        "init": first.checkpoint, "freeze_encoder": True})  # fmt: skip
    second = train(parse_config(cfg), progress=False)
    w1 = load_checkpoint(second.checkpoint)[0].state_dict()
    enc = [k for k in w0 if k.split(".")[0] in ("stem", "down", "encoder")]
    dec = [k for k in w0 if k.split(".")[0] in ("decoder", "heads") and w0[k].dtype.is_floating_point]
    assert enc and dec
    for k in enc:  # weights and batch-norm statistics of the encoder are kept
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    assert any(not torch.equal(w0[k], w1[k]) for k in dec)
    # a checkpoint of another size is refused with one line
    bad = _config(volume, tmp_path / "c", model={"representations": ["B", "C", "D"], "params": {"widths": [6, 8], "anisotropic": 1}, "init": first.checkpoint})
    with pytest.raises(BlocksegError, match="another architecture or widths"):
        train(parse_config(bad), progress=False)
    with pytest.raises(BlocksegError, match="needs model.init"):
        train(parse_config(_config(volume, tmp_path / "d", model={"representations": ["B", "C", "D"], "freeze_encoder": True})), progress=False)


def test_capacity_presets_and_default():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    base = dict(data={"train": ["v"]}, output="o", iterations=1, patch=[16, 64, 64])
    sizes = {c: n(make_model(parse_config({**base, "model": {"representations": ["B", "C", "D", "cpv"], "capacity": c, "params": {"anisotropic": 1}}})))
             for c in ("tiny", "small", "base", "large")}  # fmt: skip
    assert sizes["tiny"] < sizes["small"] < sizes["base"] < sizes["large"]
    default = n(make_model(parse_config({**base, "model": {"representations": ["B", "C", "D", "cpv"], "params": {"anisotropic": 1}}})))
    assert default == sizes["base"] and default > 10 * 96_000  # the default is not the starved demo size


# ----------------------------------------------------------------------------- loss units
def test_cpv_relative_loss_is_size_free():
    lab = np.zeros((8, 24, 24), np.uint16)
    lab[1:7, 2:12, 2:12] = 1
    t = compute_targets(lab, ["cpv"])
    tt = {k: torch.from_numpy(v)[None] for k, v in t.items()}
    tt["labels_fg"] = torch.from_numpy((lab > 0).astype(np.float32))[None]
    zero = torch.zeros(1, 3, *lab.shape)
    rel, _ = MultiLoss(["cpv"])(zero, tt)
    vox, _ = MultiLoss(["cpv"], cpv_units="voxels")(zero, tt)
    assert float(rel) == pytest.approx(1.0, rel=1e-5) and float(vox) > 5
    # twice as large vectors (a nucleus twice the size) and twice the error: same relative loss
    t2 = {k: 2 * v for k, v in tt.items() if k != "labels_fg"} | {"labels_fg": tt["labels_fg"]}
    half = torch.cat([tt[c] for c in ("cpv_z", "cpv_y", "cpv_x")])[None] * 0.5
    a, _ = MultiLoss(["cpv"])(half, tt)
    b, _ = MultiLoss(["cpv"])(2 * half, t2)
    assert float(a) == pytest.approx(float(b), rel=1e-5) and float(a) == pytest.approx(0.25, rel=1e-4)
    with pytest.raises(BlocksegError):
        MultiLoss(["cpv"], cpv_units="um")


# ----------------------------------------------------------------------------- tuner
def _perfect_prediction():
    lab = np.zeros((12, 32, 32), np.uint16)
    lab[2:10, 3:13, 3:13] = 1
    lab[2:10, 16:28, 16:28] = 2
    p = compute_targets(lab, ["B", "C", "D"])
    p["B"] = p["B"] * 0.6 + 0.2  # foreground ~0.8: an fg_b grid of [0.85, 0.9] finds nothing
    return lab, p


def test_tuner_widens_past_a_picked_edge_and_warns(caplog):
    lab, pred = _perfect_prediction()
    msgs = []
    params, scores = tune_decoder(pred, lab, "bcd", {"seed_b": 0.5}, {"fg_b": [0.85, 0.9]}, warn=msgs.append)
    assert params["fg_b"] < 0.8 and scores["AP50"] == 1.0  # found below the given grid
    assert scores["grid_edge"] == [] or msgs
    # a grid that stays at its edge after widening warns
    msgs.clear()
    params, scores = tune_decoder(pred, lab, "bcd", {"seed_b": 0.5}, {"fg_b": [0.97, 0.99]}, widen_rounds=0, warn=msgs.append)
    assert scores["grid_edge"] == ["fg_b"] and len(msgs) == 1 and "edge" in msgs[0]
    with caplog.at_level(logging.WARNING, logger="blockseg.train"):
        tune_decoder(pred, lab, "bcd", {"seed_b": 0.5}, {"fg_b": [0.97, 0.99]}, widen_rounds=0)
    assert "edge of the searched values" in caplog.text


def test_tuner_at_the_end_of_a_parameters_range_does_not_ask_to_widen():
    """fg_b 0.0 is the end of BCD's range [0, 1]: the report says so instead of "may lie beyond"."""
    lab, pred = _perfect_prediction()
    pred = {**pred, "B": np.where(lab > 0, 0.05, 0.0).astype(np.float32)}  # only fg_b < 0.05 keeps the nuclei
    msgs = []
    params, scores = tune_decoder(pred, lab, "bcd", {"seed_b": 0.01}, {"fg_b": [0.0, 0.5]}, warn=msgs.append)
    assert params["fg_b"] == 0.0 and scores["grid_edge"] == ["fg_b"]
    assert len(msgs) == 1 and "end of its range (0.0, 1.0)" in msgs[0] and "beyond (widen" not in msgs[0]


def test_widen_stays_in_the_parameter_range():
    prob, tanh = (0.0, 1.0), (-1.0, 1.0)
    assert widen([0.5, 0.9], at_low=False, bounds=prob) == [0.5, 0.9, 0.95]
    assert widen([0.5, 0.9], at_low=True, bounds=prob) == [0.1, 0.5, 0.9]
    assert widen([0.1, 0.5], at_low=True, bounds=prob) == [0.05, 0.1, 0.5]
    assert widen([-0.3, 0.3], at_low=True, bounds=tanh) == [-0.9, -0.3, 0.3]
    assert widen([2.0, 4.0], at_low=False, bounds=(0, None)) == [2.0, 4.0, 6.0]
    assert widen([-0.8, 0.3], at_low=True, bounds=tanh) == [-0.9, -0.8, 0.3]  # halfway to the tanh bound
    # a distance threshold given as [0, ...] may go negative: the range is the parameter's
    assert widen([0.0, 0.05, 0.1], at_low=True, bounds=tanh) == [-0.05, 0.0, 0.05, 0.1]
    assert widen([0.0, 0.05], at_low=True, bounds=prob) == [0.0, 0.05]  # at a probability's bound: nowhere to go
    assert widen([3.0, 5.0], at_low=True, bounds=(1, None)) == [1.0, 3.0, 5.0]  # min_votes >= 1


# ----------------------------------------------------------------------------- AMP
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_training_on_cuda(volume, tmp_path):
    res = train(parse_config(_config(volume, tmp_path / "g", device="cuda", amp=True)), progress=False)
    assert np.isfinite(res.losses).all()


# ----------------------------------------------------------------------------- import pairs
def _main(argv):
    return cli_main.main(["import", *argv])


def test_import_image_and_labels_in_one_go(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (6, 10, 12), dtype=np.uint8)
    lab = np.zeros((6, 10, 12), np.uint16)
    lab[1:4, 2:6, 2:6] = 3
    np.savez(tmp_path / "pair.npz", image=img, labels=lab, voxel_size_zyx=np.array([2.0, 0.5, 0.5]))
    out = tmp_path / "new" / "folders" / "t.zarr"
    src = f"{tmp_path}/pair.npz"
    assert _main([src, "--key", "image", src, str(out), "--labels-key", "labels"]) == 0
    v, lv = open_volume(str(out)), open_volume(f"{out}/labels/nuclei")
    np.testing.assert_array_equal(v.array[...], img)
    np.testing.assert_array_equal(lv.array[...], lab)
    assert tuple(lv.voxel_size) == (2.0, 0.5, 0.5)
    ome = json.loads((out / "labels" / "nuclei" / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["image-label"]["source"]["image"] == "../../"
    assert json.loads((out / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"] == ["nuclei"]
    # the same through --labels FILE, another name
    out2 = tmp_path / "t2.zarr"
    assert _main([src, "--key", "image", "--labels", src, "--labels-key", "labels", "--label-name", "cells", str(out2)]) == 0
    assert open_volume(f"{out2}/labels/cells").shape == (6, 10, 12)
    # a label file alone into an existing image's labels/NAME: no folder made by hand
    np.save(tmp_path / "lab.npy", lab)
    assert _main([str(tmp_path / "lab.npy"), f"{out2}/labels/more", "--labels"]) == 0
    assert "more" in json.loads((out2 / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"]
    # an ignore mask with the pair (partially labelled volume): OUT/labels/ignore
    np.save(tmp_path / "ign.npy", (lab == 0).astype(np.uint8))
    out3 = tmp_path / "t3.zarr"
    assert _main([src, "--key", "image", src, str(out3), "--labels-key", "labels", "--ignore", str(tmp_path / "ign.npy")]) == 0
    np.testing.assert_array_equal(open_volume(f"{out3}/labels/ignore").array[...], lab == 0)
    # shapes that differ: one line, exit 2, nothing written
    np.save(tmp_path / "small.npy", lab[:3])
    capsys.readouterr()
    assert _main([src, "--key", "image", str(tmp_path / "small.npy"), str(tmp_path / "bad.zarr")]) == 2
    assert not (tmp_path / "bad.zarr").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shape" in err[0]
    # an existing output is refused without --overwrite
    assert _main([src, "--key", "image", src, str(out), "--labels-key", "labels"]) == 2
