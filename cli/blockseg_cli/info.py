"""``blockseg info``: what a path holds -- image, label volume, prediction store, run directory
or checkpoint -- in a few lines, or as JSON."""

from __future__ import annotations

import argparse
import json

from .options import add_block_shape_option, add_selection_options, selected, zyx


def register(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe an image, label volume, prediction store, run directory or checkpoint",
        description="Print a human-readable summary of PATH. Images and label volumes: shape, dtype, "
        "chunks/shards, voxel size and where it came from, pyramid, size, the BlockGrid blockseg would use "
        "(label volumes also: instances and the decoder parameters they were segmented with). Prediction "
        "stores: channels with kind and dtype, size, the decoder parameters stored with them, blocks done. "
        "Run directories: every stage's status and whether the next run redoes it, the evaluation. "
        "Checkpoints (.pt, or demo): architecture, parameter count, representations, patch, voxel size, "
        "normalisation, the recommended decoder and its tuned thresholds, validation scores. TorchScript / ONNX networks "
        "with a sidecar: what predict will use (output channels and their meaning, activation, patch, margin, normalisation, "
        "voxel size) and where each came from (sidecar, measured, default, model).",
    )
    p.add_argument("path", help="OME-Zarr image or labels, zarr array, TIFF / OME-TIFF, HDF5, npy, npz; a prediction store; a run directory; a checkpoint .pt or demo; a TorchScript / ONNX network or its sidecar")
    p.add_argument("--key", help="array inside an npz / dataset inside an h5 (needed when there are several)")
    add_block_shape_option(p, "block shape to show the grid for, 1 or 3 values (z y x) (default: chosen)")
    p.add_argument("--halo", nargs="+", type=int, metavar="N", default=[0], help="halo: one value or Z Y X")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_selection_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.pipeline.summary import kind_of, render, summarise

    path = args.path
    if kind_of(path) == "volume":
        path = selected(path, args)
    summary = summarise(path, key=args.key, block=zyx(args.block_shape, "--block-shape"), halo=zyx(args.halo, "--halo"))
    print(json.dumps(summary, indent=2, default=str) if args.json else render(summary))
    return 0
