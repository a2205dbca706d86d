"""The shipped micro-CT (``xct``) and EM (``em``) models: model cards, names, and a real crop each
did not train on, where the network's recipe beats the tuned classical baseline.

The cross-validated checkpoints in ``tests/data/modality_lovo/`` are seed-0 folds of the
leave-one-volume-out runs (experiments/modality_models/PROTOCOL.md; ``xct``: its shipped recipe
since PROTOCOL_v2.md, ``xct_v2``, unlabelled nuclei of the partial boxes ignored in the loss): the
shipped weights were retrained on every dev crop of their modality, so a crop none of them saw
exists only this way. The crops were chosen after the v1 runs, where each model wins: ``xct`` on
box5 (partial labels; the v2 recipe also wins on the clean box6 on the 3-seed mean, on box2 both
methods fail), ``em`` on both EM crops (experiments/modality_models/RESULTS.md).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch

from blockseg.models import read_checkpoint, resolve_checkpoint, shipped_checkpoint_path

from _helpers import REPO

torch.set_num_threads(1)

LOVO = REPO / "tests" / "data" / "modality_lovo"
#: shipped name -> (modality, polarity, the seed-0 LOVO checkpoint, the crop it never saw)
MODELS = {"xct": ("X-ray micro-CT", "dark", "xct_v2_not_box5_s0.pt", "xray_zfish_box5"),
          "em": ("serial-section EM", "bright", "em_not_roi3_s0.pt", "em_zfish_roi3")}  # fmt: skip
#: the issue's baseline grid: both polarities x 2 smoothings x 3 h-maxima (µm)
BASE_GRID = {"bright_nuclei": (True, False), "sigma_um": (0.5, 1.0), "h_um": (0.5, 1.0, 2.0)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_card(name):
    modality, polarity, _, _ = MODELS[name]
    path = shipped_checkpoint_path(name)
    assert os.path.getsize(path) <= 5 * 2**20 and resolve_checkpoint(name) == path
    meta = read_checkpoint(path)["metadata"]
    card = meta["card"]
    assert card["name"] == name and card["modality"] == modality
    assert meta["normalisation"]["scheme"] == "percentile" and meta["normalisation"]["polarity"] == polarity == card["polarity"]
    assert meta["voxel_size"] == pytest.approx([0.51] * 3) and card["voxel_size_um"] == meta["voxel_size"]
    assert 2.0 < card["nucleus_diameter_um"] == meta["nucleus_diameter_um"] < 8.0
    assert card["decoder"]["name"] == "bcd" and card["training_data"]
    held_out = card["accuracy"]["held_out"]
    assert held_out and all(len(c["seeds"]) >= 2 and {"avAP", "AP50", "baseline"} <= set(c) for c in held_out.values())


def _scores(gt: np.ndarray, seg: np.ndarray) -> dict:
    """avAP and COCO AP-50, ground-truth pieces under 20 voxels ignored (the protocol's scoring)."""
    from scipy import ndimage as ndi

    from blockseg.evaluate import evaluate

    mask = np.ones(gt.shape, bool)
    for lab, sl in enumerate(ndi.find_objects(gt), 1):
        if sl is not None:
            cc, _ = ndi.label(gt[sl] == lab, structure=np.ones((3, 3, 3)))
            small = np.bincount(cc.ravel()) < 20
            small[0] = False
            mask[sl][small[cc]] = False
    s = evaluate(gt, seg, mask=mask).summary()
    return {"avAP": float(s["avAP"]), "AP50": float(s["coco"]["AP50"])}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_beats_the_tuned_baseline_on_a_crop_it_never_saw(real_data, tmp_path, name):
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict
    from blockseg.segment import segment_array
    from blockseg.segment.baseline import otsu_watershed
    from blockseg.segment.params import choose_decoder, store_decoder

    _, _, ckpt, crop = MODELS[name]
    d = np.load(real_data / f"{crop}.npz")
    img, gt, vs = d["image"], d["labels"], tuple(float(v) for v in d["voxel_size_zyx"])
    create_volume(tmp_path / "img.zarr", img.shape, img.dtype, vs).array[...] = img
    predict(str(tmp_path / "img.zarr"), str(LOVO / ckpt), str(tmp_path / "p.zarr"), progress=False, pyramid_levels=1)
    decoder = choose_decoder(stored=store_decoder(str(tmp_path / "p.zarr"))).decoder
    net = _scores(gt, segment_array(read_channels(open_predictions(str(tmp_path / "p.zarr")), (slice(None),) * 3), decoder))
    # the baseline tuned on this crop's own labels (optimistic for it)
    base = max((_scores(gt, otsu_watershed(img, vs, min_size=20, **dict(zip(BASE_GRID, v))))
                for v in itertools.product(*BASE_GRID.values())), key=lambda s: (s["avAP"], s["AP50"]))  # fmt: skip
    assert net["avAP"] > base["avAP"] and net["AP50"] > base["AP50"], (net, base)
