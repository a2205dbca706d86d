"""mkdocs hook: the API reference of a stage package, from the names the package exports.

The stage packages (``blockseg.predict``, ``blockseg.segment``, ...) export their public names
lazily (``_EXPORTS``: name -> submodule, see :mod:`blockseg._lazy`), which a static reader such as
mkdocstrings cannot see. A page line ``<!-- api: blockseg.predict -->`` is replaced here by one
``:::`` block per submodule listing the names it exports, so the reference follows the package.
"""

from __future__ import annotations

import importlib
import re

MARK = re.compile(r"^<!-- api: ([\w.]+) -->$", re.M)


def directives(package: str) -> str:
    """The mkdocstrings blocks documenting what ``package`` exports, grouped by submodule."""
    module = importlib.import_module(package)
    exports = getattr(module, "_EXPORTS", None)
    if not exports:  # an eager package: document it as it is
        return f"::: {package}\n"
    by_module: dict[str, list[str]] = {}
    for name, sub in exports.items():
        by_module.setdefault(sub, []).append(name)
    blocks = []
    for sub, names in by_module.items():
        members = ", ".join(names)
        blocks.append(f"::: {package}.{sub}\n    options:\n      members: [{members}]\n")
    return "\n".join(blocks)


def on_page_markdown(markdown, page, config, files):
    return MARK.sub(lambda m: directives(m.group(1)), markdown)
