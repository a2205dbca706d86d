"""Streaming instance-segmentation evaluation (``blockseg evaluate``).

One blockwise pass builds a sparse contingency table of (gt id, pred id) voxel counts; every
metric is computed from that table (and, for detection, a lookup of the GT label under each
point), so memory is O(overlapping pairs), never O(volume) or O(#gt x #pred).

Examples
--------
>>> import numpy as np
>>> from blockseg.evaluate import evaluate
>>> gt = np.zeros((4, 8, 8), np.uint16); gt[:, :4] = 1; gt[:, 4:] = 2
>>> res = evaluate(gt, gt, points=None)
>>> res.matching[0]["tp"], res.av_ap
(2, 1.0)
"""

from .analysis import best_partners, merges_and_splits
from .coco import COCO_THRESHOLDS, DEFAULT_SIZE_RANGES, coco_ap, greedy_match, interpolated_ap
from .contingency import ContingencyTable, contingency_table, merge_tables, reduce_tables
from .core import EvaluationResult, check_inputs, evaluate, evaluate_overlaps, sample_volume, volume_table
from .detection import inside_nearest_match, radius_match
from .matching import DEFAULT_THRESHOLDS, Matching, match_instances, matching_metrics, matching_stats, max_weight_matching
from .overlaps import Overlaps, concat_overlaps, overlaps_from_table
from .report import instance_table, plot_ap, write_report

__all__ = [
    "COCO_THRESHOLDS",
    "DEFAULT_SIZE_RANGES",
    "DEFAULT_THRESHOLDS",
    "ContingencyTable",
    "EvaluationResult",
    "Matching",
    "Overlaps",
    "best_partners",
    "check_inputs",
    "coco_ap",
    "concat_overlaps",
    "contingency_table",
    "evaluate",
    "evaluate_overlaps",
    "greedy_match",
    "inside_nearest_match",
    "instance_table",
    "interpolated_ap",
    "match_instances",
    "matching_metrics",
    "matching_stats",
    "max_weight_matching",
    "merge_tables",
    "merges_and_splits",
    "overlaps_from_table",
    "plot_ap",
    "radius_match",
    "reduce_tables",
    "sample_volume",
    "volume_table",
    "write_report",
]

from .._callable import make_callable as _make_callable

_make_callable(__name__, "evaluate")
