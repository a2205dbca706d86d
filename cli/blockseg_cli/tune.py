"""``blockseg tune``: tune a prediction store's decoder thresholds on annotated nuclei (no training)."""

from __future__ import annotations

import argparse
import json

from blockseg import BlocksegError

from .options import floats

HELP = "tune the decoder thresholds of a prediction store on annotated nuclei, without training"


def _grid_entry(text: str) -> tuple[str, list[float]]:
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,..., got {text!r}")
    return name.strip(), floats(values)


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help=HELP,
        description=HELP + ". Searches the decoder's thresholds on the annotated region (best COCO AP-50, then "
        "AP-75; an edge of the grid is widened) and writes them into the store as its decoder recommendation, "
        "which `segment` then uses for the whole volume. A few dozen annotated nuclei in a small region are enough; "
        "every nucleus inside the region must be annotated.",
    )
    p.add_argument("predictions", help="prediction store written by `blockseg predict`")
    p.add_argument("labels", help="instance labels (0 = background): a volume of the store's shape, or of the region's shape")
    p.add_argument("--region", metavar="Z0:Z1,Y0:Y1,X0:X1", help="the annotated box of the store (default: all); bounds may be left out")
    p.add_argument("--decoder", help="decoder to tune (default: the store's recommended one, else bcd)")
    p.add_argument(
        "--grid", type=_grid_entry, action="append", metavar="NAME=V1,V2,...",
        help="values of one threshold to search (repeatable; default: blockseg.pipeline.tune.DEFAULT_GRIDS for the decoder)",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="report the tuned thresholds without writing them into the store")
    p.add_argument(
        "--save-checkpoint", metavar="OUT.pt",
        help="also write a copy of the store's checkpoint recommending the tuned thresholds (for other volumes of the same kind; OUT must not exist)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.pipeline.tune import save_tuned_checkpoint, tune_store

    grid = dict(args.grid) if args.grid else None
    if grid is not None and len(grid) != len(args.grid):
        raise BlocksegError("--grid names one threshold twice")
    if args.save_checkpoint:
        if args.dry_run:
            raise BlocksegError("--save-checkpoint needs the tuned thresholds written: drop --dry-run")
        from blockseg.io.safety import prepare_output

        prepare_output(args.save_checkpoint, [args.predictions, args.labels], what="checkpoint")  # before the store changes
    res = tune_store(args.predictions, args.labels, region=args.region, decoder=args.decoder, grid=grid, write=not args.dry_run)
    saved = save_tuned_checkpoint(args.predictions, args.save_checkpoint) if args.save_checkpoint else None
    if args.json:
        print(json.dumps({**res.to_dict(), "saved_checkpoint": saved}, indent=2))
    else:
        print(res.describe() + (f"; checkpoint with these thresholds: {saved}" if saved else ""))
    return 0
