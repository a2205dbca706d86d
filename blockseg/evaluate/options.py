"""The options of :func:`blockseg.evaluate.evaluate`: one model for every door.

:class:`EvaluateOptions` is what the Python API's keyword arguments (:func:`evaluate` and
:func:`~blockseg.evaluate.report.write_report`'s ``png``), the run config's ``evaluate`` section
and ``blockseg evaluate``'s flags fill in: one default and one check per option, here. The
inputs themselves (volumes, mask, scores, points) are data, not options.

Two doors spell or default an option their own way, on purpose:

- the run config calls ``radius_um`` ``detection_radius_um`` (its key since the first configs)
  and the CLI ``--radius``;
- the run scores detection with the predicted instances' centroids
  (:data:`RUN_CENTROID_POINTS`, ``evaluate.centroid_points: false`` turns it off), while the API
  and the CLI score it only when asked (``points="centroids"``, ``--centroid-points``): a
  second, GT-only pass that a one-off evaluation need not pay.

Examples
--------
>>> EvaluateOptions().thresholds
(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
>>> evaluate_options(size_ranges=(100, 1000)).ranges["medium"]
(100, 1000)
>>> evaluate_options(thresholds=[0.5, 1.5])
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: thresholds: must be IoU thresholds in (0, 1], got [0.5, 1.5]
"""

from __future__ import annotations

import numbers
from typing import Annotated, Callable, Mapping, Union

import numpy as np
from pydantic import BeforeValidator, Field

from ..options import Strict, WholeNumber, validate

__all__ = [
    "COCO_THRESHOLDS", "DEFAULT_RADIUS_UM", "DEFAULT_SIZE_BOUNDS", "DEFAULT_SIZE_RANGES", "DEFAULT_THRESHOLDS",
    "EVAL_BLOCK_VOXELS", "EvaluateOptions", "RUN_CENTROID_POINTS", "evaluate_options", "size_ranges",
]  # fmt: skip

#: IoU thresholds of the matching metrics (StarDist's 0.1, ..., 0.9)
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: COCO IoU thresholds 0.50:0.05:0.95
COCO_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: GT voxel counts separating small / medium / large for COCO AP (those of mAP_3Dvolume's demo)
DEFAULT_SIZE_BOUNDS = (5e3, 1.5e4)
#: detection matching radius in µm
DEFAULT_RADIUS_UM = 3.0
#: IoU of the per-instance matches (instances.csv), and the merge / split fractions
DEFAULT_FRACTION = 0.5
#: voxels per block of the evaluation pass (two label blocks + temporaries stay < 200 MB)
EVAL_BLOCK_VOXELS = 2**22
#: the run config's default of ``centroid_points`` (the API's and the CLI's is False; see above)
RUN_CENTROID_POINTS = True


def size_ranges(bounds: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """The small / medium / large GT size ranges ``[lo, hi)`` split at two voxel counts."""
    a, b = bounds
    return {"small": (0, a), "medium": (a, b), "large": (b, np.inf)}


#: default GT size ranges in voxels: [lo, hi)
DEFAULT_SIZE_RANGES: dict[str, tuple[float, float]] = size_ranges(DEFAULT_SIZE_BOUNDS)


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _plain(v) -> int | float:
    """A number as given (a whole number stays whole), as a Python int or float."""
    return int(v) if isinstance(v, numbers.Integral) else float(v)


def _iou_thresholds(v):
    """A non-empty sequence of IoU thresholds in (0, 1], as a tuple of floats."""
    values = list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
    if not values or not all(_number(t) and 0 < t <= 1 for t in values):
        shown = [float(t) if _number(t) else t for t in values] if values is not None else v
        raise ValueError(f"must be IoU thresholds in (0, 1], got {shown}")
    return tuple(float(t) for t in values)


def _size_ranges(v):
    """Two increasing voxel counts > 0 (small < A ≤ medium < B ≤ large), or a mapping
    name -> ``(lo, hi)`` with ``0 ≤ lo < hi``."""
    if isinstance(v, Mapping):
        out = {}
        for name, r in v.items():
            r = list(r) if isinstance(r, (list, tuple, np.ndarray)) else None
            if not (r and len(r) == 2 and all(map(_number, r)) and 0 <= r[0] < r[1]):
                raise ValueError(f"{name!r}: must be a range (lo, hi) of voxel counts with 0 ≤ lo < hi")
            out[str(name)] = (_plain(r[0]), _plain(r[1]))
        return out
    pair = list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
    if not (pair and len(pair) == 2 and all(map(_number, pair)) and 0 < pair[0] < pair[1] < np.inf):
        raise ValueError(f"must be two increasing positive voxel counts (small < A ≤ medium < B ≤ large), got {v}")
    return (_plain(pair[0]), _plain(pair[1]))


IoUThresholds = Annotated[tuple[float, ...], BeforeValidator(_iou_thresholds)]
_Pair = tuple[Union[int, float], Union[int, float]]
SizeRanges = Annotated[Union[_Pair, dict[str, _Pair]], BeforeValidator(_size_ranges)]


def _fraction(what: str):
    return Field(DEFAULT_FRACTION, gt=0, le=1, description=f"{what} (default {DEFAULT_FRACTION})")


class EvaluateOptions(Strict):
    """The metric settings of evaluate (what is scored, and how)."""

    thresholds: IoUThresholds = Field(
        DEFAULT_THRESHOLDS, description="IoU thresholds of the matching metrics (default 0.1,...,0.9)"
    )
    coco_thresholds: IoUThresholds = Field(COCO_THRESHOLDS, description="IoU thresholds of COCO AP (default 0.50:0.05:0.95)")
    size_ranges: SizeRanges = Field(
        DEFAULT_SIZE_BOUNDS,
        description="GT voxel counts separating small/medium/large for COCO AP (default 5000,15000); the API also "
        "takes a mapping name -> (lo, hi)",
    )  # fmt: skip
    radius_um: float = Field(DEFAULT_RADIUS_UM, gt=0, description=f"detection matching radius in µm (default {DEFAULT_RADIUS_UM:g})")
    report_threshold: float = _fraction("IoU threshold of the per-instance matches in instances.csv")
    merge_threshold: float = _fraction("GT fraction a prediction must cover to count in a merge")
    split_threshold: float = _fraction("prediction fraction inside a GT to count in a split")
    centroid_points: bool = Field(
        False, description="detection metrics with the centres of mass of the predicted instances as points "
        "(costs a second, GT-only pass)",
    )  # fmt: skip
    png: bool = Field(True, description="draw ap_vs_iou.png")
    block_voxels: WholeNumber = Field(
        EVAL_BLOCK_VOXELS, ge=1, description=f"voxels per block of the pass (default {EVAL_BLOCK_VOXELS}; a speed and memory knob)"
    )

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        """The GT size ranges, name -> ``[lo, hi)``."""
        return dict(self.size_ranges) if isinstance(self.size_ranges, dict) else size_ranges(self.size_ranges)


def evaluate_options(spell: Callable[[str], str] | None = None, **values) -> EvaluateOptions:
    """:class:`EvaluateOptions` from keyword values; None means "the default" (as in the API's
    signature). One :class:`~blockseg.errors.BlocksegError` line for a bad value, its key spelled
    by ``spell`` (the CLI's flags)."""
    return validate(EvaluateOptions, {k: v for k, v in values.items() if v is not None}, spell)
