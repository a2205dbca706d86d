"""Missing chunks in inputs blockseg did not write (issue 16): refused in images with one line
naming the array and chunk key (exit 2, nothing written); read as the fill value -- and said so
-- in label images and under ``--missing-chunks fill``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from blockseg.io.chunks import ENV, MissingChunkError, missing_keys, set_policy
from blockseg.errors import BlocksegError
from blockseg.errors import BlocksegWarning
from blockseg.io.volume import open_volume
from blockseg.models import IdentityNet, save_checkpoint
from blockseg_cli.main import main

from _helpers import in_process, tree_digest

SHAPE, CHUNKS = (16, 32, 32), (8, 16, 16)


@pytest.fixture(autouse=True)
def _policy(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    set_policy("auto")
    yield
    set_policy("auto")


def _ome(path: Path, data: np.ndarray, label: bool = False) -> zarr.Array:
    """A foreign OME-Zarr 0.5 image (no blockseg mark) holding ``data``."""
    g = zarr.open_group(str(path), mode="w")
    ms = {"axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}  # fmt: skip
    g.attrs["ome"] = {"version": "0.5", "multiscales": [ms], **({"image-label": {}} if label else {})}
    a = g.create_array("0", shape=data.shape, chunks=CHUNKS, dtype=data.dtype)
    a[:] = data
    return a


def test_missing_keys_lists_only_what_the_view_reads(tmp_path):
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(2, 16, 32, 32), chunks=(1, 8, 16, 16), dtype="u1")
    a[:] = 1
    (tmp_path / "a.zarr" / "c" / "1" / "1" / "0" / "1").unlink()
    assert missing_keys(a) == (["c/1/1/0/1"], 2 * 2 * 2 * 2)
    assert missing_keys(a, {0: 0}) == ([], 8)  # channel 0 is whole
    assert missing_keys(a, {0: 1}) == (["c/1/1/0/1"], 8)
    s = zarr.create_array(str(tmp_path / "s.zarr"), shape=(16, 32, 32), chunks=(8, 8, 8), shards=(8, 16, 16), dtype="u1")
    s[:] = 1
    (tmp_path / "s.zarr" / "c" / "0" / "1" / "1").unlink()
    assert missing_keys(s) == (["c/0/1/1"], 8)  # the shard is the stored object


def test_missing_chunk_in_a_foreign_image_is_refused(tmp_path):
    img = tmp_path / "img.zarr"
    _ome(img, np.full(SHAPE, 7, np.uint8))
    (img / "0" / "c" / "1" / "0" / "1").unlink()
    with pytest.raises(MissingChunkError, match=r"img.zarr/0: chunk c/1/0/1 is missing \(of 8\); .*--missing-chunks fill"):
        open_volume(img)
    set_policy("fill")
    with pytest.warns(BlocksegWarning, match="1 of 8 chunks are absent and read as the fill value"):
        v = open_volume(img)
    assert (v[:] == 0).sum() == 8 * 16 * 16


def test_missing_chunks_in_labels_read_as_fill_with_a_warning(tmp_path):
    lab = np.zeros(SHAPE, np.uint32)
    lab[1:5, 2:10, 2:10] = 3  # zarr omits the empty chunks: a sparse label volume
    _ome(tmp_path / "gt.zarr", lab, label=True)
    assert missing_keys(zarr.open_array(str(tmp_path / "gt.zarr" / "0")))[0]
    with pytest.warns(BlocksegWarning, match="7 of 8 chunks are absent"):
        assert np.array_equal(open_volume(tmp_path / "gt.zarr")[:], lab)
    set_policy("error")
    with pytest.raises(MissingChunkError, match="gt.zarr/0: chunk c/0/0/1 is missing"):
        open_volume(tmp_path / "gt.zarr")
    with pytest.raises(BlocksegError):
        set_policy("sometimes")


def test_predict_refuses_an_image_with_a_missing_chunk(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    img = d / "img.zarr"
    _ome(img, np.random.default_rng(0).integers(1, 255, SHAPE, dtype=np.uint8))
    save_checkpoint(d / "id.pt", IdentityNet(("B", "C", "D"), input_patch=(16, 32, 32)), normalisation={"offset": 0.0, "scale": 255.0})
    (img / "0" / "c" / "0" / "1" / "0").unlink()
    before = tree_digest(d)
    out = tmp_path / "pred.zarr"
    with in_process():
        rc = main(["predict", str(img), str(d / "id.pt"), str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("blockseg predict: error: ") and "img.zarr/0: chunk c/0/1/0 is missing" in err
    assert not out.exists() and tree_digest(d) == before
    with in_process(), pytest.warns(BlocksegWarning, match="1 of 8 chunks are absent"):
        rc = main(["predict", str(img), str(d / "id.pt"), str(out), "--no-progress", "--missing-chunks", "fill"])
    assert rc == 0, capsys.readouterr().err
    assert out.exists() and tree_digest(d) == before
