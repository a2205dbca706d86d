"""``blockseg evaluate``: score an instance segmentation against ground truth."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from blockseg import BlocksegError
from blockseg.io.storage import has_scheme
from blockseg.io.tables import read_table, table_header

from .options import absolute, add_cluster_options, floats, open_cluster, progress_mode

#: the files ``write_report`` writes into --out
REPORT_FILES = ("evaluation.json", "instances.csv", "ap_vs_iou.png")
HELP = "score an instance segmentation against ground-truth labels (streaming, sparse)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help=HELP,
        description=HELP + ". One blockwise pass builds a sparse (gt, pred) overlap table; "
        "memory stays O(overlapping pairs). Writes evaluation.json, instances.csv (worst first) and ap_vs_iou.png.",
    )
    p.add_argument("--gt", required=True, nargs="+", metavar="GT.zarr", help="ground-truth label volume(s): OME-Zarr, zarr, TIFF, HDF5, npy/npz; PATH#level=N&channel=C&timepoint=T&key=K picks a view")
    p.add_argument("--pred", required=True, nargs="+", metavar="SEG.zarr", help="predicted label volume(s), one per --gt")
    p.add_argument(
        "--mask", nargs="+", metavar="VALID.zarr",
        help="valid-region volume(s) (non-zero = valid); voxels outside are ignored and instances are cut to the mask",
    )  # fmt: skip
    p.add_argument("--out", default="evaluation", metavar="DIR", help="output folder for the reports (default: ./evaluation)")
    p.add_argument(
        "--thresholds", type=floats, default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], metavar="T,T,...",
        help="IoU thresholds of the matching metrics (default 0.1,...,0.9)",
    )  # fmt: skip
    p.add_argument(
        "--coco-thresholds", type=floats, default=[round(0.5 + 0.05 * i, 2) for i in range(10)], metavar="T,T,...",
        help="IoU thresholds of COCO AP (default 0.50:0.05:0.95)",
    )  # fmt: skip
    p.add_argument(
        "--size-ranges", type=floats, default=[5e3, 1.5e4], metavar="A,B",
        help="GT voxel counts separating small/medium/large for COCO AP (default 5000,15000)",
    )  # fmt: skip
    p.add_argument(
        "--scores", metavar="TABLE.csv",
        help="CSV with per-prediction scores for COCO ranking (columns: id or label, and --score-column); "
        "default ranks by voxel count",
    )  # fmt: skip
    p.add_argument("--score-column", default="score", help="column of --scores holding the score (default: score)")
    p.add_argument(
        "--points", metavar="POINTS.csv",
        help="CSV of predicted centre points (columns z, y, x in voxels) for the detection metrics "
        "(default: no detection metrics unless --centroid-points)",
    )  # fmt: skip
    p.add_argument(
        "--centroid-points", action="store_true",
        help="detection metrics with the centres of mass of the predicted instances as points "
        "(costs a second, GT-only pass)",
    )  # fmt: skip
    p.add_argument("--radius", type=float, default=3.0, metavar="UM", help="detection matching radius in µm (default 3)")
    p.add_argument(
        "--report-threshold", type=float, default=0.5,
        help="IoU threshold of the per-instance matches in instances.csv (default 0.5)",
    )  # fmt: skip
    p.add_argument("--merge-threshold", type=float, default=0.5, help="GT fraction a prediction must cover to count in a merge")
    p.add_argument("--split-threshold", type=float, default=0.5, help="prediction fraction inside a GT to count in a split")
    p.add_argument("--no-png", action="store_true", help="do not draw ap_vs_iou.png")
    p.add_argument(
        "--labels-anyway", action="store_true",
        help="score --gt / --pred as labels even when they do not look like instance labels (a prediction store's "
        "channel, or a volume whose neighbouring voxels mostly differ, as in a raw image, is refused otherwise)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace the reports of an earlier evaluation in --out")
    p.add_argument("--dry-run", action="store_true", help="print the plan (volumes, blocks, settings); read no block, write nothing")
    add_cluster_options(p)
    p.set_defaults(func=run)


def _scores(path: str, column: str) -> np.ndarray:
    id_col = "id" if "id" in table_header(path) else "label"
    t = read_table(path, [id_col, column], "--scores")
    return np.c_[t[id_col], t[column]]


def run(args: argparse.Namespace) -> int:
    from blockseg.evaluate import check_inputs, evaluate, write_report

    n = len(args.gt)
    if len(args.pred) != n:
        raise BlocksegError(f"{n} --gt volume(s) but {len(args.pred)} --pred volume(s)")
    if args.mask and len(args.mask) != n:
        raise BlocksegError(f"{len(args.mask)} --mask volume(s) for {n} --gt volume(s)")
    args.gt, args.pred = [absolute(p) for p in args.gt], [absolute(p) for p in args.pred]
    args.mask = [absolute(p) for p in args.mask] if args.mask else args.mask
    for path in args.gt + args.pred + (args.mask or []):
        if not has_scheme(path) and not os.path.exists(path.split("#")[0]):
            raise BlocksegError(f"{path}: no such file or directory")
    if len(args.size_ranges) != 2 or not 0 < args.size_ranges[0] < args.size_ranges[1]:
        raise BlocksegError(f"--size-ranges needs two increasing positive numbers, got {args.size_ranges}")
    if args.radius <= 0:
        raise BlocksegError(f"--radius must be positive, got {args.radius}")
    from blockseg.io.safety import prepare_output

    inputs = args.gt + args.pred + (args.mask or []) + [p for p in (args.scores, args.points) if p]
    for k in range(n):  # shapes, dtypes and label-likeness before any cluster starts
        check_inputs(args.gt[k], args.pred[k], args.mask[k] if args.mask else None, labels_anyway=args.labels_anyway)
    if not args.dry_run:
        prepare_output(args.out, inputs, args.overwrite, what="report folder")  # before any cluster starts
    a, b = args.size_ranges
    ranges = {"small": (0, a), "medium": (a, b), "large": (b, float("inf"))}
    scores = _scores(args.scores, args.score_column) if args.scores else None
    points: object = "centroids" if args.centroid_points else None
    if args.points and args.centroid_points:
        raise BlocksegError("give either --points or --centroid-points, not both")
    if args.points:
        if n != 1:
            raise BlocksegError("--points works with one --gt volume")
        t = read_table(args.points, ["z", "y", "x"], "--points")
        points = np.c_[t["z"], t["y"], t["x"]]
    kwargs = dict(
        mask=(args.mask if n > 1 else args.mask[0]) if args.mask else None,
        thresholds=args.thresholds,
        coco_thresholds=args.coco_thresholds,
        size_ranges=ranges,
        scores=[scores] * n if (scores is not None and n > 1) else scores,
        points=points,
        radius_um=args.radius,
        report_threshold=args.report_threshold,
    )
    gt, pred = (args.gt, args.pred) if n > 1 else (args.gt[0], args.pred[0])
    if args.dry_run:
        print(evaluate(gt, pred, dry_run=True, **kwargs).describe())
        return 0
    with open_cluster(args, args.gt + args.pred + (args.mask or []), [], quiet=args.no_progress or args.quiet) as client:
        result = evaluate(gt, pred, merge_threshold=args.merge_threshold, split_threshold=args.split_threshold,
                          client=client, progress=progress_mode(args) != "none", **kwargs)  # fmt: skip
    paths = write_report(result, args.out, png=not args.no_png, overwrite=args.overwrite, inputs=inputs)
    s = result.summary()
    at = {m["threshold"]: m for m in s["matching"]}
    line = f"{s['n_true']} GT, {s['n_pred']} predicted; avAP {s['avAP']:.4f}"
    if 0.5 in at:
        m = at[0.5]
        line += f"; @0.5 accuracy {m['accuracy']:.4f} P {m['precision']:.4f} R {m['recall']:.4f} F1 {m['f1']:.4f}"
    coco = s["coco"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    line += f"; COCO AP {fmt(coco.get('AP'))} AP50 {fmt(coco.get('AP50'))} AP75 {fmt(coco.get('AP75'))}"
    print(line)
    print("reports: " + ", ".join(paths.values()), file=sys.stderr)
    return 0
