"""Inputs as other tools of the field write them, read by every command; pyramids on outputs.

Volumes are written by ome-zarr-py (NGFF 0.4, zarr v2, a pyramid, czyx) and by tifffile
(OME-TIFF with physical sizes, ImageJ TIFF), then read by info, import, predict, segment,
evaluate and run. blockseg's own outputs are opened with ome-zarr-py's reader, level by level.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings

import numpy as np
import pytest
import zarr

from blockseg import BlocksegError
from blockseg.errors import BlocksegWarning
from blockseg.io.selection import split_selection, with_selection
from blockseg.io.volume import create_volume, import_volume, open_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg.io.pyramid import downsample_block, level_factors, write_pyramid
from blockseg_cli.main import main

VS = (2.0, 0.5, 0.5)
SHAPE = (16, 32, 32)
UM = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}


def _labels(shape=SHAPE, seed=0):
    """A few boxes of distinct labels (uint16)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    for i in range(1, 9):
        z, y, x = (int(rng.integers(0, s - 6)) for s in shape)
        lab[z : z + 5, y : y + 6, x : x + 6] = i
    return lab


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    lab = _labels()
    img = np.stack([rng.integers(0, 255, SHAPE), np.where(lab > 0, 200, 20) + rng.integers(0, 10, SHAPE)])
    return img.astype(np.uint8), lab


@pytest.fixture(scope="module")
def ngff04(tmp_path_factory, data):
    """An NGFF 0.4 (zarr v2) czyx image with a 3-level pyramid and a label image, by ome-zarr-py."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image, write_labels

    img, lab = data
    path = str(tmp_path_factory.mktemp("ngff") / "cells.ome.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ome-zarr-py: "no scale for axis c"
        write_image(img, root, axes="czyx", fmt=FormatV04(), scale_factors=(2, 4), scale=dict(zip("zyx", VS)), axes_units=UM)
        write_labels(lab, root, name="nuclei", fmt=FormatV04(), axes="zyx", scale_factors=(2, 4),
                     scale=dict(zip("zyx", VS)), axes_units=UM)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def ome_tiff(tmp_path_factory, data):
    """An OME-TIFF czyx image and an OME-TIFF label volume with physical sizes, by tifffile."""
    import tifffile

    img, lab = data
    d = tmp_path_factory.mktemp("tif")
    meta = {"PhysicalSizeZ": VS[0], "PhysicalSizeY": VS[1], "PhysicalSizeX": VS[2],
            "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm"}  # fmt: skip
    tifffile.imwrite(d / "cells.ome.tif", img, ome=True, metadata={"axes": "CZYX", **meta})
    tifffile.imwrite(d / "nuclei.ome.tif", lab, ome=True, metadata={"axes": "ZYX", **meta})
    return str(d / "cells.ome.tif"), str(d / "nuclei.ome.tif")


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "identity.pt"
    save_checkpoint(path, IdentityNet(("sdt",), input_patch=(8, 16, 16)), normalisation={"offset": 100.0, "scale": 50.0})
    return str(path)


@pytest.fixture
def in_process(monkeypatch):
    """CLI commands run their blocks in this process instead of starting a LocalCluster."""
    from blockseg_cli.main import build_parser

    build_parser()  # import every command first: `synth` binds dask_client at import, keep it unpatched
    none = lambda *a, **k: contextlib.nullcontext(None)  # noqa: E731
    monkeypatch.setattr("blockseg.runtime.cluster.dask_client", none)


# ------------------------------------------------------------------------------ reading
def test_ngff04_written_by_ome_zarr_py(ngff04, data):
    img, lab = data
    with pytest.raises(BlocksegError, match=r"2 channels .*--channel 0\.\.1"):
        open_volume(ngff04)
    v = open_volume(ngff04, channel=1)
    assert v.format == "OME-Zarr 0.4" and v.voxel_size == VS and v.voxel_size_source == "metadata"
    np.testing.assert_array_equal(v[...], img[1])
    assert v.levels == [(16, 32, 32), (16, 16, 16), (16, 8, 8)]
    v2 = open_volume(f"{ngff04}#level=2&channel=0")
    assert v2.shape == (16, 8, 8) and v2.voxel_size == (2.0, 2.0, 2.0)
    assert v2.ref == f"{ngff04}#level=2" and open_volume(v2.ref, channel=0).shape == (16, 8, 8)
    with pytest.raises(BlocksegError, match="out of range"):
        open_volume(ngff04, channel=1, level=3)
    with pytest.raises(BlocksegError, match="--channel 2 out of range"):
        open_volume(ngff04, channel=2)
    with pytest.raises(BlocksegError, match="in the path but"):
        open_volume(f"{ngff04}#channel=0", channel=1)
    gt = open_volume(f"{ngff04}/labels/nuclei")
    np.testing.assert_array_equal(gt[...], lab)
    assert gt.voxel_size == VS


def test_tczyx_needs_timepoint(tmp_path):
    a = zarr.create_array(str(tmp_path / "t.zarr"), shape=(3, 1, 4, 5, 6), dtype="u1", dimension_names=list("tczyx"))
    a[...] = np.arange(3).reshape(3, 1, 1, 1, 1)
    with pytest.raises(BlocksegError, match="3 timepoints .*--timepoint 0..2"):
        open_volume(tmp_path / "t.zarr")
    with pytest.warns(BlocksegWarning, match="using 1 µm"):
        v = open_volume(tmp_path / "t.zarr", timepoint=2)
    assert v.shape == (4, 5, 6) and int(v[0, 0, 0]) == 2 and v.voxel_size_source == "default"
    with pytest.raises(BlocksegError, match="no channel axis"):
        open_volume(create_volume(tmp_path / "p.zarr", (2, 2, 2), "u1").path, channel=1)


def test_ome_tiff_and_imagej_tiff(tmp_path, ome_tiff, data):
    import tifffile

    img, lab = data
    v = open_volume(ome_tiff[0], channel=0)
    assert v.format == "OME-TIFF" and v.voxel_size == VS and v.voxel_size_source == "metadata"
    np.testing.assert_array_equal(v[3:9, 5:20, :], img[0, 3:9, 5:20, :])
    with pytest.raises(BlocksegError, match="--channel"):
        open_volume(ome_tiff[0])
    tifffile.imwrite(tmp_path / "ij.tif", lab, imagej=True, resolution=(1 / 0.3, 1 / 0.3), metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"})
    ij = open_volume(tmp_path / "ij.tif")
    assert ij.format == "ImageJ TIFF" and ij.voxel_size == pytest.approx((1.5, 0.3, 0.3))
    tifffile.imwrite(tmp_path / "plain.tif", lab)
    with pytest.warns(BlocksegWarning, match="no voxel size in the file"):
        assert open_volume(tmp_path / "plain.tif").voxel_size_source == "default"


def test_hdf5_npy_npz(tmp_path, data):
    import h5py

    img, lab = data
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=img, chunks=(1, 8, 16, 16)).attrs["element_size_um"] = VS
    v = open_volume(tmp_path / "a.h5", channel=1)
    assert v.voxel_size == VS and v.chunks == (8, 16, 16)
    np.testing.assert_array_equal(v[...], img[1])
    np.save(tmp_path / "a.npy", lab)
    with pytest.warns(BlocksegWarning):
        assert open_volume(tmp_path / "a.npy").shape == SHAPE
    np.savez(tmp_path / "a.npz", image=img[0], labels=lab, voxel_size_zyx=np.array(VS))
    assert open_volume(f"{tmp_path}/a.npz#key=labels").voxel_size == VS


def test_n5_is_refused_plainly(tmp_path):
    (tmp_path / "x.n5").mkdir()
    (tmp_path / "x.n5" / "attributes.json").write_text('{"n5": "2.0.0"}')
    with pytest.raises(BlocksegError, match="N5 container; zarr-python 3 has no N5 reader"):
        open_volume(tmp_path / "x.n5")


def test_selection_fragment_round_trip():
    assert split_selection("s3://b/img.zarr#level=1&channel=0") == ("s3://b/img.zarr", {"level": 1, "channel": 0})
    assert split_selection("img.zarr") == ("img.zarr", {})
    assert with_selection("a.zarr", {"level": None, "timepoint": 3}) == "a.zarr#timepoint=3"


# ------------------------------------------------------------------------------ pyramids
def test_level_factors_make_anisotropic_data_isotropic_first():
    assert level_factors((100, 4096, 4096), (2, 0.5, 0.5), (64, 128, 128)) == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert level_factors((32, 64, 64), (1, 1, 1), (16, 32, 32)) == []  # already <= 64: nothing
    assert level_factors((32, 64, 64), (1, 1, 1), (16, 32, 32), levels=3) == [(2, 2, 2), (2, 2, 2)]
    with pytest.raises(BlocksegError):
        level_factors((8, 8, 8), (1, 1, 1), (8, 8, 8), levels=0)


def test_blockwise_pyramid_equals_whole_array(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (19, 37, 41)).astype(np.uint8)  # odd sizes: partial edge chunks
    v = create_volume(tmp_path / "p.zarr", a.shape, a.dtype, (1.0, 0.5, 0.5), chunks=(4, 8, 8))
    v[...] = a
    shapes = write_pyramid(v.path, "mean", levels=3)
    assert shapes == [(19, 37, 41), (19, 19, 21), (10, 10, 11)]
    one = downsample_block(a, (1, 2, 2), "mean")
    np.testing.assert_array_equal(open_volume(v.path, level=1)[...], one)
    np.testing.assert_array_equal(open_volume(v.path, level=2)[...], downsample_block(one, (2, 2, 2), "mean"))
    # the mean of what exists (edge voxels are not averaged with padding)
    assert int(one[0, 0, 20]) == int(np.rint(a[0, 0:2, 40].mean()))
    lab = create_volume(tmp_path / "l.zarr", a.shape, np.uint32, (1.0, 0.5, 0.5), chunks=(4, 8, 8))
    lab[...] = a
    write_pyramid(lab.path, "stride", levels=2)
    np.testing.assert_array_equal(open_volume(lab.path, level=1)[...], a[:, ::2, ::2])


def test_pyramid_tasks_write_whole_chunks_of_their_level(tmp_path):
    from blockseg.io.pyramid import level_graph

    v = create_volume(tmp_path / "c.zarr", (19, 37, 41), np.uint8, chunks=(4, 8, 8))
    y = level_graph(v.array, (4, 8, 8), (1, 2, 2), "mean")
    assert y.shape == (19, 19, 21)
    for axis, (sizes, c, n) in enumerate(zip(y.chunks, (4, 8, 8), y.shape)):
        # every dask block is one chunk of the level (the last one clipped at the border)
        assert all(s == c for s in sizes[:-1]) and 0 < sizes[-1] <= c and sum(sizes) == n, axis


def _ome_zarr_levels(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(path))())[0]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    return node, [tuple(d.shape) for d in node.data], scales


def test_every_output_has_a_pyramid_ome_zarr_reads(tmp_path, ngff04, identity_ckpt, in_process, capsys):
    pytest.importorskip("ome_zarr")
    img = str(tmp_path / "img.zarr")
    assert main(["import", f"{ngff04}#channel=1", img, "--chunks", "8", "8", "8", "--pyramid-levels", "3"]) == 0
    node, shapes, scales = _ome_zarr_levels(img)
    # z (2 µm) waits until y, x (0.5 µm) have caught up with it
    assert shapes == [(16, 32, 32), (16, 16, 16), (16, 8, 8)]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    pred, seg = str(tmp_path / "pred.zarr"), str(tmp_path / "seg.zarr")
    assert main(["predict", img, identity_ckpt, pred, "--pyramid-levels", "2", "--no-progress"]) == 0
    for c in ("sdt",):
        _, shapes, scales = _ome_zarr_levels(f"{pred}/{c}")
        assert shapes == [(16, 32, 32), (16, 16, 16)] and scales[1] == [2.0, 1.0, 1.0]
    assert main(["segment", pred, seg, "--pyramid-levels", "3", "--no-progress", "--decoder", "sdt", "-p", "min_size=1", "-p", "min_seed_size=1"]) == 0
    node, shapes, scales = _ome_zarr_levels(seg)
    assert any(type(s).__name__ == "Label" for s in node.specs)  # a label image to readers
    assert shapes == [(16, 32, 32), (16, 16, 16), (16, 8, 8)] and scales[2] == [2.0, 2.0, 2.0]
    meta = zarr.open_group(seg, mode="r").attrs["ome"]["image-label"]
    assert meta["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]} and len(meta["properties"]) > 1
    assert [c["label-value"] for c in meta["colors"]] == [p["label-value"] for p in meta["properties"]]
    import ome_zarr_models

    assert type(ome_zarr_models.open_ome_zarr(zarr.open_group(seg, mode="r"))).__name__ == "ImageLabel"  # validates
    full = open_volume(seg)[...]
    np.testing.assert_array_equal(open_volume(seg, level=2)[...], full[:, ::4, ::4])


# ------------------------------------------------------------------------------ every command
def test_every_command_reads_ome_zarr_py_and_ome_tiff(tmp_path, ngff04, ome_tiff, data, identity_ckpt, in_process, capsys):
    img, lab = data
    assert main(["info", ngff04]) == 2
    assert "choose one with --channel" in capsys.readouterr().err
    assert main(["info", ngff04, "--channel", "1", "--level", "1"]) == 0
    out = capsys.readouterr().out
    assert "OME-Zarr 0.4" in out and "shape=(16, 16, 16)" in out and "pyramid: 0: 16x32x32" in out
    assert main(["info", ome_tiff[0], "--channel", "0"]) == 0
    assert "OME-TIFF" in capsys.readouterr().out

    got = import_volume(ome_tiff[0], tmp_path / "t.zarr", channel=1, pyramid_levels=1)
    assert got.voxel_size == VS and open_volume(got.path).voxel_size == VS
    np.testing.assert_array_equal(open_volume(got.path)[...], img[1])

    results = {}
    for name, src in (("zarr", ngff04), ("tif", ome_tiff[0])):
        pred, seg = str(tmp_path / f"{name}_pred.zarr"), str(tmp_path / f"{name}_seg.zarr")
        assert main(["predict", src, identity_ckpt, pred, "--channel", "1", "--no-progress", "--pyramid-levels", "1"]) == 0
        p = open_volume(f"{pred}/sdt")
        assert p.voxel_size == VS
        run = dict(zarr.open_group(pred, mode="r").attrs["blockseg"])["predictions"]["run"]
        assert run["voxel_size_source"] == "metadata" and run["image"].endswith("#channel=1")
        assert main(["segment", pred, seg, "--no-progress", "--decoder", "sdt", "-p", "min_size=1", "-p", "min_seed_size=1"]) == 0
        results[name] = open_volume(seg)[...]
    np.testing.assert_array_equal(results["zarr"], results["tif"])  # same pixels, same result

    ev = tmp_path / "ev"
    for gt in (f"{ngff04}/labels/nuclei", ome_tiff[1]):
        assert main(["evaluate", "--gt", gt, "--pred", str(tmp_path / "zarr_seg.zarr"), "--out", str(ev), "--overwrite",
                     "--no-png", "--no-progress"]) == 0  # fmt: skip
        report = json.load(open(ev / "evaluation.json"))
        assert report["n_true"] == len(np.unique(lab)) - 1
    # a mask from a pyramid level of the wrong shape is refused in one line
    assert main(["evaluate", "--gt", ome_tiff[1], "--pred", str(tmp_path / "zarr_seg.zarr"),
                 "--mask", f"{ngff04}/labels/nuclei#level=1", "--out", str(tmp_path / "ev2")]) == 2  # fmt: skip
    assert "mask shape" in capsys.readouterr().err


@pytest.mark.slow  # a whole run on the shared LocalCluster
def test_run_config_reads_a_channel_in_place(tmp_path, ngff04, identity_ckpt, local_client):
    from blockseg.pipeline.config import parse_config
    from blockseg.pipeline.workflow import run

    cfg = parse_config({
        "run_dir": str(tmp_path / "r"),
        "data": {"image": ngff04, "channel": 1, "ground_truth": f"{ngff04}/labels/nuclei", "pyramid_levels": 2},
        "model": {"checkpoint": identity_ckpt},
        "predict": {"pyramid_levels": 2},
        "segment": {"decoder": "sdt", "params": {"min_size": 1, "min_seed_size": 1}, "pyramid_levels": 2},
        "evaluate": {"png": False},
    })  # fmt: skip
    before = sorted(os.listdir(ngff04))
    res = run(cfg, client=local_client, log=lambda m: None)
    assert res.ran == ["data", "predict", "segment", "evaluate"]
    assert sorted(os.listdir(ngff04)) == before  # the input is read in place, never written
    rec = json.load(open(res.layout.stage_record("data")))
    assert rec["result"]["image"]["voxel_size_source"] == "metadata"
    assert rec["result"]["image"]["format"] == "OME-Zarr 0.4" and rec["result"]["image"]["voxel_size"] == list(VS)
    assert open_volume(res.layout.labels, level=1).shape == (16, 16, 16)
    assert res.evaluation["n_true"] == 8


def test_napari_plugin_reads_pyramid_and_labels(tmp_path):
    """napari's OME-Zarr reader plugin (headless: its reader hook, no viewer) sees every level."""
    reader = pytest.importorskip("napari_ome_zarr._reader")
    from blockseg.io.volume import create_label_volume
    from blockseg.io.pyramid import finish_volume

    img = str(tmp_path / "img.zarr")
    create_volume(img, (16, 64, 64), np.uint8, VS, chunks=(8, 16, 16))[...] = 5
    create_label_volume(img, "nuclei", (16, 64, 64), np.uint32, VS, chunks=(8, 16, 16))[...] = 3
    finish_volume(img, levels=3)
    finish_volume(f"{img}/labels/nuclei", labels=True, levels=3)
    # a standalone label volume, as `segment` writes it; two folders deep because the reader
    # writes a zarr.json two levels above a label volume it opens (ome-zarr-py's parent lookup)
    (tmp_path / "out" / "run").mkdir(parents=True)
    alone = str(tmp_path / "out" / "run" / "seg.zarr")
    create_volume(alone, (16, 64, 64), np.uint32, VS, chunks=(8, 16, 16))[...] = 7
    finish_volume(alone, labels=True, levels=2)
    layers = reader.napari_get_reader(img)(img)
    kinds = {kind: ([tuple(d.shape) for d in data], meta.get("scale")) for data, meta, kind in layers}
    assert kinds["image"] == ([(16, 64, 64), (16, 32, 32), (16, 16, 16)], list(VS))
    assert kinds["labels"] == ([(16, 64, 64), (16, 32, 32), (16, 16, 16)], list(VS))
    layers = reader.napari_get_reader(alone)(alone)
    assert [(kind, [tuple(d.shape) for d in data]) for data, _, kind in layers] == [("labels", [(16, 64, 64), (16, 32, 32)])]


def test_invalid_ngff_is_read_leniently_with_a_warning(tmp_path):
    g = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w")
    g.create_array("0", shape=(4, 5, 6), dtype="u1")[:] = 1
    # axes as bare strings (NGFF 0.3 style) are not valid 0.5 metadata
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["z", "y", "x"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [3.0, 1.0, 1.0]}]}]}]}  # fmt: skip
    with pytest.warns(BlocksegWarning, match="does not validate as OME-Zarr 0.5"):
        v = open_volume(tmp_path / "odd.zarr")
    assert v.shape == (4, 5, 6) and v.voxel_size == (3.0, 1.0, 1.0)
    assert v.voxel_size_source == "metadata (no unit, read as µm)"
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array("raw", shape=(2, 2, 2), dtype="u1")
    with pytest.raises(BlocksegError, match="not an OME-Zarr image .*it holds raw: pass PATH/NAME"):
        open_volume(tmp_path / "plain.zarr")
