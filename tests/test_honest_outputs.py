"""Inputs are checked for what they claim to be (issue 34, goal 1).

``segment`` refuses a prediction store ``predict`` has not finished; ``evaluate`` refuses a
``--pred`` / ``--gt`` that is not an integer label volume (a raw image, a prediction store's
channel, a float map) unless ``--labels-anyway``. Each refusal: exit 2, one line on stderr,
nothing written.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import blockseg_cli
from blockseg import BlocksegError
from blockseg.io.volume import create_volume

from _helpers import CLI_DIR

if str(CLI_DIR) not in blockseg_cli.__path__:  # this checkout's cli/, whatever is installed
    blockseg_cli.__path__.insert(0, str(CLI_DIR))
cli_main = importlib.import_module("blockseg_cli.main").main


def _cli(argv, capsys):
    """Run ``blockseg ARGV`` in this process: (exit status, stdout, stderr lines)."""
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def interrupted_store(tmp_path_factory):
    """A prediction store of 8 blocks whose predict was interrupted after 2 blocks (Ctrl-C)."""
    import blockseg.runtime.cluster as cluster
    from blockseg.predict import predict

    root = tmp_path_factory.mktemp("unfinished")
    rng = np.random.default_rng(0)
    img = create_volume(root / "img.zarr", (16, 32, 32), np.uint8, (1, 1, 1), (8, 16, 16))
    img.array[:] = rng.integers(0, 255, (16, 32, 32), dtype=np.uint8)
    original = cluster.run_blocks

    def two_then_interrupt(func, ids, client, **kw):
        calls = [0]

        def task(i):
            calls[0] += 1
            if calls[0] > 2:
                raise KeyboardInterrupt
            return func(i)

        return original(task, ids, client, **kw)

    cluster.run_blocks = two_then_interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            predict(root / "img.zarr", "demo", root / "p.zarr", block_shape=(8, 16, 16), progress=False, scale=1)
    finally:
        cluster.run_blocks = original
    return root


def test_segment_refuses_an_unfinished_store(interrupted_store, tmp_path, capsys):
    store = interrupted_store / "p.zarr"
    before = _listing(interrupted_store)
    code, out, err = _cli(["segment", str(store), str(tmp_path / "o.zarr"), "--no-progress"], capsys)
    assert code == 2 and out == ""
    assert err == [f"blockseg segment: error: {store}: unfinished prediction store (blocks done: 0 of 8); rerun predict to resume it"]
    assert not (tmp_path / "o.zarr").exists() and os.listdir(tmp_path) == []
    assert _listing(interrupted_store) == before  # the store is not touched either
    code, out, _ = _cli(["info", str(store)], capsys)  # info reads it, and says how far it got
    assert code == 0 and "  blocks done: 0 of 8 (unfinished: rerun predict to resume)" in out.splitlines()


def test_segment_api_and_tune_refuse_an_unfinished_store(interrupted_store, tmp_path):
    from blockseg.io.predictions import open_predictions
    from blockseg.segment import segment

    with pytest.raises(BlocksegError, match=r"unfinished prediction store \(blocks done: 0 of 8\)"):
        segment(interrupted_store / "p.zarr", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    # info still reads it, and says how far it got
    assert set(open_predictions(interrupted_store / "p.zarr", unfinished_ok=True)) == {"B", "C", "D"}


def test_a_store_from_before_the_complete_flag_is_judged_by_its_markers(interrupted_store, tmp_path, capsys):
    import shutil

    old = tmp_path / "old.zarr"
    shutil.copytree(interrupted_store / "p.zarr", old)
    group = zarr.open_group(str(old), mode="r+")
    attrs = dict(group.attrs["blockseg"])
    attrs["predictions"] = {k: v for k, v in dict(attrs["predictions"]).items() if k != "complete"}
    group.attrs["blockseg"] = attrs
    code, _, err = _cli(["segment", str(old), str(tmp_path / "o.zarr")], capsys)
    assert code == 2 and len(err) == 1 and "unfinished prediction store (blocks done: 0 of 8)" in err[0]
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow
def test_resumed_predict_finishes_the_store_and_says_what_it_reused(interrupted_store, tmp_path, capsys):
    import shutil

    from blockseg.io.predictions import open_predictions
    from blockseg.predict import predict

    store = tmp_path / "p.zarr"
    shutil.copytree(interrupted_store / "p.zarr", store)
    rep = predict(interrupted_store / "img.zarr", "demo", store, block_shape=(8, 16, 16), progress=False, scale=1)
    assert rep.computed == 8 and rep.reused_pass1 == 2  # two blocks' patches were not recomputed
    assert set(open_predictions(store)) == {"B", "C", "D"}  # complete now
    assert dict(zarr.open_group(str(store)).attrs["blockseg"])["predictions"]["complete"] is True


# ----------------------------------------------------------------------------- evaluate
@pytest.fixture()
def eval_inputs(tmp_path):
    from blockseg.io.predictions import save_predictions

    rng = np.random.default_rng(3)
    gt = np.zeros((8, 32, 32), np.uint16)
    gt[1:6, 2:12, 2:12] = 1
    gt[2:7, 16:28, 14:30] = 2
    paths = {}
    for name, arr in (("gt", gt), ("raw", rng.integers(0, 255, gt.shape, dtype=np.uint8)),
                      ("prob", (gt > 0).astype(np.float32) * 0.9)):  # fmt: skip
        create_volume(tmp_path / f"{name}.zarr", arr.shape, arr.dtype, chunks=(8, 16, 16))[...] = arr
        paths[name] = str(tmp_path / f"{name}.zarr")
    save_predictions(tmp_path / "store.zarr", {"B": (gt > 0).astype(np.float32)}, chunks=(8, 16, 16))
    paths["channel"] = str(tmp_path / "store.zarr" / "B")
    return tmp_path, paths


@pytest.mark.parametrize(
    "role, which, words",
    [
        ("--pred", "raw", "does not look like instance labels"),
        ("--gt", "raw", "does not look like instance labels"),
        ("--pred", "channel", "a channel of the prediction store"),
        ("--pred", "prob", "labels must be integers, got dtype float32"),
    ],
)
def test_evaluate_refuses_what_is_not_labels(eval_inputs, capsys, role, which, words):
    tmp, paths = eval_inputs
    before = _listing(tmp)
    gt, pred = (paths["gt"], paths[which]) if role == "--pred" else (paths[which], paths["gt"])
    code, out, err = _cli(["evaluate", "--gt", gt, "--pred", pred, "--out", str(tmp / "ev"), "--no-png"], capsys)
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith(f"blockseg evaluate: error: {role} {paths[which]}: ") and words in err[0]
    assert _listing(tmp) == before  # no report folder, nothing else


@pytest.mark.slow  # evaluates a raw image as labels
def test_labels_anyway_scores_a_volume_that_does_not_look_like_labels(eval_inputs, capsys):
    tmp, paths = eval_inputs
    code, out, err = _cli(["evaluate", "--gt", paths["gt"], "--pred", paths["raw"], "--out", str(tmp / "ev"),
                           "--no-png", "--labels-anyway", "--no-progress"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp / "ev" / "evaluation.json").read_text())["n_pred"] > 100
    # a float map stays refused: only the look is overridden, not the dtype
    code, _, err = _cli(["evaluate", "--gt", paths["gt"], "--pred", paths["prob"], "--out", str(tmp / "ev2"),
                         "--labels-anyway"], capsys)  # fmt: skip
    assert code == 2 and "must be integers" in err[0] and not (tmp / "ev2").exists()


def test_label_check_accepts_labels():
    from blockseg.evaluate.labelcheck import equal_neighbour_fraction

    labels = np.zeros((4, 32, 32), np.uint32)
    labels[:, 4:12, 4:12], labels[:, 14:30, 10:20] = 7, 8
    assert equal_neighbour_fraction(labels) > 0.9
    noise = np.random.default_rng(0).integers(0, 255, (4, 32, 32))
    assert equal_neighbour_fraction(noise) < 0.05


# ----------------------------------------------------------------------------- run stages
def test_a_run_stage_refuses_when_its_predecessor_is_not_recorded_complete(tmp_path, monkeypatch):
    """A stage record changed under the run (another process, a hand edit): the next stage
    refuses to read its predecessor's output instead of using a half-made one."""
    import blockseg.pipeline.workflow as wf
    from blockseg.pipeline.config import parse_config

    ran = []
    fakes = {s: (lambda s: lambda cfg, layout, client, resume: ran.append(s) or {})(s) for s in wf.STAGES}
    monkeypatch.setattr(wf, "STAGE_FUNCS", fakes)
    cfg = parse_config({"run_dir": str(tmp_path / "run"), "data": {"synth": {"shape": [16, 32, 32]}},
                        "model": {"checkpoint": "demo"}, "evaluate": {"png": False}})  # fmt: skip

    def log(line):  # the predict record is rewritten as unfinished right after it was written
        if line.startswith("[predict] done"):
            rec = tmp_path / "run" / "stages" / "predict.json"
            rec.write_text(json.dumps({**json.loads(rec.read_text()), "status": "running"}))

    with pytest.raises(BlocksegError, match=r"^\[segment\] the predict stage is not complete \(.*predict.json: running\)"):
        wf.run(cfg, client=object(), log=log)
    assert ran == ["data", "predict"]  # segment never started


# ----------------------------------------------------------------------------- messages
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_key_given_twice_in_a_config_is_refused(tmp_path, capsys, command):
    text = ("run_dir: out\ndata:\n  synth:\n    shape: [16, 32, 32]\nsegment:\n  halo: 8\n  decoder: bcd\n  halo: 16\n"
            if command == "run" else "iterations: 5\npatch: [16, 32, 32]\niterations: 50\n")  # fmt: skip
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, out, err = _cli([command, str(cfg)], capsys)
    line, first, key = (8, 6, "halo") if command == "run" else (3, 1, "iterations")
    assert code == 2 and out == ""
    assert err == [f"blockseg {command}: error: {cfg}: line {line}: key '{key}' is given twice (first on line {first}); "
                   "YAML would keep only the last one silently: remove one"]  # fmt: skip
    assert os.listdir(tmp_path) == ["c.yaml"]


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    from blockseg.pipeline.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: &b {halo: 8}\nrun_dir: out\ndata: {synth: {shape: [16, 32, 32]}}\n"
                   "segment:\n  <<: *b\n  halo: 16\n")  # fmt: skip
    with pytest.raises(BlocksegError, match="base: unknown key"):  # parsed; only the stray anchor key is refused
        load_config(cfg)


def test_resume_summary_says_what_was_reused():
    from blockseg.runtime.progress import reuse_summary

    assert reuse_summary(8, 8, 8000, 8000, reused_pass1=2) == (
        "resumed: reused 0 of 8 blocks (0 of 8 k voxels) done before; computed 8 blocks (8 k voxels), reusing the "
        "network outputs of 2 of them from the interrupted run"
    )
    assert reuse_summary(8, 8, 8000, 8000) == "computed 8 blocks (8 k voxels)"


def test_label_check_separates_the_real_crops_images_from_their_labels(real_data):
    """The six real crops beside the checkout: every image below the threshold, every label
    volume above it, with room on both sides (measured: images 2.5-16 %, labels 81-99.6 %)."""
    from blockseg.evaluate.labelcheck import MIN_EQUAL_NEIGHBOURS, central_sample, equal_neighbour_fraction

    seen = 0
    for f in sorted(real_data.glob("*.npz")):
        with np.load(f) as d:
            if "image" in d.files and "labels" in d.files:
                image = equal_neighbour_fraction(central_sample(d["image"]))
                labels = equal_neighbour_fraction(central_sample(d["labels"]))
                assert image < MIN_EQUAL_NEIGHBOURS - 0.3 and labels > MIN_EQUAL_NEIGHBOURS + 0.3, (f.name, image, labels)
                seen += 1
    assert seen >= 6
