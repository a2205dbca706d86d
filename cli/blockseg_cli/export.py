"""``blockseg export``: a volume (region or downsampled level) to TIFF (Fiji) or HDF5 (PyTorch Connectomics, ilastik)."""

from __future__ import annotations

import argparse

from .options import zyx


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a volume, a region of it or a downsampled level to .tif (ImageJ) or .h5",
        description="Export a label (or image) volume to an ImageJ TIFF (voxel size as XResolution/"
        "YResolution + spacing, unit micron) or to HDF5 (dataset 'main', element_size_um on it). The "
        "export is written slab by slab along z, so volumes larger than memory export too.",
    )
    p.add_argument("source", help="volume to export (OME-Zarr or zarr array), e.g. seg.zarr")
    p.add_argument("out", help="OUT.tif / OUT.tiff or OUT.h5 / OUT.hdf5")
    p.add_argument("--region", metavar="Z0:Z1,Y0:Y1,X0:X1", help="voxel box of the source (default: all); bounds may be left out, e.g. ':,0:512,0:512'")
    p.add_argument("--downsample", nargs="+", type=int, metavar="F", default=[1], help="integer factor, one value or Z Y X (default 1)")
    p.add_argument(
        "--mode", choices=["stride", "mode", "mean"],
        help="downsampling: stride (every F-th voxel) or mode (most frequent value) for labels, mean for images "
        "(default: stride for integers, mean for floats)",
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of blockseg's at OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.io.export import export

    rep = export(args.source, args.out, region=args.region, factor=zyx(args.downsample, "--downsample"),
                 mode=args.mode, overwrite=args.overwrite)  # fmt: skip
    vs = "x".join(f"{v:g}" for v in rep.voxel_size)
    print(f"wrote {rep.path}: {'x'.join(map(str, rep.shape))} {rep.dtype}, voxel size {vs} µm" + (f"; {rep.note}" if rep.note else ""))
    return 0
