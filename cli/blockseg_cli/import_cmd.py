"""``blockseg import``: copy a tif / npy / npz / h5 / zarr volume into chunked OME-Zarr."""

from __future__ import annotations

import argparse
import contextlib

from blockseg.io.volume import SUPPORTED_SUFFIXES, import_volume

from .options import absolute, add_cluster_options, add_pyramid_option, add_selection_options, open_cluster, pyramid_levels, selected, wants_cluster, zyx


def register(sub) -> None:
    p = sub.add_parser(
        "import",
        help="convert a tif/npy/npz/h5/zarr volume into a chunked OME-Zarr volume",
        description="Copy a 3D (z, y, x) volume into OME-Zarr (zarr v3) block by block. The voxel size "
        "comes from --voxel-size, else the file's metadata (OME-Zarr scale, OME-TIFF PhysicalSize, "
        "ImageJ tif spacing, npz voxel_size_zyx, h5 element_size_um), else 1 µm with a warning. "
        f"Formats: OME-Zarr NGFF 0.4/0.5, zarr arrays, {', '.join(SUPPORTED_SUFFIXES)}. The source is read by "
        "this process (it may be a file only this machine sees); with cluster options the pyramid is built on Dask.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="input file (or zarr) to import (the image, for a training pair)")
    p.add_argument("out", help="output OME-Zarr path (with three paths: the LABELS file)")
    p.add_argument("out2", nargs="?", metavar="OUT", help="IMAGE LABELS OUT writes the image at OUT and the labels "
                   "as the NGFF label image OUT/labels/NAME: a training volume for `blockseg train`")
    p.add_argument("--key", help="array inside an npz / dataset inside an h5 (needed when there are several)")
    p.add_argument("--voxel-size", nargs="+", type=float, metavar="UM", help="voxel size in µm: one value or Z Y X")
    p.add_argument("--chunks", nargs="+", type=int, metavar="N", help="chunk shape: one value or Z Y X (default 64 128 128)")
    p.add_argument("--shards", nargs="+", type=int, metavar="N", help="shard shape (a multiple of the chunks)")
    p.add_argument("--dtype", help="convert to this dtype (default: keep the source's)")
    p.add_argument("--labels", nargs="?", const=True, default=False, metavar="FILE",
                   help="alone (after the paths): the source is a label image (pyramid by sampling, NGFF "
                   "image-label metadata; OUT may be IMAGE.zarr/labels/NAME of an existing image, whose labels "
                   "group is created); with FILE: the labels of the image source, written to OUT/labels/NAME")
    p.add_argument("--label-name", default="nuclei", help="NAME of the label image of a training pair")
    p.add_argument("--ignore", metavar="FILE", help="with a training pair: an ignore mask (e.g. unlabelled nuclei of a "
                   "partially labelled volume), written to OUT/labels/ignore; its voxels > 0 are left out of the training loss")
    p.add_argument("--labels-key", help="array inside an npz / dataset inside an h5 holding the labels")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_pyramid_option(p)
    add_selection_options(p, "the source")
    add_cluster_options(p, progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.errors import BlocksegError

    paths = [p for p in (args.out, args.out2) if p]
    labels_file = args.labels if isinstance(args.labels, str) else None
    source = selected(args.source, argparse.Namespace(axes=args.axes)) if args.axes else args.source  # as PATH#axes=...
    if labels_file is not None and len(paths) == 0:  # `import --labels LAB OUT`: the flag, before the paths
        source, paths, labels_file, args.labels = labels_file, [source], None, True
    if not paths:
        raise BlocksegError("import: missing OUT (usage: blockseg import SOURCE [LABELS] OUT)")
    if len(paths) == 2:
        if labels_file is not None:
            raise BlocksegError("import: give the labels either as LABELS or as --labels FILE, not both")
        labels_file, paths = paths[0], paths[1:]
    elif len(paths) > 2:
        raise BlocksegError(f"import: expected SOURCE [LABELS] OUT, got {len(paths) + 1} paths")
    out = paths[0]
    if args.ignore and labels_file is None:
        raise BlocksegError("import: --ignore goes with a training pair (IMAGE LABELS OUT)")
    if labels_file is not None:
        from blockseg.train.training_data import import_pair

        img, lab = import_pair(
            source, labels_file, out, name=args.label_name, voxel_size=zyx(args.voxel_size, "--voxel-size", float),
            key=args.key, labels_key=args.labels_key, chunks=zyx(args.chunks, "--chunks"), overwrite=args.overwrite,
            pyramid_levels=pyramid_levels(args) or 1, ignore=args.ignore,
        )  # fmt: skip
        print(f"wrote {img!r} with labels {lab!r}")
        return 0
    if args.labels:
        from blockseg.train.training_data import import_label_into

        vol = import_label_into(
            source, out, voxel_size=zyx(args.voxel_size, "--voxel-size", float), key=args.key,
            chunks=zyx(args.chunks, "--chunks"), shards=zyx(args.shards, "--shards"), dtype=args.dtype,
            overwrite=args.overwrite, level=args.level, channel=args.channel, timepoint=args.timepoint,
            pyramid_levels=pyramid_levels(args),
        )  # fmt: skip
        print(f"wrote {vol!r}")
        return 0
    from blockseg.io.volume import check_destination
    from blockseg.train.training_data import make_parent

    args.source, args.out = source, absolute(out)
    check_destination(args.out, args.overwrite, [args.source])  # fail before starting a cluster
    make_parent(args.out)
    # a cluster only when asked for: the copy itself runs here, the pyramid on the workers
    cluster = open_cluster(args, [], [args.out], quiet=True) if wants_cluster(args) else contextlib.nullcontext()
    with cluster as client:
        vol = _import(args, client)
    print(f"wrote {vol!r}")
    return 0


def _import(args: argparse.Namespace, client):
    return import_volume(
        args.source,
        args.out,
        voxel_size=zyx(args.voxel_size, "--voxel-size", float),
        key=args.key,
        chunks=zyx(args.chunks, "--chunks"),
        shards=zyx(args.shards, "--shards"),
        dtype=args.dtype,
        overwrite=args.overwrite,
        level=args.level,
        channel=args.channel,
        timepoint=args.timepoint,
        labels=False,
        pyramid_levels=pyramid_levels(args),
        client=client,
    )
