"""One owner per option: segment's options model shared by the API, the run config and the CLI,
and --block-shape as the one spelling of the block shape on every command."""

from __future__ import annotations

import re

import pytest

from blockseg.pipeline.config import parse_config
from blockseg.segment.options import DEFAULT_HALO, DEFAULT_TILE_VOXELS, SegmentOptions, segment_options
from blockseg_cli.main import build_parser, main

SHARED = ("block_shape", "halo", "tile_voxels", "pyramid_levels", "keep_work")


def test_segment_options_have_one_default_for_every_door():
    api = segment_options(block_shape=None, halo=None, tile_voxels=None, pyramid_levels=None)  # the API's None = default
    config = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}}).segment
    assert {k: getattr(config, k) for k in SHARED} == {k: getattr(api, k) for k in SHARED} == SegmentOptions().model_dump()
    assert api.halo_zyx == (DEFAULT_HALO,) * 3 and api.tile_voxels == DEFAULT_TILE_VOXELS
    # the CLI leaves every one unset (None / False), so the model's default applies, and shows the model's text
    seg = build_parser()._subparsers._group_actions[0].choices["segment"]
    args = seg.parse_args(["p.zarr", "o.zarr"])
    assert (args.block_shape, args.halo, args.tile_voxels, args.pyramid_levels, args.keep_work) == (None, None, None, None, False)
    assert f"(default {DEFAULT_HALO};" in seg.format_help().replace("\n", " ").replace("  ", " ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tile-voxels", "0"], "--tile-voxels: must be ≥ 1, got 0"),
        (["--halo", "-1"], "--halo: must be ≥ 0, got -1"),
        (["--halo", "1", "2"], "--halo: must be one whole number or three (z y x), got [1, 2]"),
        (["--block-shape", "0", "8", "8"], "--block-shape: must be ≥ 1, got [0, 8, 8]"),
        (["--pyramid-levels", "0"], "--pyramid-levels: must be ≥ 1, got 0"),
    ],
)
def test_segment_cli_refuses_a_bad_option_in_one_line_before_reading_anything(tmp_path, capsys, argv, message):
    # the prediction store does not exist: the options are checked first, by the model
    assert main(["segment", str(tmp_path / "missing.zarr"), str(tmp_path / "o.zarr"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not (tmp_path / "o.zarr").exists()


def test_the_config_checks_the_same_options():
    with pytest.raises(Exception, match=r"segment\.tile_voxels: must be a whole number, got True"):
        parse_config({"run_dir": "r", "data": {"image": "img.zarr"}, "segment": {"tile_voxels": True}})


@pytest.mark.parametrize("command, positional", [("predict", ["i.zarr", "demo", "o.zarr"]), ("segment", ["p.zarr", "o.zarr"]),
                                                 ("synth", ["o.zarr"]), ("info", ["i.zarr"])])  # fmt: skip
def test_block_shape_is_one_spelling_on_every_command(command, positional):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert sub.parse_args([*positional, "--block-shape", "8", "16", "16"]).block_shape == [8, 16, 16]
    assert sub.parse_args([*positional, "--block", "8"]).block_shape == [8]  # the old spelling, kept as a hidden alias
    text = sub.format_help()
    assert "--block-shape N" in text and "--block N" not in text


# ---------------------------------------------------------------------------------- evaluate
def _subparser(command):
    return build_parser()._subparsers._group_actions[0].choices[command]


def test_evaluate_options_have_one_default_for_every_door():
    import inspect

    from blockseg.evaluate import evaluate
    from blockseg.evaluate.options import RUN_CENTROID_POINTS, EvaluateOptions
    from blockseg.evaluate.report import write_report
    from blockseg_cli.evaluate import options as cli_options

    model = EvaluateOptions()
    # the API: each keyword's default is the model's (None: "the model's default")
    api = inspect.signature(evaluate).parameters
    for key, field in EvaluateOptions.model_fields.items():
        if key in ("centroid_points", "png"):
            continue
        assert api[key].default in (None, field.default), key
    assert api["points"].default is None and not model.centroid_points  # no detection unless asked
    assert inspect.signature(write_report).parameters["png"].default is model.png
    # the CLI: every flag unset, so the model's default applies; its help shows the model's text
    sub = _subparser("evaluate")
    args = sub.parse_args(["--gt", "g.zarr", "--pred", "p.zarr"])
    assert cli_options(args) == model
    assert "(default 0.1,...,0.9)" in " ".join(sub.format_help().split())
    # the run config: the same values, its one deliberate difference named (centroid_points)
    config = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}}).evaluate
    assert config.model_dump(exclude={"enabled", "centroid_points"}) == model.model_dump(exclude={"centroid_points"})
    assert config.centroid_points is RUN_CENTROID_POINTS is True
    assert model.ranges == {"small": (0, 5e3), "medium": (5e3, 1.5e4), "large": (1.5e4, float("inf"))}


def test_the_run_config_keeps_its_spelling_and_its_fingerprint():
    from blockseg.pipeline.workflow import section_digest

    cfg = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}, "evaluate": {"detection_radius_um": 2}})
    assert cfg.evaluate.radius_um == 2 and cfg.resolved()["evaluate"]["detection_radius_um"] == 2
    # what a run made before the options model hashed: its evaluate stage is not redone
    default = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}}).evaluate
    assert section_digest("evaluate", default) == {
        "enabled": True, "thresholds": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "detection_radius_um": 3.0, "png": True,
    }  # fmt: skip
    changed = parse_config({"run_dir": "r", "data": {"image": "i"}, "evaluate": {"report_threshold": 0.7}}).evaluate
    assert section_digest("evaluate", changed)["report_threshold"] == 0.7  # a new key, once set, is hashed


EVALUATE_BAD = [  # (API keyword, value, CLI argv, config key, message)
    ("thresholds", [0.5, 1.5], ["--thresholds", "0.5,1.5"], "thresholds", "must be IoU thresholds in (0, 1], got [0.5, 1.5]"),
    ("coco_thresholds", [0.0], ["--coco-thresholds", "0"], "coco_thresholds", "must be IoU thresholds in (0, 1], got [0.0]"),
    ("size_ranges", [9.0, 3.0], ["--size-ranges", "9,3"], "size_ranges", "must be two increasing positive voxel counts"),
    ("radius_um", 0.0, ["--radius", "0"], "detection_radius_um", "must be > 0.0, got 0.0"),
    ("report_threshold", 1.5, ["--report-threshold", "1.5"], "report_threshold", "must be ≤ 1.0, got 1.5"),
    ("merge_threshold", 0.0, ["--merge-threshold", "0"], "merge_threshold", "must be > 0.0, got 0.0"),
]
_FLAG = {"radius_um": "--radius"}


@pytest.mark.parametrize("key, value, argv, config_key, message", EVALUATE_BAD)
def test_evaluate_refuses_a_bad_option_in_the_same_line_through_every_door(tmp_path, capsys, key, value, argv, config_key, message):
    import numpy as np

    from blockseg.errors import BlocksegError
    from blockseg.evaluate import evaluate

    labels = np.zeros((2, 4, 4), np.uint16)
    with pytest.raises(BlocksegError) as api:
        evaluate(labels, labels, **{key: value})
    assert str(api.value).startswith(f"{key}: {message}") and "\n" not in str(api.value)
    # the CLI: before reading anything (the volumes do not exist), the flag named
    out = tmp_path / "report"
    assert main(["evaluate", "--gt", str(tmp_path / "g.zarr"), "--pred", str(tmp_path / "p.zarr"), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    flag = _FLAG.get(key, "--" + key.replace("_", "-"))
    assert f"{flag}: {message}" in err and "\n" not in err and not out.exists()
    # the run config: the key as the config spells it
    with pytest.raises(BlocksegError, match=re.escape(f"evaluate.{config_key}: {message}")):
        parse_config({"run_dir": "r", "data": {"image": "img.zarr"}, "evaluate": {config_key: value}})


# ----------------------------------------------------------------------------------- predict
def test_predict_options_have_one_default_for_every_door():
    import inspect

    from blockseg.predict import predict
    from blockseg.predict.options import CLI_DIAMETER, PredictOptions
    from blockseg_cli.predict import options as cli_options

    model = PredictOptions()
    api = inspect.signature(predict).parameters
    assert {k: api[k].default for k in PredictOptions.model_fields} == model.model_dump()
    # the CLI: argparse's defaults give the model, but for --diameter, whose auto is the CLI's own (named)
    args = _subparser("predict").parse_args(["i.zarr", "demo", "o.zarr"])
    assert args.diameter == CLI_DIAMETER == "auto" and model.diameter is None
    assert cli_options(args) == model.model_copy(update={"diameter": CLI_DIAMETER})
    # the run config: the model itself
    config = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}}).predict
    assert config.model_dump() == model.model_dump()


def test_the_predict_fingerprint_of_a_run_made_before_is_kept():
    from blockseg.pipeline.workflow import SPEED_KNOBS, section_digest

    default = parse_config({"run_dir": "r", "data": {"image": "img.zarr"}}).predict
    # what the section hashed before it became the options model (overlap: null was the API's default)
    assert {k: v for k, v in section_digest("predict", default).items() if k not in SPEED_KNOBS} == {
        "block_shape": None, "dtype": None, "channels": None, "tta": False, "mc_samples": 0, "runtime": "eager",
        "overlap": None, "pyramid_levels": None, "scale": None, "diameter": None,
    }  # fmt: skip
    voxels = parse_config({"run_dir": "r", "data": {"image": "i"}, "predict": {"overlap": 4, "blending": "bump"}}).predict
    assert section_digest("predict", voxels)["overlap"] == 4 and section_digest("predict", voxels)["blending"] == "bump"


PREDICT_BAD = [  # (API keyword, value, CLI argv, message); the config's key is the API's
    ("overlap", 1.5, None, "must be a fraction below 1 (0.125) or whole voxels (4), got 1.5"),
    ("mc_samples", 1, ["--mc-samples", "1"], "MC-dropout needs at least 2 samples (or 0 for off), got 1"),
    ("batch_size", 0, ["--batch-size", "0"], "must be ≥ 1, got 0"),
    ("patch", [0, 64, 64], ["--patch", "0", "64", "64"], "must be auto, train or 1 or 3 sizes (must be ≥ 1, got [0, 64, 64])"),
    ("scale", 0.0, ["--scale", "0"], "must be > 0, got 0.0"),
    ("diameter", "17mm", ["--diameter", "17mm"], "takes a size with its unit, e.g. 17um, 17µm or 34px (a bare number is µm), got '17mm'"),
    ("block_shape", [0, 8, 8], ["--block-shape", "0", "8", "8"], "must be ≥ 1, got [0, 8, 8]"),
    ("pyramid_levels", 0, ["--pyramid-levels", "0"], "must be ≥ 1, got 0"),
]


@pytest.mark.parametrize("key, value, argv, message", PREDICT_BAD)
def test_predict_refuses_a_bad_option_in_the_same_line_through_every_door(tmp_path, capsys, key, value, argv, message):
    from blockseg.errors import BlocksegError
    from blockseg.predict import predict

    with pytest.raises(BlocksegError) as api:  # before the image (which does not exist) is opened
        predict(tmp_path / "missing.zarr", "demo", tmp_path / "o.zarr", **{key: value})
    assert str(api.value) == f"{key}: {message}"
    if argv is not None:  # (the CLI's --overlap spelling refuses 1.5 itself, as argparse's error)
        assert main(["predict", str(tmp_path / "missing.zarr"), "demo", str(tmp_path / "o.zarr"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert f"--{key.replace('_', '-')}: {message}" in err and "\n" not in err and not (tmp_path / "o.zarr").exists()
    with pytest.raises(BlocksegError, match=re.escape(f"predict.{key}: {message}")):
        parse_config({"run_dir": "r", "data": {"image": "img.zarr"}, "predict": {key: value}})


# ------------------------------------------------------------------------------------- train
def test_train_has_one_model_already_and_the_cli_only_overrides_it(capsys):
    """train's options are its config (:class:`blockseg.train.config.TrainConfig`): the API takes
    the model itself, the run config's ``train:`` section is checked by it, and ``blockseg train``'s
    overrides default to None (the config's value) and are checked by it, in one line."""
    from pathlib import Path

    args = _subparser("train").parse_args(["c.yaml"])
    assert (args.iterations, args.output, args.threads, args.device) == (None, None, None, None)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "train_demo.yaml")
    assert main(["train", config, "--iterations", "0", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("iterations: must be > 0, got 0") and "\n" not in err
    import yaml

    section = {**yaml.safe_load(Path(config).read_text()), "iterations": 0}
    with pytest.raises(Exception, match=r"config key train\.iterations: must be > 0, got 0$"):
        parse_config({"run_dir": "r", "data": {"image": "i"}, "train": section})
