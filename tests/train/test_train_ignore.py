"""An ignore array of a training volume (``data.ignore``, ``labels/ignore``): its voxels take no
part in the loss; a volume without one, or with an all-zero one, trains exactly as before."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from blockseg.io.volume import create_label_volume, open_volume
from blockseg.models.base import REPRESENTATIONS
from blockseg.synth import SynthParams, synthesize
from blockseg.train import CropSampler, parse_config, train
from blockseg.train.config import AugmentConfig
from blockseg.train.losses import MultiLoss
from blockseg.train.training_data import import_pair

torch.set_num_threads(1)
REP_SETS = [["B", "C", "D", "cpv"], ["3label", "sdt", "aff"], ["gauss"], ["B", "density"]]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    path = tmp_path_factory.mktemp("ignore") / "vol.zarr"
    synthesize(str(path), SynthParams(shape=(16, 48, 48), seed=7), chunks=(16, 48, 48), progress=False)
    return str(path)


def _with_ignore(volume: str, dest, ignore: np.ndarray) -> str:
    """A copy of ``volume`` with ``ignore`` as its ``labels/ignore``."""
    shutil.copytree(volume, dest)
    img = open_volume(str(dest))
    create_label_volume(str(dest), "ignore", img.shape, np.uint8, img.voxel_size).array[...] = ignore
    return str(dest)


def _config(volume, out):
    return parse_config({
        "data": {"train": [volume], "target_context": 4},
        "model": {"representations": ["B", "C", "D"], "params": {"widths": [4, 8], "anisotropic": 1}},
        "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.0},
        "output": str(out), "iterations": 4, "patch": [8, 24, 24], "batch_size": 2, "log_every": 2,
        "checkpoint_every": 4, "threads": 1, "decoder": {"name": "bcd"}, "seed": 3,
    })  # fmt: skip


def test_all_zero_ignore_trains_exactly_like_no_ignore(volume, tmp_path):
    zero = _with_ignore(volume, tmp_path / "zero.zarr", np.zeros(open_volume(volume).shape, np.uint8))
    a = train(_config(volume, tmp_path / "a"), progress=False)
    b = train(_config(zero, tmp_path / "b"), progress=False)
    assert a.losses == b.losses  # bit for bit
    wa, wb = (torch.load(r.checkpoint, weights_only=False)["state_dict"] for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_ignore_array_changes_training(volume, tmp_path):
    lab = np.asarray(open_volume(f"{volume}/labels/nuclei").array[...])
    part = _with_ignore(volume, tmp_path / "part.zarr", (lab % 2 == 1).astype(np.uint8))  # every odd nucleus unlabelled
    a = train(_config(volume, tmp_path / "a"), progress=False)
    b = train(_config(part, tmp_path / "b"), progress=False)
    assert a.losses != b.losses


@pytest.mark.parametrize("cache_mb", [0, 1024], ids=["computed", "cached"])
@pytest.mark.parametrize("elastic", [False, True])
def test_loss_mask_moves_with_the_labels(volume, tmp_path, cache_mb, elastic):
    """Ignore = the labelled voxels, so every crop's loss_mask is 1 - labels_fg, whatever the augmentation."""
    lab = np.asarray(open_volume(f"{volume}/labels/nuclei").array[...])
    path = _with_ignore(volume, tmp_path / "fg.zarr", (lab > 0).astype(np.uint8))
    aug = AugmentConfig(elastic=elastic, elastic_p=1.0, rot90=True)
    s = CropSampler([path], ["B", "D"], (8, 24, 24), {"offset": 0.0, "scale": 1.0}, aug, mask=None, cache_mb=cache_mb)
    _, t = s.batch(np.random.default_rng(0), 6)
    assert set(t) == {"B", "D", "labels_fg", "loss_mask"}
    np.testing.assert_array_equal(t["loss_mask"], 1 - t["labels_fg"])


def test_no_ignore_array_no_loss_mask(volume):
    s = CropSampler([volume], ["B"], (8, 24, 24), {"offset": 0.0, "scale": 1.0}, AugmentConfig(), mask=None)
    assert "loss_mask" not in s.batch(np.random.default_rng(0), 2)[1]
    s = CropSampler([volume], ["B"], (8, 24, 24), {"offset": 0.0, "scale": 1.0}, AugmentConfig(), mask=None, ignore=None)
    assert not s.has_ignore


def _targets(reps, rng, shape=(2, 6, 10, 10)) -> dict[str, torch.Tensor]:
    t = {}
    for r in reps:
        names = REPRESENTATIONS[r][0]
        if r == "3label":
            onehot = np.eye(3, dtype=np.float32)[rng.integers(0, 3, shape)]
            t.update({c: torch.from_numpy(onehot[..., i].copy()) for i, c in enumerate(names)})
        else:
            t.update({c: torch.from_numpy((rng.random(shape) > 0.6).astype(np.float32) * rng.random(shape).astype(np.float32)) for c in names})
    t["labels_fg"] = torch.from_numpy((rng.random(shape) > 0.5).astype(np.float32))
    return t


def _loss_and_grad(loss_fn, raw, targets):
    x = raw.clone().requires_grad_(True)
    total, _ = loss_fn(x, targets)
    total.backward()
    return total.detach(), x.grad


@pytest.mark.parametrize("reps", REP_SETS, ids=["+".join(r) for r in REP_SETS])
def test_ignored_targets_do_not_change_loss_or_gradient(reps):
    rng = np.random.default_rng(1)
    loss_fn = MultiLoss(reps)
    n = sum(len(REPRESENTATIONS[r][0]) for r in reps)
    raw = torch.from_numpy(rng.normal(size=(2, n, 6, 10, 10)).astype(np.float32))
    t = _targets(reps, rng)
    keep = torch.from_numpy((rng.random((2, 6, 10, 10)) > 0.3).astype(np.float32))
    other = _targets(reps, np.random.default_rng(2))  # different targets ...
    t2 = {k: torch.where(keep > 0, v, other[k]) for k, v in t.items()}  # ... on the ignored voxels only
    assert any(not torch.equal(t[k], t2[k]) for k in t)
    loss_a, grad_a = _loss_and_grad(loss_fn, raw, {**t, "loss_mask": keep})
    loss_b, grad_b = _loss_and_grad(loss_fn, raw, {**t2, "loss_mask": keep})
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(grad_a, grad_b)
    assert torch.all(grad_a[(keep == 0)[:, None].expand_as(grad_a)] == 0)  # an ignored voxel gets no gradient
    loss_c, grad_c = _loss_and_grad(loss_fn, raw, {**t, "loss_mask": torch.ones_like(keep)})
    loss_d, grad_d = _loss_and_grad(loss_fn, raw, t)
    assert torch.equal(loss_c, loss_d) and torch.equal(grad_c, grad_d)  # a mask of ones is no mask


def test_import_pair_writes_the_ignore_mask(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 16, 16)).astype(np.uint8)
    lab = (rng.random((8, 16, 16)) > 0.7).astype(np.uint16)
    ign = (rng.random((8, 16, 16)) > 0.8).astype(np.uint8)
    for name, arr in (("img", img), ("lab", lab), ("ign", ign), ("bad", ign[:4])):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "pair.zarr"
    import_pair(str(tmp_path / "img.npy"), str(tmp_path / "lab.npy"), str(out), voxel_size=0.5, ignore=str(tmp_path / "ign.npy"))
    np.testing.assert_array_equal(np.asarray(open_volume(f"{out}/labels/ignore").array[...]), ign)
    from blockseg.errors import BlocksegError

    with pytest.raises(BlocksegError, match="ignore mask"):
        import_pair(str(tmp_path / "img.npy"), str(tmp_path / "lab.npy"), str(tmp_path / "p2.zarr"), voxel_size=0.5,
                    ignore=str(tmp_path / "bad.npy"))  # fmt: skip
