"""Decoder parameters travel with the data: checkpoint -> prediction store -> segment defaults,
single overrides on top, out-of-range values refused, the source of each recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from blockseg import BlocksegError
from blockseg.pipeline.config import parse_config
from blockseg.models import demo_checkpoint_path, read_checkpoint
from blockseg.segment import make_decoder
from blockseg.segment.params import checkpoint_decoder, choose_decoder, store_decoder
from blockseg.pipeline.workflow import segment_decoder
from blockseg_cli.main import main

STORED = {"name": "bcd", "params": {"seed_b": 0.95, "seed_c": 0.3, "fg_d": -0.3, "min_size": 64}, "from": "checkpoint"}


def demo_recommendation() -> dict:
    meta = read_checkpoint(demo_checkpoint_path())["metadata"]["decoder"]
    assert meta["name"] == "bcd" and meta["params"]  # the shipped checkpoint carries tuned thresholds
    return meta


def test_stored_parameters_are_the_defaults_and_overrides_change_one():
    plain = choose_decoder(stored=STORED)
    assert plain.decoder.params() == make_decoder("bcd", **STORED["params"]).params()
    assert plain.sources["seed_b"] == "store" and plain.sources["fg_b"] == "default"
    one = choose_decoder(params={"fg_b": 0.8}, stored=STORED)
    expect = {**make_decoder("bcd", **STORED["params"]).params(), "fg_b": 0.8}
    assert one.decoder.params() == expect  # every other stored threshold is kept
    assert one.sources["fg_b"] == "user" and one.sources["seed_c"] == "store"
    assert "fg_b=0.8 from the command line" in one.describe() and "from the prediction store" in one.describe()


def test_preset_replaces_the_stored_ones_and_other_decoders_ignore_them():
    nucmm = choose_decoder(preset="nucmm", params={"min_size": 32}, stored=STORED)
    assert nucmm.decoder.params() == make_decoder("bcd", preset="nucmm", min_size=32).params()
    assert nucmm.sources["seed_d"] == "preset nucmm" and nucmm.sources["min_size"] == "user" and nucmm.stored is None
    sdt = choose_decoder("sdt", stored=STORED)
    assert sdt.decoder.params() == make_decoder("sdt").params() and set(sdt.sources.values()) == {"default"}
    off = choose_decoder(stored=STORED, use_stored=False)
    assert off.decoder.params() == make_decoder("bcd").params()


@pytest.mark.parametrize(
    "params, words",
    [
        ({"fg_b": 1.5}, "bcd: fg_b must be between 0 and 1, got 1.5"),
        ({"seed_d": -1.2}, "seed_d must be between -1 and 1"),
        ({"min_size": -1}, "min_size must be >= 0, got -1"),
        ({"min_seed_size": 3.5}, "whole number"),
        ({"fg_b": float("nan")}, "must be a number"),
        ({"fg_b": "high"}, "must be a number"),
    ],
)
def test_out_of_range_parameters_are_refused(params, words):
    with pytest.raises(BlocksegError, match=words):
        choose_decoder(params=params, stored=STORED)


def test_checkpoint_recommendation_is_validated_and_integral():
    rec = checkpoint_decoder(read_checkpoint(demo_checkpoint_path()), demo_checkpoint_path())
    meta = demo_recommendation()
    assert rec["name"] == meta["name"] and set(rec["params"]) == set(meta["params"])
    assert all(isinstance(rec["params"][k], int) for k in ("min_size", "min_seed_size"))  # 64.0 -> 64
    assert rec["checkpoint"] == demo_checkpoint_path()


def test_run_set_one_parameter_keeps_the_checkpoints_others(tmp_path):
    """``run --set segment.params.fg_b=0.8`` used to drop every other tuned threshold."""
    raw = {"run_dir": str(tmp_path / "r"), "data": {"synth": {"shape": [16, 32, 32]}}, "model": {"checkpoint": "demo"}}
    tuned = make_decoder("bcd", **demo_recommendation()["params"]).params()
    assert segment_decoder(parse_config(raw)).decoder.params() == tuned
    over = segment_decoder(parse_config({**raw, "segment": {"params": {"fg_b": 0.8}}}))
    assert over.decoder.params() == {**tuned, "fg_b": 0.8}
    assert over.sources["fg_b"] == "config" and over.sources["seed_c"] == "checkpoint"
    preset = segment_decoder(parse_config({**raw, "segment": {"preset": "nucmm"}}))
    assert preset.decoder.params() == make_decoder("bcd", preset="nucmm").params()


@pytest.mark.slow  # the demo network over a synthetic volume
def test_predict_stores_the_checkpoints_thresholds_and_segment_uses_them(tmp_path, capsys):
    """The README's standalone path in small: predict (checkpoint named ``demo``) writes the
    tuned thresholds into the store; segment starts from them, -p changes one, and the
    output records where each came from."""
    from blockseg.synth import preset_params, synthesize

    img = tmp_path / "img.zarr"
    synthesize(str(img), preset_params("nucmm-z", shape=(16, 64, 64), mode="em", seed=4), progress=False)
    assert main(["predict", str(img), "demo", str(tmp_path / "pred.zarr"), "--workers", "1", "--no-progress"]) == 0
    stored = store_decoder(tmp_path / "pred.zarr")
    tuned = make_decoder("bcd", **demo_recommendation()["params"]).params()
    assert stored["name"] == "bcd" and make_decoder("bcd", **stored["params"]).params() == tuned
    assert stored["checkpoint"] == demo_checkpoint_path() and stored["checkpoint_sha256"]
    capsys.readouterr()

    assert main(["segment", str(tmp_path / "pred.zarr"), str(tmp_path / "a.zarr"), "--workers", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "from the prediction store (thresholds of checkpoint demo_bcd_cpv.pt" in err
    seg = dict(zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["blockseg"])["segment"]
    assert seg["params"] == tuned and seg["params_source"]["seed_b"] == "store"
    assert seg["stored_decoder"]["checkpoint"] == demo_checkpoint_path()

    argv = ["segment", str(tmp_path / "pred.zarr"), str(tmp_path / "b.zarr"), "-p", "fg_b=0.8", "--json", "--workers", "1"]
    assert main(argv + ["--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decoder"]["params"] == {**tuned, "fg_b": 0.8}
    assert report["decoder"]["sources"]["fg_b"] == "user" and report["decoder"]["sources"]["seed_c"] == "store"
    b = dict(zarr.open_group(str(tmp_path / "b.zarr"), mode="r").attrs["blockseg_report"])
    assert b["decoder"]["sources"]["fg_b"] == "user"

    # the library's default is the store's too
    from blockseg.segment import segment

    rep = segment(tmp_path / "pred.zarr", tmp_path / "c.zarr")
    assert rep.decoder["params"] == tuned
    a_lab = zarr.open_array(str(tmp_path / "a.zarr/0"), mode="r")[:]
    assert np.array_equal(a_lab, zarr.open_array(str(tmp_path / "c.zarr/0"), mode="r")[:])

    rc = main(["segment", str(tmp_path / "pred.zarr"), str(tmp_path / "d.zarr"), "-p", "fg_b=1.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "fg_b must be between 0 and 1, got 1.5" in err
    assert not (tmp_path / "d.zarr").exists()
