"""``blockseg info``: shape, dtype, chunks, voxel size and block grid of a volume."""

from __future__ import annotations

import argparse

from blockseg.io import open_volume

from .options import zyx


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a volume and the block grid blockseg would use on it",
        description="Print a volume's shape, dtype, chunks/shards, voxel size and its BlockGrid.",
    )
    p.add_argument("path", help="OME-Zarr image (or plain zarr array)")
    p.add_argument("--block", nargs="+", type=int, metavar="N", help="block shape to show the grid for (default: chosen)")
    p.add_argument("--halo", nargs="+", type=int, metavar="N", default=[0], help="halo: one value or Z Y X")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    vol = open_volume(args.path)
    grid = vol.grid(zyx(args.block, "--block"), zyx(args.halo, "--halo"))
    print(repr(vol))
    print(repr(grid))
    return 0
