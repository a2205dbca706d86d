"""A choice of level / channel / timepoint / key riding on a path as a fragment,
``img.zarr#level=1&channel=0``, so that every input of every command (and the tasks that reopen
it on the workers) is addressed by one string.

Examples
--------
>>> split_selection("img.zarr#level=1&channel=0")
('img.zarr', {'level': 1, 'channel': 0})
>>> with_selection("img.zarr", {"level": 1})
'img.zarr#level=1'
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import BlocksegError

#: selection keys a path fragment may carry (``PATH#level=1&channel=0``)
SELECT_KEYS = ("level", "channel", "timepoint", "key")
_FRAGMENT = re.compile(r"#((?:level|channel|timepoint|key)=[^&#]+(?:&(?:level|channel|timepoint|key)=[^&#]+)*)$")


def split_selection(path: str) -> tuple[str, dict[str, Any]]:
    """``"img.zarr#level=1&channel=0"`` -> ``("img.zarr", {"level": 1, "channel": 0})``."""
    m = _FRAGMENT.search(path)
    if not m:
        return path, {}
    sel: dict[str, Any] = {}
    for part in m.group(1).split("&"):
        k, v = part.split("=", 1)
        if k == "key":
            sel[k] = v
        else:
            try:
                sel[k] = int(v)
            except ValueError:
                raise BlocksegError(f"{path}: {k} must be an integer index, got {v!r}") from None
    return path[: m.start()], sel


def with_selection(path: str, selection: dict[str, Any]) -> str:
    """Inverse of :func:`split_selection` (no fragment when nothing is selected)."""
    items = [f"{k}={selection[k]}" for k in SELECT_KEYS if selection.get(k) is not None]
    return path + ("#" + "&".join(items) if items else "")
