"""Segmentation quality of the shipped demo checkpoint on a held-out synthetic volume.

Reproduces the figures reported for ``blockseg/checkpoints/demo_bcd_cpv.pt``::

    python experiments/eval_demo_checkpoint.py                 # seed 2, 64 x 256 x 256
    python experiments/eval_demo_checkpoint.py --seed 7 --shape 96 384 384 --json out.json

Steps: ``blockseg synth`` the test volume (nucmm-z preset, EM look; the training volume used
seed 1 and the decoder was tuned on seed 3), whole-volume prediction with
``blockseg.predict.predict_array`` (the checkpoint's normalisation), the BCD decoder with the
parameters recorded in the checkpoint (``metadata["decoder"]``) through
``blockseg.segment.segment_array``, and ``blockseg.evaluate.evaluate`` (COCO AP-50 / AP-75 with
the voxel count as score, accuracy TP / (TP + FP + FN) at IoU 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch


def main(argv=None) -> int:
    from blockseg.evaluate import evaluate
    from blockseg.io.volume import open_volume
    from blockseg.models import check_decoder_channels, demo_checkpoint_path, load_checkpoint
    from blockseg.predict import predict_array
    from blockseg.segment import make_decoder, segment_array
    from blockseg.synth import PRESETS, SynthParams, synthesize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="default: the shipped demo checkpoint")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    p.add_argument("--volume", default=None, help="existing synthetic volume to use instead")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("-p", "--decoder-param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a decoder parameter recorded in the checkpoint")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    ckpt = args.checkpoint or demo_checkpoint_path()
    model, payload = load_checkpoint(ckpt)
    meta = payload["metadata"]
    dec_meta = meta.get("decoder") or {"name": "bcd", "params": {}}
    overrides = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.decoder_param)}
    decoder = make_decoder(dec_meta["name"], **{**dec_meta["params"], **overrides})
    check_decoder_channels(model, decoder)

    tmp = None
    path = args.volume
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = os.path.join(tmp.name, "test.zarr")
        params = SynthParams(**{**PRESETS["nucmm-z"], "shape": tuple(args.shape)}, seed=args.seed)
        synthesize(path, params, progress=False)
    image = np.asarray(open_volume(path).array[...])
    gt = np.asarray(open_volume(f"{path}/labels/nuclei").array[...])

    t0 = time.perf_counter()
    pred = predict_array(model, image, normalisation=meta["normalisation"])
    t_pred = time.perf_counter() - t0
    seg = segment_array(pred, decoder)
    res = evaluate(gt, seg)
    m50 = next(m for m in res.matching if abs(m["threshold"] - 0.5) < 1e-9)
    out = {
        "checkpoint": os.path.basename(ckpt),
        "volume": {"seed": args.seed, "shape": list(image.shape)} if args.volume is None else args.volume,
        "decoder": {"name": decoder.name, "params": decoder.params()},
        "AP50": res.coco["AP50"],
        "AP75": res.coco["AP75"],
        "AP50_95": res.coco["AP"],
        "accuracy50": m50["accuracy"],
        "precision50": m50["precision"],
        "recall50": m50["recall"],
        "n_true": int(res.overlaps.n_true),
        "n_pred": int(res.overlaps.n_pred),
        "predict_seconds": round(t_pred, 1),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
