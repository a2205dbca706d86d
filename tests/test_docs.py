"""The documentation: the mkdocs site builds with --strict, offline, and the public API's
docstring Examples run (issue 30 goal 5).

A broken link between pages, a page missing from the navigation, a docstring mkdocstrings cannot
read, or a CLI option whose help cannot be rendered fails ``test_site_builds_strict``; an Example
whose output changed fails ``test_examples_run`` for its module.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())

#: the public API modules whose docstring Examples are run (doctest); any other module of the
#: library that holds an Example is found and run too (``_modules_with_examples``)
DOCTEST_MODULES = [
    "blockseg",
    "blockseg._lazy",
    "blockseg.grid",
    "blockseg.zyx",
    "blockseg.options",
    "blockseg.faults",
    "blockseg.synth",
    "blockseg.io.volume",
    "blockseg.io.predictions",
    "blockseg.io.storage",
    "blockseg.io.tables",
    "blockseg.runtime.cluster",
    "blockseg.predict",
    "blockseg.predict.engine",
    "blockseg.predict.infer",
    "blockseg.predict.polarity",
    "blockseg.segment",
    "blockseg.segment.components",
    "blockseg.segment.pipeline",
    "blockseg.segment.baseline",
    "blockseg.evaluate",
    "blockseg.evaluate.core",
    "blockseg.train",
    "blockseg.train.targets",
    "blockseg.train.trainer",
]


def _modules() -> list[str]:
    """The listed modules that exist in this tree (a listed module that a refactor moved fails
    ``test_listed_modules_import`` by name instead of being dropped)."""
    return DOCTEST_MODULES


def _modules_with_examples() -> set[str]:
    """Every module of the library whose source holds a doctest prompt."""
    lib = ROOT / "blockseg"
    found = set()
    for path in lib.rglob("*.py"):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.mark.slow  # mkdocs builds the whole site in a subprocess
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` succeeds and prints no warning; the generated pages are there."""
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    warnings = [line for line in log.splitlines() if re.match(r"(WARNING|ERROR)\b", line)]
    assert not warnings, "\n".join(warnings)
    # the CLI reference is generated from the parser: every subcommand's --help is on the page
    cli = (site / "cli" / "index.html").read_text()
    from blockseg_cli.main import COMMANDS

    for name in COMMANDS:
        command = {"import_cmd": "import", "export_model": "export-model", "cluster_cmd": "cluster"}.get(name, name)
        assert f"usage: blockseg {command}" in cli, command
    # the API reference is rendered from the docstrings
    assert "blockseg.grid.BlockGrid" in (site / "api" / "grid" / "index.html").read_text()


def test_readme_is_short_and_its_links_exist():
    """README.md stays an entry point (at most 200 lines); every relative link it has resolves."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [t for t in links if "://" not in t and not (ROOT / t).exists()]
    assert not missing, missing


@pytest.mark.parametrize("name", _modules())
def test_listed_modules_import(name):
    importlib.import_module(name)


@pytest.mark.parametrize("name", sorted(set(_modules()) | _modules_with_examples()))
def test_examples_run(name, tmp_path, monkeypatch):
    """Every ``>>>`` Example in the module's docstrings gives the output it shows."""
    monkeypatch.chdir(tmp_path)  # an Example that writes a file writes it here
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):  # each example sees its module's globals, as in `python -m doctest`
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"


def test_examples_exist():
    """The listed modules hold Examples between them (the doctest run above is not empty)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    counts = {name: sum(len(t.examples) for t in finder.find(importlib.import_module(name), name)) for name in _modules()}
    assert sum(counts.values()) >= 20, counts


#: folders that commands create (``make bench`` caches its synthetic data there); git ignores them
GENERATED = ("benchmarks/data",)


def test_paths_named_in_the_docs_exist():
    """Every repository path the README and the site name (``tests/test_x.py``, ``configs/...``,
    ``experiments/results/...``) exists: a file that moved is a stale page. A name without an
    extension may be an output prefix (``results/segment`` for ``segment.json``)."""
    pattern = re.compile(r"(?<![\w/.-])((?:tests|experiments|benchmarks|configs|blockseg|cli|docs)/[\w./-]*\w)")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    stale = set()
    for page in pages:
        for path in pattern.findall(page.read_text(encoding="utf-8")):
            here = ROOT / path
            if path.startswith(GENERATED):  # made by a command, not kept in the repository
                continue
            if here.exists() or (here.suffix == "" and any(here.parent.glob(here.name + ".*"))):
                continue
            stale.add(f"{page.relative_to(ROOT)}: {path}")
    assert not stale, sorted(stale)
