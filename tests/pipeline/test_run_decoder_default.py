"""A minimal run config (``model: {checkpoint: NAME}`` + data) takes the checkpoint's recommended
decoder and tuned thresholds when ``segment.decoder`` is not given (issue 32 goal 5)."""

from __future__ import annotations

import pytest

from blockseg import BlocksegError
from blockseg.pipeline.config import parse_config
from blockseg.pipeline.runcheck import check_config


def _cfg(tmp_path, **extra):
    return parse_config({"run_dir": str(tmp_path / "run"), "data": {"synth": {"shape": [16, 48, 48]}}, **extra})


@pytest.mark.parametrize("name, decoder", [("fluo", "3label"), ("demo", "bcd"), ("fluo_synth", "bcd")])
def test_minimal_config_takes_the_checkpoints_decoder(tmp_path, name, decoder):
    _, choice = check_config(_cfg(tmp_path, model={"checkpoint": name}))
    assert choice.decoder.name == decoder
    # the tuned thresholds come from the checkpoint, not the decoder's defaults
    assert "checkpoint" in set(choice.sources.values())


def test_a_given_decoder_still_wins_and_is_checked(tmp_path):
    with pytest.raises(BlocksegError, match="segment.decoder"):
        check_config(_cfg(tmp_path, model={"checkpoint": "fluo"}, segment={"decoder": "bcd"}))
    _, choice = check_config(_cfg(tmp_path, model={"checkpoint": "fluo"}, segment={"decoder": "3label", "params": {"fg_t": 0.5}}))
    assert choice.decoder.name == "3label" and choice.decoder.params()["fg_t"] == 0.5


def test_params_without_a_decoder_are_checked_against_the_checkpoints(tmp_path):
    with pytest.raises(BlocksegError, match="seed_b|parameter"):
        check_config(_cfg(tmp_path, model={"checkpoint": "fluo"}, segment={"params": {"seed_b": 0.5}}))
