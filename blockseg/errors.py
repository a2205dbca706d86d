"""User-facing errors.

Everything that is the user's fault (a missing path, an impossible block geometry, a
wrong dtype) raises :class:`BlocksegError`. The CLI turns it into one line on stderr and
exit code 2; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations


class BlocksegError(ValueError):
    """A problem with the user's input, reported as one line, never a traceback."""
