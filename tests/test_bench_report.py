"""`make bench` rewrites benchmarks/RESULTS.md but keeps what was measured by hand below its marker."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402


def test_kept_tail_is_what_follows_the_marker(tmp_path):
    md = tmp_path / "RESULTS.md"
    assert run_all.kept_tail(md) is None  # no file yet
    md.write_text("# old generated report\n\nstale ratios\n")
    assert run_all.kept_tail(md) is None  # no marker: nothing to keep
    md.write_text(f"# old generated report\n\nstale ratios\n\n{run_all.KEEP}\n\n## by hand\n\nkept figure 1.34x\n")
    assert run_all.kept_tail(md) == f"{run_all.KEEP}\n\n## by hand\n\nkept figure 1.34x\n"


def test_the_repository_results_file_has_the_marker_once():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert text.count(run_all.KEEP) == 1
    head, _, tail = text.partition(run_all.KEEP)
    assert "# Measured by hand" in tail and "## Headline ratios" in head
