"""Deployment on a shared machine (issue 33): a read-only install, tight worker memory, costly geometry.

The read-only test runs the installed CLI inside a private mount namespace (``unshare -m``) where
the checkout / site-packages and ``HOME`` are bind-mounted read-only; it skips where the
namespace or the mounts are not permitted (not root, no ``unshare``, a container without the
capability).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import blockseg
from blockseg_cli.main import main

#: exit status of the namespace script when a mount is refused (the test then skips)
NO_MOUNT = 77


def _outermost(paths) -> list[str]:
    """``paths`` without those inside another one of them."""
    paths = sorted({os.path.realpath(p) for p in paths}, key=len)
    out: list[str] = []
    for p in paths:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _read_only_run(tmp_path: Path, command: str, env: dict, read_only=()) -> subprocess.CompletedProcess:
    """Run ``command`` (shell) in a private mount namespace where blockseg's install, the
    interpreter's prefix and ``read_only`` are mounted read-only."""
    if sys.platform != "linux" or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs Linux with unshare and mount")
    install = _outermost([Path(blockseg.__file__).parents[1], sys.prefix, *read_only])
    tmp = os.path.realpath(tmp_path)
    if any(tmp == p or tmp.startswith(p + "/") for p in install if p not in map(os.path.realpath, read_only)):
        pytest.skip("the test's temporary folder lies inside the install")
    mounts = "".join(f"mount --bind '{p}' '{p}' && mount -o remount,bind,ro '{p}' '{p}' || exit {NO_MOUNT}\n" for p in install)
    script = f"set -u\n{mounts}cd '{tmp}'\n{command}\n"
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    except OSError as exc:
        pytest.skip(f"unshare cannot run here: {exc}")
    if proc.returncode == NO_MOUNT or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"a private mount namespace is not permitted here: {proc.stderr.strip()[:200]}")
    return proc


def _env(home: Path, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    return env


def test_runs_from_a_read_only_install_without_a_writable_home(tmp_path):
    from blockseg.io import create_volume

    vol = create_volume(tmp_path / "tiny.zarr", (8, 16, 16), "uint8", chunks=(8, 16, 16))
    vol[:] = np.arange(8 * 16 * 16, dtype=np.uint32).reshape(8, 16, 16) % 251
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    cli = Path(sys.executable).parent / "blockseg"
    cli_cmd = f"'{cli}'" if cli.exists() else f"'{sys.executable}' -m blockseg_cli.main"
    # a compiled kernel really runs (decorated at import, compiled on first call)
    kernel = (
        f"'{sys.executable}' -c 'import numpy as np; from blockseg.segment.stats import partial_stats; "
        "from blockseg._jit import cache_dir; "
        "t = partial_stats(np.array([[[0, 1], [2, 2]]], np.uint32), np.ones((1, 2, 2), np.float32), (0, 0, 0)); "
        "print(\"stats\", t[\"count\"].tolist(), \"cache\", repr(cache_dir()))'"
    )
    temps = _outermost([p for p in (str(tmp), str(tmp_path), "/tmp", "/var/tmp", "/usr/tmp", "/dev/shm") if os.path.isdir(p)])
    # nowhere to write: a kernel outside blockseg.segment (whose own kernels need a cache folder)
    nowhere = (
        f"'{sys.executable}' -c 'import numpy as np; from blockseg.predict.kernels import quantise; "
        "from blockseg._jit import cache_dir; "
        "print(\"quantised\", quantise(np.array([[[0.0, 1.0]]], np.float32), \"prob\").ravel().tolist(), \"cache\", repr(cache_dir()))'"
    )
    command = (
        f"touch '{Path(blockseg.__file__).parent}/.probe' 2>/dev/null && echo WRITABLE-INSTALL; "
        f"touch '{home}/.probe' 2>/dev/null && echo WRITABLE-HOME; "
        f"{cli_cmd} --help > help.txt || echo HELP-FAILED $?; "
        f"{cli_cmd} info '{tmp_path / 'tiny.zarr'}' || echo INFO-FAILED $?; "
        f"{kernel} || echo KERNEL-FAILED $?; "
        # nowhere to cache at all (every temporary folder read-only too): kernels compile uncached
        + "".join(f"mount --bind '{p}' '{p}' && mount -o remount,bind,ro '{p}' '{p}' || exit {NO_MOUNT}; " for p in temps)
        + f"{nowhere} || echo KERNEL-FAILED $?"
    )
    proc = _read_only_run(tmp_path, command, _env(home, tmp), read_only=[str(home)])
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert "WRITABLE" not in out, out  # the install and HOME really were read-only
    assert "FAILED" not in out, out + err
    assert "Traceback" not in err and "RuntimeError" not in err, err
    assert "usage: blockseg" in (tmp_path / "help.txt").read_text()
    assert "shape 8x16x16 uint8" in out
    stats = [line for line in out.splitlines() if line.startswith("stats")]
    assert len(stats) == 1 and "[1, 2]" in stats[0], out
    assert f"{tmp}/blockseg-numba-" in stats[0], stats  # cached in the private per-user folder under TMPDIR
    quantised = [line for line in out.splitlines() if line.startswith("quantised")]
    assert len(quantised) == 1 and quantised[0].endswith("[0, 255] cache None"), out  # compiled, cached nowhere
    cache = next(tmp.glob("blockseg-numba-*"))
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert any(cache.rglob("*.nbi")), "no kernel was cached in the per-user folder"


def test_cache_folder_shared_with_others_is_not_used(tmp_path, monkeypatch):
    """numba's index files are pickles: a cache folder others can write is never used."""
    from blockseg import _jit

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert not _jit._private_dir(str(shared))
    mine = tmp_path / "mine"
    assert _jit._private_dir(str(mine)) and (mine.stat().st_mode & 0o777) == 0o700
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert not _jit._private_dir(str(link))
