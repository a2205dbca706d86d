"""Segment's exchange rounds keep later updates as deltas (issue 29, goal 3): a later round
writes the entries it changed, not its whole region, and the result is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from blockseg.segment import pipeline
from blockseg.io.volume import open_volume
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.segment import BCDDecoder, segment, segment_array
from _helpers import tube_predictions

DECODER = BCDDecoder(min_seed_size=1, min_size=1)


@pytest.mark.parametrize("fraction", [pipeline._DELTA_FRACTION, 0.0, 1.0])
def test_deltas_and_full_solutions_give_the_same_labels(tmp_path, monkeypatch, fraction):
    """Default: later rounds of a tube write deltas far smaller than the region; 0: every
    update saved in full (the old behaviour); 1: never compacted. All equal segment_array."""
    monkeypatch.setattr(pipeline, "_DELTA_FRACTION", fraction)
    pred, block = tube_predictions(tmp_path, length=256, blocks=4)
    ref = segment_array(read_channels(open_predictions(pred), (slice(None),) * 3), DECODER)
    out = tmp_path / "seg.zarr"
    report = segment(pred, out, DECODER, block_shape=block, halo=8, keep_work=True)
    assert np.array_equal(open_volume(out).array[:], ref) and len(report.rounds) == 2  # one tile
    states = tmp_path / "seg.zarr.work" / "state"
    deltas = sorted(states.glob("*/*.delta.npz"))
    full = sorted(p for p in states.glob("*/*.npz") if not p.name.endswith(".delta.npz"))
    assert len(full) == 4  # after pruning, one full solution per block
    if fraction == 0.0:
        assert deltas == []
    else:
        assert len(deltas) >= 3  # blocks 1..3 were updated in later rounds
        region = pipeline._read_state(str(full[0]))[0].size
        assert all(np.load(d)["i"].size < fraction * region for d in deltas)


def test_saved_solutions_are_compressed_and_read_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    state = (rng.integers(0, 5, (6, 7, 8)).astype(np.uint32), rng.integers(0, 256, (6, 7, 8)).astype(np.uint16),
             np.zeros((6, 7, 8), np.uint32), rng.integers(0, 256, (6, 7, 8)).astype(np.uint8),
             np.ones((6, 7, 8), np.uint8))  # fmt: skip
    pipeline._save_state(str(tmp_path), 3, state)
    back = pipeline._read_state(str(tmp_path / "3.npz"))
    assert all(a.dtype == b.dtype and np.array_equal(a, b) and b.flags.writeable for a, b in zip(state, back))
    pipeline._save_state(str(tmp_path), 3, tuple(a + 1 for a in state))  # a complete one is never replaced
    assert np.array_equal(pipeline._read_state(str(tmp_path / "3.npz"))[0], state[0])
