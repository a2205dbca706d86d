"""Every value a decoder's declared bounds accept works (issue 29, goal 6).

A parameter's ``bounds`` are what the CLI, the run config and ``tune`` let through, so any
value inside them must decode and segment without raising. (``max_vector=0`` used to pass the
check ">= 0" and end in ZeroDivisionError.)
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockseg.errors import BlocksegError
from blockseg.segment import segment_array
from blockseg.segment.decoders import CPVDecoder
from blockseg.segment.decoders import DECODERS

#: stand-in for an open upper bound (a count of voxels or votes)
_OPEN = 64


def _value(cls, name):
    lo, hi = cls.bounds.get(name, (None, None))
    if name in cls.integers:
        return st.integers(0 if lo is None else int(lo), _OPEN if hi is None else int(hi))
    lo = -1e3 if lo is None else lo
    hi = 1e3 if hi is None else hi
    return st.floats(lo, hi, allow_nan=False) | st.sampled_from([lo, hi])


def _params(cls):
    return st.fixed_dictionaries({f.name: _value(cls, f.name) for f in fields(cls)})


def _channels(cls, rng, shape=(6, 7, 8)):
    out = {}
    for c in cls.channels:
        if c.startswith("cpv"):
            out[c] = rng.uniform(-20, 20, shape).astype(np.float32)
        elif c in ("D", "sdt"):
            out[c] = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            out[c] = rng.uniform(0, 1, shape).astype(np.float32)
    return out


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_every_value_inside_the_bounds_decodes_and_segments(name):
    cls = DECODERS[name]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=_params(cls), seed=st.integers(0, 2**16))
    def check(params, seed):
        decoder = cls(**params)
        ch = _channels(cls, np.random.default_rng(seed))
        seeds, fg, height = decoder.decode(ch)
        assert seeds.shape == fg.shape == height.shape == (6, 7, 8) and height.dtype == np.uint8
        labels = segment_array(ch, decoder)
        assert labels.shape == (6, 7, 8) and (labels[~fg] == 0).all()

    check()


def test_max_vector_zero_is_refused_in_one_line():
    with pytest.raises(BlocksegError, match=r"^cpv: max_vector must be >= 1, got 0$"):
        CPVDecoder(max_vector=0)
