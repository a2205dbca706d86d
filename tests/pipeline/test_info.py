"""``blockseg info``: human-readable summaries and --json of images, label volumes, prediction
stores, run directories and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from blockseg.io.volume import create_volume
from blockseg.models import IdentityNet, demo_checkpoint_path, save_checkpoint
from blockseg.predict import predict
from blockseg.segment import segment
from blockseg.synth import preset_params, synthesize
from blockseg_cli.main import main

TUNED = {"name": "bcd", "params": {"seed_b": 0.95, "fg_d": -0.3, "min_size": 16.0}, "tuned_on": "validation"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    synthesize(str(root / "img.zarr"), preset_params("nucmm-z", shape=(16, 48, 48), seed=3), chunks=(16, 48, 48), progress=False)
    save_checkpoint(root / "tuned.pt", IdentityNet(("B", "C", "D"), input_patch=(8, 16, 16)), voxel_size=[0.48, 0.51, 0.51],
                    normalisation={"offset": 120.0, "scale": -15.0, "method": "fixed"}, decoder=TUNED)  # fmt: skip
    save_checkpoint(root / "plain.pt", IdentityNet(("B", "C", "D"), input_patch=(8, 16, 16)))
    predict(str(root / "img.zarr"), str(root / "tuned.pt"), str(root / "pred.zarr"), progress=False, device="cpu")
    # a perfect store carrying pred.zarr's stored decoder: segment finds nuclei in it
    import zarr

    from blockseg.io.volume import open_volume
    from blockseg.io.predictions import save_predictions
    from blockseg.train.targets import bcd_targets

    save_predictions(root / "perfect.zarr", bcd_targets(open_volume(root / "img.zarr/labels/nuclei").array[:]))
    attrs = dict(zarr.open_group(str(root / "perfect.zarr"), mode="r+").attrs["blockseg"])
    attrs["predictions"]["decoder"] = dict(zarr.open_group(str(root / "pred.zarr")).attrs["blockseg"])["predictions"]["decoder"]
    zarr.open_group(str(root / "perfect.zarr"), mode="r+").attrs["blockseg"] = attrs
    segment(root / "perfect.zarr", root / "seg.zarr", block_shape=(16, 48, 48), halo=4)
    return root


def info(capsys, *argv):
    assert main(["info", *map(str, argv)]) == 0
    text = capsys.readouterr().out
    assert main(["info", *map(str, argv), "--json"]) == 0
    return text, json.loads(capsys.readouterr().out)


def test_checkpoint(ws, capsys):
    text, js = info(capsys, "demo")
    assert js["kind"] == "checkpoint" and js["path"] == demo_checkpoint_path()
    assert js["architecture"] == "resunet3d" and js["parameters"] > 10_000 and js["representations"] == ["B", "C", "D", "cpv"]
    assert js["decoder"]["name"] == "bcd" and js["decoder"]["params"]["min_size"] == 64 and js["decoder"]["tuned_on"] == "validation"
    assert js["normalisation"]["scheme"] == "percentile" and js["voxel_size"] == [0.48, 0.51, 0.51]
    assert "network: resunet3d" in text and "decoder: bcd" in text and "min_size=64" in text
    assert "normalisation: percentile, each volume's 1 % and 99.8 % map to 0 and 1" in text
    # recorded after training from its (deterministic, synthetic) training volumes: experiments/shipped_diameters.py
    assert js["nucleus_diameter_um"] == pytest.approx(4.9478, abs=1e-4)
    assert "nucleus diameter (training data, median): 4.95 µm" in text
    text, js = info(capsys, ws / "plain.pt")
    n = sum(p.numel() for p in IdentityNet(("B", "C", "D"), input_patch=(8, 16, 16)).parameters())
    assert js["parameters"] == n < 10 and js["decoder"] is None and "none recommended" in text and "not recorded" in text


def test_prediction_store_shows_its_channels_and_stored_decoder(ws, capsys):
    text, js = info(capsys, ws / "pred.zarr")
    assert js["kind"] == "predictions" and [c["name"] for c in js["channels"]] == ["B", "C", "D"]
    assert [c["kind"] for c in js["channels"]] == ["prob", "prob", "tanh"] and {c["dtype"] for c in js["channels"]} == {"uint8"}
    assert js["decoder"]["params"] == {"seed_b": 0.95, "fg_d": -0.3, "min_size": 16}
    assert js["decoder"]["checkpoint"] == str(ws / "tuned.pt") and js["blocks_done"] == [1, 1]
    assert js["bytes"] > 0 and js["bytes_uncompressed"] == 3 * 16 * 48 * 48
    assert "B (prob, uint8)" in text and "seed_b=0.95" in text and "from checkpoint tuned.pt" in text and "blocks done: 1 of 1" in text
    # what reproduces the output: the auto patch follows the block shape, and both are shown
    run = js["run"]
    assert run["patch_choice"]["mode"] == "auto" and run["lattice_snap"] is False
    assert f"patch {'x'.join(map(str, run['patch']))} (auto, block-aligned lattice) in blocks 16x48x48" in text


def test_label_volume_shows_instances_and_how_it_was_segmented(ws, capsys):
    text, js = info(capsys, ws / "seg.zarr")
    from blockseg.io.volume import open_volume

    n = int(open_volume(ws / "seg.zarr").array[:].max())
    assert js["kind"] == "labels" and js["instances"] == n > 0
    assert js["segment"]["params"]["seed_b"] == 0.95 and js["segment"]["params_source"]["seed_b"] == "store"
    assert js["segment"]["params_source"]["fg_b"] == "default"
    assert f"instances: {n}" in text and "label volume" in text and "[store]" in text and "[default]" in text


def test_image_keeps_the_grid(ws, capsys):
    text, js = info(capsys, ws / "img.zarr", "--block", "16", "48", "48", "--halo", "4")
    assert js["kind"] == "image" and js["shape"] == [16, 48, 48] and js["dtype"] == "uint8"
    assert js["grid"]["blocks"] == 1 and js["grid"]["halo"] == [4, 4, 4]
    assert "BlockGrid" in text and "voxel size 0.48x0.51x0.51 µm" in text
    text, js = info(capsys, ws / "img.zarr/labels/nuclei")
    assert js["kind"] == "labels" and js["instances"] is None and "not recorded" in text


def test_run_directory_lists_stages_and_status(ws, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    cfg = {"run_dir": str(run), "data": {"synth": {"shape": [16, 32, 32]}}, "model": {"checkpoint": "demo"}}
    (run / "run.json").write_text(json.dumps({"blockseg_version": "9.9", "config": cfg, "history": []}))
    (run / "stages" / "data.json").write_text(json.dumps({"stage": "data", "status": "done", "seconds": 1.5, "fingerprint": "x"}))
    (run / "stages" / "predict.json").write_text(json.dumps({"stage": "predict", "status": "running", "fingerprint": "y"}))
    text, js = info(capsys, run)
    assert js["kind"] == "run" and js["blockseg_version"] == "9.9"
    assert {s: v["status"] for s, v in js["stages"].items()} == {"data": "done", "predict": "running", "segment": "not started", "evaluate": "not started"}
    assert js["plan"]["segment"] == "run"  # not complete: the next run does it
    assert "data      done, 1.5 s" in text and "predict   running" in text and "segment   not started" in text


def test_missing_path_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such file or directory" in err
    (tmp_path / "notes.txt").write_text(yaml.safe_dump({"a": 1}))
    create_volume(tmp_path / "v.zarr", (4, 8, 8), np.uint8, None, (4, 8, 8))
    assert main(["info", str(tmp_path / "v.zarr"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["voxel_size_source"] in ("default", "metadata")
