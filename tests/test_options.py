"""One owner per option: segment's options model shared by the API, the run config and the CLI,
and --block-shape as the one spelling of the block shape on every command."""

from __future__ import annotations

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
