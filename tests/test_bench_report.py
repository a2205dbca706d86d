"""`make bench` rewrites benchmarks/RESULTS.md but keeps what was measured by hand below its marker."""

from __future__ import annotations

import re
import sys

from _helpers import REPO as ROOT

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


def test_kept_head_is_the_current_headline_block(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# blockseg benchmarks\n\nno current headline\n")
    assert run_all.kept_head(md) is None
    block = f"{run_all.CURRENT[0]}\n\n## Current headline\n\n| a | 1.5x | 2026-12-07 | abc1234 |\n\n{run_all.CURRENT[1]}"
    md.write_text(f"# blockseg benchmarks\n\n{block}\n\n# This `make bench` run\n\nold ratios\n")
    assert run_all.kept_head(md) == block


def test_the_repository_results_file_opens_with_the_current_headline():
    """RESULTS.md opens with the current table, each figure dated and with its commit."""
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    block = run_all.kept_head(ROOT / "benchmarks" / "RESULTS.md")
    assert block and text.index(block) < text.index("## Headline ratios")
    rows = [r for r in block.splitlines() if r.startswith("| ") and not r.startswith("| comparison")]
    assert rows
    for row in rows:
        assert re.search(r"\| 20\d\d-\d\d-\d\d \| [0-9a-f]{7} \|", row), row
