"""The README's standalone flow (synth -> predict -> segment -> evaluate with the demo checkpoint)
reaches what ``blockseg demo`` reaches on the same input: the same labels, the same AP.

Before the decoder parameters travelled with the predictions, segment on the store used the
decoder's defaults instead of the checkpoint's tuned thresholds (542 of 3874 nuclei, AP-50
0.11 instead of 0.95 on the demo volume).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from blockseg_cli.main import main

SHAPE = [32, 128, 128]  # the demo's generator and seed, a smaller volume


@pytest.mark.slow  # the demo network through every stage, twice
def test_standalone_flow_equals_the_demo(tmp_path, capsys):
    img, pred, seg, ev = (str(tmp_path / n) for n in ("img.zarr", "pred.zarr", "seg.zarr", "evaluation"))
    one = ["--workers", "1", "--no-progress"]
    # the README's commands (section "The standalone flow")
    assert main(["synth", img, "--shape", *map(str, SHAPE), "--mode", "em", "--seed", "2026", *one]) == 0
    assert main(["predict", img, "demo", pred, "--batch-size", "4", *one]) == 0
    assert main(["segment", pred, seg, *one]) == 0
    assert main(["evaluate", "--gt", f"{img}/labels/nuclei", "--pred", seg, "--scores", f"{seg}/instances.csv",
                 "--centroid-points", "--out", ev, "--no-png", *one]) == 0  # fmt: skip
    capsys.readouterr()
    standalone = json.load(open(f"{ev}/evaluation.json"))

    run_dir = tmp_path / "demo"
    sets = [f"data.synth.shape={SHAPE}", "cluster.workers=1", "evaluate.png=false"]
    assert main(["demo", "--run-dir", str(run_dir), "--json"] + [a for s in sets for a in ("--set", s)]) == 0
    demo, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)  # then "outputs in ..."

    ours = zarr.open_array(f"{seg}/0", mode="r")[:]
    theirs = zarr.open_array(str(run_dir / "image.zarr/labels/blockseg/0"), mode="r")[:]
    assert ours.max() > 20  # a real segmentation, not a handful of fragments
    assert np.array_equal(ours, theirs)
    coco = standalone["coco"]
    assert coco["AP50"] == demo["AP50"] and demo["AP50"] > 0.8, (coco["AP50"], demo)  # 0.950 measured (2026-11-29 demo)
    assert standalone["avAP"] == demo["avAP"]
    assert demo["n_pred"] == int(ours.max())
