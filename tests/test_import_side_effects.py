"""Importing blockseg changes nothing outside it: zarr's codec pipeline is wrapped only while a
guarded block runs (:func:`blockseg.io.safety.chunk_errors`) and restored after it."""

import subprocess
import sys

import numpy as np
import pytest
import zarr


@pytest.mark.slow  # a Python subprocess
def test_importing_blockseg_leaves_zarr_untouched():
    code = (
        "from zarr.core.codec_pipeline import BatchedCodecPipeline as P\n"
        "before = P.read_batch\n"
        "import blockseg, blockseg.io, blockseg.io.volume, blockseg.io.safety, blockseg.runtime.cluster\n"
        "from blockseg.segment import pipeline\n"
        "print('untouched' if P.read_batch is before else 'patched')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "untouched"


def test_chunk_errors_names_the_chunk_only_inside_and_restores_zarr(tmp_path):
    from zarr.core.codec_pipeline import BatchedCodecPipeline

    from blockseg.io.safety import CorruptChunkError, chunk_errors

    path = tmp_path / "a.zarr" / "0"  # level 0 of an image, as blockseg writes them
    zarr.open_group(str(tmp_path / "a.zarr"), mode="w").create_array("0", shape=(4, 4, 4), chunks=(2, 4, 4), dtype="uint8")
    zarr.open_array(str(path), mode="r+")[:] = np.ones((4, 4, 4), np.uint8)
    (path / "c" / "0" / "0" / "0").write_bytes(b"\x00garbage" * 8)
    before = BatchedCodecPipeline.read_batch
    def read():
        return zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"][:]

    with pytest.raises(Exception) as plain:  # outside the guard: zarr's own error
        read()
    assert not isinstance(plain.value, CorruptChunkError)
    with chunk_errors(), chunk_errors():  # nested (threads of one worker): one wrap, undone by the last
        with pytest.raises(CorruptChunkError, match=r"a\.zarr/0: chunk c/0/0/0 is corrupt or unreadable"):
            read()
        assert BatchedCodecPipeline.read_batch is not before
    assert BatchedCodecPipeline.read_batch is before
    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[2:], 1)  # good chunks read as ever
