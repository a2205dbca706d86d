"""User-facing errors.

Everything that is the user's fault (a missing path, an impossible block geometry, a
wrong dtype) raises :class:`BlocksegError`. The CLI turns it into one line on stderr and
exit code 2; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations

import re
import warnings


class BlocksegError(ValueError):
    """A problem with the user's input, reported as one line, never a traceback."""


class BlocksegWarning(UserWarning):
    """A default that changes the result (e.g. a voxel size taken as 1 µm); one line in the CLI."""


def warn(message: str) -> None:
    """Emit a :class:`BlocksegWarning` (one line ``warning: ...`` in the CLI) for the caller's caller."""
    warnings.warn(message, BlocksegWarning, stacklevel=3)


#: pydantic's names of union members, which it puts into an error's location
_UNION_TAGS = {"int", "float", "str", "bool", "none", "list", "tuple", "dict"}


def _key(loc) -> str:
    """``("segment", "halo", "int")`` -> ``segment.halo``; list positions as ``[i]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        part = str(part)
        if "[" in part or part in _UNION_TAGS or part.startswith("function-"):
            continue  # a union member's tag, not a key
        out += ("." if out else "") + part
    return out or "(top level)"


def _words(error: dict) -> str:
    """One pydantic error in plain words and the value given: ``("must be ≥ 0", ", got -1")``."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        return "unknown key", ""
    if kind == "missing":
        return "is required", ""
    plain = {
        "greater_than_equal": lambda: f"must be ≥ {ctx.get('ge')}",
        "greater_than": lambda: f"must be > {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be ≤ {ctx.get('le')}",
        "less_than": lambda: f"must be < {ctx.get('lt')}",
        "int_parsing": lambda: "must be a whole number",
        "int_type": lambda: "must be a whole number",
        "int_from_float": lambda: "must be a whole number",
        "float_parsing": lambda: "must be a number",
        "float_type": lambda: "must be a number",
        "bool_parsing": lambda: "must be true or false",
        "bool_type": lambda: "must be true or false",
        "string_type": lambda: "must be text",
        "literal_error": lambda: f"must be one of {ctx.get('expected')}",
        "list_type": lambda: "must be a list",
        "tuple_type": lambda: "must be a list",
        "dict_type": lambda: "must be a mapping of keys",
        "too_short": lambda: f"must have {ctx.get('min_length')} items, got {ctx.get('actual_length')}",
        "too_long": lambda: f"must have {ctx.get('max_length')} items, got {ctx.get('actual_length')}",
        "finite_number": lambda: "must be a finite number",
    }
    if kind in plain:
        msg = plain[kind]()
    elif kind in ("value_error", "assertion_error") and "error" in ctx:
        msg = str(ctx["error"])
    else:
        msg = error["msg"]
    got = ""
    if "got" not in msg and (given is None or isinstance(given, (int, float, str, bool))):
        got = f", got {given!r}"
    return msg, got


def describe_validation_error(err, spell=None) -> str:
    """One line for a pydantic ``ValidationError``, every problem in plain words naming its key:
    ``segment.halo: must be ≥ 0, got -1; predict.batch_size: must be ≥ 1, got 0``.

    Union members' tags (``segment.halo.int``) are dropped; messages of the members of one
    union are joined with "or". A validator's message ``KEY: text`` for a nested key becomes
    ``PARENT.KEY: text``. ``spell`` writes a key as the caller's door names it (the CLI:
    ``tile_voxels`` -> ``--tile-voxels``); default: the dotted key.
    """
    by_key: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        key, (msg, value) = _key(e["loc"]), _words(e)
        m = re.match(r"^([A-Za-z_][\w.\[\]]*): (.+)$", msg)
        if e["type"] == "value_error" and m:
            key, msg = (f"{key}.{m.group(1)}" if key != "(top level)" else m.group(1)), m.group(2)
        if msg not in by_key.setdefault(key, []):
            by_key[key].append(msg)
        got.setdefault(key, value)
    spell = spell or (lambda k: k)
    return "; ".join(f"{spell(k)}: {' or '.join(msgs)}{got[k]}" for k, msgs in by_key.items())
