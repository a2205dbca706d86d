"""``blockseg predict``: image zarr + checkpoint -> prediction store (blockwise, seamless)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from blockseg.errors import BlocksegError
from blockseg.predict.options import CLI_DIAMETER, PredictOptions

from .options import (
    absolute, add_block_shape_option, add_cluster_options, add_pyramid_option, add_selection_options, as_given, flag, open_cluster,
    progress_mode, selected,
)  # fmt: skip

#: the options model's fields: one default each (the API and the run config use them too)
_F = PredictOptions.model_fields


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="run a network over an image zarr block by block, writing one volume per channel",
        description="Blockwise sliding-window inference on one global patch lattice: each block "
        "computes the patches whose outputs overlap its core (reading the halo they need, "
        "reflected at the volume borders), blends them with normalised weights and writes its "
        "core. The result equals a whole-volume run whatever the block shape. Reruns resume: "
        "blocks with a done-marker are skipped. The checkpoint's recommended decoder and its tuned "
        "thresholds are stored in the output's attributes; segment starts from them.",
    )
    p.add_argument("image", help="image volume: OME-Zarr (0.4/0.5), zarr array, TIFF / OME-TIFF, HDF5, npy; axes (z, y, x) after --channel / --timepoint")
    p.add_argument("checkpoint", help="blockseg checkpoint (.pt) of the network (workers must see this path), a shipped one: demo, fluo, fluo_synth, "
                   "or a TorchScript (.pt) / ONNX (.onnx) network with its sidecar (same stem, .yaml / .json; docs/guide/models.md 'Use your own model')")
    p.add_argument("output", help="prediction store to create (zarr group, one volume per channel)")
    add_block_shape_option(p, _F["block_shape"].description)
    p.add_argument("--dtype", choices=["uint8", "float16", "float32"], help="one storage dtype for every kept channel (default per channel: uint8 for probabilities / tanh maps, float16 for raw vectors such as cpv)")
    p.add_argument(
        "--channels", metavar="C,C,...|all",
        help="channels to store besides the decoder's (default: only the decoder's); 'all' keeps every channel",
    )  # fmt: skip
    p.add_argument(
        "--decoder", metavar="NAME",
        help="keep the channels this decoder reads (default: the checkpoint's recommended decoder, else the first one the network can feed)",
    )  # fmt: skip
    p.add_argument(
        "--patch", nargs="+", default=[_F["patch"].default], metavar="auto|train|N",
        help="inference patch: auto (default: a block-aligned patch computing the fewest voxels that fits the device's memory budget, "
        "never smaller than the training patch), train (the network's training patch), or 1 or 3 sizes (z y x); auto and "
        "sizes run one stride-aligned lattice set by the patch alone, so a store's patch (blockseg info) reproduces it with other blocks",
    )  # fmt: skip
    p.add_argument(
        "--overlap", type=_overlap, nargs="+", default=[_F["overlap"].default], metavar="F|N%|Npx",
        help="overlap of neighbouring output tiles, 1 or 3 values (z y x): a fraction of the training output patch "
        f"(0.125, or 12.5%%), or whole voxels (4px, or a whole number such as 4); default {_F['overlap'].default}. 1.0 or 1.5 are refused: "
        "a fraction is below 1 and voxels are whole",
    )  # fmt: skip
    p.add_argument("--blending", choices=["gaussian", "bump", "constant"], default=_F["blending"].default, help=_F["blending"].description)
    p.add_argument("--tta", action="store_true", default=_F["tta"].default, help=_F["tta"].description)
    p.add_argument("--mc-samples", type=int, default=_F["mc_samples"].default, metavar="N", help=_F["mc_samples"].description)
    p.add_argument("--batch-size", type=int, default=_F["batch_size"].default, metavar="N", help=_F["batch_size"].description)
    p.add_argument("--device", default=_F["device"].default, help=_F["device"].description)
    p.add_argument("--no-amp", action="store_true", help="on CUDA, run the network in float32 instead of bf16 (fp16 where bf16 is unsupported) autocast")
    p.add_argument(
        "--runtime", choices=["eager", "compile"], default=_F["runtime"].default,
        help="run the network in torch eager (default) or compiled with torch.compile: tens of seconds of compiling per "
        "worker, then a faster forward (needs a C++ compiler on CPU workers); equal within one storage step",
    )  # fmt: skip
    p.add_argument("--chunks", type=int, nargs="+", metavar="N", help=_F["chunks"].description)
    p.add_argument(
        "--scale", type=float, nargs="+", metavar="F",
        help="resample the input for the network by this factor, 1 or 3 values (z y x), outputs back to the image grid "
        "(default: image voxel size / the checkpoint's training voxel size, when both are known; 1: off)",
    )  # fmt: skip
    p.add_argument(
        "--diameter", metavar="auto|off|SIZE", default=CLI_DIAMETER,  # the CLI's own default (the API's: None, off)
        help="auto (default): estimate the image's nucleus size (scale-space blob census of a few boxes, "
        "docs/size-estimate.md) and resample to the network's training nuclei when they differ by more than 25%%; "
        "off: no estimate. Or the image's typical nucleus diameter with its unit: 17um (or 17µm) in micrometres, 34px in pixels of the "
        "y/x plane (Cellpose's unit); a bare number is µm. Instead of --scale: resample so that its nuclei span as many "
        "network voxels as the checkpoint's training nuclei (for nuclei of another size than the training data's); the "
        "plan and the run print it in both units",
    )  # fmt: skip
    p.add_argument(
        "--polarity", choices=["bright", "dark", "auto"],
        help="the image's nuclei are brighter or darker than around them (default: the polarity the checkpoint's model "
        "card records; auto: detected by a blob test); the input is inverted when it differs from the card's; printed "
        "with the normalisation, and a check warns when it disagrees",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print blocks, halo and a memory estimate; compute nothing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-resume", action="store_true", help="refuse an existing output instead of resuming it")
    p.add_argument("--json", action="store_true", help="print the report (or the plan) as JSON on stdout")
    add_pyramid_option(p)
    add_selection_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)


def _channels(text: str | None):
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    return "all" if names == ["all"] else names


def _overlap(text: str) -> float | int:
    """``--overlap``: a fraction (``0.125``, ``12.5%``) or whole voxels (``4px``, ``4``), never
    ambiguous: ``1.0`` (100 %? one voxel?) and ``1.5`` are refused."""
    t = text.strip().lower()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100
            if not 0 <= value < 1:
                raise argparse.ArgumentTypeError(f"{text}: a percentage of the output patch is below 100%")
            return value
        for unit in ("px", "vx", "voxels", "voxel"):
            if t.endswith(unit):
                return int(t[: -len(unit)])
        if t.lstrip("+").isdigit():
            return int(t)
        value = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction (0.125, 12.5%) or whole voxels (4px), got {text!r}") from None
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"{text} is neither a fraction (below 1: 0.125 or 12.5%) nor whole voxels (write {round(value)}px for voxels)"
        )
    return value


def _patch(values: list[str]):
    """``--patch``: "auto", "train" or voxel sizes (checked by the options model)."""
    if len(values) == 1 and values[0] in ("auto", "train"):
        return values[0]
    try:
        return as_given([int(v) for v in values])
    except ValueError:
        raise BlocksegError(f"--patch: must be auto, train or 1 or 3 sizes, got {' '.join(values)}") from None


#: options spelled otherwise on the command line than in the options model
_FLAGS = {"amp": "--no-amp"}


def options(args: argparse.Namespace) -> PredictOptions:
    """The :class:`~blockseg.predict.options.PredictOptions` of the command line; a bad value is
    one line naming its flag."""
    from blockseg.predict.options import predict_options

    return predict_options(
        lambda key: _FLAGS.get(key) or flag(key), block_shape=as_given(args.block_shape), dtype=args.dtype,
        channels=_channels(args.channels), patch=_patch(args.patch), overlap=as_given(args.overlap), blending=args.blending,
        tta=args.tta, mc_samples=args.mc_samples, batch_size=args.batch_size, device=args.device, amp=not args.no_amp,
        runtime=args.runtime, chunks=as_given(args.chunks), pyramid_levels=args.pyramid_levels, scale=as_given(args.scale),
        diameter=args.diameter, polarity=args.polarity,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from .options import cluster_config

    cluster_config(args)  # the cluster options (a --memory-limit that is no size...) fail first
    opts = options(args)  # then the options, by the model the API and the run config use
    from blockseg.predict import predict

    # workers run in another folder: every path leaves this process absolute
    args.image, args.output = absolute(selected(args.image, args)), absolute(args.output)
    from blockseg.models import resolve_checkpoint

    args.checkpoint = absolute(resolve_checkpoint(args.checkpoint))  # demo, fluo, fluo_synth: the shipped files
    args.resumable = not args.no_resume
    if not args.dry_run:  # one writer per output, refused at once (held until the command ends)
        from blockseg.io.safety import acquire_lock

        acquire_lock(args.output)
    kwargs = dict(
        decoder=args.decoder, overwrite=args.overwrite, resume=not args.no_resume, progress=progress_mode(args) != "none",
        **opts.model_dump(),
    )  # fmt: skip
    # the plan validates image, checkpoint and geometry: fail before starting a cluster; its
    # warnings on the input are held until the cluster passed its preflight (a cluster error
    # stays the only line), then said once with the run's own
    with warnings.catch_warnings(record=True) as early:
        warnings.simplefilter("always")
        plan = predict(args.image, args.checkpoint, args.output, dry_run=True, **kwargs)
    said: set = set()
    # blocks a local worker cannot hold: refused before any worker starts (or, in the dry run, said)
    limit = None if args.scheduler else _local_limit(args)
    if args.dry_run:
        _say(early, said)
        try:
            plan.check_memory(limit)
        except BlocksegError as exc:
            print(f"blockseg: warning: {exc}", file=sys.stderr)
        print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.describe())
        if not args.json and getattr(plan, "nucleus_size", None):
            print(plan.nucleus_size)
        return 0
    plan.check_memory(limit)
    for cost in plan.costs:  # refused geometry (blockseg.runtime.costs) ends here, before any worker starts
        if cost.refuse:
            raise BlocksegError(cost.message)
    # the cluster is checked (workers, blockseg version, paths, GPUs) before the store is made
    with open_cluster(args, [args.image, args.checkpoint], [args.output], quiet=args.json or args.quiet) as client:
        _say(early, said)
        with warnings.catch_warnings(record=True) as late:
            warnings.simplefilter("always")
            report = predict(args.image, args.checkpoint, args.output, client=client, **kwargs)
        _say(late, said)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        import math

        from blockseg.runtime.progress import reuse_summary

        summary = reuse_summary(report.blocks, report.computed, math.prod(report.plan.shape), report.voxels,
                                getattr(report, "reused_pass1", 0))  # fmt: skip
        print(
            f"{summary} -> {report.output}; {report.seconds:.1f} s ({report.voxels_per_second / 1e6:.2f} M voxels/s)",
            file=sys.stderr,
        )
    # what changes results is said, not assumed: how the input was scaled and resampled
    print(f"normalisation: {report.plan.normalisation}\nvoxel size: {report.plan.resampling}", file=sys.stderr)
    if getattr(report.plan, "nucleus_size", None):
        print(report.plan.nucleus_size, file=sys.stderr)
    return 0


def _local_limit(args: argparse.Namespace) -> int:
    """Bytes per worker of the LocalCluster the options ask for (0: no limit)."""
    import os

    from blockseg.runtime.cluster import count_gpus, local_memory_limit

    n = args.workers or (count_gpus() if args.gpu else 0) or max(1, os.cpu_count() or 1)
    return local_memory_limit(args.memory_limit, n, base=0)  # the plan's check names the block instead


def _say(recorded, said: set) -> None:
    """Emit recorded warnings again, each message once (``said`` holds those already emitted)."""
    for w in recorded:
        key = (w.category, str(w.message))
        if key not in said:
            said.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
