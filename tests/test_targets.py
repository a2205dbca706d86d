"""B, C, D targets: definitions, and exactness when computed blockwise with a halo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blockseg import BlocksegError
from blockseg.io import create_volume
from blockseg.predictions import decode_channel, encode_channel, open_predictions
from blockseg.segment.synthetic import random_nuclei, rasterise
from blockseg.targets import ALPHA, BETA, bcd_targets, contour_target, distance_target, target_halo, write_bcd_targets


def two_touching() -> np.ndarray:
    lab = np.zeros((12, 12, 20), np.uint32)
    lab[3:9, 3:9, 3:10] = 1
    lab[3:9, 3:9, 10:17] = 2
    return lab


def test_contour_is_a_two_voxel_band_around_label_changes():
    c = contour_target(two_touching())
    assert c[5, 5, 9] == c[5, 5, 10] == 1  # both sides of the contact
    assert c[5, 5, 2] == c[5, 5, 3] == 1  # both sides of the outer surface
    assert c[5, 5, 6] == 0 and c[0, 0, 0] == 0


def test_distance_target_signs_scale_and_contact():
    lab = two_touching()
    d = distance_target(lab)
    assert np.all(d[lab > 0] > 0) and np.all(d[lab == 0] < 0)
    assert math.isclose(d[5, 5, 3], math.tanh(1 / ALPHA), rel_tol=1e-6)  # surface voxel: distance 1
    assert math.isclose(d[5, 5, 9], math.tanh(1 / ALPHA), rel_tol=1e-6)  # contact voxel: 1 to the other nucleus
    assert math.isclose(d[5, 5, 1], -math.tanh(2 / BETA), rel_tol=1e-6)  # two voxels outside
    assert d[5, 5, 6] > d[5, 5, 4]


def test_distance_target_is_anisotropy_aware():
    lab = np.zeros((9, 21, 21), np.uint32)
    lab[2:7, 5:16, 5:16] = 1
    iso = distance_target(lab)
    aniso = distance_target(lab, voxel_size=(3.0, 1.0, 1.0))
    # centre: 3 voxels to the z surface count as 9 units with 3x thicker slices
    assert aniso[4, 10, 10] > iso[4, 10, 10]
    with pytest.raises(BlocksegError):
        distance_target(lab, voxel_size=(0, 1, 1))


def test_uint8_roundtrip_is_within_half_a_step():
    v = np.linspace(-1, 1, 1001, dtype=np.float32)
    back = decode_channel(encode_channel(v, "tanh"), "tanh")
    assert np.abs(back - v).max() <= 0.5 / 127.5 + 1e-6
    assert np.array_equal(encode_channel(back, "tanh"), encode_channel(v, "tanh"))


def test_blockwise_targets_equal_whole_volume(tmp_path):
    shape, vs = (32, 40, 48), (2.0, 1.0, 1.0)
    c, r = random_nuclei(shape, 25, (5.0, 9.0), seed=4)
    lab = rasterise(shape, c, r, voxel_size=vs)
    vol = create_volume(tmp_path / "lab.zarr", shape, np.uint32, vs, chunks=(16, 24, 24))
    vol.array[...] = lab
    assert all(h <= b for h, b in zip(target_halo(("B", "C", "D"), vs, max_distance=12.0), (16, 24, 24)))
    write_bcd_targets(str(tmp_path / "lab.zarr"), str(tmp_path / "p.zarr"), block_shape=(16, 24, 24), max_distance=12.0)
    whole = bcd_targets(lab, vs, max_distance=12.0)
    got = open_predictions(tmp_path / "p.zarr")
    for name in "BCD":
        kind = "tanh" if name == "D" else "prob"
        assert np.array_equal(got[name].array[:], encode_channel(whole[name], kind)), name
