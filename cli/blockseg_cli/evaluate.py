"""``blockseg evaluate``: score an instance segmentation against ground truth."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from blockseg import BlocksegError
from blockseg.io.storage import has_scheme
from blockseg.io.tables import read_table, table_header

from .options import absolute, add_cluster_options, flag, floats, open_cluster, progress_mode

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
    from blockseg.evaluate.options import EvaluateOptions

    # one default, check and text per option, the model's (the API and the run config use it too);
    # every flag is unset (None / False) by default, so the model's default applies
    about = {k: f.description for k, f in EvaluateOptions.model_fields.items()}
    p.add_argument("--thresholds", type=floats, metavar="T,T,...", help=about["thresholds"])
    p.add_argument("--coco-thresholds", type=floats, metavar="T,T,...", help=about["coco_thresholds"])
    p.add_argument("--size-ranges", type=floats, metavar="A,B", help=about["size_ranges"].split("; the API")[0])
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
    p.add_argument("--centroid-points", action="store_true", help=about["centroid_points"])
    p.add_argument("--radius", type=float, metavar="UM", help=about["radius_um"])
    p.add_argument("--report-threshold", type=float, help=about["report_threshold"])
    p.add_argument("--merge-threshold", type=float, help=about["merge_threshold"])
    p.add_argument("--split-threshold", type=float, help=about["split_threshold"])
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


#: options spelled otherwise on the command line than in the options model
_FLAGS = {"radius_um": "--radius", "png": "--no-png"}


def options(args: argparse.Namespace):
    """The :class:`~blockseg.evaluate.options.EvaluateOptions` of the command line; a bad value
    is one line naming its flag."""
    from blockseg.evaluate.options import evaluate_options

    return evaluate_options(
        lambda key: _FLAGS.get(key) or flag(key), thresholds=args.thresholds, coco_thresholds=args.coco_thresholds,
        size_ranges=args.size_ranges, radius_um=args.radius, report_threshold=args.report_threshold,
        merge_threshold=args.merge_threshold, split_threshold=args.split_threshold, centroid_points=args.centroid_points,
        png=not args.no_png,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from blockseg.evaluate import check_inputs, evaluate, write_report

    opts = options(args)  # before reading anything
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
    from blockseg.io.safety import prepare_output

    inputs = args.gt + args.pred + (args.mask or []) + [p for p in (args.scores, args.points) if p]
    for k in range(n):  # shapes, dtypes and label-likeness before any cluster starts
        check_inputs(args.gt[k], args.pred[k], args.mask[k] if args.mask else None, labels_anyway=args.labels_anyway)
    if not args.dry_run:
        prepare_output(args.out, inputs, args.overwrite, what="report folder")  # before any cluster starts
    scores = _scores(args.scores, args.score_column) if args.scores else None
    points: object = "centroids" if opts.centroid_points else None
    if args.points and opts.centroid_points:
        raise BlocksegError("give either --points or --centroid-points, not both")
    if args.points:
        if n != 1:
            raise BlocksegError("--points works with one --gt volume")
        t = read_table(args.points, ["z", "y", "x"], "--points")
        points = np.c_[t["z"], t["y"], t["x"]]
    kwargs = dict(
        mask=(args.mask if n > 1 else args.mask[0]) if args.mask else None,
        scores=[scores] * n if (scores is not None and n > 1) else scores,
        points=points,
        **opts.model_dump(include={"thresholds", "coco_thresholds", "size_ranges", "radius_um", "report_threshold"}),
    )
    gt, pred = (args.gt, args.pred) if n > 1 else (args.gt[0], args.pred[0])
    if args.dry_run:
        print(evaluate(gt, pred, dry_run=True, **kwargs).describe())
        return 0
    with open_cluster(args, args.gt + args.pred + (args.mask or []), [], quiet=args.no_progress or args.quiet) as client:
        result = evaluate(gt, pred, merge_threshold=opts.merge_threshold, split_threshold=opts.split_threshold,
                          client=client, progress=progress_mode(args) != "none", **kwargs)  # fmt: skip
    paths = write_report(result, args.out, png=opts.png, overwrite=args.overwrite, inputs=inputs)
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
