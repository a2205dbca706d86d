"""``blockseg tune``: a prediction store's decoder thresholds tuned on annotated nuclei (no
training), written as the store's recommendation that ``segment`` then uses."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from blockseg import BlocksegError
from blockseg.evaluate import evaluate
from blockseg.io.volume import create_volume, open_volume
from blockseg.io.predictions import open_predictions, read_channels, save_predictions
from blockseg.segment import segment_array
from blockseg.segment.params import choose_decoder, store_decoder
from blockseg.synth import SynthParams, synthesize
from blockseg.train.targets import compute_targets
from blockseg.pipeline.tune import tune_store
from blockseg_cli.main import main


@pytest.fixture(scope="module")
def weak_store(tmp_path_factory):
    """A store whose distance map is weak (D scaled by 0.25): the decoder's default seed_d misses
    most seeds, a lower one finds them."""
    tmp = tmp_path_factory.mktemp("tune")
    synthesize(str(tmp / "v.zarr"), SynthParams(shape=(24, 64, 64), voxel_size=(1.0, 0.5, 0.5), seed=4), progress=False)
    lab = np.asarray(open_volume(str(tmp / "v.zarr/labels/nuclei")).array[...])
    t = compute_targets(lab, ["B", "C", "D"], (1.0, 0.5, 0.5))
    save_predictions(tmp / "p.zarr", {"B": t["B"], "C": t["C"], "D": t["D"] * 0.25}, voxel_size=(1.0, 0.5, 0.5))
    return tmp, lab


def ap50(store, lab, region=(slice(None),) * 3):
    dec = choose_decoder(stored=store_decoder(store)).decoder
    seg = segment_array(read_channels(open_predictions(store), region), dec)
    return float(evaluate(lab[region], seg).coco["AP50"])


def test_tuning_a_region_raises_ap_and_segment_uses_it(weak_store, tmp_path):
    tmp, lab = weak_store
    store = tmp_path / "p.zarr"
    import shutil

    shutil.copytree(tmp / "p.zarr", store)
    before = ap50(store, lab)
    res = tune_store(str(store), str(tmp / "v.zarr/labels/nuclei"), region="0:24,0:32,:")  # half the volume annotated
    assert res.written and res.region == ((0, 24), (0, 32), (0, 64))
    assert res.params["seed_d"] < 0.3 and res.scores["AP50"] > res.before_scores["AP50"]
    rec = store_decoder(store)
    assert rec["from"] == "tuned" and rec["params"]["seed_d"] == res.params["seed_d"]
    assert "tuned on" in choose_decoder(stored=rec).describe()
    from blockseg.pipeline.summary import render, summarise

    import re

    assert re.search(r"tuned on \d+ annotated nuclei", render(summarise(str(store))))  # blockseg info names where the thresholds come from
    # the thresholds carry to the part that was not annotated
    other = (slice(None), slice(32, 64), slice(None))
    assert ap50(store, lab) > before + 0.2
    assert ap50(store, lab, other) > 0.8


def test_labels_of_the_region_shape_and_dry_run(weak_store, tmp_path):
    tmp, lab = weak_store
    crop = lab[:, :32, :]
    create_volume(tmp_path / "crop.zarr", crop.shape, crop.dtype, (1.0, 0.5, 0.5)).array[...] = crop
    attrs_before = dict(zarr.open_group(str(tmp / "p.zarr"), mode="r").attrs)
    res = tune_store(str(tmp / "p.zarr"), str(tmp_path / "crop.zarr"), region=":,0:32,:", write=False)
    assert not res.written and res.params["seed_d"] < 0.3
    assert dict(zarr.open_group(str(tmp / "p.zarr"), mode="r").attrs) == attrs_before  # dry run writes nothing


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(region="0:24,0:16"), "z0:z1,y0:y1,x0:x1"),
     (dict(region="0:30,:,:"), "outside the volume"),
     (dict(grid={"nonsense": [1.0]}), "nothing to tune"),
     (dict(decoder="3label"), "lacks the channels")],
)  # fmt: skip
def test_bad_input_is_refused_in_one_line(weak_store, kwargs, match):
    tmp, _ = weak_store
    with pytest.raises(BlocksegError, match=match):
        tune_store(str(tmp / "p.zarr"), str(tmp / "v.zarr/labels/nuclei"), write=False, **kwargs)


def test_empty_or_misshapen_labels_are_refused(weak_store, tmp_path):
    tmp, lab = weak_store
    create_volume(tmp_path / "zero.zarr", lab.shape, lab.dtype).array[...] = 0
    with pytest.raises(BlocksegError, match="no nuclei"):
        tune_store(str(tmp / "p.zarr"), str(tmp_path / "zero.zarr"), write=False)
    with pytest.raises(BlocksegError, match="almost no background"):  # an image given as labels
        tune_store(str(tmp / "p.zarr"), lab + 1, write=False)
    create_volume(tmp_path / "odd.zarr", (5, 5, 5), lab.dtype)
    with pytest.raises(BlocksegError, match="fit neither"):
        tune_store(str(tmp / "p.zarr"), str(tmp_path / "odd.zarr"), write=False)


def test_cli(weak_store, tmp_path, capsys):
    tmp, _ = weak_store
    assert main(["tune", str(tmp / "p.zarr"), str(tmp / "v.zarr/labels/nuclei"), "--dry-run", "--grid", "seed_d=0.05,0.3"]) == 0
    out = capsys.readouterr().out
    import re

    assert out.startswith("tuned bcd on ") and "AP-50 0.000 -> " in out and "not written" in out
    assert float(re.search(r"seed_d 0.3 -> (-?[0-9.]+)", out).group(1)) < 0.3
    with pytest.raises(SystemExit) as e:
        main(["tune", str(tmp / "p.zarr"), str(tmp / "v.zarr/labels/nuclei"), "--grid", "seed_d"])
    assert e.value.code == 2 and "expected NAME=V1,V2" in capsys.readouterr().err
    assert main(["tune", str(tmp / "p.zarr"), str(tmp / "v.zarr/labels/nuclei"), "--region", "0:99,:,:"]) == 2
    assert "outside the volume" in capsys.readouterr().err


def test_saved_checkpoint_carries_the_tuned_thresholds_to_the_next_volume(tmp_path, capsys):
    from blockseg.models import IdentityNet, read_checkpoint, save_checkpoint
    from blockseg.predict import predict

    save_checkpoint(tmp_path / "id.pt", IdentityNet(("B", "C", "D"), input_patch=(16, 32, 32)),
                    normalisation={"offset": 120.0, "scale": -15.0},
                    decoder={"name": "bcd", "params": {"seed_d": 0.3, "min_size": 8}})  # fmt: skip
    for seed in (1, 2):
        synthesize(str(tmp_path / f"v{seed}.zarr"), SynthParams(shape=(16, 64, 64), seed=seed), progress=False)
        predict(str(tmp_path / f"v{seed}.zarr"), tmp_path / "id.pt", tmp_path / f"p{seed}.zarr", progress=False, pyramid_levels=1)
    out = tmp_path / "tuned.pt"
    argv = ["tune", str(tmp_path / "p1.zarr"), str(tmp_path / "v1.zarr/labels/nuclei"), "--grid", "seed_d=0.1,0.3,0.5",
            "--save-checkpoint", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    tuned = store_decoder(tmp_path / "p1.zarr")["params"]
    meta = read_checkpoint(out)["metadata"]
    assert meta["decoder"]["params"] == {"seed_d": tuned["seed_d"], "min_size": 8}  # sizes stay the checkpoint's
    assert "annotated nuclei" in meta["decoder"]["tuned_on"]
    predict(str(tmp_path / "v2.zarr"), out, tmp_path / "p2t.zarr", progress=False, pyramid_levels=1)
    assert store_decoder(tmp_path / "p2t.zarr")["params"]["seed_d"] == tuned["seed_d"]
    # an existing file is never replaced, and the store is not touched when that is refused
    attrs = dict(zarr.open_group(str(tmp_path / "p2.zarr"), mode="r").attrs)
    argv[1:3] = [str(tmp_path / "p2.zarr"), str(tmp_path / "v2.zarr/labels/nuclei")]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert dict(zarr.open_group(str(tmp_path / "p2.zarr"), mode="r").attrs) == attrs
