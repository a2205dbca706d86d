"""Options shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse

from blockseg import BlocksegError
from blockseg.cluster import ClusterConfig, cluster_config_from_args


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """--scheduler, --workers, --memory-limit, --gpu, --no-progress."""
    g = parser.add_argument_group("dask cluster")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of an existing dask scheduler (tcp://host:8786); default: start a LocalCluster",
    )
    g.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core)")
    g.add_argument(
        "--memory-limit", metavar="SIZE", help="memory limit per local worker, e.g. 4GiB (default: 90%% of RAM shared)"
    )
    g.add_argument("--gpu", action="store_true", help="one local worker per GPU, GPU tasks only there")
    g.add_argument("--no-progress", action="store_true", help="do not draw progress bars")


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    return cluster_config_from_args(args.scheduler, args.workers, args.memory_limit, args.gpu)


def zyx(values, option: str, kind=int):
    """One value (isotropic) or three (z y x) from an ``nargs="+"`` option; None passes through."""
    if values is None:
        return None
    if len(values) == 1:
        values = list(values) * 3
    if len(values) != 3:
        raise BlocksegError(f"{option} takes one value or three (z y x), got {len(values)}")
    return tuple(kind(v) for v in values)


def add_output_options(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """The positional output path ``dest`` and ``--overwrite`` (replace it if it exists)."""
    parser.add_argument(dest, help=help)
    parser.add_argument("--overwrite", action="store_true", help=f"replace {dest.upper()} if it exists")


def check_output(args: argparse.Namespace, dest: str, inputs=()) -> None:
    """Fail with one line, before any cluster starts, when the output may not be written
    (it exists without --overwrite, is not blockseg's, or is / holds / lies in an input)."""
    from blockseg.io import check_destination

    check_destination(getattr(args, dest), args.overwrite, inputs)


def add_pyramid_option(parser: argparse.ArgumentParser) -> None:
    """--pyramid-levels: multiscale levels written with every output volume."""
    parser.add_argument(
        "--pyramid-levels", type=int, metavar="N",
        help="multiscale levels written with each output volume, full resolution included (default: until the "
        "smallest downsampled axis is <= 64 voxels or one chunk; 1: no pyramid)",
    )  # fmt: skip


def pyramid_levels(args: argparse.Namespace):
    n = getattr(args, "pyramid_levels", None)
    if n is not None and n < 1:
        raise BlocksegError(f"--pyramid-levels must be >= 1 (1: full resolution only), got {n}")
    return n


def add_selection_options(parser: argparse.ArgumentParser, what: str = "the image") -> None:
    """--level, --channel, --timepoint: which (z, y, x) view of a pyramid / czyx / tczyx input."""
    g = parser.add_argument_group("input selection (OME-Zarr, OME-TIFF, ... ; also PATH#level=1&channel=0)")
    g.add_argument("--level", type=int, metavar="N", help=f"pyramid level of {what} (default 0, full resolution)")
    g.add_argument("--channel", type=int, metavar="C", help=f"channel of {what} (needed when it has several)")
    g.add_argument("--timepoint", type=int, metavar="T", help=f"timepoint of {what} (needed when it has several)")


def selected(path: str, args: argparse.Namespace) -> str:
    """``path`` with the --level / --channel / --timepoint choice as a ``#...`` fragment."""
    from blockseg.formats import split_selection, with_selection

    bare, sel = split_selection(path)
    for k in ("level", "channel", "timepoint"):
        v = getattr(args, k, None)
        if v is not None:
            if v < 0:
                raise BlocksegError(f"--{k} must be >= 0, got {v}")
            if sel.get(k) is not None and sel[k] != v:
                raise BlocksegError(f"{path}: {k} {sel[k]} in the path but --{k} {v}")
            sel[k] = v
    return with_selection(bare, sel)
