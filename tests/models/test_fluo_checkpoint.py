"""The shipped ``fluo`` checkpoint: metadata, selection by name, and the real crops."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from blockseg.models import read_checkpoint, resolve_checkpoint, shipped_checkpoint_path

from _helpers import REAL_DATA as REAL

torch.set_num_threads(1)


def test_fluo_checkpoint_is_small_percentile_normalised_and_knows_its_voxel_size_and_nuclei():
    """The shipped ``fluo``: trained on GoNuclear's train slab (experiments/results/fluo_from_real.md)."""
    path = shipped_checkpoint_path("fluo")
    assert os.path.getsize(path) <= 5 * 2**20
    assert resolve_checkpoint("fluo") == path
    meta = read_checkpoint(path)["metadata"]
    assert meta["normalisation"]["scheme"] == "percentile"
    assert meta["normalisation"]["training"]  # statistics of its training volume
    assert meta["voxel_size"] == pytest.approx([0.2837, 0.1268, 0.1268], abs=1e-4)  # GoNuclear's
    assert meta["representations"] == ["3label", "cpv"]
    assert meta["decoder"]["name"] == "3label" and meta["decoder"].get("tuned_on") == "validation"
    assert 2.0 < meta["nucleus_diameter_um"] < 4.0  # predict --diameter scales other nuclei to it


def test_fluo_synth_is_the_synthetic_only_network():
    path = shipped_checkpoint_path("fluo_synth")
    assert os.path.getsize(path) <= 5 * 2**20 and resolve_checkpoint("fluo_synth") == path
    meta = read_checkpoint(path)["metadata"]
    assert meta["voxel_size"] == pytest.approx([0.5, 0.25, 0.25])
    assert meta["decoder"]["name"] == "bcd" and meta["normalisation"]["scheme"] == "percentile"


def test_a_folder_named_like_a_shipped_checkpoint_does_not_shadow_it(tmp_path, monkeypatch):
    """`blockseg demo --run-dir demo` makes a folder `demo`; the name must still mean the checkpoint."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert resolve_checkpoint("demo") == shipped_checkpoint_path("demo")
    (tmp_path / "fluo").write_bytes(b"x")  # a file of that name is the user's and wins
    assert resolve_checkpoint("fluo") == "fluo"


def test_resampled_predictions_carry_size_thresholds_in_the_images_voxels(tmp_path):
    """fluo_synth's min_size counts voxels of its 0.5x0.25x0.25 µm grid; an image at half that voxel
    size is predicted on its own grid, so the stored (and used) sizes are 8x larger."""
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict
    from blockseg.segment.params import checkpoint_decoder, choose_decoder, store_decoder

    vol = create_volume(tmp_path / "i.zarr", (16, 48, 48), np.uint8, (0.25, 0.125, 0.125))
    vol.array[...] = np.random.default_rng(0).integers(0, 255, (16, 48, 48), dtype=np.uint8)
    predict(str(tmp_path / "i.zarr"), "fluo_synth", str(tmp_path / "o.pred"), progress=False, pyramid_levels=1)
    own = checkpoint_decoder(read_checkpoint(shipped_checkpoint_path("fluo_synth")))["params"]
    stored = store_decoder(tmp_path / "o.pred")
    assert stored["sizes"]["factor"] == pytest.approx(8.0)
    for k in ("min_size", "min_seed_size"):
        assert stored["params"][k] == round(own[k] * 8) and stored["sizes"]["checkpoint_grid"][k] == own[k]
    assert {k: v for k, v in stored["params"].items() if k not in ("min_size", "min_seed_size")} == \
        {k: v for k, v in own.items() if k not in ("min_size", "min_seed_size")}  # thresholds unchanged
    choice = choose_decoder(stored=stored)
    assert choice.decoder.params()["min_size"] == round(own["min_size"] * 8)
    assert "sizes ×8 from its voxel grid to this image's" in choice.describe()


@pytest.mark.parametrize("name", ["fluo", "fluo_synth"])
def test_predict_accepts_the_name(tmp_path, name):
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict

    vs = tuple(read_checkpoint(shipped_checkpoint_path(name))["metadata"]["voxel_size"])
    vol = create_volume(tmp_path / "i.zarr", (16, 64, 64), np.uint8, vs)
    vol.array[...] = 0
    plan = predict(str(tmp_path / "i.zarr"), name, str(tmp_path / "o.pred"), dry_run=True)
    assert plan.normalisation.startswith("percentile") and plan.resampling.startswith("not resampled")


@pytest.mark.slow  # the fluo network over a real crop, twice
@pytest.mark.parametrize("name", ["fluo", "fluo_synth"])
def test_real_crop_as_uint8_and_uint16_gives_the_same_segmentation(tmp_path, name):
    """The GoNuclear crop (uint8) and the same values x257 as uint16, through a shipped fluorescence
    checkpoint (percentile normalisation; fluo_synth resamples to its voxel size): the same nuclei."""
    f = REAL / "gonuclear_1135_mini.npz"
    if not f.is_file():
        pytest.skip(f"real data {f} is absent")
    from blockseg.evaluate import evaluate
    from blockseg.io.volume import create_volume
    from blockseg.predict import predict
    from blockseg.io.predictions import open_predictions, read_channels
    from blockseg.segment import segment_array
    from blockseg.segment.params import choose_decoder, store_decoder

    d = np.load(f)
    img, vs = d["image"], tuple(float(v) for v in d["voxel_size_zyx"])
    segs = []
    for dtype, data in (("u8", img), ("u16", img.astype(np.uint16) * 257)):
        vol = create_volume(tmp_path / f"{dtype}.zarr", data.shape, data.dtype, vs)
        vol.array[...] = data
        pred = tmp_path / f"{dtype}.pred"
        rep = predict(str(tmp_path / f"{dtype}.zarr"), name, str(pred), progress=False, pyramid_levels=1)
        assert rep.plan.resampling.startswith("not resampled" if name == "fluo" else "resampled by")
        dec = choose_decoder(stored=store_decoder(pred)).decoder  # the checkpoint's, sizes in this image's voxels
        segs.append(segment_array(read_channels(open_predictions(str(pred)), (slice(None),) * 3), dec))
    assert segs[0].max() > 0
    assert evaluate(segs[0], segs[1]).coco["AP50"] >= 0.99


@pytest.mark.parametrize("name", ["fluo", "fluo_synth", "demo"])
def test_fine_tuning_starts_from_a_shipped_checkpoint_by_name(name):
    """``model.init: fluo`` loads the shipped weights (the README's fine-tuning advice)."""
    import copy

    from blockseg.models import load_checkpoint
    from blockseg.train.trainer import init_from_checkpoint

    shipped, _ = load_checkpoint(shipped_checkpoint_path(name), "cpu")
    model = copy.deepcopy(shipped)
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
    init_from_checkpoint(model, name)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.state_dict().values()))
