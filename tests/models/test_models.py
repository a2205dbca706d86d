"""Networks (geometry, MC dropout), checkpoints, decoder/channel checks and losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockseg import BlocksegError
from blockseg.train.losses import MultiLoss, center_crop
from blockseg.models import (
    JointDetSegNet,
    ResUNet3D,
    ValidUNet3D,
    check_decoder_channels,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from blockseg.models.plain import valid_unet_crop
from blockseg.segment import make_decoder

torch.set_num_threads(1)


def _run(model, shape):
    with torch.no_grad():
        return model.eval()(torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("anisotropic, widths, shapes", [
    (0, (2, 4, 4), [(8, 8, 8), (12, 16, 20)]),
    (1, (2, 4, 4), [(4, 16, 8), (6, 8, 24)]),
])  # fmt: skip
def test_resunet_geometry(anisotropic, widths, shapes):
    m = ResUNet3D(["B", "C", "D", "cpv"], widths=widths, anisotropic=anisotropic, input_patch=shapes[0])
    div = m.geometry.divisor
    assert div == ((2, 4, 4) if anisotropic else (4, 4, 4))
    assert m.geometry.crop == (0, 0, 0)
    assert all(mg % d == 0 and mg > 0 for mg, d in zip(m.geometry.margin, div))
    for s in shapes:
        assert tuple(_run(m, s).shape) == (1, 6, *s)
        assert m.geometry.output_for(s) == s
    bad = tuple(s + 1 for s in shapes[0])
    with pytest.raises(BlocksegError):
        m.geometry.output_for(bad)
    with pytest.raises(BlocksegError):
        _run(m, bad)
    with pytest.raises(BlocksegError):
        ResUNet3D(["B"], widths=widths, anisotropic=anisotropic, input_patch=bad)


def test_valid_unet_crop_formula():
    # paper: 3 down-samplings, 236 -> 148 before our 2-voxel trim
    assert valid_unet_crop(3) == (46, 8)
    assert valid_unet_crop(2) == (20, 4)
    assert valid_unet_crop(1) == (8, 2)


@pytest.mark.parametrize("levels", [2, 3])
def test_valid_unet_geometry_and_translation(levels):
    crop, div = valid_unet_crop(levels)
    base = 2 * crop + div
    m = ValidUNet3D(["3label", "cpv"], fmaps=1, factor=2, levels=levels, input_patch=(base,) * 3)
    assert m.geometry.crop == (crop,) * 3 and m.geometry.divisor == (div,) * 3
    x = torch.randn(1, 1, base + div, base, base + 2 * div, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.eval()
        out = m(x)
        assert tuple(out.shape) == (1, 6, 2 * div, div, 3 * div)
        # valid padding: a window shifted by a multiple of the divisor gives the same voxels
        sub = m(x[..., div:, :, 2 * div :])
    assert tuple(sub.shape) == (1, 6, div, div, div)
    torch.testing.assert_close(sub, out[..., div:, :, 2 * div :], rtol=1e-4, atol=1e-5)
    with pytest.raises(BlocksegError):
        m(torch.zeros(1, 1, base + 1, base, base))


def test_joint_net_mc_dropout():
    m = JointDetSegNet(["3label", "density"], widths=(2, 4), input_patch=(8, 8, 8), head_width=4, dropout=0.5)
    assert m.supports_mc_dropout and m.channels == ("P_bg", "P_boundary", "P_interior", "density")
    x = torch.randn(1, 1, 8, 8, 8)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
        torch.testing.assert_close(a, b)
        m.set_mc_dropout(True)
        c, d = m(x), m(x)
    assert not torch.allclose(c, d)
    assert tuple(c.shape) == (1, 4, 8, 8, 8)
    assert m.geometry.margin[0] > ResUNet3D(["B"], widths=(2, 4), input_patch=(8, 8, 8)).geometry.margin[0] - 1
    with pytest.raises(BlocksegError):
        JointDetSegNet(["C", "density"], widths=(2, 4), input_patch=(8, 8, 8))


@pytest.mark.parametrize("arch", ["resunet", "valid", "joint"])
def test_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    if arch == "resunet":
        m = ResUNet3D(["B", "C", "D", "cpv"], widths=(2, 4), input_patch=(8, 8, 8))
    elif arch == "valid":
        m = ValidUNet3D(["sdt", "cpv"], fmaps=1, factor=2, levels=1, input_patch=(18, 18, 18))
    else:
        m = JointDetSegNet(["B", "density"], widths=(2, 4), input_patch=(8, 8, 8), head_width=2)
    m.train()
    for _ in range(2):  # move BatchNorm running statistics away from their defaults
        m(torch.randn(2, 1, *m.geometry.input_patch))
    path = tmp_path / "m.pt"
    save_checkpoint(path, m, normalisation={"offset": 1.0, "scale": 2.0}, voxel_size=[1, 1, 1])
    m2, payload = load_checkpoint(path)
    assert payload["metadata"]["normalisation"] == {"offset": 1.0, "scale": 2.0}
    assert payload["geometry"] == m.geometry.to_dict()
    x = torch.randn(1, 1, *m.geometry.input_patch)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    m = ResUNet3D(["B"], widths=(2,), input_patch=(4, 4, 4))
    with pytest.raises(BlocksegError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(BlocksegError, match="not a blockseg checkpoint"):
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint(good, m)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:200])
    with pytest.raises(BlocksegError):
        load_checkpoint(trunc)
    payload = torch.load(good, weights_only=True)
    payload["format"] = 999
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(BlocksegError, match="format 999"):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(BlocksegError, match="not a blockseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    payload = torch.load(good, weights_only=True)
    payload["config"]["widths"] = [3]
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(BlocksegError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_decoder_channel_check(tmp_path):
    bcd = make_decoder("bcd")
    check_decoder_channels(("B", "C", "D", "cpv_z", "cpv_y", "cpv_x"), bcd)
    m = ResUNet3D(["3label", "cpv"], widths=(2,), input_patch=(4, 4, 4))
    with pytest.raises(BlocksegError, match=r"needs channel\(s\) \['B', 'C', 'D'\]"):
        check_decoder_channels(m, bcd)
    save_checkpoint(tmp_path / "m.pt", m)
    with pytest.raises(BlocksegError, match="representations"):
        check_decoder_channels(tmp_path / "m.pt", bcd)
    check_decoder_channels(tmp_path / "m.pt", make_decoder("3label"))


# ----------------------------------------------------------------------------- losses
def _targets(shape=(2, 6, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    lab = (rng.random(shape) < 0.3).astype(np.float32)
    onehot = np.stack([1 - lab, np.zeros_like(lab), lab], 1)
    t = {
        "B": lab,
        "C": np.roll(lab, 1, -1) * (1 - lab),
        "D": np.tanh(rng.normal(size=shape)).astype(np.float32) * 0.9,
        "cpv_z": rng.normal(size=shape).astype(np.float32) * lab,
        "cpv_y": rng.normal(size=shape).astype(np.float32) * lab,
        "cpv_x": rng.normal(size=shape).astype(np.float32) * lab,
        "P_bg": onehot[:, 0],
        "P_boundary": onehot[:, 1],
        "P_interior": onehot[:, 2],
        "labels_fg": lab,
    }
    return {k: torch.from_numpy(v) for k, v in t.items()}


def _perfect_raw(t, reps):
    parts = []
    for r in reps:
        if r in ("B", "C"):
            parts.append((t[r] * 2 - 1)[:, None] * 30)
        elif r == "D":
            parts.append(torch.atanh(t["D"])[:, None])
        elif r == "cpv":
            parts.append(torch.stack([t["cpv_z"], t["cpv_y"], t["cpv_x"]], 1))
        elif r == "3label":
            parts.append(torch.stack([t["P_bg"], t["P_boundary"], t["P_interior"]], 1) * 40 - 20)
    return torch.cat(parts, 1)


@pytest.mark.parametrize("reps", [("B", "C", "D", "cpv"), ("3label", "cpv")])
def test_losses_perfect_prediction_is_near_zero(reps):
    t = _targets()
    loss_fn = MultiLoss(reps)
    raw = _perfect_raw(t, reps)
    total, parts = loss_fn(raw, t)
    assert set(parts) == set(reps)
    # Dice keeps a tiny smoothing residual; everything else is ~0
    assert float(total) < 0.02, parts
    noisy, _ = loss_fn(raw + torch.randn_like(raw), t)
    assert float(noisy) > 10 * float(total) + 0.1


def test_cpv_loss_weights_background_by_001():
    t = _targets()
    reps = ("cpv",)
    raw = _perfect_raw(t, reps).clone()
    fg = t["labels_fg"][:, None].expand_as(raw)
    raw[fg == 0] += 1.0  # error of 1 on every background voxel and channel
    _, parts = MultiLoss(reps, cpv_units="voxels")(raw, t)
    n_fg, n_bg = float(fg.sum()), float((fg == 0).sum())
    expected = 0.01 * n_bg / (n_fg + 0.01 * n_bg)
    assert parts["cpv"] == pytest.approx(expected, rel=1e-5)
    # the default divides by the weighted mean squared target vector (at least 1)
    v = torch.stack([t["cpv_z"], t["cpv_y"], t["cpv_x"]], 1)
    w = t["labels_fg"][:, None].clamp(0.01, 1.0).expand_as(v)
    scale = max(float((w * v**2).sum() / w.sum()), 1.0)
    _, rel = MultiLoss(reps)(raw, t)
    assert rel["cpv"] == pytest.approx(expected / scale, rel=1e-5)


def test_loss_crops_targets_to_valid_output():
    t = _targets(shape=(1, 10, 12, 12))
    reps = ("D",)
    raw = _perfect_raw(t, reps)[..., 2:-2, 3:-3, 3:-3]
    total, _ = MultiLoss(reps)(raw, t)
    assert float(total) < 1e-10
    assert tuple(center_crop(t["D"], (6, 6, 6)).shape) == (1, 6, 6, 6)
    with pytest.raises(BlocksegError):
        center_crop(t["D"], (5, 6, 6))


def test_sdt_weight_with_cpv_and_unknown_weights():
    assert MultiLoss(("sdt", "cpv")).weights["sdt"] == 100.0
    assert MultiLoss(("sdt",)).weights["sdt"] == 1.0
    with pytest.raises(BlocksegError):
        MultiLoss(("B",), {"E": 1.0})


def test_shipped_demo_checkpoint():
    import os

    from blockseg.models import demo_checkpoint_path

    path = demo_checkpoint_path()
    assert os.path.getsize(path) <= 5 * 2**20
    model, payload = load_checkpoint(path)
    assert model.representations == ("B", "C", "D", "cpv")
    meta = payload["metadata"]
    assert meta["normalisation"]["scheme"] == "percentile" and len(meta["voxel_size"]) == 3
    check_decoder_channels(model, make_decoder(meta["decoder"]["name"], **meta["decoder"]["params"]))
    # the network separates a dark blob from bright background (EM look) after normalisation
    from blockseg.models import normalise
    from blockseg.predict.normalise import resolve_array

    img = np.full((16, 32, 32), 195, np.float32)
    zz, yy, xx = np.ogrid[:16, :32, :32]
    img[(zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 <= 25] = 105
    affine = resolve_array(meta["normalisation"], img, warn=False).affine  # the image's own percentiles
    x = torch.from_numpy(normalise(img, affine))[None, None]
    with torch.no_grad():
        b = model.postprocess(model(x))[0, 0].numpy()
    assert b[8, 16, 16] > 0.5 > b[8, 2, 2]
