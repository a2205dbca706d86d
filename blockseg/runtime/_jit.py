"""Compiled (numba) kernels that import and run from a read-only install.

numba's ``cache=True`` keeps compiled machine code beside the source (``__pycache__``) or in the
user's cache folder (``~/.cache/numba``). When neither is writable -- a shared conda environment,
a container image, a cluster module, a home directory nobody may write -- numba refuses to
*decorate* the function (``RuntimeError: cannot cache function ...: no locator available``) and
the import of the module dies. blockseg's kernels are decorated with :func:`njit`, which caches
where it can:

1. where numba would on its own (``NUMBA_CACHE_DIR``, the source tree, ``~/.cache/numba``);
2. else in a per-user folder, ``$XDG_CACHE_HOME/blockseg/numba`` (``~/.cache/...``) when that is
   writable, else ``<temp dir>/blockseg-numba-<uid>``, else ``/dev/shm/blockseg-numba-<uid>``: created private (mode 0700) and used only
   when it is a real folder owned by this user that nobody else may write (numba's index files
   are pickles: a cache others can write would run their code here). The choice is set as
   ``NUMBA_CACHE_DIR`` for this process (and inherited by the dask workers it starts);
3. else without caching: each process compiles the kernels it calls again (seconds) and nothing
   fails.

The choice is made once per process, on the first decorated kernel (:mod:`blockseg.segment` makes
it on import, before its own kernels decorated with numba's ``cache=True`` directly).
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from typing import Callable

#: environment variable numba reads its cache folder from
ENV = "NUMBA_CACHE_DIR"


def _probe(x):  # pragma: no cover - decorated only, never compiled
    return x


def _numba_can_cache() -> bool:
    """Whether numba finds a writable place for a kernel of this package (decorating compiles nothing)."""
    import numba

    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


def _private_dir(path: str) -> bool:
    """Create ``path`` (mode 0700) if needed; True when it is a real folder owned by this user,
    writable by no one else, and writable by us."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            return False
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def user_cache_dirs() -> list[str]:
    """Per-user folders tried, in order, when numba has no place of its own to cache in."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    dirs = [os.path.join(base, "blockseg", "numba")]
    try:
        dirs.append(os.path.join(tempfile.gettempdir(), f"blockseg-numba-{uid}"))
    except OSError:  # no writable temporary folder anywhere
        pass
    if os.path.isdir("/dev/shm"):  # a read-only root file system (hardened containers) keeps this tmpfs
        dirs.append(f"/dev/shm/blockseg-numba-{uid}")
    return dirs


@functools.lru_cache(maxsize=None)
def cache_dir() -> str | None:
    """Where this process caches compiled kernels: ``""`` where numba decides on its own, a per-user
    folder (then also set as ``NUMBA_CACHE_DIR``), or None: nowhere, kernels compile every time."""
    if _numba_can_cache():
        return ""
    from numba.core import config

    for path in user_cache_dirs():
        if _private_dir(path):
            os.environ[ENV] = path  # numba's compiler reloads its config from the environment
            config.CACHE_DIR = path
            if _numba_can_cache():
                return path
    return None


def njit(*args, **options) -> Callable:
    """``numba.njit`` with ``cache=True`` where a cache can be written (see the module), without
    caching elsewhere; never fails for want of a writable folder. Use as ``@njit`` or
    ``@njit(nogil=True, ...)``."""
    import numba

    options.pop("cache", None)

    def decorate(func):
        if cache_dir() is not None:
            try:
                return numba.njit(cache=True, **options)(func)
            except RuntimeError:  # this module's folder differs from the probe's: compile uncached
                pass
        return numba.njit(**options)(func)

    if args and callable(args[0]) and len(args) == 1:
        return decorate(args[0])
    if args:
        raise TypeError("njit takes keyword options only (or the function itself)")
    return decorate


__all__ = ["njit", "cache_dir", "user_cache_dirs"]
