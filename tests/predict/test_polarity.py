"""Polarity (blockseg.predict.polarity): the model card's polarity, --polarity inverting the input,
the label-free check on synthetic and real volumes, and its warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from blockseg.errors import BlocksegError
from blockseg.errors import BlocksegWarning
from blockseg.io.predictions import open_predictions, read_channels
from blockseg.io.volume import create_volume
from blockseg.models import TinyConvNet, save_checkpoint
from blockseg.predict import predict
from blockseg.predict.normalise import resolve_array
from blockseg.predict.polarity import PolarityCheck, detect_polarity, orient
from blockseg.segment import make_decoder, segment_array

torch.set_num_threads(1)

#: the real dev crops and their nuclei's polarity (../shared/data/real/README.md)
REAL_POLARITY = {"xray_zfish_box2": "dark", "xray_zfish_box5": "dark", "xray_zfish_box6": "dark",
                 "em_zfish_roi2": "bright", "em_zfish_roi3": "bright",
                 "gonuclear_1135_mini": "bright", "bbbc050_qcanet_8cell": "bright"}  # fmt: skip


def balls(dark: bool, shape=(24, 40, 40), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 balls (radius 5) on a noisy background, darker or brighter than it; and their labels."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    img = np.full(shape, 150.0 if dark else 60.0)
    lab = np.zeros(shape, np.uint32)
    for i, c in enumerate([(7, 9, 9), (7, 28, 28), (16, 9, 28), (16, 28, 10)], 1):
        lab[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 25] = i
    img[lab > 0] = 60.0 if dark else 150.0
    return np.clip(img + rng.normal(0, 4, shape), 0, 255).astype(np.uint8), lab


def bright_net(path, polarity: str | None, diameter: float = 10.0) -> str:
    """A hand-set network for *bright* nuclei: ``sdt = tanh(4 - 8 x)`` of the normalised input (the
    signed distance is negative inside: voxels above half the 1-99.8 % range are nuclei)."""
    net = TinyConvNet(("sdt",), width=1, valid=True, input_patch=(12, 20, 20), dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.conv1.weight[0, 0, 1, 1, 1] = 1.0
        net.conv2.weight[0, 0, 1, 1, 1] = -8.0
        net.conv2.bias[0] = 4.0
    norm = {"scheme": "percentile", "low": 1.0, "high": 99.8, **({"polarity": polarity} if polarity else {})}
    save_checkpoint(path, net, normalisation=norm, voxel_size=[1.0, 1.0, 1.0], nucleus_diameter_um=diameter)
    return str(path)


def segment(tmp_path, img, ckpt, **kw):
    """Blockwise predict (in this process) + the sdt decoder; the warnings said."""
    run = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    run.mkdir()
    path, out = str(run / "img.zarr"), str(run / "p.zarr")
    create_volume(path, img.shape, img.dtype, (1.0, 1.0, 1.0), chunks=(12, 20, 20)).array[...] = img
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = predict(path, ckpt, out, block_shape=(12, 20, 20), progress=False, pyramid_levels=1, **kw)
    seg = segment_array(read_channels(open_predictions(out), (slice(None),) * 3), make_decoder("sdt", min_size=20))
    return seg, rep, [str(w.message) for w in caught if issubclass(w.category, BlocksegWarning)]


def test_detect_polarity_synthetic():
    for dark in (True, False):
        check = detect_polarity(balls(dark)[0], (1, 1, 1), 10.0)
        assert check.polarity == ("dark" if dark else "bright")
        assert abs(check.score) >= 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL_POLARITY))
def test_detect_polarity_real_crops(real_data, name):
    """Right on every real crop at its nuclei's median diameter (taken from the labels)."""
    from blockseg.predict.resample import nucleus_diameter_um

    d = np.load(real_data / f"{name}.npz")
    vs = tuple(float(v) for v in d["voxel_size_zyx"])
    check = detect_polarity(d["image"], vs, nucleus_diameter_um(d["labels"], vs))
    assert check.polarity == REAL_POLARITY[name], check


def test_orient_inverts_the_affine_map():
    img = balls(dark=True)[0]
    res = resolve_array({"scheme": "percentile", "low": 1.0, "high": 99.8}, img, warn=False)
    same = orient(res, "dark")
    assert same.affine == res.affine and not same.polarity["inverted"] and "fed as it is" in same.description
    inv = orient(res, "bright", polarity="dark")
    lo, hi = res.stats.p_low, res.stats.p_high
    to_net = lambda v, a: (v - a["offset"]) / a["scale"]  # noqa: E731
    assert to_net(lo, inv.affine) == pytest.approx(1.0) and to_net(hi, inv.affine) == pytest.approx(0.0)
    assert inv.polarity == {"network": "bright", "input": "dark", "source": "given", "inverted": True, "check": None}
    assert "inverted for this network (trained on bright nuclei)" in inv.description
    assert inv.provenance()["polarity"]["inverted"]


def test_orient_refuses_what_it_cannot_do():
    res = resolve_array({"scheme": "percentile"}, balls(dark=True)[0], warn=False)
    with pytest.raises(BlocksegError, match="records no polarity"):
        orient(res, None, polarity="dark")
    with pytest.raises(BlocksegError, match="polarity must be one of"):
        orient(res, "dark", polarity="black")
    with pytest.raises(BlocksegError, match="unsure"):
        orient(res, "dark", polarity="auto", check=PolarityCheck(None, 0.05, 5.0))
    assert orient(res, None) is res  # no card, no option: nothing changes


@pytest.mark.slow
def test_predict_inverts_a_dark_input_for_a_bright_network(tmp_path):
    """The bright-nuclei network finds the dark balls only when told (or when it detects) they are dark;
    the default (the card's polarity) is said, and the check warns that the balls look dark."""
    img, lab = balls(dark=True)
    ckpt = bright_net(tmp_path / "bright.pt", "bright")
    seg, rep, warned = segment(tmp_path, img, ckpt)
    assert (seg[lab > 0] == 0).all() and (seg[lab == 0] > 0).mean() > 0.5  # fed as it is: it segments the background
    assert "polarity: bright nuclei (the model card's), fed as it is" in rep.plan.normalisation
    assert any("nuclei look dark" in w and "--polarity dark" in w for w in warned)
    for polarity, source in (("dark", "given"), ("auto", "detected")):
        seg, rep, warned = segment(tmp_path, img, ckpt, polarity=polarity)
        assert seg.max() == lab.max() and (seg > 0).sum() == (lab > 0).sum() and (seg[lab == 0] == 0).all()
        assert f"polarity: dark nuclei ({source}), inverted" in rep.plan.normalisation
        assert not any("look dark" in w for w in warned)


@pytest.mark.slow
def test_predict_polarity_needs_a_card(tmp_path):
    img, _ = balls(dark=False)
    ckpt = bright_net(tmp_path / "old.pt", None)
    with pytest.raises(BlocksegError, match="records no polarity"):
        segment(tmp_path, img, ckpt, polarity="bright")
    _, rep, _ = segment(tmp_path, img, ckpt)
    assert "polarity" not in rep.plan.normalisation  # an older checkpoint: unchanged


@pytest.mark.slow
def test_training_records_the_polarity_in_the_model_card(tmp_path):
    from blockseg.models import read_checkpoint
    from blockseg.synth import SynthParams, synthesize
    from blockseg.train import parse_config, train

    vol = tmp_path / "vol.zarr"
    synthesize(str(vol), SynthParams(shape=(16, 48, 48), seed=5, mode="uct"), chunks=(16, 48, 48), progress=False)
    base = {"data": {"train": [str(vol)], "target_context": 2},
            "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}},
            "output": str(tmp_path / "run"), "iterations": 2, "patch": [8, 24, 24], "threads": 1, "log_every": 1}  # fmt: skip
    with pytest.raises(BlocksegError, match="polarity: must be one of 'bright' or 'dark'"):
        parse_config({**base, "polarity": "grey"})
    res = train(parse_config({**base, "polarity": "dark"}), progress=False)
    assert read_checkpoint(res.checkpoint)["metadata"]["normalisation"]["polarity"] == "dark"
