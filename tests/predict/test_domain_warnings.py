"""A shipped network used far from its training data warns in one line (issue 32 goal 5)."""

from __future__ import annotations

import numpy as np

from blockseg.models import read_checkpoint, shipped_checkpoint_path
from blockseg.predict.domain import domain_warnings


def test_demo_says_it_saw_synthetic_em_only():
    lines = domain_warnings(shipped_checkpoint_path("demo"), {}, (0.5, 0.5, 0.5), "metadata")
    assert len(lines) == 1 and "synthetic NucMM-Z-like EM only" in lines[0] and "\n" not in lines[0]
    assert "synthetic fluorescence only" in domain_warnings(shipped_checkpoint_path("fluo_synth"), {}, (1, 1, 1), "default")[0]
    assert domain_warnings(shipped_checkpoint_path("fluo"), {}, (1, 1, 1), "default") == []


def test_far_sizes_and_anisotropy_warn_for_shipped_networks_only():
    path = shipped_checkpoint_path("fluo")
    meta = read_checkpoint(path)["metadata"]  # 2.97 µm nuclei, 0.284 x 0.127 x 0.127 µm voxels
    near = {"source": "estimated", "diameter_um": 3.5}
    far = {"source": "estimated", "diameter_um": 16.8}
    assert domain_warnings(path, meta, (0.28, 0.13, 0.13), "metadata", near) == []
    lines = domain_warnings(path, meta, (0.28, 0.13, 0.13), "metadata", far)
    assert len(lines) == 1 and "5.7x larger" in lines[0]
    # BBBC050's voxels: 2.2x longer in z, the training voxels 2.2x too: no anisotropy warning
    assert domain_warnings(path, meta, (1.75, 0.8, 0.8), "metadata") == []
    lines = domain_warnings(path, meta, (0.5, 0.5, 0.5), "metadata")  # isotropic micro-CT voxels
    assert len(lines) == 1 and "longer in z" in lines[0]
    assert domain_warnings(path, meta, (0.5, 0.5, 0.5), "default") == []  # unknown voxel size: said elsewhere
    # a user's own checkpoint is not second-guessed
    assert domain_warnings("/data/my_net.pt", meta, (0.5, 0.5, 0.5), "metadata", far) == []


def test_predict_warns_once_per_line(tmp_path, recwarn):
    from blockseg.errors import BlocksegWarning
    from blockseg.io import create_volume
    from blockseg.predict import predict

    img = create_volume(str(tmp_path / "img.zarr"), (16, 32, 32), np.uint8, (0.48, 0.51, 0.51))
    img.array[...] = np.random.default_rng(0).integers(0, 255, (16, 32, 32), dtype=np.uint8)
    predict(str(tmp_path / "img.zarr"), "demo", str(tmp_path / "p.zarr"), dry_run=True)
    msgs = [str(w.message) for w in recwarn.list if issubclass(w.category, BlocksegWarning)]
    assert sum("synthetic NucMM-Z-like EM only" in m for m in msgs) == 1
