"""The ``blockseg`` command. Thin: parses options, calls the library, reports errors.

Each subcommand lives in its own module of this package with two functions:
``register(subparsers)`` adds its parser (every option with a help text) and sets
``func=run``; ``run(args) -> int`` does the work through :mod:`blockseg`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blockseg import BlocksegError, __version__

#: subcommand modules, in the order ``blockseg --help`` lists them
COMMANDS = ["demo", "run", "synth", "import_cmd", "info", "train", "predict", "segment", "evaluate", "export"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockseg",
        description="Blockwise, seamless 3D nuclei segmentation of large zarr volumes on Dask. "
        "Axes are (z, y, x) everywhere; voxel sizes are in micrometres.",
    )
    parser.add_argument("--version", action="version", version=f"blockseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"blockseg_cli.{name}").register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--missing-chunks",
            choices=("auto", "error", "fill"),
            help="chunks missing from a zarr input: auto (default) refuses them in images and reads them "
            "as the fill value in label images (zarr omits empty chunks), error refuses them, fill reads "
            "them as the fill value; both readings are reported",
        )
    return parser


def _one_line_warnings() -> None:
    """blockseg's own warnings (e.g. a voxel size taken as 1 µm) as one line on stderr."""
    import warnings

    from blockseg.formats import BlocksegWarning

    plain = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if issubclass(category, BlocksegWarning):
            return f"blockseg: warning: {message}\n"
        return plain(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def main(argv: list[str] | None = None) -> int:
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from blockseg.chunks import set_policy

        set_policy(getattr(args, "missing_chunks", None))
        return int(args.func(args) or 0)
    except BlocksegError as exc:
        if args.debug:
            raise
        print(f"blockseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, ... while reading or writing
        if args.debug:
            raise
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"blockseg {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"blockseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
