"""``blockseg info``: shape, dtype, chunks, voxel size and block grid of a volume."""

from __future__ import annotations

import argparse

from blockseg.io import open_volume

from .options import add_selection_options, selected, zyx


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a volume and the block grid blockseg would use on it",
        description="Print a volume's shape, dtype, chunks/shards, voxel size and its BlockGrid.",
    )
    p.add_argument("path", help="OME-Zarr image, zarr array, TIFF / OME-TIFF, HDF5, npy or npz")
    p.add_argument("--key", help="array inside an npz / dataset inside an h5 (needed when there are several)")
    p.add_argument("--block", nargs="+", type=int, metavar="N", help="block shape to show the grid for (default: chosen)")
    p.add_argument("--halo", nargs="+", type=int, metavar="N", default=[0], help="halo: one value or Z Y X")
    add_selection_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    vol = open_volume(selected(args.path, args), key=args.key)
    grid = vol.grid(zyx(args.block, "--block"), zyx(args.halo, "--halo"))
    print(repr(vol))
    sel = ", ".join(f"{k} {v}" for k, v in vol.selection.items())
    print(f"format: {vol.format}; voxel size from {vol.voxel_size_source}" + (f"; read {sel}" if sel else ""))
    if len(vol.levels) > 1:
        print("pyramid: " + ", ".join(f"{i}: {'x'.join(map(str, s))}" for i, s in enumerate(vol.levels)))
    print(repr(grid))
    return 0
