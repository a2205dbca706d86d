"""Blockwise connected components (blockseg.segment.label) equal whole-volume cc3d as partitions."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from blockseg.errors import BlocksegError
from blockseg.io.volume import create_volume, open_volume
from blockseg.segment import label

from _helpers import same_partition


def _write(path, mask, chunks):
    vol = create_volume(path, mask.shape, np.uint8, 1.0, chunks=chunks)
    vol.array[...] = mask
    return str(path)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_label_equals_whole_volume(tmp_path, connectivity):
    rng = np.random.default_rng(connectivity)
    mask = (rng.random((30, 33, 35)) < 0.32).astype(np.uint8)  # near percolation: long, winding components
    src = _write(tmp_path / "m.zarr", mask, (6, 7, 8))
    rep = label(src, tmp_path / "l.zarr", connectivity=connectivity, block_shape=(12, 14, 16))
    got = open_volume(tmp_path / "l.zarr").array[...]
    ref, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    assert rep.n_components == n == len(np.unique(got)) - 1
    assert same_partition(got, ref)


def test_label_joins_through_a_block_corner_only(tmp_path):
    """Two voxels meeting only at the corner of 8 blocks: one component at 26, two at 18 and 6."""
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[3, 3, 3] = mask[4, 4, 4] = 1
    mask[0, 0, 0:8] = 1  # a line crossing a face: one component at every connectivity
    src = _write(tmp_path / "m.zarr", mask, (4, 4, 4))
    for conn, expected in ((26, 2), (18, 3), (6, 3)):
        rep = label(src, tmp_path / f"l{conn}.zarr", connectivity=conn, block_shape=4)
        assert rep.n_components == expected


@pytest.mark.slow  # the shared LocalCluster
def test_label_on_cluster(tmp_path, local_client):
    rng = np.random.default_rng(1)
    mask = (rng.random((24, 40, 40)) < 0.3).astype(np.uint8)
    src = _write(tmp_path / "m.zarr", mask, (8, 8, 8))
    label(src, tmp_path / "l.zarr", block_shape=(8, 16, 16), client=local_client)
    assert same_partition(open_volume(tmp_path / "l.zarr").array[...], cc3d.connected_components(mask, connectivity=26))


def test_label_refuses_bad_connectivity(tmp_path):
    src = _write(tmp_path / "m.zarr", np.ones((4, 4, 4), np.uint8), (4, 4, 4))
    with pytest.raises(BlocksegError, match="connectivity"):
        label(src, tmp_path / "l.zarr", connectivity=4)
