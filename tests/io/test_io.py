import os

import numpy as np
import pytest
import zarr

from blockseg import BlocksegError, create_label_volume, create_volume, import_volume, open_volume
from blockseg.io.volume import parse_voxel_size


def test_round_trip_keeps_data_voxel_size_and_ngff_metadata(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (20, 30, 40), dtype=np.uint8)
    vol = create_volume(tmp_path / "a.zarr", data.shape, np.uint8, (0.48, 0.51, 0.51), chunks=(8, 16, 16))
    vol[:] = data
    back = open_volume(tmp_path / "a.zarr")
    assert np.array_equal(back[:], data)
    assert back.voxel_size == (0.48, 0.51, 0.51)
    assert back.chunks == (8, 16, 16)
    ms = zarr.open_group(str(tmp_path / "a.zarr")).attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0] == {"type": "scale", "scale": [0.48, 0.51, 0.51]}


def test_label_volume_follows_ngff_labels(tmp_path):
    create_volume(tmp_path / "img.zarr", (4, 5, 6), np.uint8, 2.0)
    lab = create_label_volume(tmp_path / "img.zarr", "nuclei", (4, 5, 6), np.uint32, 2.0)
    lab[:] = 7
    create_label_volume(tmp_path / "img.zarr", "valid", (4, 5, 6), np.uint8, 2.0)
    labels = zarr.open_group(str(tmp_path / "img.zarr/labels"))
    assert labels.attrs["ome"]["labels"] == ["nuclei", "valid"]
    assert "image-label" in zarr.open_group(str(tmp_path / "img.zarr/labels/nuclei")).attrs["ome"]
    back = open_volume(tmp_path / "img.zarr/labels/nuclei")
    assert back.voxel_size == (2.0, 2.0, 2.0) and back.dtype == np.uint32 and np.all(back[:] == 7)


def test_sharded_volume_grid_uses_shards(tmp_path):
    vol = create_volume(tmp_path / "s.zarr", (32, 64, 64), np.uint16, chunks=(8, 16, 16), shards=(16, 32, 32))
    assert vol.write_unit == (16, 32, 32)
    assert vol.grid().chunk_shape == (16, 32, 32)
    with pytest.raises(BlocksegError, match="multiple of the chunk shape"):
        vol.grid(block_shape=(16, 32, 16))
    vol[:] = 3
    assert open_volume(tmp_path / "s.zarr")[:].sum() == 3 * 32 * 64 * 64


def test_plain_zarr_array_is_readable(tmp_path):
    arr = zarr.create_array(str(tmp_path / "p.zarr"), shape=(3, 4, 5), dtype="f4", chunks=(3, 4, 5))
    arr[:] = 1.5
    arr.attrs["voxel_size_um"] = [1.0, 0.5, 0.5]
    vol = open_volume(tmp_path / "p.zarr")
    assert vol.voxel_size == (1.0, 0.5, 0.5) and vol[:].sum() == 1.5 * 60


def test_existing_output_is_never_overwritten_without_permission(tmp_path):
    vol = create_volume(tmp_path / "a.zarr", (4, 4, 4), np.uint8)
    vol[:] = 9
    with pytest.raises(BlocksegError, match="already exists"):
        create_volume(tmp_path / "a.zarr", (4, 4, 4), np.uint8)
    assert np.all(open_volume(tmp_path / "a.zarr")[:] == 9)
    create_volume(tmp_path / "a.zarr", (2, 2, 2), np.uint8, overwrite=True)
    assert open_volume(tmp_path / "a.zarr").shape == (2, 2, 2)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such file or directory"),
        (lambda p: p.write_text("hello"), "not a zarr"),
        (lambda p: zarr.create_array(str(p), shape=(4, 4), dtype="u1"), "expected a 3D"),
        (lambda p: zarr.open_group(str(p), mode="w"), "not an OME-Zarr image"),
    ],
)
def test_open_bad_input(tmp_path, setup, message):
    path = tmp_path / "bad.zarr"
    setup(path)
    with pytest.raises(BlocksegError, match=message):
        open_volume(path)


@pytest.mark.parametrize("value, expected", [(None, (1.0, 1.0, 1.0)), (0.5, (0.5, 0.5, 0.5)), ([1, 2, 3], (1.0, 2.0, 3.0))])
def test_parse_voxel_size(value, expected):
    assert parse_voxel_size(value) == expected


@pytest.mark.parametrize("value", [(1, 2), (1, -2, 3), (0, 1, 1), ("a", 1, 1), (float("nan"), 1, 1)])
def test_parse_voxel_size_rejects(value):
    with pytest.raises(BlocksegError, match="voxel size"):
        parse_voxel_size(value)


def _write(fmt, path, data, vs):
    if fmt == "npy":
        np.save(path, data)
    elif fmt == "npz":
        np.savez_compressed(path, image=data, voxel_size_zyx=np.array(vs))
    elif fmt == "tif":
        import tifffile

        tifffile.imwrite(path, data, imagej=True, resolution=(1 / vs[2], 1 / vs[1]), metadata={"spacing": vs[0], "unit": "um", "axes": "ZYX"})
    elif fmt == "h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("raw", data=data, chunks=(4, 8, 8))
            f["raw"].attrs["element_size_um"] = vs


@pytest.mark.parametrize("fmt, expect_vs", [("npy", (1.0, 1.0, 1.0)), ("npz", (2.0, 0.5, 0.5)), ("tif", (2.0, 0.5, 0.5)), ("h5", (2.0, 0.5, 0.5))])
def test_import_formats(tmp_path, fmt, expect_vs):
    data = np.random.default_rng(1).integers(0, 60000, (13, 37, 21), dtype=np.uint16)
    src = tmp_path / f"in.{fmt}"
    _write(fmt, src, data, (2.0, 0.5, 0.5))
    vol = import_volume(src, tmp_path / "out.zarr", chunks=(4, 16, 8))
    assert np.array_equal(vol[:], data) and vol.dtype == np.uint16
    assert open_volume(tmp_path / "out.zarr").voxel_size == pytest.approx(expect_vs)
    # an explicit voxel size wins over the file's metadata
    vol = import_volume(src, tmp_path / "out2.zarr", voxel_size=(3, 1, 1), dtype="float32")
    assert vol.voxel_size == (3.0, 1.0, 1.0) and vol.dtype == np.float32


def test_import_bad_input(tmp_path):
    with pytest.raises(BlocksegError, match="no such file"):
        import_volume(tmp_path / "missing.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(BlocksegError, match="expected a 3D"):
        import_volume(tmp_path / "flat.npy", tmp_path / "o.zarr")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(BlocksegError, match="unsupported format"):
        import_volume(tmp_path / "x.txt", tmp_path / "o.zarr")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2, 2)), b=np.zeros((2, 2, 2)))
    with pytest.raises(BlocksegError, match="--key"):
        import_volume(tmp_path / "two.npz", tmp_path / "o.zarr")
    assert not os.path.exists(tmp_path / "o.zarr")


def test_import_real_crop_keeps_voxel_size(tmp_path, real_data):
    src = real_data / "bbbc050_qcanet_8cell.npz"
    ref = np.load(src)
    vol = import_volume(src, tmp_path / "img.zarr", key="image")
    assert np.array_equal(vol[:], ref["image"])
    assert vol.voxel_size == pytest.approx(tuple(ref["voxel_size_zyx"]))
    lab = import_volume(src, tmp_path / "lab.zarr", key="labels")
    assert np.array_equal(lab[:], ref["labels"])


def test_fsspec_url_round_trip():
    vol = create_volume("memory://blockseg-test/a.zarr", (4, 8, 8), np.uint8, 0.5, chunks=(2, 4, 4))
    vol[:] = 3
    back = open_volume("memory://blockseg-test/a.zarr")
    assert back.voxel_size == (0.5, 0.5, 0.5) and int(back[:].sum()) == 3 * 4 * 8 * 8
