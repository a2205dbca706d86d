"""Named fault points: make one task fail once, where it writes, to prove exactly-once.

Every block task that writes calls :func:`fault_point` just before and just after each write
(``"segment.pieces:before round=2 block=3"``). Nothing happens unless the environment asks for
a fault, so production runs pay one dictionary look-up per write. The tests of the
exactly-once guarantee (``tests/test_faults.py``) set

``BLOCKSEG_FAULT``
    ``PATTERN=ACTION``: a shell-style pattern (:func:`fnmatch.fnmatchcase`) matched against the
    point's full name, and what to do there: ``raise`` (an :class:`OSError`, as a full disk or
    a flaky object store gives) or ``kill`` (the process SIGKILLs itself, as a worker lost to the OOM
    killer or a pre-empted node, or a driver killed by a scheduler).
``BLOCKSEG_FAULT_DIR``
    A folder that holds the *fired* marker: the fault fires once per folder, in whichever
    process reaches a matching point first (an exclusive create decides), so the retried task
    runs undisturbed.

Workers inherit the environment of the process that starts them, so a cluster started after
the variables are set sees them.
"""

from __future__ import annotations

import fnmatch
import os
import signal

__all__ = ["FaultInjected", "fault_point"]


class FaultInjected(OSError):
    """The error a ``raise`` fault raises (an :class:`OSError`, like the failures it stands for)."""


def fault_point(name: str, **where: int) -> None:
    """Fail here once if ``BLOCKSEG_FAULT`` names this point (see the module docstring).

    Parameters
    ----------
    name : str
        ``stage.pass:moment``, e.g. ``"segment.pieces:before"``.
    **where : int
        Context appended to the name as ``key=value`` (e.g. ``round=2, block=3``).

    Examples
    --------
    >>> fault_point("segment.pieces:before", round=2, block=3)  # no BLOCKSEG_FAULT: nothing
    """
    spec = os.environ.get("BLOCKSEG_FAULT")
    if not spec:
        return
    pattern, _, action = spec.rpartition("=")
    full = " ".join([name, *(f"{k}={v}" for k, v in where.items())])
    if not fnmatch.fnmatchcase(full, pattern):
        return
    folder = os.environ.get("BLOCKSEG_FAULT_DIR")
    if not folder:
        raise RuntimeError("BLOCKSEG_FAULT is set but BLOCKSEG_FAULT_DIR (where the fault records that it fired) is not")
    try:
        fd = os.open(os.path.join(folder, "fired"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # fired already: the retry runs undisturbed
    os.write(fd, full.encode())
    os.close(fd)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise FaultInjected(f"injected fault at {full}")
    raise RuntimeError(f"BLOCKSEG_FAULT action must be 'raise' or 'kill', got {action!r}")
