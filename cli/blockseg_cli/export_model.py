"""``blockseg export-model``: a blockseg checkpoint as a bioimage.io model package (format 0.5 zip)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "export-model",
        help="write a checkpoint as a bioimage.io model package (.zip) that bioimageio.spec validates",
        description="Write CHECKPOINT (a .pt file or a shipped name: demo, fluo, fluo_synth) as a bioimage.io model "
        "package, format 0.5: the network with its output activations as TorchScript, a test input and the output it "
        "gives, a cover image, a README with the training data, validation scores, decoder thresholds and voxel size, "
        "the preprocessing (scale_range / scale_linear) and, in config.blockseg, what blockseg needs to run it again with "
        "the checkpoint's exact geometry (blockseg predict IMAGE OUT.zip ...). Needs bioimageio.spec "
        "(pip install 'blockseg[bioimageio]'); the package is validated before the command succeeds.",
    )
    p.add_argument("checkpoint", help="blockseg checkpoint (.pt) or a shipped one: demo, fluo, fluo_synth")
    p.add_argument("out", help="the package to write, OUT.zip (must not exist)")
    p.add_argument("--image", help="take the test input from the centre of this image (default: synthetic nuclei)")
    p.add_argument("--author", action="append", metavar="NAME", help="author (repeatable; default 'blockseg user')")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX license of the weights (default CC-BY-4.0)")
    p.add_argument("--cite", action="append", nargs=2, metavar=("TEXT", "URL"),
                   help="a reference (repeatable; default the 3D U-Net paper)")  # fmt: skip
    p.add_argument("--name", help="the model's name in the package (default from the architecture and representations)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from blockseg.models.bioimageio_export import export_package

    rep = export_package(args.checkpoint, args.out, image=args.image, authors=args.author or ("blockseg user",),
                         license=args.license, cite=[tuple(c) for c in args.cite or ()], name=args.name)  # fmt: skip
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(f"wrote {rep['path']}: bioimageio.spec says {rep['status']}"
              + (f" ({len(rep['warnings'])} warning(s): {'; '.join(rep['warnings'][:3])})" if rep["warnings"] else ""))  # fmt: skip
    return 0
