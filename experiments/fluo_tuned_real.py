"""The synthetic-only ``fluo`` network (shipped as ``fluo`` then, ``fluo_synth`` now) with its thresholds tuned by ``blockseg tune`` on a few annotated
nuclei of each real crop -- no training -- against the classical baseline tuned on the same nuclei.

Protocol (written before the first run, 2026-11-29 night):

* the crops' z-slabs of ``real_volumes_train.py`` (train / validation / test); only the
  *validation* slab's labels are used, as the few annotated nuclei a user would draw;
* fluo: the whole crop through the blockwise ``predict`` (the checkpoint's percentile
  normalisation and default voxel-size resampling), then ``blockseg.pipeline.tune.tune_store`` on the
  validation slab (default BCD grid, best AP-50 then AP-75, edges widened), then
  ``segment_array`` of the test slab's predictions with the tuned thresholds;
* beside it, on the same test slab: fluo with its shipped thresholds, and the Otsu + distance
  watershed baseline tuned on the same validation slab (``fluo_real.test_slabs_with_baseline``:
  the grid and criterion of ``real_volumes_train.py``) and with its defaults;
* scores from ``blockseg.evaluate`` (avAP, COCO AP-50); nuclei cut by a slab face count as their
  part inside the slab; one run.

The claim tested: "fluo, with thresholds tuned on the validation slab and no training, beats the
baseline tuned on the same slab on avAP and AP-50 on both crops' test slabs". BBBC050's test slab
holds pieces of only 2 nuclei: there one nucleus moves AP-50 by about 0.5.

    PYTHONPATH=.:benchmarks python experiments/fluo_tuned_real.py --json experiments/results/fluo_tuned_real.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fluo_real import test_slabs_with_baseline  # noqa: E402
from real_volumes_train import DATASETS, REAL, scores  # noqa: E402


def main(argv=None) -> int:
    import torch

    from blockseg.io.volume import create_volume
    from blockseg.models import shipped_checkpoint_path
    from blockseg.predict import predict
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.segment import segment_array
    from blockseg.segment.params import choose_decoder, store_decoder
    from blockseg.pipeline.tune import tune_store

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="experiments/results/fluo_tuned_real.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = shipped_checkpoint_path("fluo_synth")
    out: dict = {"protocol": "experiments/fluo_tuned_real.py docstring", "load_before": os.getloadavg(), "crops": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, crop, row in test_slabs_with_baseline():
            d = np.load(REAL / DATASETS[name])
            img = d["image"]
            path, pred = f"{tmp}/{name}.zarr", f"{tmp}/{name}.pred"
            create_volume(path, img.shape, img.dtype, crop["vs"]).array[...] = img
            predict(path, ckpt, pred, progress=False, pyramid_levels=1)
            b, n = row["test_slab"]
            test = (slice(b, n), slice(None), slice(None))
            shipped = choose_decoder(stored=store_decoder(pred)).decoder
            row["fluo_shipped_thresholds"] = scores(crop["test_labels"], segment_array(read_channels(open_predictions(pred), test), shipped))
            a, b_val = crop["val"]
            tuned = tune_store(pred, crop["labels"], region=f"{a}:{b_val},:,:")
            row["tuning"] = tuned.to_dict()
            dec = choose_decoder(stored=store_decoder(pred)).decoder
            row["fluo_tuned"] = scores(crop["test_labels"], segment_array(read_channels(open_predictions(pred), test), dec))
            out["crops"][name] = row
            print(name, json.dumps({k: row[k] for k in ("fluo_tuned", "fluo_shipped_thresholds", "baseline_tuned", "baseline_default")}),
                  flush=True)  # fmt: skip
    c = out["crops"]
    out["beats_tuned_baseline_on_both_crops"] = len(c) == len(DATASETS) and all(
        c[k]["fluo_tuned"][m] > c[k]["baseline_tuned"][m] for k in c for m in ("avAP", "AP50"))  # fmt: skip
    out["seconds"], out["load_after"] = round(time.perf_counter() - t0, 1), os.getloadavg()
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print("claim holds" if out["beats_tuned_baseline_on_both_crops"] else "claim does not hold")
    return 0


if __name__ == "__main__":
    if not REAL.is_dir():
        sys.exit(f"{REAL} is absent: the real crops are needed")
    sys.exit(main())
