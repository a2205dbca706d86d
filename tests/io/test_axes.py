"""--axes: the axes of an array whose file does not name them (issue 34: a plain 4-D array was always czyx)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from blockseg import BlocksegError
from blockseg.io.selection import split_selection
from blockseg.io.volume import open_volume
from blockseg_cli.main import main


@pytest.fixture
def zcyx():
    """A (z, c, y, x) stack: 6 slices of 2 channels; channel 1 is the negative of channel 0."""
    rng = np.random.default_rng(0)
    ch0 = rng.integers(0, 200, (6, 8, 10)).astype(np.uint16)
    return np.stack([ch0, 1000 - ch0], axis=1)


def test_a_plain_zarr_array_is_read_with_the_axes_given(tmp_path, zcyx):
    path = str(tmp_path / "plain.zarr")
    zarr.create_array(path, shape=zcyx.shape, dtype=zcyx.dtype)[...] = zcyx
    # without --axes the 4 axes are taken as c, z, y, x: 6 "channels", and the message says how to name them
    with pytest.raises(BlocksegError, match=r"6 channels \(axes 'czyx'\).*--axes") as e:
        open_volume(path)
    assert "\n" not in str(e.value)
    vol = open_volume(path, axes="ZCYX", channel=1)
    assert vol.shape == (6, 8, 10)
    np.testing.assert_array_equal(vol[...], zcyx[:, 1])
    # the view reopens anywhere (a worker) from its reference: the axes ride on the path
    assert split_selection(vol.ref)[1] == {"channel": 1, "axes": "zcyx"}
    np.testing.assert_array_equal(open_volume(vol.ref)[...], zcyx[:, 1])


def test_a_file_that_names_its_axes_keeps_them(tmp_path, zcyx):
    path = str(tmp_path / "named.zarr")
    zarr.create_array(path, shape=zcyx.shape, dtype=zcyx.dtype, dimension_names=["z", "c", "y", "x"])[...] = zcyx
    np.testing.assert_array_equal(open_volume(path, channel=0)[...], zcyx[:, 0])
    np.testing.assert_array_equal(open_volume(path, axes="zcyx", channel=0)[...], zcyx[:, 0])
    with pytest.raises(BlocksegError, match="names the axes 'zcyx'; --axes 'czyx' disagrees"):
        open_volume(path, axes="czyx", channel=0)


@pytest.mark.parametrize("bad", ["zzyx", "zcy", "zcyxq", "abc"])
def test_axes_that_are_not_t_c_z_y_x_are_refused_in_one_line(tmp_path, zcyx, bad):
    np.save(tmp_path / "a.npy", zcyx)
    with pytest.raises(BlocksegError, match="must name z, y and x once each") as e:
        open_volume(str(tmp_path / "a.npy"), axes=bad)
    assert "\n" not in str(e.value)


def test_the_cli_takes_axes_for_npy_and_hdf5(tmp_path, zcyx, capsys):
    h5py = pytest.importorskip("h5py")
    np.save(tmp_path / "a.npy", zcyx)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = zcyx
    for src in ("a.npy", "a.h5"):
        out = tmp_path / f"{src}.zarr"
        assert main(["import", str(tmp_path / src), str(out), "--axes", "zcyx", "--channel", "1"]) == 0
        np.testing.assert_array_equal(open_volume(str(out))[...], zcyx[:, 1])
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a.npy"), "--axes", "zcyx", "--channel", "0"]) == 0
    assert "shape=(6, 8, 10)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "a.npy"), "--axes", "zcxy"]) == 2  # x before y: refused, one line
    err = capsys.readouterr().err.strip()
    assert "z, y, x" in err and len(err.splitlines()) == 1
