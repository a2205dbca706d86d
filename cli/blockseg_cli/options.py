"""Options shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse
import contextlib

from blockseg import BlocksegError
from blockseg.zyx import zyx as per_axis
from blockseg.runtime.cluster import ClusterConfig, cluster_config_from_args
from blockseg.runtime.progress import PROGRESS_MODES


#: the options add_cluster_options adds (tests check every Dask command lists them)
CLUSTER_OPTIONS = ("--scheduler", "--workers", "--threads-per-worker", "--memory-limit", "--gpu", "--worker-timeout")
#: the progress options add_progress_options adds
PROGRESS_OPTIONS = ("--progress", "--no-progress", "--quiet")


def add_cluster_options(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """The Dask cluster options every command that runs on Dask shares (and the progress options)."""
    g = parser.add_argument_group("dask cluster (the same on every command that runs on Dask)")
    g.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="address of a running dask scheduler (tcp://host:8786, as 'dask scheduler' prints it; a SLURM "
        "cluster from 'blockseg cluster slurm'); default: start a LocalCluster on this machine",
    )  # fmt: skip
    g.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core, one per GPU with --gpu)")
    g.add_argument("--threads-per-worker", type=int, metavar="N", help="threads per local worker (default 1)")
    g.add_argument(
        "--memory-limit", metavar="SIZE", help="memory limit per local worker, e.g. 4GiB (default: 90%% of RAM shared)"
    )
    g.add_argument(
        "--gpu", action="store_true",
        help="GPU tasks: locally one worker per GPU; with --scheduler, require workers started with --resources GPU=1",
    )  # fmt: skip
    g.add_argument(
        "--worker-timeout", type=float, metavar="SECONDS",
        help="with --scheduler: how long to wait for the first worker before giving up (default 60)",
    )  # fmt: skip
    if progress:
        add_progress_options(parser)


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    """--progress MODE, --no-progress, --quiet."""
    g = parser.add_argument_group("progress")
    g.add_argument(
        "--progress", choices=PROGRESS_MODES, default="auto",
        help="progress of every stage in blocks and voxels, with rate and ETA: bar (terminal), lines (one line "
        "every few seconds), json (one JSON object a line on stderr, for scripts), none; default auto: bar on a "
        "terminal, else lines",
    )  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress output (same as --progress none)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress and no status lines: only errors and the result")


def progress_mode(args: argparse.Namespace) -> str:
    """The progress mode chosen by --progress / --no-progress / --quiet."""
    if getattr(args, "quiet", False) or getattr(args, "no_progress", False):
        return "none"
    return getattr(args, "progress", "auto") or "auto"


def cluster_config(args: argparse.Namespace) -> ClusterConfig:
    cfg = cluster_config_from_args(args.scheduler, args.workers, args.memory_limit, args.gpu)
    threads = getattr(args, "threads_per_worker", None)
    if threads is not None:
        if threads < 1:
            raise BlocksegError(f"--threads-per-worker must be at least 1, got {threads}")
        cfg.threads_per_worker = threads
    cfg.quiet_logs = not getattr(args, "debug", False)
    timeout = getattr(args, "worker_timeout", None)
    if timeout is not None:
        if timeout <= 0:
            raise BlocksegError(f"--worker-timeout must be positive, got {timeout:g}")
        cfg.worker_timeout = timeout
    return cfg


def wants_cluster(args: argparse.Namespace) -> bool:
    """Whether any cluster option was given (commands that can also run without Dask)."""
    return any(getattr(args, k, None) not in (None, False) for k in ("scheduler", "workers", "threads_per_worker", "memory_limit", "gpu"))


@contextlib.contextmanager
def open_cluster(args: argparse.Namespace, inputs=(), outputs=(), quiet: bool | None = None):
    """The command's Dask client, its cluster checked (:mod:`blockseg.runtime.preflight`) before any output
    exists; progress set to the chosen mode for the duration."""
    from blockseg.runtime.cluster import dask_client
    from blockseg.runtime.progress import progress_settings

    quiet = getattr(args, "quiet", False) if quiet is None else quiet
    with progress_settings(progress_mode(args)), dask_client(cluster_config(args), quiet, inputs, outputs) as client:
        yield client


def absolute(path):
    """A path argument made absolute (workers run in another folder); URLs pass through."""
    from blockseg.runtime.preflight import absolute_path

    return absolute_path(path)


def floats(text: str) -> list[float]:
    """An argparse type: numbers separated by commas (or spaces)."""
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def zyx(values, option: str, kind=int):
    """One value (isotropic) or three (z y x) from an ``nargs="+"`` option, by
    :func:`blockseg.zyx.zyx`; None passes through."""
    if values is not None and len(values) == 1:
        values = values[0]
    return per_axis(values, option, kind=kind)


def add_block_shape_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--block-shape N [N N]``, the one spelling of every command (the API's and the run config's
    ``block_shape``). ``--block`` stays as a hidden alias: predict, synth and info took it before, and
    users' scripts and notes still do."""
    parser.add_argument("--block-shape", type=int, nargs="+", metavar="N", help=help)
    parser.add_argument("--block", dest="block_shape", type=int, nargs="+", help=argparse.SUPPRESS)


def as_given(values):
    """An ``nargs="+"`` option's values as the user gave them: one value as itself, None passes."""
    return values[0] if values is not None and len(values) == 1 else values


def flag(key: str) -> str:
    """An options model's field as its command-line flag: ``tile_voxels`` -> ``--tile-voxels``."""
    return "--" + key.replace("_", "-")


def add_output_options(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """The positional output path ``dest`` and ``--overwrite`` (replace it if it exists)."""
    parser.add_argument(dest, help=help)
    parser.add_argument("--overwrite", action="store_true", help=f"replace {dest.upper()} if it exists")


def check_output(args: argparse.Namespace, dest: str, inputs=()) -> None:
    """Fail with one line, before any cluster starts, when the output may not be written
    (it exists without --overwrite, is not blockseg's, or is / holds / lies in an input)."""
    from blockseg.io.volume import check_destination
    from blockseg.io.safety import acquire_lock

    # claimed now, before a cluster starts: a second command on this output is refused at once;
    # held until the command ends (cli.main releases it)
    acquire_lock(getattr(args, dest))
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
    g.add_argument("--axes", metavar="AXES", help=f"axes of {what} when its file does not name them (plain zarr, HDF5, "
                   "npy): letters of t c z y x in storage order, e.g. zcyx (default: czyx for 4 axes, tczyx for 5)")  # fmt: skip


def selected(path: str, args: argparse.Namespace) -> str:
    """``path`` with the --level / --channel / --timepoint / --axes choice as a ``#...`` fragment."""
    from blockseg.io.selection import check_axes, split_selection, with_selection

    bare, sel = split_selection(path)
    for k in ("level", "channel", "timepoint", "axes"):
        v = getattr(args, k, None)
        if v is not None:
            if k == "axes":
                v = check_axes(v)
            elif v < 0:
                raise BlocksegError(f"--{k} must be >= 0, got {v}")
            if sel.get(k) is not None and sel[k] != v:
                raise BlocksegError(f"{path}: {k} {sel[k]} in the path but --{k} {v}")
            sel[k] = v
    return with_selection(bare, sel)
