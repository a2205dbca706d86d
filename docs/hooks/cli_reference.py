"""mkdocs hook: the CLI reference page (``cli.md``) generated from the ``blockseg`` parser.

The page is built at every ``mkdocs build`` from the same ``argparse`` parser that
``blockseg --help`` prints, so it cannot drift from the command. Nothing is copied by hand.
"""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File

PAGE = "cli.md"
WIDTH = "100"  # argparse wraps at $COLUMNS; a fixed width gives the same page on every machine


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of every subcommand, depth first, in the order ``--help`` lists them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((sub.prog, sub))
                out.extend(_subcommands(sub))
    return out


def render() -> str:
    """The Markdown of the CLI reference page."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        from blockseg_cli.main import build_parser

        parser = build_parser()
        parts = [
            "# Command-line reference",
            "",
            "Generated from `blockseg --help` and `blockseg COMMAND --help` when the site is built. "
            "The [user guide](guide/run.md) explains what each command does.",
            "",
            "## blockseg",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        for prog, sub in _subcommands(parser):
            parts += [f"## {prog}", "", "```text", sub.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def on_files(files, config):
    """Add the generated page to the site's files."""
    files.append(File.generated(config, PAGE, content=render()))
    return files
