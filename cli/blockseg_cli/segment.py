"""``blockseg segment``: prediction store -> global instance labels (blockwise, seamless)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from .options import (
    absolute, add_block_shape_option, add_cluster_options, add_output_options, add_pyramid_option, as_given, check_output, flag,
    open_cluster, progress_mode,
)  # fmt: skip


def _param(text: str) -> tuple[str, float]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not a number") from None


def _range(cls, name: str) -> str:
    lo, hi = cls.bounds.get(name, (None, None))
    if lo is not None and hi is not None:
        return f" [{lo:g}, {hi:g}]"
    return f" (>= {lo:g})" if lo is not None else ""


def register(subparsers) -> None:
    from blockseg.segment import DECODERS
    from blockseg.segment.decoders import PRESETS

    lines = []
    for name, cls in DECODERS.items():
        params = ", ".join(f"{f.name}={f.default}{_range(cls, f.name)}" for f in fields(cls))
        lines.append(f"  {name}: channels {', '.join(cls.channels)}; {params}")
    p = subparsers.add_parser(
        "segment",
        help="turn a prediction zarr into a global instance-label zarr (blockwise seeded watershed)",
        description="Blockwise seeded watershed whose result equals a whole-volume run, voxel for voxel: "
        "seeds get global ids before flooding, ties are fixed by a rule every block can evaluate, and "
        "blocks exchange the values on their faces in rounds until none changes. The halo only sets "
        "speed (fewer rounds, more voxels read), never the result.\n\n"
        "Decoder parameters travel with the data: predict stores the checkpoint's recommended decoder "
        "and its tuned thresholds in the prediction store, and segment starts from them (else from the "
        "decoder's defaults); --preset replaces them with a named set; -p/--set change single "
        "parameters on top. The parameters and where each came from are printed and stored in "
        "OUTPUT's attributes (segment.params_source).",
        epilog="decoders and their parameters (defaults, range):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("predictions", help="prediction store (zarr group with one volume per channel), as predict writes it")
    add_output_options(p, "output", "label volume to create (OME-Zarr); the table goes to OUTPUT/instances.csv")
    p.add_argument("--decoder", choices=sorted(DECODERS), help="how channels become seeds, mask and height (default: the decoder stored with the predictions, else bcd)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named parameter set instead of the stored thresholds (nucmm: NucMM's reference bcd thresholds and size filters); -p overrides it")
    p.add_argument(
        "--param", "-p", "--set", dest="param", action="append", type=_param, default=[], metavar="NAME=VALUE",
        help="one decoder parameter over the stored ones, repeatable, e.g. -p fg_b=0.8 -p min_size=200",
    )  # fmt: skip
    p.add_argument("--no-stored-params", action="store_true", help="ignore the thresholds stored with the predictions: start from the decoder's defaults (or --preset)")
    from blockseg.segment.options import SegmentOptions

    about = {k: f.description for k, f in SegmentOptions.model_fields.items()}  # one text and default per option, the model's
    add_block_shape_option(p, about["block_shape"])
    p.add_argument("--halo", type=int, nargs="+", metavar="N", help=about["halo"])
    p.add_argument("--tile-voxels", type=int, metavar="N", help=about["tile_voxels"])
    p.add_argument("--keep-work", action="store_true", help=about["keep_work"])
    p.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    p.add_argument("--dry-run", action="store_true", help="print the plan (blocks, halo, decoder, work space, passes); write nothing")
    add_cluster_options(p)
    add_pyramid_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.io.predictions import check_complete, open_predictions
    from blockseg.segment import segment
    from blockseg.segment.params import choose_decoder, store_decoder
    from blockseg.segment.options import segment_options

    args.predictions, args.output = absolute(args.predictions), absolute(args.output)
    opts = segment_options(
        flag, block_shape=as_given(args.block_shape), halo=as_given(args.halo), tile_voxels=args.tile_voxels,
        pyramid_levels=args.pyramid_levels, keep_work=args.keep_work,
    )  # fmt: skip  (checked before a cluster starts, by the model the API and the run config use)
    open_predictions(args.predictions)  # a missing store, a foreign folder, an unfinished store: one line, here
    check_complete(args.predictions)  # stores written before the complete flag: their done-markers
    choice = choose_decoder(
        args.decoder, args.preset, dict(args.param), store_decoder(args.predictions), stored_label="store",
        user_label="user", use_stored=not args.no_stored_params,
    )  # fmt: skip
    if args.dry_run:
        plan = segment(args.predictions, args.output, decoder=choice, block_shape=opts.block_shape, halo=opts.halo,
                       tile_voxels=opts.tile_voxels, dry_run=True)  # fmt: skip
        print(plan.describe())
        return 0
    check_output(args, "output", [args.predictions])  # fail before starting a cluster
    if not args.json:
        print(choice.describe(), file=sys.stderr)
    with open_cluster(args, [args.predictions], [args.output], quiet=args.json or args.quiet) as client:
        report = segment(
            args.predictions,
            args.output,
            decoder=choice,
            block_shape=opts.block_shape,
            halo=opts.halo,
            client=client,
            overwrite=args.overwrite,
            keep_work=opts.keep_work,
            progress=progress_mode(args) != "none",
            pyramid_levels=opts.pyramid_levels,
            tile_voxels=opts.tile_voxels,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        if report.resumed:
            r = report.resumed
            print(f"resumed an interrupted run: reused its seed pass and {r['rounds']} exchange round(s) "
                  f"({r['block_runs']} block runs)", file=sys.stderr)  # fmt: skip
        for name, blocks in report.retried.items():
            print(f"{name}: block(s) {blocks} ran again after a failure (the output is the same)", file=sys.stderr)
        print(
            f"{report.n_instances} instances -> {report.labels_path} (table {report.table_path}); "
            f"{len(report.rounds)} exchange round(s), {report.blocks_rerun} block re-run(s), "
            f"{report.flood_amplification:.2f}x voxels flooded; {report.seconds['total']:.1f} s",
            file=sys.stderr,
        )
    return 0
