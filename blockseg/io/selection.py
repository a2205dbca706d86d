"""A choice of level / channel / timepoint / key / axes riding on a path as a fragment,
``img.zarr#level=1&channel=0`` (``#axes=zcyx`` names the axes of an array without axis metadata), so that every input of every command (and the tasks that reopen
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
SELECT_KEYS = ("level", "channel", "timepoint", "key", "axes")
_FRAGMENT = re.compile(r"#((?:level|channel|timepoint|key|axes)=[^&#]+(?:&(?:level|channel|timepoint|key|axes)=[^&#]+)*)$")


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
        elif k == "axes":
            sel[k] = check_axes(v, path)
        else:
            try:
                sel[k] = int(v)
            except ValueError:
                raise BlocksegError(f"{path}: {k} must be an integer index, got {v!r}") from None
    return path[: m.start()], sel


def check_axes(axes: str, where: str = "--axes") -> str:
    """``axes`` in lower case if it names each of z, y, x once, with at most a c and a t."""
    a = str(axes).strip().lower()
    if not (set(a) <= set("tczyx") and len(set(a)) == len(a) and {"z", "y", "x"} <= set(a)):
        raise BlocksegError(f"{where}: axes {axes!r} must name z, y and x once each, with optional c and t (e.g. zcyx)")
    return a


def with_selection(path: str, selection: dict[str, Any]) -> str:
    """Inverse of :func:`split_selection` (no fragment when nothing is selected)."""
    items = [f"{k}={selection[k]}" for k in SELECT_KEYS if selection.get(k) is not None]
    return path + ("#" + "&".join(items) if items else "")
