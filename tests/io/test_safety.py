"""Data safety (blockseg.io.safety): the must-show matrix of issue 16.

Every writing command x {output = input, output inside input, input inside output, foreign
non-empty folder, own earlier output} x {with, without --overwrite}: the CLI runs in-process
(blocks in this process, no cluster) on a fresh copy of a tiny workspace, and every file's
digest is compared before and after. Refusals are one line, exit 2, and leave every byte of
the workspace as it was; an own earlier output is replaced only with --overwrite, by a new
folder swapped in (a new inode), with no temporary sibling left behind. A replacement killed
mid-write (an exception in-process, SIGKILL in a subprocess) leaves the old output intact.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from blockseg.errors import BlocksegError
from blockseg.io.volume import create_label_volume, create_volume, open_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg_cli.main import main

from _helpers import in_process, tree_digest

SHAPE, CHUNKS, VS = (16, 32, 32), (16, 32, 32), (1.0, 0.5, 0.5)


def argv_of(cmd: str, ws: Path, out: str) -> list[str]:
    d = ws / "data"
    common = ["--no-progress"]
    return {
        "import": ["import", f"{d}/img.zarr", out],
        "synth": ["synth", out, "--shape", *map(str, SHAPE), "--chunks", *map(str, CHUNKS), *common],
        "predict": ["predict", f"{d}/img.zarr", f"{d}/id.pt", out, *common],
        "segment": ["segment", f"{d}/pred.zarr", out, "-p", "min_size=4", "-p", "min_seed_size=2", "-p", "seed_d=0.2", *common],
        "evaluate": ["evaluate", "--gt", f"{d}/img.zarr/labels/gt", "--pred", f"{d}/seg.zarr", "--out", out,
                     "--no-png", *common],  # fmt: skip
        "export": ["export", f"{d}/seg.zarr", out],
    }[cmd]


#: the main input of each command (None: the command reads nothing of the user's)
MAIN_INPUT = {"import": "img.zarr", "synth": None, "predict": "img.zarr", "segment": "pred.zarr", "evaluate": "seg.zarr",
              "export": "seg.zarr"}  # fmt: skip
OWN_NAME = {"export": "export.tif"}


def run_cli(argv, capsys) -> tuple[int, str]:
    with in_process():
        rc = main(argv)
    return rc, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """data/ (the user's inputs), foreign/ (someone's folder), own/ (each command's earlier output)."""
    from blockseg.io.predictions import save_predictions
    from blockseg.segment import BCDDecoder, segment
    from blockseg.train.targets import bcd_targets

    root = tmp_path_factory.mktemp("safety")
    d = root / "data"
    d.mkdir()
    img = create_volume(d / "img.zarr", SHAPE, np.uint8, VS, CHUNKS)
    rng = np.random.default_rng(0)
    img.array[:] = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    gt = create_label_volume(d / "img.zarr", "gt", SHAPE, np.uint32, VS, chunks=CHUNKS)
    lab = np.zeros(SHAPE, np.uint32)
    lab[2:8, 2:14, 2:14] = 1
    lab[8:14, 16:30, 16:30] = 2
    gt.array[:] = lab
    save_checkpoint(d / "id.pt", IdentityNet(("B", "C", "D"), input_patch=(16, 32, 32)), normalisation={"offset": 0.0, "scale": 255.0})
    save_predictions(d / "pred.zarr", bcd_targets(lab), voxel_size=VS, chunks=CHUNKS)
    assert segment(d / "pred.zarr", d / "seg.zarr", BCDDecoder(min_size=4, min_seed_size=2, seed_d=0.2)).n_instances == 2
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("my thesis\n")
    (root / "own").mkdir()
    with in_process():
        for cmd in MAIN_INPUT:
            assert main(argv_of(cmd, root, str(root / "own" / OWN_NAME.get(cmd, cmd)))) == 0, cmd
    return root


@pytest.fixture
def ws(template, tmp_path):
    dst = tmp_path / "ws"
    shutil.copytree(template, dst, symlinks=True)
    return dst


CASES = ("output is input", "output inside input", "input inside output", "foreign folder", "own earlier output")


def out_for(case: str, cmd: str, ws: Path) -> str | None:
    main_input = MAIN_INPUT[cmd]
    if case == "output is input":
        return None if main_input is None else str(ws / "data" / main_input)
    if case == "output inside input":  # evaluate: inside the zarr that holds its --gt
        return None if main_input is None else str(ws / "data" / ("img.zarr/labels/out" if cmd == "evaluate" else f"{main_input}/out"))
    if case == "input inside output":
        return None if main_input is None else str(ws / "data")
    if case == "foreign folder":
        return str(ws / "foreign")
    return str(ws / "own" / OWN_NAME.get(cmd, cmd))


MATRIX = [(cmd, case) for cmd in MAIN_INPUT for case in CASES if MAIN_INPUT[cmd] or case in CASES[3:]]  # synth reads nothing


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("cmd, case", MATRIX)
def test_safety_matrix(ws, capsys, cmd, case, overwrite):
    out = out_for(case, cmd, ws)
    if cmd == "predict" and case == "own earlier output":  # its run settings name the image's path:
        shutil.rmtree(out)  # made again in this copy of the workspace
        assert run_cli(argv_of(cmd, ws, out), capsys)[0] == 0
    before = tree_digest(ws)
    inputs = {k: v for k, v in before.items() if k.startswith("data/")}
    argv = argv_of(cmd, ws, out) + (["--overwrite"] if overwrite else [])
    ino = os.stat(out).st_ino if os.path.exists(out) else None
    rc, err = run_cli(argv, capsys)
    after = tree_digest(ws)
    assert {k: v for k, v in after.items() if k.startswith("data/")} == inputs, "an input changed"
    leftovers = [p for p in Path(ws).rglob(".*blockseg-*")]
    assert not leftovers, leftovers
    if case != "own earlier output":
        assert rc == 2, err
        assert err.count("\n") == 0 and err.startswith(f"blockseg {cmd}: error: "), err
        words = "not written by blockseg" if case == "foreign folder" else "input"
        assert words in err, err
        assert after == before, "a refused command wrote something"
        return
    if not overwrite and cmd == "predict":  # an own finished store is resumed: nothing to compute
        assert rc == 0, err
        assert "nothing to do" in err, err
        assert after == before
        return
    if not overwrite:
        assert rc == 2 and "already exists" in err and err.count("\n") == 0, err
        assert after == before
        return
    assert rc == 0, err
    assert os.stat(out).st_ino != ino, "the output was not replaced by a new one"
    assert {k: v for k, v in after.items() if k.startswith("foreign/")} == {k: v for k, v in before.items() if k.startswith("foreign/")}
    if cmd == "evaluate":
        assert (Path(out) / "evaluation.json").exists()
    elif cmd == "export":
        assert Path(out).stat().st_size > 0
    else:
        open_volume(out if cmd != "predict" else f"{out}/B")


@pytest.mark.parametrize("case", CASES)
def test_train_output_rules(ws, capsys, case):
    """train (no --overwrite: --resume continues its own folder) in the same five cases: every
    one refused with one line before any training, every byte of the workspace kept."""
    (ws / "own" / "train").mkdir()
    (ws / "own" / "train" / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    cfg = {"data": {"train": [str(ws / "data" / "img.zarr")], "labels": "labels/gt"},
           "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8]}},
           "iterations": 1, "patch": [8, 16, 16], "batch_size": 1, "output": str(ws / "unused")}  # fmt: skip
    (ws / "train.yaml").write_text(yaml.safe_dump(cfg))
    out = {"output is input": ws / "data" / "img.zarr", "output inside input": ws / "data" / "img.zarr" / "out",
           "input inside output": ws / "data", "foreign folder": ws / "foreign",
           "own earlier output": ws / "own" / "train"}[case]  # fmt: skip
    before = tree_digest(ws)
    rc, err = run_cli(["train", str(ws / "train.yaml"), "--output", str(out), "--no-progress"], capsys)
    assert rc == 2 and err.count("\n") == 0 and err.startswith("blockseg train: error: "), err
    words = {"foreign folder": "not a blockseg training folder", "own earlier output": "--resume"}.get(case, "input")
    assert words in err, err
    assert tree_digest(ws) == before, "a refused train wrote something"


def test_run_dir_rules(ws, capsys):
    """run: run_dir may not be, hold or lie in an input; a foreign folder is never taken over."""
    d = ws / "data"

    def cfg(run_dir) -> str:
        p = ws / "c.yaml"
        p.write_text(yaml.safe_dump({"run_dir": str(run_dir), "data": {"image": str(d / "img.zarr"),
                                     "ground_truth": str(d / "img.zarr/labels/gt")},
                                     "model": {"checkpoint": str(d / "id.pt")}}))  # fmt: skip
        return str(p)

    before = tree_digest(ws)
    for run_dir, words in ((d / "img.zarr", "input"), (d / "img.zarr/run", "input"), (d, "input"), (ws / "foreign", "not a blockseg run directory")):
        for extra in ([], ["--overwrite"]):
            rc, err = run_cli(["run", cfg(run_dir), *extra], capsys)
            assert rc == 2 and words in err and err.count("\n") == 0, (run_dir, err)
    after = tree_digest(ws)
    assert {k: v for k, v in after.items() if k != "c.yaml"} == {k: v for k, v in before.items() if k != "c.yaml"}


def test_run_never_writes_into_the_users_image(ws, capsys):
    """The segmentation of a user's zarr inside run_dir's parent goes to segmentation.zarr,
    never to IMAGE/labels (only an image the run made itself gets a labels group)."""
    from blockseg.pipeline.config import parse_config
    from blockseg.pipeline.workflow import RunLayout

    raw = {"run_dir": str(ws / "r"), "data": {"image": str(ws / "data/img.zarr")}}
    layout = RunLayout.of(parse_config(raw, "t"))
    assert layout.labels == str(ws / "r" / "segmentation.zarr")
    synth = {"run_dir": str(ws / "r"), "data": {"synth": {"shape": [16, 32, 32]}}}
    assert RunLayout.of(parse_config(synth, "t")).labels.endswith("image.zarr/labels/blockseg")


def test_symlinked_output_is_the_input(ws, capsys):
    os.symlink(ws / "data" / "pred.zarr", ws / "alias.zarr")
    before = tree_digest(ws / "data")
    rc, err = run_cli(["segment", str(ws / "data/pred.zarr"), str(ws / "alias.zarr"), "--overwrite"], capsys)
    assert rc == 2 and "is the input" in err, err
    rc, err = run_cli(["segment", str(ws / "alias.zarr"), str(ws / "data/pred.zarr/x"), "--overwrite"], capsys)
    assert rc == 2 and "inside the input" in err, err
    assert tree_digest(ws / "data") == before


def test_interrupted_overwrite_keeps_the_old_output(ws, capsys, monkeypatch):
    """An exception in the middle of a replacement: the old output is intact, no sibling left."""
    out = ws / "own" / "segment"
    before = tree_digest(out)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("blockseg.segment.pipeline"), "write_table", boom)
    rc, err = run_cli(argv_of("segment", ws, str(out)) + ["--overwrite"], capsys)
    assert rc == 130, err
    assert tree_digest(out) == before
    assert not list(ws.rglob(".*blockseg-*"))
    monkeypatch.undo()
    # predict: the failure in a block task, after part of the new store was written
    out = ws / "own" / "predict"
    before = tree_digest(out)
    monkeypatch.setattr(importlib.import_module("blockseg.predict.engine"), "_drop_partials", boom)
    rc, err = run_cli(argv_of("predict", ws, str(out)) + ["--overwrite"], capsys)
    assert rc == 130
    assert tree_digest(out) == before


KILL = """
import os, signal, sys
from blockseg.segment import pipeline as p
p.write_table = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from blockseg_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a command killed in a subprocess
def test_killed_overwrite_keeps_the_old_output(ws):
    """SIGKILL during a replacement (after the new labels are written): the old output is as
    it was; the next --overwrite removes the dead process's half-written copy and succeeds."""
    out = ws / "own" / "segment"
    before = tree_digest(out)
    argv = argv_of("segment", ws, str(out)) + ["--overwrite", "--workers", "1"]
    proc = subprocess.run([sys.executable, "-c", KILL, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert tree_digest(out) == before
    assert list(ws.rglob(".segment.blockseg-new-*")), "the killed run left no half-written copy (was it killed mid-write?)"
    with in_process():
        assert main(argv) == 0
    assert not list(ws.rglob(".*blockseg-*"))
    assert open_volume(out).shape == SHAPE


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    """Old output renamed away, new one not yet in: the next attempt renames the old one back."""
    from blockseg.io.safety import prepare_output

    vol = create_volume(tmp_path / "a.zarr", SHAPE, np.uint8, VS, CHUNKS)
    vol.array[:] = 7
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    os.rename(tmp_path / "a.zarr", tmp_path / f".a.zarr.blockseg-old-{dead}")
    os.mkdir(tmp_path / f".a.zarr.blockseg-new-{dead}")
    with pytest.raises(BlocksegError, match="already exists"):
        prepare_output(tmp_path / "a.zarr")
    assert (open_volume(tmp_path / "a.zarr")[:] == 7).all()
    assert sorted(os.listdir(tmp_path)) == ["a.zarr"]


def test_paths_and_urls_are_compared_resolved(tmp_path):
    from blockseg.io.safety import check_not_input, resolve, zarr_root

    assert resolve("S3://Bucket/a//b/./c.zarr/") == "s3://bucket/a/b/c.zarr"
    with pytest.raises(BlocksegError, match="is the input"):
        check_not_input(["s3://bucket/a/c.zarr/"], ["s3://bucket/a//c.zarr"])
    with pytest.raises(BlocksegError, match="inside the input"):
        check_not_input(["s3://bucket/img.zarr/labels/seg"], ["s3://bucket/img.zarr/labels/gt"])
    with pytest.raises(BlocksegError, match="contains the input"):
        check_not_input(["s3://bucket/a"], ["s3://bucket/a/img.zarr"])
    check_not_input(["s3://bucket/img2.zarr"], ["s3://bucket/img.zarr"])
    create_label_volume(create_volume(tmp_path / "i.zarr", SHAPE, np.uint8).path, "gt", SHAPE)
    assert zarr_root(resolve(tmp_path / "i.zarr/labels/gt")) == resolve(tmp_path / "i.zarr")
    with pytest.raises(BlocksegError, match="inside the input"):
        check_not_input([str(tmp_path / "i.zarr/../i.zarr/seg")], [str(tmp_path / "i.zarr/labels/gt")])
    check_not_input([str(tmp_path / "i2.zarr")], [str(tmp_path / "i.zarr/labels/gt")])


def test_library_overwrite_replaces_only_own_outputs(tmp_path):
    """The low-level API (create_volume overwrite=True) refuses a foreign folder or file too."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.txt").write_text("x")
    (tmp_path / "f.tif").write_bytes(b"II*\x00")
    for p in ("mine", "f.tif"):
        with pytest.raises(BlocksegError, match="not written by blockseg"):
            create_volume(tmp_path / p, SHAPE, np.uint8, overwrite=True)
    assert (tmp_path / "mine" / "x.txt").read_text() == "x"
    (tmp_path / "empty").mkdir()
    create_volume(tmp_path / "empty", SHAPE, np.uint8)  # an empty folder is fine


def _corrupt(array_dir: Path, key: str = "c/0/0/0") -> None:
    chunk = array_dir / key
    assert chunk.exists(), chunk
    chunk.write_bytes(b"\x00garbage" * 8)


@pytest.mark.parametrize(
    "cmd, damaged, workers",
    [("predict", "img.zarr/0", ["--workers", "1"]),  # read on a dask worker process
     ("segment", "pred.zarr/B/0", []), ("evaluate", "seg.zarr/0", [])],
)  # fmt: skip
def test_corrupt_chunk_is_one_line_and_nothing_is_written(ws, capsys, cmd, damaged, workers):
    _corrupt(ws / "data" / damaged)
    out = ws / "new_output"
    before = tree_digest(ws)
    argv = argv_of(cmd, ws, str(out)) + workers
    if workers:
        with pytest.MonkeyPatch.context():
            rc = main(argv)
        err = capsys.readouterr().err.strip()
    else:
        rc, err = run_cli(argv, capsys)
    last = err.splitlines()[-1]
    assert rc == 2, err
    assert "Traceback" not in err and last.startswith(f"blockseg {cmd}: error: "), err
    assert f"{damaged}: chunk c/0/0/0 is corrupt" in last, last
    assert not out.exists() and tree_digest(ws) == before


def test_export_tif_h5_region_and_level(ws, capsys):
    """Export keeps the voxel size where Fiji (ImageJ tags) and PyTorch Connectomics / ilastik
    (element_size_um) read it; regions and downsampled levels have the right shape and values."""
    import h5py
    import tifffile

    from blockseg.io.formats import tiff_imagej_voxel_size

    seg = ws / "data" / "seg.zarr"
    labels = open_volume(seg)[:]
    rc, err = run_cli(["export", str(seg), str(ws / "a.tif"), "--region", "2:14,:,8:32"], capsys)
    assert rc == 0, err
    with tifffile.TiffFile(ws / "a.tif") as tif:
        np.testing.assert_allclose(tiff_imagej_voxel_size(tif), VS, rtol=1e-6)
        got = tif.asarray()
    assert got.dtype == np.uint16 and np.array_equal(got, labels[2:14, :, 8:32])
    rc, err = run_cli(["export", str(seg), str(ws / "b.h5"), "--downsample", "2", "--mode", "mode"], capsys)
    assert rc == 0, err
    with h5py.File(ws / "b.h5", "r") as f:
        np.testing.assert_allclose(f["main"].attrs["element_size_um"], [2 * v for v in VS])
        level = f["main"][...]
    assert level.shape == (8, 16, 16) and level.dtype == labels.dtype
    assert set(np.unique(level)) <= set(np.unique(labels))
    # a block of 2x2x2 inside one nucleus keeps its id
    assert level[2, 2, 2] == labels[4, 4, 4] != 0
    # the output is blockseg's: --overwrite replaces it, a plain rerun refuses
    assert run_cli(["export", str(seg), str(ws / "b.h5")], capsys)[0] == 2
    assert run_cli(["export", str(seg), str(ws / "b.h5"), "--overwrite"], capsys)[0] == 0
    rc, err = run_cli(["export", str(seg), str(ws / "c.tif"), "--region", "0:99,:,:"], capsys)
    assert rc == 2 and "outside the volume" in err


def test_downsample_mode_picks_the_most_frequent_label():
    from blockseg.io.export import downsample

    a = np.zeros((2, 2, 4), np.uint32)
    a[:, :, :2] = [[[5, 5], [5, 3]], [[3, 3], [5, 0]]]  # 5 x4, 3 x3, 0 x1 -> 5
    a[:, :, 2:] = [[[7, 2], [2, 7]], [[0, 0], [9, 9]]]  # 7, 2, 0, 9 twice each -> the smallest, 0
    assert downsample(a, (2, 2, 2), "mode").ravel().tolist() == [5, 0]
    assert downsample(a, (2, 2, 2), "stride").ravel().tolist() == [5, 7]


def test_instance_tables_have_micrometre_columns(template):
    from blockseg.io.tables import read_table

    t = read_table(str(template / "data" / "seg.zarr" / "instances.csv"))
    vz, vy, vx = VS
    np.testing.assert_allclose(t["volume_um3"], t["voxels"] * vz * vy * vx, rtol=1e-5)
    for a, v in zip("zyx", VS):
        np.testing.assert_allclose(t[f"centroid_um_{a}"], t[f"centroid_{a}"] * v, rtol=1e-5)
        np.testing.assert_allclose(t[f"bbox_um_{a}0"], t[f"bbox_{a}0"] * v, rtol=1e-5)
        np.testing.assert_allclose(t[f"bbox_um_{a}1"], t[f"bbox_{a}1"] * v, rtol=1e-5)
    # nucleus 1 is the box [2:8, 2:14, 2:14]: 6*12*12 voxels of 1 x 0.5 x 0.5 µm
    assert sorted(t["volume_um3"].tolist()) == [6 * 12 * 12 * 0.25, 6 * 14 * 14 * 0.25]
    import csv

    with open(template / "own" / "evaluate" / "instances.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        assert float(r["size_um3"]) == pytest.approx(float(r["size"]) * vz * vy * vx, rel=1e-5)
        assert float(r["z_um"]) == pytest.approx(float(r["z"]) * vz, rel=1e-5, abs=1e-9)


def test_predict_stores_only_the_decoders_channels(tmp_path):
    """Default: the channels of the checkpoint's decoder, each in its own dtype (uint8 for
    probabilities / tanh, float16 for raw vectors); --channels adds to them; 'all' keeps all."""
    from blockseg.predict import predict
    from blockseg.io.predictions import open_predictions, plan_store

    img = create_volume(tmp_path / "img.zarr", SHAPE, np.uint8, VS, CHUNKS)
    img.array[:] = 100
    net = IdentityNet(("B", "C", "D", "cpv"), input_patch=(16, 32, 32))
    save_checkpoint(tmp_path / "n.pt", net, normalisation={"offset": 0.0, "scale": 255.0}, decoder={"name": "bcd"})
    plan = predict(tmp_path / "img.zarr", tmp_path / "n.pt", tmp_path / "p.zarr", dry_run=True)
    assert plan.channels == ["B", "C", "D"] and plan.store_bytes == 3 * np.prod(SHAPE) == 3 * plan.image_bytes
    assert "not stored: cpv_z, cpv_y, cpv_x" in plan.describe() and "3.00x the image" in plan.describe()
    predict(tmp_path / "img.zarr", tmp_path / "n.pt", tmp_path / "p.zarr", progress=False)
    got = open_predictions(tmp_path / "p.zarr")
    assert {c: v.dtype for c, v in got.items()} == {c: np.dtype(np.uint8) for c in "BCD"}
    predict(tmp_path / "img.zarr", tmp_path / "n.pt", tmp_path / "q.zarr", channels=["cpv_z"], decoder="cpv", progress=False)
    got = open_predictions(tmp_path / "q.zarr")
    assert {c: v.dtype.name for c, v in got.items()} == {"B": "uint8", "cpv_z": "float16", "cpv_y": "float16", "cpv_x": "float16"}
    keep, dtypes, why = plan_store(["B", "C", "D", "cpv_z"], {"B": "prob", "C": "prob", "D": "tanh", "cpv_z": "raw"}, extra="all")
    assert keep == ["B", "C", "D", "cpv_z"] and dtypes["D"] == "uint8" and dtypes["cpv_z"] == "float16"
    with pytest.raises(BlocksegError, match="reads channels"):
        plan_store(["B", "cpv_z"], {"B": "prob", "cpv_z": "raw"}, decoder="bcd")
    with pytest.raises(BlocksegError, match="raw values"):
        plan_store(["cpv_z"], {"cpv_z": "raw"}, dtype="uint8")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def test_demo_prediction_store_is_at_most_twice_the_image(tmp_path):
    """The demo checkpoint (B, C, D + cpv) with the default decoder (bcd) stores B, C, D as
    uint8: at most 2x the image on disk (was 13x: all six channels as float16)."""
    from blockseg.predict import predict
    from blockseg.synth import preset_params, synthesize
    from blockseg.pipeline.workflow import checkpoint_path
    from blockseg.pipeline.config import parse_config

    params = preset_params("nucmm-z", shape=(32, 128, 128), mode="em", seed=2026)
    synthesize(str(tmp_path / "img.zarr"), params, chunks=(32, 128, 128), progress=False)
    ckpt = checkpoint_path(parse_config({"run_dir": str(tmp_path / "r"), "data": {"image": "x.zarr"}}, "t"))
    rep = predict(tmp_path / "img.zarr", ckpt, tmp_path / "p.zarr", progress=False, batch_size=4)
    assert rep.plan.channels == ["B", "C", "D"]
    image, store = _du(tmp_path / "img.zarr" / "0"), _du(tmp_path / "p.zarr")
    assert store <= 2 * image, (store, image)
