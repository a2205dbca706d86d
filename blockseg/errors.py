"""User-facing errors.

Everything that is the user's fault (a missing path, an impossible block geometry, a
wrong dtype) raises :class:`BlocksegError`. The CLI turns it into one line on stderr and
exit code 2; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations


class BlocksegError(ValueError):
    """A problem with the user's input, reported as one line, never a traceback."""


def describe_validation_error(err) -> str:
    """One line for a pydantic ``ValidationError``: ``KEY.PATH: message (and N more)``.

    Names the first offending key; an unknown key reads ``unknown key``.
    """
    errors = err.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"
