"""The label pyramid levels segment's relabel writes per block equal the pyramid pass's bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.io.predictions import save_predictions
from blockseg.io.pyramid import block_levels, write_pyramid
from blockseg.io.volume import create_volume
from blockseg.segment import BCDDecoder, segment
from blockseg.segment.synthetic import noisy_predictions, random_nuclei, rasterise

SHAPE = (40, 48, 56)
DECODER = BCDDecoder(seed_d=0.3, min_seed_size=8, min_size=64)


@pytest.mark.parametrize(
    "block, levels, expected",
    [
        ((256, 256, 256), None, 2),  # level 2's chunks are one 256³ core each; level 3's are not
        ((128, 128, 128), None, 1),
        ((192, 256, 256), None, 0),  # level 1's 128-voxel chunk footprint straddles z = 192
        ((512, 512, 512), None, 3),  # one block: every level
        ((256, 256, 256), 2, 1),  # no more levels than asked for
    ],
)
def test_block_levels(tmp_path, block, levels, expected):
    create_volume(tmp_path / "v.zarr", (512, 512, 512), np.uint32, 1.0, (64, 64, 64))
    assert len(block_levels(str(tmp_path / "v.zarr"), block, levels)) == expected


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the pyramid levels (chunks and array metadata), by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0].isdigit()}  # fmt: skip


@pytest.mark.parametrize("block", [(32, 32, 32), (16, 16, 16), (16, 24, 24)])
def test_relabel_levels_equal_pyramid_pass(tmp_path, block):
    """Levels written by the relabel (0, 1 or 2 of them, the last one clipped at the volume's
    end) are byte for byte what the pyramid pass writes from level 0 alone."""
    centres, radii = random_nuclei(SHAPE, 20, (5.0, 7.0), seed=3)
    pred = tmp_path / "pred.zarr"
    save_predictions(pred, noisy_predictions(rasterise(SHAPE, centres, radii), blur=0.5, noise=0.02, seed=1),
                     chunks=(8, 8, 8))  # fmt: skip
    out = tmp_path / "seg.zarr"
    segment(pred, out, DECODER, block_shape=block, halo=4, pyramid_levels=4)
    written = len(block_levels(str(out), block, 4))
    assert written == {(32, 32, 32): 2, (16, 16, 16): 1, (16, 24, 24): 0}[block]
    rebuilt = tmp_path / "rebuilt.zarr"
    shutil.copytree(out, rebuilt)
    write_pyramid(str(rebuilt), "stride", 4)  # every level from level 0, as before the relabel wrote any
    assert [k for k in zarr.open_group(str(out)).array_keys()] and _files(out) == _files(rebuilt)
    assert sorted({k.split("/")[0] for k in _files(out)}) == ["0", "1", "2", "3"]


@pytest.mark.parametrize("method", ["mean", "stride"])
def test_small_levels_as_block_tasks_equal_the_graph(tmp_path, local_client, method):
    """On a cluster, levels of at most SMALL_LEVEL_CHUNKS chunks run as plain block tasks (no
    dask.array import): the same bytes as the threaded dask graph, clipped edges included."""
    data = np.random.default_rng(4).integers(0, 2000, size=(20, 45, 70), dtype=np.uint16)
    for name in ("graph", "tasks"):  # level 1: 18 chunks, clipped on every axis
        create_volume(tmp_path / f"{name}.zarr", data.shape, np.uint16, 1.0, (8, 8, 16)).array[:] = data
    write_pyramid(str(tmp_path / "graph.zarr"), method, 3)  # client None: the dask graph
    write_pyramid(str(tmp_path / "tasks.zarr"), method, 3, client=local_client)
    a, b = _files(tmp_path / "graph.zarr"), _files(tmp_path / "tasks.zarr")
    assert sorted(k.split("/")[0] for k in a) and a == b and "2/zarr.json" in a
