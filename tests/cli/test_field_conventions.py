"""Conventions users bring from the field (issue 34, goal 6): ``--diameter`` with explicit units
(Cellpose counts pixels, blockseg micrometres), line progress outside a terminal, and an unknown
option of a subcommand answered with that subcommand's usage."""

from __future__ import annotations

import importlib
import os
import time

import numpy as np
import pytest

import blockseg_cli
from blockseg import BlocksegError

from _helpers import CLI_DIR

if str(CLI_DIR) not in blockseg_cli.__path__:  # this checkout's cli/, whatever is installed
    blockseg_cli.__path__.insert(0, str(CLI_DIR))
cli_main = importlib.import_module("blockseg_cli.main").main


# ----------------------------------------------------------------------------- --diameter
@pytest.mark.parametrize(
    "text, want",
    [(17, (17.0, "um")), ("17", (17.0, "um")), ("17um", (17.0, "um")), ("17µm", (17.0, "um")), ("17 μm", (17.0, "um")),
     ("34px", (34.0, "px")), ("34 pixels", (34.0, "px")), ("2.5e1um", (25.0, "um"))],
)  # fmt: skip
def test_diameter_units(text, want):
    from blockseg.predict.resample import parse_diameter

    assert parse_diameter(text) == want


@pytest.mark.parametrize("text", ["17mm", "px", "-3um", "0px", "seventeen"])
def test_diameter_without_a_known_unit_is_refused(text):
    from blockseg.predict.resample import parse_diameter

    with pytest.raises(BlocksegError, match="--diameter takes"):
        parse_diameter(text)


def test_diameter_in_pixels_is_the_same_nucleus_in_micrometres_and_said_in_both():
    from blockseg.predict.resample import resolve_scale

    vs, net_vs = (1.0, 0.5, 0.5), (0.5, 0.5, 0.5)
    um, why_um = resolve_scale(None, (32, 64, 64), vs, "metadata", net_vs, "17um", 8.5)
    px, why_px = resolve_scale(None, (32, 64, 64), vs, "metadata", net_vs, "34px", 8.5)
    bare, why_bare = resolve_scale(None, (32, 64, 64), vs, "metadata", net_vs, 17, 8.5)
    assert um.factors == px.factors == bare.factors == pytest.approx((1.0, 0.5, 0.5))
    assert "nuclei of 17 µm (34 px at 0.5 µm in y/x; --diameter 34px)" in why_px
    assert "nuclei of 17 µm (34 px at 0.5 µm in y/x; --diameter 17um)" in why_bare == why_um


def test_cli_diameter_with_an_unknown_unit_is_one_line(tmp_path, capsys):
    from blockseg.io.volume import create_volume

    create_volume(tmp_path / "img.zarr", (8, 16, 16), np.uint8, (1, 1, 1))
    code = cli_main(["predict", str(tmp_path / "img.zarr"), "demo", str(tmp_path / "p.zarr"), "--diameter", "17mm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "blockseg predict: error: --diameter: takes a size with its unit, e.g. 17um, 17µm or 34px (a bare number is µm), got '17mm'"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.zarr"]


def test_run_config_diameter_takes_units():
    from blockseg.pipeline.config import PredictConfig

    assert PredictConfig(diameter="34px").diameter == "34px"
    with pytest.raises(Exception, match="17mm"):
        PredictConfig(diameter="17mm")


# ----------------------------------------------------------------------------- progress
def test_progress_outside_a_terminal_prints_lines_with_rate_and_eta(capsys, monkeypatch):
    import blockseg.runtime.progress as progress
    from blockseg.runtime.cluster import run_blocks

    monkeypatch.setattr(progress, "AUTO_LINES_INTERVAL", 0.1)

    def slow(b):
        time.sleep(0.25)
        return b

    with progress.progress_settings("auto"):  # capsys: stderr is no terminal
        assert progress.current_mode() == "lines"
        run_blocks(slow, [0, 1, 2], voxels=[1000, 1000, 1000], name="predict")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 3 and all(line.startswith("blockseg: predict: ") for line in lines)
    assert any("voxels/s" in line and "ETA" in line for line in lines[:-1])  # while it ran: rate and ETA
    assert lines[-1].startswith("blockseg: predict: 3/3 blocks, 3 k/3 k voxels") and "elapsed" in lines[-1]


def test_a_short_stage_outside_a_terminal_prints_nothing(capsys):
    from blockseg.runtime.cluster import run_blocks
    from blockseg.runtime.progress import progress_settings

    with progress_settings("auto"):
        run_blocks(lambda b: b, [0, 1], voxels=[1, 1], name="segment")
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- usage
def test_an_unknown_option_of_a_subcommand_prints_its_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["segment", "p.zarr", "o.zarr", "--hallo", "8"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("usage: blockseg segment ") and "--halo N" in err  # the subcommand's own usage
    assert err.strip().splitlines()[-1] == "blockseg segment: error: unrecognized arguments: --hallo 8"


# ----------------------------------------------------------------------------- --overlap
@pytest.mark.parametrize("text, want", [("0.125", 0.125), ("12.5%", 0.125), ("4px", 4), ("4", 4), ("0", 0)])
def test_overlap_is_a_fraction_or_whole_voxels(text, want):
    predict_cmd = importlib.import_module("blockseg_cli.predict")
    got = predict_cmd._overlap(text)
    assert got == pytest.approx(want) and isinstance(got, int) == isinstance(want, int)


@pytest.mark.parametrize("text", ["1.0", "1.5", "150%", "four"])
def test_an_ambiguous_overlap_is_refused_with_its_usage(tmp_path, capsys, text):
    with pytest.raises(SystemExit) as info:
        cli_main(["predict", str(tmp_path / "i.zarr"), "demo", str(tmp_path / "p.zarr"), "--overlap", text])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("usage: blockseg predict ")
    assert err.strip().splitlines()[-1].startswith("blockseg predict: error: argument --overlap: ")
    assert os.listdir(tmp_path) == []
