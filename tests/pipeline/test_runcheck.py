"""A run config is validated completely, geometry against the data included, before the first
stage starts: one line naming the key in plain words, exit 2, no run directory made."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from blockseg.io.volume import create_label_volume, create_volume
from blockseg_cli.main import main

SHAPE, CHUNKS = (32, 64, 64), (16, 32, 32)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("runcheck")
    img = create_volume(root / "img.zarr", SHAPE, np.uint8, (1.0, 0.5, 0.5), CHUNKS)
    img.array[:] = 100
    create_label_volume(root / "img.zarr", "gt", SHAPE, np.uint32, (1.0, 0.5, 0.5), chunks=CHUNKS)
    create_volume(root / "small.zarr", (16, 64, 64), np.uint32, None, CHUNKS)
    np.save(root / "img.npy", np.zeros(SHAPE, np.uint8))
    return root


def write(ws, name, **cfg):
    path = ws / name
    path.write_text(yaml.safe_dump({"run_dir": str(ws / ("run_" + name)), **cfg}))
    return path


IMAGE = {"image": "img.zarr", "ground_truth": "img.zarr/labels/gt"}

CASES = {
    # name: (config data section, --set overrides, the words of the one-line error)
    "negative halo": (IMAGE, ["segment.halo=-1"], "config key segment.halo: must be ≥ 0, got -1"),
    "negative halo on one axis": (IMAGE, ["segment.halo=[2, -1, 2]"], "segment.halo: must be ≥ 0, got [2, -1, 2]"),
    "halo not a number": (IMAGE, ["segment.halo=wide"], "segment.halo: must be one whole number or three (z y x), got 'wide'"),
    "zero block": (IMAGE, ["segment.block_shape=0"], "segment.block_shape: must be ≥ 1, got 0"),
    "two-axis block": (IMAGE, ["predict.block_shape=[16, 32]"], "predict.block_shape: must be one whole number or three"),
    "predict block not a multiple of the chunks": (IMAGE, ["predict.block_shape=[10, 32, 32]"], "predict.block_shape: (10, 32, 32) is not a multiple of the image's chunks (16, 32, 32)"),
    "segment block not a multiple of the chunks": (IMAGE, ["segment.block_shape=[16, 48, 32]"], "segment.block_shape: (16, 48, 32) is not a multiple of the predictions' chunks (16, 32, 32) on axis y"),
    "synth block not a multiple of the chunks": (
        {"synth": {"shape": [32, 64, 64]}, "chunks": [16, 32, 32]}, ["segment.block_shape=[8, 32, 32]"], "segment.block_shape: (8, 32, 32) is not a multiple",
    ),
    "imported image block": ({"image": "img.npy", "chunks": [16, 32, 32]}, ["predict.block_shape=24"], "predict.block_shape: 24 is not a multiple"),
    "ground truth of another shape": ({"image": "img.zarr", "ground_truth": "small.zarr"}, [], "data.ground_truth: shape (16, 64, 64) differs from the image's (32, 64, 64)"),
    "zero chunk": ({"synth": {"shape": [32, 64, 64]}, "chunks": [0, 32, 32]}, [], "data.chunks: must be ≥ 1"),
    "threshold out of range": (IMAGE, ["segment.params.fg_b=1.5"], "segment.params.fg_b: must be between 0 and 1, got 1.5"),
    "negative size": (IMAGE, ["segment.params.min_size=-5"], "segment.params.min_size: must be >= 0, got -5"),
    "unknown decoder parameter": (IMAGE, ["segment.params.fgb=0.5"], "segment.params.fgb: not a parameter of the bcd decoder"),
    "max_halo (removed)": (IMAGE, ["segment.max_halo=8"], "segment.max_halo: unknown key"),
    "unknown preset": (IMAGE, ["segment.preset=best"], "segment.preset: must be one of ['nucmm'], got 'best'"),
    "MC dropout without dropout": (IMAGE, ["predict.mc_samples=4"], "config key predict.mc_samples: "),
    "unknown channel": (IMAGE, ["predict.channels=[B, nope]"], "config key predict.channels: ['nope']: the network predicts"),
    "raw channel as uint8": (IMAGE, ["predict.channels=all", "predict.dtype=uint8"], "config key predict.dtype: "),
    "decoder the network cannot feed": (IMAGE, ["segment.decoder=sdt"], "config key segment.decoder: decoder 'sdt' needs channel(s) ['sdt']"),
    "IoU threshold": (IMAGE, ["evaluate.thresholds=[0.5, 1.5]"], "evaluate.thresholds: must be IoU thresholds in (0, 1]"),
}


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("name", list(CASES))
def test_config_errors_name_the_key_before_any_stage(ws, capsys, name, dry):
    data, sets, words = CASES[name]
    cfg = write(ws, f"{name.replace(' ', '_')}.yaml", data=data, model={"checkpoint": "demo"})
    argv = ["run", str(cfg)] + [a for s in sets for a in ("--set", s)] + (["--dry-run"] if dry else [])
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.count("\n") == 0 and err.startswith("blockseg run: error: "), err
    assert words in err, err
    for internal in ("Input should", ".int", "tuple[", "and 1 more", "Value error", "Traceback"):
        assert internal not in err, err
    assert not (ws / ("run_" + cfg.name)).exists()  # no stage started, no run directory


TUNE_CASES = {
    # name: (labels, region, the words of the one-line error)
    "labels of another shape": ("small.zarr", "0:16,0:32,0:64",
                                "segment.tune.labels: labels of shape (16, 64, 64) fit neither the image (32, 64, 64) nor the region (16, 32, 64)"),
    "region outside": ("img.zarr/labels/gt", "0:40,:,:", "segment.tune.region: z 0:40 is outside the volume (0:32) or empty"),
    "labels missing": ("nowhere.zarr", None, "config key segment.tune.labels: "),
}


@pytest.mark.parametrize("name", list(TUNE_CASES))
def test_segment_tune_is_checked_before_any_stage(ws, capsys, name):
    labels, region, words = TUNE_CASES[name]
    tune = {"labels": labels, **({"region": region} if region else {})}
    cfg = write(ws, f"tune_{name.replace(' ', '_')}.yaml", data=IMAGE, model={"checkpoint": "demo"}, segment={"tune": tune})
    assert main(["run", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err, err
    assert not (ws / ("run_" + cfg.name)).exists()


def test_unquoted_tune_region_is_explained(ws, capsys):
    # YAML reads a bare ':' as a mapping: in a file that is a YAML error (one line, with the line
    # number); in --set it parses, and the config says how to write it
    cfg = write(ws, "tune_unquoted.yaml", data=IMAGE, model={"checkpoint": "demo"}, segment={"tune": {"labels": "small.zarr"}})
    assert main(["run", str(cfg), "--dry-run", "--set", "segment.tune.region=0:16,:,:"]) == 2
    assert 'segment.tune.region: must be text in quotes, e.g. "50:70,:,:"' in capsys.readouterr().err


def test_several_problems_are_reported_together(ws, capsys):
    cfg = write(ws, "several.yaml", data=IMAGE)
    assert main(["run", str(cfg), "--set", "segment.halo=-1", "--set", "predict.batch_size=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "predict.batch_size: must be ≥ 1, got 0" in err and "segment.halo: must be ≥ 0, got -1" in err
    assert err.count("\n") == 0


def test_a_good_geometry_passes(ws, capsys):
    cfg = write(ws, "good.yaml", data=IMAGE, model={"checkpoint": "demo"})
    sets = ["predict.block_shape=[16, 64, 32]", "segment.block_shape=32", "segment.halo=[0, 4, 4]"]
    assert main(["run", str(cfg), "--dry-run"] + [a for s in sets for a in ("--set", s)]) == 0
    assert "predict" in capsys.readouterr().out
