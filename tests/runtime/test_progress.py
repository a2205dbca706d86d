"""Progress in blocks and voxels (rate, ETA) and the resume summary."""

import json

import pytest

from blockseg.runtime.cluster import run_blocks
from blockseg.runtime.progress import block_progress, progress_settings, reuse_summary


def test_json_mode_reports_blocks_and_voxels_done(capsys):
    with progress_settings("json"):
        assert run_blocks(lambda b: b + 1, [4, 5, 6], voxels=[10, 20, 30], name="stage") == [5, 6, 7]
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["event"] for r in records][0] == "start" and records[-1]["event"] == "done"
    last = records[-1]
    assert (last["stage"], last["blocks_done"], last["blocks_total"]) == ("stage", 3, 3)
    assert (last["voxels_done"], last["voxels_total"], last["eta_s"]) == (60, 60, 0.0)


def test_lines_mode_counts_voxels_of_the_blocks_done(capsys):
    with block_progress("predict", 2, voxels=[1000, 3000], mode="lines") as advance:
        advance(1)
        advance(0)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("blockseg: predict: 2/2 blocks, 4 k/4 k voxels") and "elapsed" in line


def test_none_mode_and_no_progress_print_nothing(capsys):
    with progress_settings("none"):
        run_blocks(lambda b: b, [1, 2], voxels=[1, 1])
    run_blocks(lambda b: b, [1, 2], progress=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError):
        run_blocks(lambda b: b, [1, 2], voxels=[1])


def test_resume_summary_names_what_was_reused():
    assert reuse_summary(4, 1, 4000, 1000) == (
        "resumed: reused 3 of 4 blocks (3 k of 4 k voxels) done before; computed 1 block (1 k voxels)"
    )
    assert reuse_summary(4, 4, 4000, 4000) == "computed 4 blocks (4 k voxels)"
    assert reuse_summary(4, 0, 4000, 0).startswith("nothing to do: all 4 blocks")
