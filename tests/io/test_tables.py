"""blockseg.io.tables: the one CSV reader and writer (its s3:// round trip is in test_s3.py)."""

import numpy as np
import pytest

from blockseg import BlocksegError
from blockseg.io.tables import count_rows, read_table, table_header, write_table


def test_columns_are_written_with_their_format(tmp_path):
    path = tmp_path / "t.csv"
    write_table({"id": np.array([3, 1], np.uint32), "size": np.array([0.1234567, 2e9]), "z": np.array([1.0, 2.5])},
                path, formats={"z": "%.3f"})  # fmt: skip
    assert path.read_text() == "id,size,z\n3,0.123457,1.000\n1,2e+09,2.500\n"
    assert table_header(path) == ["id", "size", "z"] and count_rows(path) == 2


def test_an_empty_table_is_its_header(tmp_path):
    path = tmp_path / "t.csv"
    write_table({"id": np.zeros(0, np.int64), "score": np.zeros(0)}, path)
    assert path.read_text() == "id,score\n" and count_rows(path) == 0
    assert {k: v.size for k, v in read_table(path).items()} == {"id": 0, "score": 0}


def test_read_picks_columns_in_the_order_asked(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,score,extra\n7,0.5,x\n9,0.25,y\n")
    t = read_table(path, ["score", "label"], "--scores")
    assert list(t) == ["score", "label"] and t["label"].tolist() == [7.0, 9.0] and t["score"].dtype == np.float64


@pytest.mark.parametrize(
    "text, columns, message",
    [
        ("id,score\n1,0.5\n", ["id", "points"], r"t.csv: --scores needs columns \['id', 'points'\], missing \['points'\]"),
        ("id,score\n1,high\n", ["id", "score"], r"t.csv: non-numeric or missing values in columns \['id', 'score'\]"),
        ("id,score\n1\n", ["id", "score"], r"t.csv: non-numeric or missing values"),
    ],
)
def test_bad_tables_are_one_line(tmp_path, text, columns, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(BlocksegError, match=message):
        read_table(tmp_path / "t.csv", columns, "--scores")


def test_missing_file_and_ragged_columns(tmp_path):
    with pytest.raises(BlocksegError, match="nope.csv: no such file or directory"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(BlocksegError, match="one length"):
        write_table({"a": np.zeros(2), "b": np.zeros(3)}, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
