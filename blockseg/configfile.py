r"""YAML config files read strictly: plain data only (a safe loader), and a key given twice in one
mapping refused (YAML would keep the last one silently). Both config schemas, the run's
(:mod:`blockseg.pipeline.config`) and training's (:mod:`blockseg.train.config`), read through
:func:`load_yaml`.

Examples
--------
>>> load_yaml("a: 1\nb: [2, 3]", "x.yaml")
{'a': 1, 'b': [2, 3]}
>>> load_yaml("a: 1\na: 2", "x.yaml")
Traceback (most recent call last):
...
blockseg.errors.BlocksegError: x.yaml: line 2: key 'a' is given twice (first on line 1); YAML would keep only the last one silently: remove one
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import BlocksegError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last one
    silently: a config would run with a value the user did not see)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # << merges: explicit keys may override them
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: yaml itself refuses it
                    continue
                if first != key_node.start_mark.line + 1:
                    raise DuplicateKeyError(key, first, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key, first: int, again: int):
        super().__init__(f"key {key!r} given twice")
        self.key, self.first, self.again = key, first, again


def load_yaml(text: str, path: str) -> Any:
    """Parse a YAML config file's text; one-line :class:`BlocksegError` for bad YAML and for a key
    given twice in one mapping (naming the key and both lines)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as e:
        raise BlocksegError(
            f"{path}: line {e.again}: key {e.key!r} is given twice (first on line {e.first}); YAML would keep only "
            "the last one silently: remove one"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)  # e.g. a !!python/... tag: only plain data is read, never objects
        raise BlocksegError(f"{path}: not valid YAML{where}{f' ({problem})' if problem else ''}") from None
