"""Exactly once under faults (issue 29): a task that fails at a write point and runs again
changes nothing.

Every case makes one task fail once at a named write point (:mod:`blockseg.faults`) -- by
raising an ``OSError`` or by killing its worker process -- and checks that the run still exits
normally, that its output equals the undisturbed reference voxel for voxel (segment: equals
:func:`segment_array`, ids and instance table included) and that the report says a task ran
again. The clusters are started after the fault is armed: workers inherit the environment.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from blockseg.runtime.cluster import ClusterConfig, dask_client
from blockseg.faults import FaultInjected, fault_point
from blockseg.io.volume import open_volume
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.segment import BCDDecoder, segment, segment_array
from blockseg.io.tables import read_table

from _helpers import tube_predictions

DECODER = BCDDecoder(min_seed_size=1, min_size=1)
#: tiles of one block: later rounds run block by block, one face crossing per round (the
#: schedule the lost update was found in)
ONE_BLOCK = 1


@pytest.fixture(scope="module")
def tube(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tube")
    pred, block = tube_predictions(tmp)  # the case: one seed at one end of a long tube
    ref, table = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), DECODER, return_table=True)
    assert (ref > 0).sum() == 81 * 508 and ref.max() == 1  # one instance, the whole tube
    return pred, block, ref, table


@pytest.fixture
def armed(tmp_path, monkeypatch):
    """Arm one fault: ``armed("segment.pieces:before round=[2-9]*", "raise")``."""
    folder = tmp_path / "fault"
    folder.mkdir()

    def arm(pattern: str, action: str):
        monkeypatch.setenv("BLOCKSEG_FAULT", f"{pattern}={action}")
        monkeypatch.setenv("BLOCKSEG_FAULT_DIR", str(folder))
        return folder / "fired"

    return arm


def _same_as_reference(out, report, ref, table):
    labels = open_volume(out).array[:]
    assert np.array_equal(labels, ref), f"{int((labels != ref).sum())} voxels differ from segment_array"
    got = {k: v for k, v in read_table(report.table_path).items() if "_um" not in k}
    assert list(got) == list(table)
    for c in table:
        assert np.allclose(np.asarray(table[c], float), np.asarray(got[c], float), rtol=1e-5, atol=0), c


def test_fault_point_fires_once_and_only_where_named(armed):
    fired = armed("segment.pieces:before round=2 *", "raise")
    fault_point("segment.pieces:before", round=1, block=0)
    fault_point("segment.state:before", round=2, block=0)
    assert not fired.exists()
    with pytest.raises(FaultInjected, match="round=2 block=5"):
        fault_point("segment.pieces:before", round=2, block=5)
    assert fired.read_text() == "segment.pieces:before round=2 block=5"
    fault_point("segment.pieces:before", round=2, block=5)  # fired already: the retry passes


@pytest.mark.parametrize("point", ["segment.pieces:before", "segment.pieces:after", "segment.state:before",
                                   "segment.state:after"])  # fmt: skip
def test_lost_update_regression_in_process(tube, armed, tmp_path, point):
    """The lost update of issue 29: a later-round task fails at one of its writes and runs
    again. It used to restart from the solution its first attempt had saved, update nothing,
    republish the previous round's pieces and wake nobody: exit 0 with half the tube
    background. Now every attempt starts from the previous run's solution."""
    pred, block, ref, table = tube
    fired = armed(f"{point} round=3 block=2", "raise")
    report = segment(pred, tmp_path / "seg.zarr", DECODER, block_shape=block, halo=8, tile_voxels=ONE_BLOCK)
    assert fired.exists(), "the fault never fired"
    _same_as_reference(tmp_path / "seg.zarr", report, ref, table)
    assert len(report.rounds) == 9
    assert report.retried == {"watershed-round-3": [2]}


@pytest.mark.slow
@pytest.mark.parametrize("action", ["raise", "kill"])
def test_lost_update_regression_on_a_cluster(tube, armed, tmp_path, action):
    """The issue's reproduction: 2 worker processes, the first pieces write of some block in a
    round >= 2 raises once or kills its worker; dask runs the task again."""
    pred, block, ref, table = tube
    fired = armed("segment.pieces:before round=[2-9]*", action)
    with dask_client(ClusterConfig(n_workers=2, memory_limit="2GiB", dashboard=False), quiet=True) as client:
        report = segment(pred, tmp_path / "seg.zarr", DECODER, block_shape=block, halo=8, client=client,
                         tile_voxels=ONE_BLOCK)  # fmt: skip
    assert fired.exists(), "the fault never fired"
    _same_as_reference(tmp_path / "seg.zarr", report, ref, table)
    assert len(report.rounds) == 9
    assert sum(len(b) for b in report.retried.values()) >= 1


# ---------------------------------------------------------------------------- segment resume
_DRIVER = """
import sys
from blockseg.segment import BCDDecoder, segment
segment(sys.argv[1], sys.argv[2], BCDDecoder(min_seed_size=1, min_size=1), block_shape=(32, 32, 64), halo=8,
        tile_voxels=1)
"""


@pytest.mark.slow  # segment in a subprocess, killed, then resumed
def test_a_driver_killed_in_a_later_round_resumes_from_its_journal(tube, armed, tmp_path):
    """SIGKILL the driver right after it journalled exchange round 3: the rerun reuses the
    seed pass and three rounds (it runs only the rest) and writes the whole-volume result."""
    import subprocess
    import sys

    pred, block, ref, table = tube
    out = tmp_path / "seg.zarr"
    fired = armed("segment.journal:after done=round round=3", "kill")
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(pred), str(out)], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())  # fmt: skip
    assert proc.returncode == -9 and fired.exists(), proc.stderr[-2000:]
    assert not out.exists() and (tmp_path / "seg.zarr.work" / "journal.json").exists()
    os.environ.pop("BLOCKSEG_FAULT")
    report = segment(pred, out, DECODER, block_shape=block, halo=8, tile_voxels=ONE_BLOCK)
    assert [r["round"] for r in report.rounds] == list(range(1, 10))
    reused = sum(r["blocks"] for r in report.rounds[:3])
    assert report.resumed == {"from": "round", "rounds": 3, "block_runs": reused} and reused >= 10
    assert "seeds" not in report.seconds and not (tmp_path / "seg.zarr.work").exists()
    _same_as_reference(out, report, ref, table)


def test_a_driver_that_failed_after_the_seeds_resumes_them_and_other_settings_start_afresh(tube, armed, tmp_path):
    pred, block, ref, table = tube
    out = tmp_path / "seg.zarr"
    armed("segment.journal:after done=seeds *", "raise")
    with pytest.raises(FaultInjected):
        segment(pred, out, DECODER, block_shape=block, halo=8, tile_voxels=ONE_BLOCK)
    report = segment(pred, out, DECODER, block_shape=block, halo=4)  # another plan: nothing reused
    assert report.resumed == {}
    _same_as_reference(out, report, ref, table)
    for point, resumed in [("done=seeds *", {"from": "seeds", "rounds": 0, "block_runs": 0}),
                           ("done=round round=1", {"from": "round", "rounds": 1, "block_runs": 8})]:  # fmt: skip
        armed(f"segment.journal:after {point}", "raise").unlink(missing_ok=True)
        with pytest.raises(FaultInjected):  # an existing output is replaced: --overwrite
            segment(pred, out, DECODER, block_shape=block, halo=8, overwrite=True, tile_voxels=ONE_BLOCK)
        _same_as_reference(out, report, ref, table)  # the old output is untouched
        report = segment(pred, out, DECODER, block_shape=block, halo=8, overwrite=True, tile_voxels=ONE_BLOCK)
        assert report.resumed == resumed
        _same_as_reference(out, report, ref, table)


def test_a_full_disk_while_the_labels_are_written_leaves_nothing_at_the_output(tube, tmp_path, monkeypatch):
    """Issue 34: the label volume is written beside the path and renamed in last, so a failure in
    the last pass (here the instance table meets a full disk) leaves no partial output to trust;
    the rerun resumes from the work folder and gives the reference result."""
    import errno

    from blockseg.segment import pipeline

    pred, block, ref, table = tube
    out = tmp_path / "seg.zarr"
    real = pipeline.write_table

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):
        segment(pred, out, DECODER, block_shape=block, halo=8)
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".seg.zarr")]
    assert (tmp_path / "seg.zarr.work").is_dir()  # what was computed is kept for the rerun
    monkeypatch.setattr(pipeline, "write_table", real)
    report = segment(pred, out, DECODER, block_shape=block, halo=8)
    assert report.resumed["from"] == "round"
    _same_as_reference(out, report, ref, table)


# ---------------------------------------------------------------------------- tiles
def test_tiles_take_the_tube_in_two_rounds_and_a_failing_tile_task_runs_again(tube, armed, tmp_path):
    """Default tiles hold the whole tube: round 2 runs its 7 later blocks in one task, one
    after the other, to the fixed point. A fault in that task's writes changes nothing."""
    pred, block, ref, table = tube
    report = segment(pred, tmp_path / "calm.zarr", DECODER, block_shape=block, halo=8)
    assert [r["round"] for r in report.rounds] == [1, 2] and report.rounds[1]["blocks"] >= 7
    _same_as_reference(tmp_path / "calm.zarr", report, ref, table)
    fired = armed("segment.pieces:before round=2 block=5", "raise")
    report = segment(pred, tmp_path / "seg.zarr", DECODER, block_shape=block, halo=8)
    assert fired.exists() and report.retried == {"watershed-round-2": [1]}  # the tile's pending block
    _same_as_reference(tmp_path / "seg.zarr", report, ref, table)


@pytest.mark.parametrize("tile_voxels", [1, 2 * 32 * 32 * 64, 4 * 32 * 32 * 64])
def test_rounds_fall_with_the_tile(tube, tmp_path, tile_voxels):
    """Tiles of T = 1, 2 and 4 blocks along the tube of 8 blocks: one round per face crossed
    between tiles (8 / T, the label's way out and the halo's echo back) and the first, the
    same labels."""
    pred, block, ref, table = tube
    report = segment(pred, tmp_path / "seg.zarr", DECODER, block_shape=block, halo=8, tile_voxels=tile_voxels)
    t = max(1, tile_voxels // (32 * 32 * 64))
    assert len(report.rounds) == 9 if t == 1 else 8 // t + 1 <= len(report.rounds) <= 8 // t + 2
    _same_as_reference(tmp_path / "seg.zarr", report, ref, table)


def test_tile_shape_doubles_the_thinnest_axis_within_the_budget():
    from blockseg.grid import BlockGrid
    from blockseg.segment.pipeline import tile_shape

    grid = BlockGrid((512, 512, 512), (64, 64, 64))
    assert tile_shape(grid, 1) == (1, 1, 1)
    assert tile_shape(grid, 8 * 64**3) == (2, 2, 2)
    assert tile_shape(grid, 4 * 64**3) == (1, 2, 2)
    assert tile_shape(BlockGrid((64, 64, 1024), (64, 64, 64)), 4 * 64**3) == (1, 1, 4)
