"""Nothing blockseg reads can run code (issue 33, goal 4).

A crafted file -- a pickle whose ``__reduce__`` calls ``exec`` to create a marker file -- is
planted in each place blockseg reads one: the training resume file, a checkpoint given to
predict / info / train's ``model.init``, a zarr chunk behind a pickle codec, an npy of objects.
Each is first shown to be live (unpickling it the unsafe way creates its marker), then the CLI
must refuse it in one line with exit 2, create no marker and write nothing. A source scan keeps
unsafe loaders out of ``blockseg/``.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from blockseg.io.volume import create_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg.synth import SynthParams, synthesize
from blockseg.train import parse_config, train
from blockseg.train.trainer import RESUME_MAGIC, read_resume
from blockseg_cli.main import main

from _helpers import REPO as ROOT, tree_digest

torch.set_num_threads(1)


class RunsCode:
    """Unpickled, it runs ``exec`` -- here creating ``marker``; any code could stand there."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _refused(capsys, argv: list[str], words: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"blockseg {argv[0]}: error: ") and words in err, err
    return err


def _plant_torch(path: Path, marker: Path, **plain) -> None:
    """A torch.save file holding plain data and one code-running object; checked to be live."""
    torch.save({**plain, "optimizer": RunsCode(marker)}, path)
    probe, live = marker.with_name(marker.name + ".live"), path.with_name(path.name + ".live")
    torch.save({"x": RunsCode(probe)}, live)
    torch.load(live, weights_only=False)  # the unsafe way runs it
    assert probe.exists()
    probe.unlink()
    live.unlink()


def _plant_pickle(path: Path, marker: Path) -> None:
    """A plain pickle (protocol 5) holding a code-running object; checked to be live."""
    data = pickle.dumps({"iteration": 1, "x": RunsCode(marker)}, protocol=5)
    probe = marker.with_name(marker.name + ".live")
    pickle.loads(pickle.dumps(RunsCode(probe)))  # the unsafe way runs it
    assert probe.exists()
    probe.unlink()
    path.write_bytes(data)


def _config(volume: str, out: Path, iterations: int, **model) -> dict:
    return {
        "data": {"train": [volume], "target_context": 4},
        "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}, **model},
        "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "output": str(out), "iterations": iterations, "patch": [8, 24, 24], "batch_size": 1, "log_every": 1,
        "checkpoint_every": 1, "threads": 1, "decoder": {"name": "bcd"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-iteration training folder (checkpoint.pt, resume.pt) and its volume."""
    root = tmp_path_factory.mktemp("untrusted")
    volume = str(root / "vol.zarr")
    synthesize(volume, SynthParams(shape=(16, 48, 48), seed=5, mask=True), chunks=(16, 48, 48), progress=False)
    train(parse_config(_config(volume, root / "run", 2)), progress=False)
    return root, volume


def _resume_case(trained, tmp_path, name: str) -> tuple[Path, Path]:
    """A copy of the training folder to resume (to 3 iterations) and its config file."""
    root, volume = trained
    run = tmp_path / name
    shutil.copytree(root / "run", run)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(_config(volume, run, 3)))
    return run, cfg


def test_resume_files_are_plain_data_with_a_magic(trained):
    root, _ = trained
    state = torch.load(root / "run" / "resume.pt", map_location="cpu", weights_only=True)  # the safe loader reads it
    assert state["magic"] == RESUME_MAGIC and state["iteration"] == 2
    assert read_resume(root / "run" / "resume.pt")["format"] == 1


@pytest.mark.parametrize("plant", ["torch.save", "pickle"])
def test_crafted_resume_file_is_refused_and_runs_nothing(trained, tmp_path, capsys, plant):
    run, cfg = _resume_case(trained, tmp_path, "crafted")
    marker = tmp_path / "RAN"
    if plant == "torch.save":
        _plant_torch(run / "resume.pt", marker, iteration=1)
        words = "it names the Python object exec"
    else:
        _plant_pickle(run / "resume.pt", marker)
        words = "it is a general Python pickle"
    before = tree_digest(run)
    err = _refused(capsys, ["train", str(cfg), "--resume", "--no-progress"], "refused to load this resume file")
    assert words in err and "could run code" in err
    assert not marker.exists()
    assert tree_digest(run) == before  # refused before anything was written


def test_resume_file_of_an_earlier_blockseg_still_resumes(trained, tmp_path, capsys):
    """Resume files written before the magic existed held the same plain data: they load."""
    run, cfg = _resume_case(trained, tmp_path, "old")
    state = torch.load(run / "resume.pt", weights_only=True)
    del state["magic"], state["format"]
    torch.save(state, run / "resume.pt")
    assert main(["train", str(cfg), "--resume", "--no-progress"]) == 0, capsys.readouterr().err
    assert read_resume(run / "resume.pt")["iteration"] == 3  # rewritten in the current format


def test_resume_file_that_is_no_resume_file(trained, tmp_path, capsys):
    run, cfg = _resume_case(trained, tmp_path, "other")
    torch.save({"iteration": 1}, run / "resume.pt")
    _refused(capsys, ["train", str(cfg), "--resume", "--no-progress"], "not a blockseg resume file (no optimizer")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    img = create_volume(root / "img.zarr", (16, 32, 32), np.uint8, (1.0, 0.5, 0.5), (16, 32, 32))
    img.array[:] = 100
    return root


def test_crafted_checkpoint_is_refused_and_runs_nothing(image, tmp_path, capsys):
    marker = tmp_path / "RAN"
    ckpt = tmp_path / "model.pt"
    plain = {"magic": "blockseg-checkpoint", "format": 1, "architecture": "identity", "config": {}}
    _plant_torch(ckpt, marker, **plain)
    before = tree_digest(image)
    _refused(capsys, ["predict", str(image / "img.zarr"), str(ckpt), str(tmp_path / "pred.zarr")], "refused to load this blockseg checkpoint")
    _refused(capsys, ["info", str(ckpt)], "refused to load this blockseg checkpoint")
    assert not marker.exists() and not (tmp_path / "pred.zarr").exists()
    assert tree_digest(image) == before


def test_crafted_init_checkpoint_is_refused_and_runs_nothing(trained, tmp_path, capsys):
    _, volume = trained
    marker = tmp_path / "RAN"
    _plant_pickle(tmp_path / "init.pt", marker)
    cfg = tmp_path / "init.yaml"
    cfg.write_text(yaml.safe_dump(_config(volume, tmp_path / "run", 2, init=str(tmp_path / "init.pt"))))
    _refused(capsys, ["train", str(cfg), "--no-progress"], "refused to load this blockseg checkpoint")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_real_checkpoint_still_loads(image, tmp_path, capsys):
    save_checkpoint(tmp_path / "ok.pt", IdentityNet(("sdt",), input_patch=(8, 16, 16)))
    assert main(["info", str(tmp_path / "ok.pt")]) == 0, capsys.readouterr().err


def test_zarr_chunk_behind_a_pickle_codec_runs_nothing(tmp_path, capsys):
    """zarr v2 allows object arrays with a pickle codec; zarr-python 3 does not read them."""
    marker = tmp_path / "RAN"
    arr = tmp_path / "objects.zarr"
    arr.mkdir()
    (arr / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4, 4, 4], "chunks": [4, 4, 4], "dtype": "|O", "compressor": None, "fill_value": 0,
        "filters": [{"id": "pickle", "protocol": 5}], "order": "C",
    }))  # fmt: skip
    (arr / "0.0.0").write_bytes(pickle.dumps(RunsCode(marker)))
    _refused(capsys, ["info", str(arr)], "not a zarr array or group")
    _refused(capsys, ["predict", str(arr), "demo", str(tmp_path / "p.zarr")], "not a zarr array or group")
    assert not marker.exists() and not (tmp_path / "p.zarr").exists()


def test_npy_of_objects_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "RAN"
    a = np.empty((2, 2, 2), dtype=object)
    a[0, 0, 0] = RunsCode(marker)
    np.save(tmp_path / "objects.npy", a, allow_pickle=True)
    np.savez(tmp_path / "objects.npz", image=a)
    for name in ("objects.npy", "objects.npz"):
        _refused(capsys, ["info", str(tmp_path / name)], "holds Python objects (a pickle), which blockseg never loads")
    assert not marker.exists()


#: YAML loaders that build plain data only (checked to be SafeLoader subclasses below)
SAFE_LOADERS = ("SafeLoader", "CSafeLoader", "_UniqueKeyLoader")


def _unsafe_calls(source: str) -> list[str]:
    """Calls in ``source`` that could unpickle: pickle/marshal/dill loads, torch.load without
    weights_only=True, np.load with allow_pickle=True, yaml.load / unsafe_load / full_load."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name, kw = node.func.attr, {k.arg: k.value for k in node.keywords}
        constant = lambda k: getattr(kw.get(k), "value", None)  # noqa: E731
        if owner in ("pickle", "cloudpickle", "dill", "marshal", "joblib") and name in ("load", "loads"):
            found.append(f"{owner}.{name}")
        elif owner == "torch" and name == "load" and constant("weights_only") is not True:
            found.append("torch.load without weights_only=True")
        elif owner in ("np", "numpy") and name == "load" and constant("allow_pickle") is True:
            found.append("np.load(allow_pickle=True)")
        elif owner == "yaml" and name in ("load", "load_all") and getattr(kw.get("Loader"), "id", None) in SAFE_LOADERS:
            continue
        elif owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            found.append(f"yaml.{name}")
    return found


def test_no_unsafe_loader_in_blockseg():
    assert _unsafe_calls("import torch\ntorch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)") == [
        "torch.load without weights_only=True", "pickle.loads", "np.load(allow_pickle=True)",
    ]  # fmt: skip  (the scan itself finds what it should)
    from blockseg.configfile import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)
    bad = {}
    for path in sorted((ROOT / "blockseg").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py")):
        calls = _unsafe_calls(path.read_text())
        if calls:
            bad[str(path.relative_to(ROOT))] = calls
    assert bad == {}


@pytest.mark.parametrize("command", ["run", "train"])
def test_yaml_config_with_a_python_tag_runs_nothing(tmp_path, capsys, command):
    """Configs are parsed by YAML's safe loader: a ``!!python/object/apply`` tag is an error."""
    marker = tmp_path / "RAN"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'run_dir: {tmp_path / "r"}\noutput: {tmp_path / "o"}\ndata:\n  image: !!python/object/apply:builtins.exec ["open({str(marker)!r}, \'w\').close()"]\n')
    _refused(capsys, [command, str(cfg)], "could not determine a constructor for the tag")
    assert not marker.exists() and not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_crafted_file_in_segment_work_folder_runs_nothing(tmp_path, monkeypatch):
    """Segment's work folder (``OUT.work``: seed tables, solutions, published pieces) may sit on a
    shared file system or bucket. An interrupted run's files are replaced by npz files holding a
    code-running object; the resumed run refuses them in one line naming the file, runs nothing
    and still writes no output."""
    from blockseg.errors import BlocksegError
    from blockseg.faults import FaultInjected
    from blockseg.segment import BCDDecoder, segment

    from _helpers import tube_predictions

    pred, block = tube_predictions(tmp_path, length=128, blocks=4)
    out, work, marker = tmp_path / "seg.zarr", tmp_path / "seg.zarr.work", tmp_path / "RAN"
    decoder = BCDDecoder(min_seed_size=1, min_size=1)
    monkeypatch.setenv("BLOCKSEG_FAULT", "segment.journal:after done=round round=1=raise")
    monkeypatch.setenv("BLOCKSEG_FAULT_DIR", str(tmp_path))
    with pytest.raises(FaultInjected):
        segment(pred, out, decoder, block_shape=block, halo=8, tile_voxels=1)
    monkeypatch.delenv("BLOCKSEG_FAULT")
    planted = sorted(work.rglob("*.npz"))
    assert planted, "the interrupted run left no work files"
    crafted = np.empty(1, dtype=object)
    crafted[0] = RunsCode(marker)
    for path in planted:
        with open(path, "wb") as f:
            np.savez(f, keys=crafted)
    pickle.loads(pickle.dumps(RunsCode(marker)))  # live: the unsafe way runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(BlocksegError, match=r"\.npz: holds Python objects \(a pickle\), which blockseg never loads"):
        segment(pred, out, decoder, block_shape=block, halo=8, tile_voxels=1)
    assert not marker.exists() and not out.exists()
