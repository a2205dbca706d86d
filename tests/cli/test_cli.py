import subprocess
import sys

import numpy as np
import pytest

from blockseg import open_volume
from blockseg_cli.main import COMMANDS, build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    subs = _subparsers(parser)
    assert len(subs) == len(COMMANDS)
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"blockseg {name}: option {action.option_strings or action.dest} has no help"


def test_help_runs_for_every_command(capsys):
    for name in [*_subparsers(build_parser())]:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert f"blockseg {name}" in capsys.readouterr().out


#: commands whose work runs on Dask (train runs in this process; info and export read locally)
DASK_COMMANDS = ["demo", "run", "synth", "import", "predict", "segment", "evaluate"]


@pytest.mark.parametrize("command", DASK_COMMANDS)
def test_every_dask_command_lists_the_same_cluster_options(command, capsys):
    from blockseg_cli.options import CLUSTER_OPTIONS, PROGRESS_OPTIONS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    missing = [o for o in CLUSTER_OPTIONS if o not in text]
    assert not missing, f"blockseg {command} --help lacks {missing}"
    if command != "import":  # import's copy has no block stages to report
        assert all(o in text for o in PROGRESS_OPTIONS), f"blockseg {command} --help lacks progress options"


def test_train_takes_device_and_threads_not_cluster_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--device" in text and "--threads" in text and "--scheduler" not in text


@pytest.mark.slow  # the CLI in subprocesses
def test_synth_and_info_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    rc = main(["synth", str(out), "--shape", "16", "40", "40", "--chunks", "8", "20", "20", "--workers", "1",
               "--seed", "3", "--no-progress", "--mask"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "nuclei" in text and str(out) in text
    assert open_volume(out).shape == (16, 40, 40)
    assert open_volume(f"{out}/labels/valid").dtype == np.uint8
    assert main(["info", str(out), "--halo", "4"]) == 0
    assert "BlockGrid" in capsys.readouterr().out


@pytest.mark.slow  # each case runs the CLI in a subprocess
@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/nonexistent/x.zarr"], "no such file or directory"),
        (["info", "{tmp}/s.zarr", "--block", "5", "20", "20"], "not a multiple of the chunk shape"),
        (["info", "{tmp}/s.zarr", "--halo", "1", "2"], "--halo must be one whole number or three (z y x), got [1, 2]"),
        (["synth", "{tmp}/s.zarr", "--shape", "8", "8", "8"], "already exists"),
        (["synth", "{tmp}/t.zarr", "--shape", "0", "8", "8"], "shape must be"),
        (["synth", "{tmp}/t.zarr", "--shape", "8", "8", "8", "--workers", "0"], "--workers must be at least 1"),
        (["import", "{tmp}/missing.npy", "{tmp}/o.zarr"], "no such file"),
        (["import", "{tmp}/flat.npy", "{tmp}/o.zarr"], "expected a 3D"),
        (["synth", "{tmp}/t.zarr", "--scheduler", "http://127.0.0.1:8787"], "web address"),
        (["synth", "{tmp}/t.zarr", "--scheduler", "127.0.0.1:1"], "cannot reach the dask scheduler"),
        (["synth", "{tmp}/t.zarr", "--worker-timeout", "0"], "--worker-timeout must be positive"),
        (["import", "{tmp}/flat.npy", "{tmp}/o.zarr", "--scheduler", "ftp://x:1"], "unknown scheme"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_data_alone(tmp_path, argv, message):
    from blockseg import create_volume

    vol = create_volume(tmp_path / "s.zarr", (8, 20, 20), np.uint8, chunks=(4, 10, 10))
    vol[:] = 5
    np.save(tmp_path / "flat.npy", np.zeros((3, 3)))
    argv = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "blockseg_cli.main", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert np.all(open_volume(tmp_path / "s.zarr")[:] == 5)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "t.zarr").exists()


@pytest.mark.slow  # the CLI in a subprocess
def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "blockseg_cli.main", "--debug", "info", str(tmp_path / "nope.zarr")],
        capture_output=True, text=True,
    )  # fmt: skip
    # --debug adds the traceback but keeps the exit code (and still ends with the one line)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("blockseg info: error:")
