"""Smoke test of the benchmark orchestrator (benchmarks/run_all.py --quick) on tiny sizes.

Runs two of its benchmarks (CC stitching vs dask-image, seams vs contact stitching) into a tmp
dir and checks that RESULTS.md, the plots and the JSON are written and that the figures in
RESULTS.md are the ones recomputed here from the raw per-benchmark JSON. Skipped where the
benchmark extra (stardist, monai, dask-image) is not installed: CI installs only the test extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import REPO as ROOT

for _mod in ("dask_image", "stardist", "monai"):
    pytest.importorskip(_mod, reason="the bench extra is not installed")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out-dir", str(out), "--stages", "cc", "seams"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow  # runs two benchmarks in a subprocess
def test_outputs_written(quick_run):
    md = (quick_run / "RESULTS.md").read_text()
    for section in ("## Machine and versions", "## Headline ratios", "## Scaling", "## GPU", "load average"):
        assert section in md
    assert "not measured: no gpu available" in md.lower()
    for png in ("scaling_size.png", "scaling_workers.png", "peers.png"):
        assert (quick_run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((quick_run / "results" / "bench.json").read_text())
    assert set(res["runs"]) == {"cc", "seams"}
    for key in ("numpy", "torch", "dask", "zarr", "scikit-image", "monai", "stardist", "dask-image", "blockseg_commit"):
        assert res["versions"][key] and res["versions"][key] != "not installed"
    assert all(len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3 for r in res["runs"].values())


@pytest.mark.slow  # runs two benchmarks in a subprocess
def test_ratios_match_raw_json(quick_run):
    md = (quick_run / "RESULTS.md").read_text()
    res = json.loads((quick_run / "results" / "bench.json").read_text())
    cc = json.loads((quick_run / "results" / "raw" / "cc.json").read_text())
    ratio = float(np.median([r["dask_image"]["seconds"] / r["blockseg"]["seconds"] for r in cc["runs"]]))
    assert res["headline"]["CC labelling wall, dask-image / blockseg"] == pytest.approx(ratio)
    assert f"| CC labelling wall, dask-image / blockseg | {ratio:.2f}x |" in md
    # the two labellings are the same partition, and the report says so
    assert cc["partition_equal"] == {"blockseg_vs_dask_image": True, "blockseg_vs_cc3d": True}
    assert "blockseg vs dask-image yes" in md
    seams = json.loads((quick_run / "results" / "raw" / "seams.json").read_text())
    pairs = f"{seams['contact']['merged_gt_pairs']} vs {seams['blockseg']['merged_gt_pairs']}"
    assert f"contact stitching vs blockseg | {pairs} |" in md
    # blockseg's stitching adds no merge the whole-volume decoder does not make
    assert seams["blockseg"]["merged_gt_pairs"] <= seams["whole_volume"]["merged_gt_pairs"]
