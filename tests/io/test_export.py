"""``blockseg export`` works slab by slab: bounded memory for volumes larger than it, and the
same bytes as the whole region exported at once (issue 16)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from blockseg.io.export import downsample, export, output_shape, output_slabs
from blockseg.io.volume import create_label_volume, create_volume, open_volume

SHAPE, CHUNKS = (64, 128, 128), (4, 32, 32)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    create_volume(d / "img.zarr", SHAPE, np.uint8, (1.0, 0.5, 0.5), CHUNKS)
    v = create_label_volume(d / "img.zarr", "seg", SHAPE, np.uint32, (1.0, 0.5, 0.5), chunks=CHUNKS)
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 70_000, (8, 16, 16), dtype=np.uint32).repeat(8, 0).repeat(8, 1).repeat(8, 2)
    lab[rng.random(SHAPE) < 0.1] = 0
    v.array[:] = lab
    return d / "img.zarr" / "labels" / "seg", lab


@pytest.mark.parametrize("mode, factor", [("stride", (1, 1, 1)), ("stride", (3, 2, 5)), ("mode", (2, 2, 2)),
                                          ("mean", (3, 4, 4))])  # fmt: skip
@pytest.mark.parametrize("slab_bytes", [1, 50_000, 10**9])
def test_slabs_equal_the_whole_region(seg, mode, factor, slab_bytes):
    path, lab = seg
    box = (slice(3, 61), slice(5, 90), slice(0, 128))
    region = lab[box]
    whole = region[:: factor[0], :: factor[1], :: factor[2]] if mode == "stride" else downsample(region, factor, mode)
    parts = list(output_slabs(open_volume(path).array, box, factor, mode, slab_bytes))
    got = np.concatenate([p for _, p in parts])
    assert got.shape == whole.shape == output_shape(box, factor, mode)
    np.testing.assert_array_equal(got, whole)
    assert [z for z, _ in parts] == list(np.cumsum([0] + [p.shape[0] for _, p in parts[:-1]]))
    if slab_bytes == 1:
        assert len(parts) == whole.shape[0]  # one output plane at a time
    if slab_bytes == 10**9:
        assert len(parts) == 1


@pytest.mark.parametrize("suffix", [".tif", ".h5"])
def test_export_memory_is_bounded_by_the_slab(seg, tmp_path, suffix):
    """The whole volume is 4 MiB of uint32; with 256 KiB slabs (4 planes, one chunk row) the
    export's peak allocation stays far below it, and the file holds every voxel (uint32 labels > 65535: float32 in TIFF)."""
    import h5py
    import tifffile

    path, lab = seg
    out = tmp_path / f"all{suffix}"
    slab = 256 * 1024
    export(path, tmp_path / f"warm{suffix}", region="0:8,:,:", slab_bytes=slab)  # lazy imports, caches
    tracemalloc.start()
    rep = export(path, out, slab_bytes=slab)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # a slab read, its decoded chunks and its converted copy: a few slabs, not the volume
    assert peak < 6 * slab < lab.nbytes / 2, (peak, lab.nbytes)
    if suffix == ".tif":
        assert rep.dtype == "float32" and "float32" in rep.note
        got = tifffile.imread(out)
    else:
        with h5py.File(out, "r") as f:
            got = f["main"][...]
    assert got.shape == SHAPE
    np.testing.assert_array_equal(got, lab)
