"""Plain helpers shared by the test modules (fixtures live in ``conftest.py``).

Test modules import them as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path``
(``pythonpath`` in pyproject.toml), wherever below it the test module lives.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pytest

from blockseg.io.predictions import open_predictions, save_predictions

#: the checkout's root (the folder with pyproject.toml)
REPO = Path(__file__).resolve().parents[1]
#: ../shared/data/real beside the checkout (absent in a plain clone: tests using it skip)
REAL_DATA = REPO.parent / "shared" / "data" / "real"
#: the folder installed as the ``blockseg_cli`` package
CLI_DIR = REPO / "cli" / "blockseg_cli"


# ---------------------------------------------------------------------------- files
def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by path relative to it (to show nothing was touched)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def stored_channels(path) -> dict[str, np.ndarray]:
    """Every channel of a prediction store, as stored (uint8)."""
    return {c: v.array[...] for c, v in open_predictions(str(path)).items()}


# ---------------------------------------------------------------------------- no cluster
@contextlib.contextmanager
def in_process():
    """Commands run their blocks in this process: no dask cluster is started.

    Every command and ``run`` open their cluster through ``blockseg.runtime.cluster.dask_client``, looked
    up when called; this replaces it by a client-less context for the duration.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("blockseg.runtime.cluster.dask_client", lambda *a, **k: contextlib.nullcontext(None))
        yield


# ---------------------------------------------------------------------------- labellings
def partition_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) label pairs over all voxels."""
    return np.unique(np.stack([a.ravel().astype(np.uint64), b.ravel().astype(np.uint64)], axis=1), axis=0)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the labellings are equal up to renaming (background must map to background)."""
    pairs = partition_pairs(a, b)
    bijective = len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))
    return bool(bijective and np.array_equal((a == 0), (b == 0)))


def differing_voxels(a: np.ndarray, b: np.ndarray) -> int:
    """Voxels not covered by the one-to-one best overlap of the two labellings."""
    pairs, counts = np.unique(
        np.stack([a.ravel().astype(np.uint64), b.ravel().astype(np.uint64)], axis=1), axis=0, return_counts=True
    )
    order = np.argsort(-counts, kind="stable")
    used_a, used_b, agree = set(), set(), 0
    for (x, y), c in zip(pairs[order].tolist(), counts[order].tolist()):
        if x not in used_a and y not in used_b and (x == 0) == (y == 0):
            used_a.add(x)
            used_b.add(y)
            agree += c
    return int(a.size - agree)


def matched_at(gt: np.ndarray, pred: np.ndarray, iou: float = 0.9) -> tuple[int, int, int]:
    """(matches with IoU >= iou, GT instances, predicted instances); one-to-one for iou > 0.5."""
    g_ids, g_n = np.unique(gt[gt > 0], return_counts=True)
    p_ids, p_n = np.unique(pred[pred > 0], return_counts=True)
    both = (gt > 0) & (pred > 0)
    pairs, inter = np.unique(np.stack([gt[both], pred[both]], 1).astype(np.int64), axis=0, return_counts=True)
    gs = g_n[np.searchsorted(g_ids, pairs[:, 0])]
    ps = p_n[np.searchsorted(p_ids, pairs[:, 1])]
    ious = inter / (gs + ps - inter)
    return int((ious >= iou).sum()), len(g_ids), len(p_ids)


# ---------------------------------------------------------------------------- geometry
def tube_predictions(tmp_path: Path, length: int = 512, blocks: int = 8) -> tuple[Path, tuple[int, int, int]]:
    """A tube of radius 5 along x through ``blocks`` blocks, one seed at one end, a plateau in D
    everywhere else (the label must travel one block per exchange round): (store, block shape)."""
    shape = (32, 32, length)
    z, y = np.ogrid[:32, :32]
    disc = (z - 16) ** 2 + (y - 16) ** 2 <= 25
    ch = {"B": np.zeros(shape, np.float32), "C": np.zeros(shape, np.float32), "D": -np.ones(shape, np.float32)}
    ch["B"][disc, 2 : length - 2] = 1.0
    ch["D"][disc, 2 : length - 2] = 0.2  # foreground, no seed: one plateau
    ch["D"][disc, 2:6] = 0.9  # the only seed
    pred = tmp_path / "tube.zarr"
    save_predictions(pred, ch, chunks=(32, 32, 32))
    return pred, (32, 32, length // blocks)
