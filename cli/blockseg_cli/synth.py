"""``blockseg synth``: write a synthetic NucMM-like image + instance labels (+ mask) as OME-Zarr."""

from __future__ import annotations

import argparse
import json

from blockseg.io.volume import check_destination
from blockseg.synth import PRESETS, preset_params, synthesize

from .options import absolute, add_block_shape_option, add_cluster_options, add_pyramid_option, open_cluster, progress_mode, pyramid_levels, zyx


def register(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic NucMM-like volume with exact instance labels",
        description="Write OUT (uint8 image), OUT/labels/nuclei (uint32 instance labels), optionally "
        "OUT/labels/valid (mask) and OUT/nuclei.csv, block by block on Dask. The volume depends only on "
        "the parameters and --seed, never on the block shape. Defaults: the nucmm-z preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out", help="output OME-Zarr path")
    p.add_argument("--preset", choices=sorted(PRESETS), default="nucmm-z", help="starting parameters")
    p.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), help="volume shape (preset's if omitted)")
    p.add_argument("--voxel-size", nargs="+", type=float, metavar="UM", help="voxel size in µm: one value or Z Y X")
    p.add_argument("--density", type=float, help="nuclei per voxel (nucmm-z: 1.48e-4, ~170k per 1.15 Gvox)")
    p.add_argument("--radius", type=float, help="mean nucleus radius in µm")
    p.add_argument("--mode", choices=("em", "uct", "fluo"), help="image look: em (dark nuclei, bright neuropil), uct (low contrast) or fluo (bright nuclei on a dark background, anisotropic PSF, shot noise, intensity drift)")
    p.add_argument("--mask", action="store_true", help="also write a valid-region mask; no nuclei outside it")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same volume")
    p.add_argument("--chunks", nargs="+", type=int, metavar="N", help="zarr chunk shape: one value or Z Y X (default 64 128 128)")
    p.add_argument("--shards", nargs="+", type=int, metavar="N", help="zarr shard shape (multiple of chunks), for huge volumes")
    add_block_shape_option(p, "block (task) shape, 1 or 3 values (z y x), a multiple of chunks/shards")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_cluster_options(p)
    add_pyramid_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = preset_params(
        args.preset, shape=args.shape, density=args.density, radius=args.radius, mode=args.mode,
        voxel_size=zyx(args.voxel_size, "--voxel-size", float), mask=args.mask, seed=args.seed,
    )  # fmt: skip
    args.out = absolute(args.out)
    check_destination(args.out, args.overwrite)  # fail before starting a cluster
    with open_cluster(args, [], [args.out], quiet=args.json or args.quiet) as client:
        summary = synthesize(
            args.out,
            params,
            chunks=zyx(args.chunks, "--chunks"),
            block_shape=zyx(args.block_shape, "--block-shape"),
            shards=zyx(args.shards, "--shards"),
            client=client,
            overwrite=args.overwrite,
            progress=progress_mode(args) != "none",
            pyramid_levels=pyramid_levels(args),
        )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        s = summary
        print(
            f"wrote {s.path}: {'x'.join(map(str, s.shape))} voxels of {'x'.join(f'{v:g}' for v in s.voxel_size)} µm, "
            f"{s.n_nuclei} nuclei ({s.n_nuclei_visible} visible), foreground {100 * s.foreground_fraction:.1f} %, "
            f"{s.n_blocks} blocks in {s.seconds:.1f} s"
        )
        print(f"  image  {s.path}\n  labels {s.path}/labels/nuclei" + (f"\n  mask   {s.path}/labels/valid" if args.mask else ""))
    return 0
