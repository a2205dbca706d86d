"""``blockseg info NAME`` describes every shipped checkpoint by name (as predict and run configs accept it)."""

from __future__ import annotations

import json

import pytest

from blockseg.checkpoints import SHIPPED_CHECKPOINTS
from blockseg_cli.main import main


@pytest.mark.parametrize("name", sorted(SHIPPED_CHECKPOINTS))
def test_info_takes_shipped_names(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the shipped one is meant
    assert main(["info", name, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["kind"] == "checkpoint" and s["path"].endswith(SHIPPED_CHECKPOINTS[name])


def test_a_file_of_that_name_still_wins(capsys, tmp_path, monkeypatch):
    """A file called ``fluo`` in the working directory is that file, not the shipped network."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fluo").write_text("not a checkpoint")
    code = main(["info", "fluo"])
    out = capsys.readouterr()
    assert code != 0 and "fluo_3label_cpv" not in out.out + out.err
