"""blockseg.zyx: the one normaliser of "one value or a (z, y, x) triple"."""

import numpy as np
import pytest

from blockseg import BlocksegError
from blockseg.zyx import zyx


@pytest.mark.parametrize(
    "value, kwargs, expected",
    [
        (8, {}, (8, 8, 8)),
        ((1, 2, 3), {}, (1, 2, 3)),
        ([1, 2, 3], {}, (1, 2, 3)),
        (np.array([4, 5, 6]), {}, (4, 5, 6)),
        (np.int64(7), {}, (7, 7, 7)),
        (4.0, {}, (4, 4, 4)),  # a whole float is a whole number
        (0, {"at_least": 0}, (0, 0, 0)),
        (0.5, {"kind": float, "above": 0}, (0.5, 0.5, 0.5)),
        ([1, 0.25, 0.25], {"kind": float, "above": 0}, (1.0, 0.25, 0.25)),
        ((2, 3), {"axes": 2}, (2, 3)),
        (None, {"at_least": 1}, None),
    ],
)
def test_accepts(value, kwargs, expected):
    out = zyx(value, "opt", **kwargs)
    assert out == expected
    if out is not None:
        assert all(type(v) is kwargs.get("kind", int) for v in out)


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        ([16, 32], {}, "--halo must be one whole number or three (z y x), got [16, 32]"),
        ("8", {}, "--halo must be one whole number or three (z y x), got '8'"),
        (True, {}, "--halo must be one whole number or three (z y x), got True"),
        (4.5, {}, "--halo must be one whole number or three (z y x), got 4.5"),
        ([1, 2, float("nan")], {"kind": float}, "--halo must be one number or three (z y x), got [1, 2, nan]"),
        (-1, {"at_least": 0}, "--halo must be ≥ 0, got -1"),
        ((1, 0, 1), {"kind": float, "above": 0}, "--halo must be > 0, got (1, 0, 1)"),
        (5, {"scalar": False}, "--halo must be three whole numbers (z y x), got 5"),
        ((1, 2, 3), {"axes": 2}, "--halo must be one whole number or two (one per axis), got (1, 2, 3)"),
    ],
)
def test_refuses_in_one_line_naming_the_option(value, kwargs, message):
    with pytest.raises(BlocksegError) as e:
        zyx(value, "--halo", **kwargs)
    assert str(e.value) == message


def test_without_a_name_the_message_starts_at_must():
    with pytest.raises(BlocksegError, match=r"^must be ≥ 1, got 0$"):
        zyx(0, None, at_least=1)
