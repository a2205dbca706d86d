"""Training: config schema, crops and augmentation, a few CPU iterations, resume, the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import blockseg_cli
from blockseg import BlocksegError
from blockseg.models import load_checkpoint
from blockseg.synth import SynthParams, synthesize
from blockseg.train import CropSampler, load_config, parse_config, train
from blockseg.train.config import AugmentConfig
from blockseg.train.targets import instance_centres as _ic
from blockseg.train.data import Geometric, compute_targets

from _helpers import CLI_DIR

# test this checkout's cli/ even when another checkout's is installed as blockseg_cli
blockseg_cli.__path__.insert(0, str(CLI_DIR))
# this checkout's cli/main.py under a private name (blockseg_cli.main itself is left alone)
_spec = importlib.util.spec_from_file_location("_blockseg_cli_main_models", CLI_DIR / "main.py")
cli_main = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli_main)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "vol.zarr"
    synthesize(str(path), SynthParams(shape=(24, 64, 64), seed=5, mask=True), chunks=(24, 64, 64), progress=False)
    return str(path)


def _config(volume, out, **over):
    cfg = {
        "data": {"train": [volume], "target_context": 4},
        "model": {"representations": ["B", "C", "D", "cpv"], "params": {"widths": [4, 8], "anisotropic": 1}},
        "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "output": str(out),
        "iterations": 6,
        "patch": [8, 24, 24],
        "batch_size": 2,
        "log_every": 2,
        "checkpoint_every": 3,
        "threads": 1,
        "decoder": {"name": "bcd"},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(bogus=1), "bogus: unknown key"),
    (lambda c: c["optimizer"].update(lr="fast"), "optimizer.lr"),
    (lambda c: c["model"].update(representations=["B", "Q"]), "model.representations"),
    (lambda c: c.pop("output"), "output"),
    (lambda c: c["augment"].update(elastik=True) if "augment" in c else c.update(augment={"elastik": True}), "augment.elastik"),
])  # fmt: skip
def test_bad_config_is_one_line_naming_the_key(tmp_path, mutate, message):
    cfg = _config("v.zarr", tmp_path / "o")
    mutate(cfg)
    with pytest.raises(BlocksegError) as e:
        parse_config(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- data
def instance_centres(lab):
    ids, cen = _ic(lab)
    return {int(i): c for i, c in zip(ids, cen)}


def test_geometric_transform_moves_centres_with_labels():
    lab = np.zeros((6, 10, 14), np.uint32)
    lab[1:4, 2:5, 3:9] = 7
    lab[2:5, 6:9, 9:12] = 9
    cen = instance_centres(lab)
    for t in (False, True):
        for flips in [(False, False, False), (True, False, True), (False, True, False)]:
            g = Geometric(t, flips)
            new = g.apply(lab)
            pts = g.apply_points(np.stack([cen[7], cen[9]]), lab.shape)
            got = instance_centres(new)
            np.testing.assert_allclose(np.stack([got[7], got[9]]), pts, atol=1e-9)
            assert new.shape == g.source_shape(lab.shape)[:1] + (lab.shape[2], lab.shape[1]) if t else lab.shape


def test_cpv_points_to_centres_outside_the_crop():
    lab = np.zeros((4, 4, 4), np.uint32)
    lab[:, :2] = 3
    t = compute_targets(lab, ["cpv"], centres={3: np.array([1.5, -5.0, 2.0])})
    v = np.stack([t["cpv_z"], t["cpv_y"], t["cpv_x"]])
    assert v[1, 0, 0, 0] == -5.0 and v[1, 0, 1, 0] == -6.0 and v[2, 0, 0, 3] == -1.0
    assert np.all(v[:, :, 2:] == 0)


def test_sampler_crops_shapes_and_mask(volume):
    s = CropSampler([volume], ["B", "C", "D", "cpv"], (8, 24, 24), {"offset": 100.0, "scale": 50.0}, AugmentConfig(), target_context=4)
    rng = np.random.default_rng(0)
    x, t = s.batch(rng, 3)
    assert x.shape == (3, 1, 8, 24, 24) and x.dtype == np.float32
    assert set(t) == {"B", "C", "D", "cpv_z", "cpv_y", "cpv_x", "labels_fg"}
    assert all(v.shape == (3, 8, 24, 24) for v in t.values())
    np.testing.assert_array_equal(t["B"], t["labels_fg"])
    # cpv is zero exactly on background
    mag = np.abs(t["cpv_z"]) + np.abs(t["cpv_y"]) + np.abs(t["cpv_x"])
    assert np.all(mag[t["B"] == 0] == 0)
    assert s.valid[0] is not None  # the synthetic volume has a mask: crops are centred in it
    x2, _ = s.batch(np.random.default_rng(0), 3)
    np.testing.assert_array_equal(x, x2)  # seeded


def test_sampler_without_augmentation_reads_the_volume(volume):
    from blockseg.io.volume import open_volume

    aug = AugmentConfig(flip=False, transpose=False, rot90=False, intensity_scale=0.0, intensity_shift=0.0)
    s = CropSampler([volume], ["B"], (8, 24, 24), {"offset": 0.0, "scale": 1.0}, aug, mask=None, target_context=0)
    x, t = s.sample(np.random.default_rng(3))
    img = np.asarray(open_volume(volume).array[...], np.float32)
    hits = [(z, y, xx) for z in range(img.shape[0] - 7) for y in range(img.shape[1] - 23) for xx in range(img.shape[2] - 23)
            if img[z, y, xx] == x[0, 0, 0] and np.array_equal(img[z : z + 8, y : y + 24, xx : xx + 24], x)]  # fmt: skip
    assert hits, "the un-augmented crop is a window of the volume"


# ----------------------------------------------------------------------------- training
def test_loss_decreases_on_tiny_data(volume, tmp_path):
    cfg = parse_config(_config(volume, tmp_path / "run", iterations=30, checkpoint_every=100, log_every=5))
    res = train(cfg, progress=False)
    first, last = np.mean(res.losses[:5]), np.mean(res.losses[-5:])
    assert last < 0.8 * first, (first, last)
    model, payload = load_checkpoint(res.checkpoint)
    meta = payload["metadata"]
    assert meta["training"]["iteration"] == 30
    assert meta["normalisation"]["scheme"] == "percentile"  # the default (blockseg.predict.normalise)
    assert meta["normalisation"]["training"][0]["p_high"] > meta["normalisation"]["training"][0]["p_low"]
    assert meta["voxel_size"] == pytest.approx([0.48, 0.51, 0.51])
    assert meta["decoder"]["name"] == "bcd"
    assert model.channels == ("B", "C", "D", "cpv_z", "cpv_y", "cpv_x")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "loss" in r] == [5, 10, 15, 20, 25, 30]


def test_resume_continues_from_saved_iteration(volume, tmp_path):
    full = train(parse_config(_config(volume, tmp_path / "a")), progress=False)

    class Stop(Exception):
        pass

    def stop_at_5(it, loss):
        if it == 5:
            raise Stop

    cfg_b = parse_config(_config(volume, tmp_path / "b"))
    with pytest.raises(Stop):
        train(cfg_b, progress=False, callback=stop_at_5)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")[1]["metadata"]["training"]["iteration"] == 3
    with pytest.raises(BlocksegError, match="--resume"):
        train(cfg_b, progress=False)
    resumed = train(cfg_b, resume=True, progress=False)
    assert len(resumed.losses) == 3  # iterations 4, 5, 6
    np.testing.assert_allclose(resumed.losses, full.losses[3:], rtol=1e-4)
    a = load_checkpoint(full.checkpoint)[0].state_dict()
    b = load_checkpoint(resumed.checkpoint)[0].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)
    with pytest.raises(BlocksegError, match="already reached"):
        train(cfg_b, resume=True, progress=False)


def test_validation_and_decoder_tuning(volume, tmp_path):
    cfg = _config(volume, tmp_path / "v", iterations=2)
    cfg["data"]["validation"] = volume
    cfg["decoder"] = {"name": "bcd", "tune": {"fg_b": [0.5, 0.9]}}
    res = train(parse_config(cfg), progress=False)
    assert set(res.validation) >= {"AP50", "AP75", "accuracy50"}
    meta = load_checkpoint(res.checkpoint)[1]["metadata"]
    # the grid is widened past a picked edge, within [0, 1] for a probability threshold
    assert 0.0 <= meta["decoder"]["params"]["fg_b"] <= 1.0 and meta["decoder"]["tuned_on"] == "validation"
    assert meta["validation"] == res.validation


def test_wrong_decoder_for_representations(volume, tmp_path):
    cfg = _config(volume, tmp_path / "w")
    cfg["model"]["representations"] = ["D", "cpv"]
    with pytest.raises(BlocksegError, match="decoder 'bcd' needs"):
        train(parse_config(cfg), progress=False)


# ----------------------------------------------------------------------------- CLI
def _cli(argv):
    return cli_main.main(["train", *argv])


def test_cli_train_tiny_config(volume, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(volume, tmp_path / "cli", iterations=2)))
    assert _cli([str(path), "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iterations"] == 2 and Path(out["checkpoint"]).is_file()
    assert _cli([str(path), "--no-progress"]) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err


def test_cli_bad_key_exits_2_with_one_line(tmp_path, capsys):
    cfg = _config("v.zarr", tmp_path / "o")
    cfg["optimizer"]["learning_rate"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert _cli([str(path)]) == 2
    assert "train" in cli_main.COMMANDS
    out = capsys.readouterr().err.strip().splitlines()
    assert len(out) == 1 and "optimizer.learning_rate: unknown key" in out[0]
    with pytest.raises(BlocksegError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
