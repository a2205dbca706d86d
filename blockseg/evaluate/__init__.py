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

from .._lazy import attach

#: public name -> submodule; imported on first use (``import blockseg`` compiles no kernel)
_EXPORTS = {
    "best_partners": "analysis", "merges_and_splits": "analysis",
    "COCO_THRESHOLDS": "coco", "DEFAULT_SIZE_RANGES": "coco", "coco_ap": "coco", "greedy_match": "coco", "interpolated_ap": "coco",
    "ContingencyTable": "contingency", "contingency_table": "contingency", "merge_tables": "contingency", "reduce_tables": "contingency",
    "EvaluationResult": "core", "check_inputs": "core", "evaluate": "core", "evaluate_overlaps": "core", "sample_volume": "core", "volume_table": "core",
    "inside_nearest_match": "detection", "radius_match": "detection",
    "DEFAULT_THRESHOLDS": "matching", "Matching": "matching", "match_instances": "matching", "matching_metrics": "matching", "matching_stats": "matching", "max_weight_matching": "matching",
    "Overlaps": "overlaps", "concat_overlaps": "overlaps", "overlaps_from_table": "overlaps",
    "instance_table": "report", "plot_ap": "report", "write_report": "report",
}  # fmt: skip
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)
