"""Data safety: the one place that decides whether an output may be written, and how.

Every command that writes (``import``, ``synth``, ``predict``, ``segment``, ``evaluate``,
``export``, ``run`` / ``demo``, ``train``) asks :func:`prepare_output` before it writes a byte:

1. an output is never an input, never inside an input and never around one (paths resolved);
2. an existing output is replaced only with ``overwrite``, and only when blockseg wrote it
   (:func:`owned_kind` recognises its marks); anything else is foreign and never replaced;
3. a replacement is written new beside the old output, then swapped in, so an interrupted one
   leaves the old output as it was (on object storage: a *ready* object, then a server-side
   copy that the next call rolls forward if it was interrupted);
4. a new output is written in place, so an interrupted ``predict`` leaves a store to resume;
5. one writer per output: a lock file beside it (:func:`acquire_lock`).

Violations raise :class:`~blockseg.errors.BlocksegError` (one line; exit code 2 in the CLI)
before anything is written. The rules in full, with the crash windows they cover:
``docs/design/safety.md`` (the site's *Design notes / Safety rules*).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import functools
import glob
import json
import os
import posixpath
import shutil
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import urlsplit, urlunsplit

import fsspec
import zarr

try:  # the batched read that chunk_errors() wraps; another zarr layout keeps zarr's own errors
    from zarr.core.codec_pipeline import BatchedCodecPipeline
except ImportError:  # pragma: no cover
    BatchedCodecPipeline = None

from ..errors import BlocksegError
from .access import probe
from .selection import split_selection
from .storage import is_url, listdir, remove_tree, write_bytes
from .._version import __version__

#: files a folder of evaluation reports may hold (``blockseg evaluate --out``; ``run``'s evaluation/)
EVALUATION_FILES = frozenset({"evaluation.json", "instances.csv", "ap_vs_iou.png", "overview.png"})
#: attribute keys that mark a zarr node as written by blockseg
ZARR_MARKS = ("blockseg", "blockseg_report")
NEW_TAG, OLD_TAG, READY_TAG = "blockseg-new", "blockseg-old", "blockseg-ready"


# ---------------------------------------------------------------------------- paths
def _strip_file_scheme(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def resolve(path: str | os.PathLike) -> str:
    """Canonical form of a path: absolute with symlinks resolved, or a normalised URL.

    A selection fragment (``img.zarr#level=1&channel=0``, :mod:`blockseg.io.formats`) is dropped:
    the file is what counts.
    """
    path = split_selection(str(path))[0]
    if is_url(path):
        parts = urlsplit(path)
        clean = posixpath.normpath("/" + parts.path.strip("/")) if parts.path.strip("/") else ""
        return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), clean.rstrip("/"), "", ""))
    return os.path.realpath(os.path.abspath(os.path.expanduser(_strip_file_scheme(path))))


def _is_zarr_node(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zarray", "attributes.json"))


def zarr_root(path: str) -> str:
    """The outermost zarr hierarchy that holds a resolved local ``path`` (``path`` if none).

    ``/d/img.zarr/labels/gt`` -> ``/d/img.zarr``; a URL is cut after its first ``.zarr``. The
    climb stops at the first parent that is no zarr node: a stray ``zarr.json`` higher up (some
    readers leave one two levels above a label volume they open) does not make a whole folder
    tree an input.
    """
    if is_url(path):
        head, sep, _ = path.partition(".zarr/")
        return head + ".zarr" if sep else path
    root = path
    while True:  # climb while the parents are zarr nodes: a plain folder ends the hierarchy
        parent = os.path.dirname(root)
        if parent == root or not (_is_zarr_node(parent) or parent.endswith((".zarr", ".n5"))):
            return root
        root = parent


def _within(child: str, parent: str) -> bool:
    """``child`` is ``parent`` or lies below it (both resolved)."""
    if child == parent:
        return True
    sep = "/" if is_url(parent) else os.sep
    return child.startswith(parent.rstrip(sep) + sep)


def check_not_input(outputs: Iterable[str], inputs: Iterable[str]) -> None:
    """Refuse an output that is an input, lies inside an input's zarr hierarchy, or contains an input.

    Parameters
    ----------
    outputs, inputs : iterable of str
        Paths or URLs as the user gave them (``None`` entries are ignored).

    Raises
    ------
    BlocksegError
        Naming the first offending pair.
    """
    ins = [(str(p), resolve(p)) for p in inputs if p is not None]
    for out in outputs:
        if out is None:
            continue
        o = resolve(out)
        for given, i in ins:
            if o == i:
                raise BlocksegError(f"{out}: the output is the input {given}; choose another output path")
            if _within(o, zarr_root(i)):
                raise BlocksegError(
                    f"{out}: the output lies inside the input {given}; blockseg never writes into an input"
                )
            if _within(i, o):
                raise BlocksegError(f"{out}: the output contains the input {given}; choose another output path")


# ---------------------------------------------------------------------------- ownership
def _zarr_attrs(path: str) -> dict | None:
    try:
        node = zarr.open(path, mode="r")
    except Exception:
        return None
    try:
        return dict(node.attrs)
    except Exception:
        return None


def _file_kind(path: str) -> str | None:
    low = path.lower()
    try:
        if low.endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                desc = tif.pages[0].description if len(tif.pages) else ""
                meta = tif.imagej_metadata or {}
            if "blockseg" in str(desc) or "blockseg" in str(meta.get("Info", "")):
                return "export"
        elif low.endswith((".h5", ".hdf5", ".hdf")):
            import h5py

            with h5py.File(path, "r") as f:
                if "blockseg" in f.attrs:
                    return "export"
    except Exception:
        return None
    return None


def owned_kind(path: str | os.PathLike) -> str | None:
    """What blockseg output is at ``path`` (``"zarr"``, ``"run"``, ``"evaluation"``,
    ``"export"``, ``"empty"`` for an empty folder), or None when it is not blockseg's."""
    path = str(path)
    if is_url(path):
        attrs = _zarr_attrs(path)
        if attrs is not None:
            return "zarr" if any(k in attrs for k in ZARR_MARKS) else None
        entries = set(listdir(path))
        if "run.json" in entries:
            return "run"
        if "evaluation.json" in entries and entries <= EVALUATION_FILES:
            return "evaluation"
        return None
    if os.path.islink(path):
        return None  # a link is the user's: never replaced
    if os.path.isfile(path):
        return _file_kind(path)
    if not os.path.isdir(path):
        return None
    entries = set(os.listdir(path))
    if not entries:
        return "empty"
    if "run.json" in entries and os.path.isfile(os.path.join(path, "run.json")):
        return "run"
    if "evaluation.json" in entries and entries <= EVALUATION_FILES:
        return "evaluation"
    if _is_zarr_node(path):
        attrs = _zarr_attrs(path)
        if attrs is not None and any(k in attrs for k in ZARR_MARKS):
            return "zarr"
    return None


def _exists(path: str) -> bool:
    if is_url(path):
        fs, p = fsspec.core.url_to_fs(path)
        return bool(fs.exists(p))  # an object, or a prefix with objects under it
    return os.path.lexists(path)


# ---------------------------------------------------------------------------- replacement
def _sibling(path: str, tag: str, pid: int | None = None) -> str:
    if is_url(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        return f"{parent}/.{name}.{tag}-{os.getpid() if pid is None else pid}"
    parent, name = os.path.split(os.path.abspath(path.rstrip("/")))
    return os.path.join(parent, f".{name}.{tag}-{os.getpid() if pid is None else pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(path: str, tag: str) -> list[tuple[str, int]]:
    if is_url(path):
        parent, _, name = path.rstrip("/").rpartition("/")
        found = [f"{parent}/{e}" for e in listdir(parent) if e.startswith(f".{name}.{tag}-")]
    else:
        parent, name = os.path.split(os.path.abspath(path.rstrip("/")))
        found = glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.{tag}-*"))
    out = []
    for p in found:
        tail = p.rsplit("-", 1)[1]
        if tail.isdigit():
            out.append((p, int(tail)))
    return out


def _remove(path: str) -> None:
    if is_url(path):
        remove_tree(path)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def recover(path: str) -> None:
    """Tidy what an interrupted replacement of ``path`` left behind.

    An old output renamed away but not replaced (a crash between the two renames) is renamed
    back; half-written new outputs of dead processes, and old outputs already replaced, are
    deleted (both are blockseg's own hidden siblings).
    """
    if is_url(path):
        _recover_url(path)
        return
    path = os.path.abspath(path.rstrip("/"))
    olds = sorted(_leftovers(path, OLD_TAG))
    for old, pid in olds:
        if _pid_alive(pid) and pid != os.getpid():
            continue
        if not os.path.lexists(path):
            os.rename(old, path)
        else:
            _remove(old)
    for new, pid in _leftovers(path, NEW_TAG):
        if not _pid_alive(pid) or pid == os.getpid():
            _remove(new)
        for work in (new + ".work",):
            if os.path.lexists(work) and (not _pid_alive(pid) or pid == os.getpid()):
                _remove(work)


def _recover_url(path: str) -> None:
    """:func:`recover` on object storage: roll a ready replacement forward, drop unready ones."""
    path = path.rstrip("/")
    for ready, pid in _leftovers(path, READY_TAG):
        if _pid_alive(pid) and pid != os.getpid():
            continue
        new = _sibling(path, NEW_TAG, pid)
        if _exists(new):
            _finish_url_swap(new, path, ready)
        else:  # the copy finished, only the deletion of the ready object was lost
            _remove(ready)
    for new, pid in _leftovers(path, NEW_TAG):
        if not _pid_alive(pid) or pid == os.getpid():
            _remove(new)
            _remove(new + ".work")


def _finish_url_swap(new: str, path: str, ready: str) -> None:
    """Delete the old output, copy the complete ``new`` into place, delete ``new`` and ``ready``."""
    fs, src = fsspec.core.url_to_fs(new)
    dst = fsspec.core.url_to_fs(path)[1]
    _remove(path)
    fs.copy(src + "/" if fs.isdir(src) else src, dst, recursive=True)
    _remove(new)
    _remove(ready)


def swap_url(new: str, path: str) -> None:
    """:func:`swap` on object storage (see the module docstring): mark ready, then replace."""

    path = path.rstrip("/")
    ready = _sibling(path, READY_TAG)
    write_bytes(ready, json.dumps({"new": new, "path": path}).encode())
    _finish_url_swap(new, path, ready)


@dataclass
class Output:
    """A checked output path and how it will be written (see :func:`prepare_output`).

    Attributes
    ----------
    path : str
        The output as given.
    action : {"create", "replace", "resume"}
        ``create``: nothing there (or an empty folder); ``replace``: blockseg's own output,
        replaced new-then-swap; ``resume``: continue the unfinished output in place.
    kind : str or None
        :func:`owned_kind` of what is there now.
    """

    path: str
    action: str
    kind: str | None = None
    _target: str | None = field(default=None, repr=False)
    _locked: bool = field(default=False, repr=False)
    _begun: bool = field(default=False, repr=False)
    #: a new local output is written beside the path too and renamed in by :meth:`commit`, so
    #: a failure (a full disk) leaves nothing at the path (stages that resume from a work
    #: folder, not from a half-written output)
    staged: bool = False

    def release(self) -> None:
        """Let go of the output's lock (:func:`acquire_lock`); idempotent."""
        if self._locked:
            self._locked = False
            release_lock(self.path)

    @property
    def target(self) -> str:
        """Where to write: the path itself, or its hidden sibling while replacing."""
        if self._target is None:
            self._target = _sibling(self.path, NEW_TAG) if self.action == "replace" or self._staged_create else self.path
        return self._target

    @property
    def _staged_create(self) -> bool:
        return self.staged and self.action == "create" and not is_url(self.path)

    def begin(self) -> str:
        """Start writing: return :attr:`target` (an empty folder at a new path is removed first).

        Pair it with :meth:`commit` on success; without it (a crash) the old output stays and
        the half-written copy is removed by the next :func:`prepare_output` of the path.
        """
        if self.action == "create" and not is_url(self.path) and os.path.isdir(self.path):
            os.rmdir(self.path)  # an empty folder: the writers create the output themselves
        if self.action == "replace" or self._staged_create:
            _remove(self.target)
        self._begun = True
        for frame in getattr(_ACTIVE, "frames", ()):
            if not any(o is self for o in frame):
                frame.append(self)
        return self.target

    def commit(self) -> None:
        """Swap a finished replacement into place (nothing to do for create / resume)."""
        if self.action == "replace":
            (swap_url if is_url(self.path) else swap)(self.target, self.path)
            self.action = "done"
        elif self._staged_create:
            os.rename(self.target, os.path.abspath(self.path.rstrip("/")))
            self.action = "done"
        self.release()

    def abort(self) -> None:
        """Delete a replacement's (or a staged new output's) half-written copy (an old output stays)."""
        if self.action == "replace" or self._staged_create:
            with contextlib.suppress(OSError):
                _remove(self.target)
                _remove(self.target + ".work")
        self.release()

    @contextlib.contextmanager
    def writing(self) -> Iterator[str]:
        """Context in which the output is written to :attr:`target`; swapped in on success.

        On an exception (or KeyboardInterrupt) a replacement's new copy is deleted and the old
        output stays; a new output is left as it is (``predict`` resumes it).
        """
        target = self.begin()
        try:
            yield target
        except BaseException:
            self.abort()
            raise
        self.commit()


_ACTIVE = threading.local()


def aborts_on_error(func):
    """Decorator: replacements begun inside ``func`` and not committed when it raises (or is
    interrupted) are aborted -- their half-written copies deleted, the old outputs kept.

    A *new* output begun in the call is deleted too when the failure is the user's input
    (a :class:`BlocksegError`, e.g. a corrupt chunk): bad input leaves nothing written. After
    any other failure (a crash, Ctrl-C) a new output stays, for ``predict`` to resume -- unless
    it was staged (:attr:`Output.staged`), whose copy beside the path is deleted.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        frames = _ACTIVE.__dict__.setdefault("frames", [])
        begun: list[Output] = []
        frames.append(begun)
        try:
            return func(*args, **kwargs)
        except BaseException as exc:
            for out in begun:
                if not out._begun:
                    continue
                if out.action == "replace" or out._staged_create:
                    out.abort()  # the half-written copy beside the path goes; the path is untouched
                if out.action == "create" and isinstance(exc, BlocksegError):
                    with contextlib.suppress(OSError):
                        _remove(out.path)
                        _remove(out.path + ".work")
            raise
        finally:
            frames.remove(begun)
            for out in begun:  # outputs prepared in the call: their locks end with it
                out.release()

    return wrapper


def swap(new: str, path: str) -> None:
    """Put ``new`` at ``path``: rename the old away, rename the new in, delete the old."""
    path = os.path.abspath(path.rstrip("/"))
    old = _sibling(path, OLD_TAG)
    _remove(old)
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    _remove(old)


def prepare_output(
    path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    resume: bool = False,
    what: str = "output",
    extra: Iterable[str] = (),
    lock: bool = True,
    staged: bool = False,
) -> Output:
    """Check that ``path`` may be written, before anything is; return how to write it.

    Parameters
    ----------
    path : str or path-like
        The output (local path or URL).
    inputs : iterable of path-like
        Everything the command reads (images, labels, stores, checkpoints, tables).
    overwrite : bool
        Replace an existing output -- only one that blockseg wrote.
    resume : bool
        An existing output blockseg wrote is continued in place (the caller checks that it
        is the same run); without ``overwrite`` this is the only way an existing output is used.
    what : str
        How the output is named in messages.
    extra : iterable of str
        Further paths the command writes beside the output (e.g. ``OUT.work``); checked
        against the inputs too.
    lock : bool
        Claim the output for this process first (:func:`acquire_lock`): a second command on
        the same output is refused at once, naming the holder. Released by
        :meth:`Output.commit` / :meth:`Output.abort` / :meth:`Output.release`, at the end of
        an :func:`aborts_on_error` call that prepared it, or at exit.
    staged : bool
        Write a new local output beside the path as well, renamed in on commit (see
        :attr:`Output.staged`): a failure leaves nothing at the path.

    Returns
    -------
    Output

    Raises
    ------
    BlocksegError
        If the output is, contains or lies inside an input; if it exists and is not
        blockseg's own output (even with ``overwrite``); if it exists without ``overwrite``
        or ``resume``; if its parent folder is missing or not writable; if another command
        is writing it.
    """
    path = str(path)
    inputs = [str(p) for p in inputs if p is not None]
    check_not_input([path, *extra], inputs)
    if is_url(path):
        probe(path)  # no credentials, a missing bucket, no endpoint: one line before anything is written
    # one writer per output: claimed before anything at the path is looked at or touched
    held = acquire_lock(path) if lock else None
    try:
        output = _prepare(path, overwrite, resume, what)
    except BaseException:
        if held is not None:
            release_lock(path)
        raise
    output._locked = held is not None
    output.staged = staged
    for frame in getattr(_ACTIVE, "frames", ()):  # released when the decorated call ends
        frame.append(output)
    return output


def _prepare(path: str, overwrite: bool, resume: bool, what: str) -> Output:
    """:func:`prepare_output`'s verdict on ``path``, once its lock is held."""
    recover(path)  # local: rename back / delete leftovers; object storage: roll forward
    exists = _exists(path)
    kind = owned_kind(path) if exists else None
    if not exists or kind == "empty":
        if not is_url(path):
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise BlocksegError(f"{path}: parent directory {parent} does not exist")
            if not os.access(parent, os.W_OK):
                raise BlocksegError(f"{path}: parent directory {parent} is not writable")
        return Output(path, "create", kind)
    if kind is None:
        what_is = "a file" if os.path.isfile(path) else ("a link" if os.path.islink(path) else "not empty")
        raise BlocksegError(
            f"{path} already exists and was not written by blockseg ({what_is}): it is never replaced; choose another {what}"
        )
    if resume and not overwrite:
        return Output(path, "resume", kind)
    if not overwrite:
        raise BlocksegError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    if not is_url(path) and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        raise BlocksegError(f"{path}: parent directory is not writable")
    return Output(path, "replace", kind)


def stamp_json(extra: dict | None = None) -> dict:
    """The ``blockseg`` mark written into outputs that are not zarr (export metadata)."""

    return {"written_by": f"blockseg {__version__}", **(extra or {})}


def mark_text(extra: dict | None = None) -> str:
    return json.dumps({"blockseg": stamp_json(extra)})


def prepare_work(work: str) -> str:
    """Create the scratch group ``work`` (``OUT.work``) of a stage, replacing only an earlier
    scratch group of blockseg's (marked ``blockseg.work``); return its path."""
    if is_url(work):
        attrs = _zarr_attrs(work)
        if attrs is not None and "work" not in dict(attrs.get("blockseg", {})):
            raise BlocksegError(f"{work} exists and is not a blockseg work folder; move it away")
        remove_tree(work)  # an earlier run's scratch (object stores have no rename to swap it)
    elif os.path.lexists(work):
        attrs = _zarr_attrs(work) if _is_zarr_node(work) else None
        mine = attrs is not None and "work" in dict(attrs.get("blockseg", {}))
        if not (mine or owned_kind(work) == "empty"):
            raise BlocksegError(f"{work} exists and is not a blockseg work folder; move it away")
        _remove(work)
    group = zarr.open_group(work, mode="w")
    group.attrs["blockseg"] = stamp_json({"work": True})
    return work


def swap_work(work: str, path: str) -> None:
    """Move a kept work folder beside the swapped-in output (replacing an earlier one)."""
    if is_url(path):
        if _exists(path):
            prepare_work(path)
            _remove(path)

        fs, src = fsspec.core.url_to_fs(work)
        fs.copy(src.rstrip("/") + "/", fsspec.core.url_to_fs(path)[1], recursive=True)
        _remove(work)
        return
    if os.path.lexists(path):
        prepare_work(path)
        _remove(path)
    os.rename(work, path)


# ---------------------------------------------------------------------------- one writer per output
LOCK_TAG = "blockseg-lock"
_LOCKS: dict[str, "OutputLock"] = {}
_LOCKS_MUTEX = threading.RLock()


def lock_file(path: str) -> str:
    """Where the lock of output ``path`` lives: the hidden sibling ``.NAME.blockseg-lock``."""
    path = str(path).rstrip("/")
    if is_url(path):
        parent, _, name = path.rpartition("/")
        return f"{parent}/.{name}.{LOCK_TAG}"
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{LOCK_TAG}")


@dataclass
class OutputLock:
    """This process's claim on one output (see :func:`acquire_lock`)."""

    path: str
    file: str
    info: dict
    thread: int
    fd: int | None = None  # local: the open, flock-ed lock file
    count: int = 1


def _holder_info() -> dict:
    cmd = " ".join(os.path.basename(a) if k == 0 else a for k, a in enumerate(sys.argv)) or "python"
    return {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": cmd[:300], "token": uuid.uuid4().hex,
    }  # fmt: skip


def _parse_holder(raw: bytes | str | None) -> dict:
    try:
        info = json.loads(raw or b"")
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _busy(path: str, holder: dict, file: str, sure: bool) -> BlocksegError:
    """The one line a second writer gets: who holds ``path`` and since when."""
    if holder.get("pid"):
        who = f"pid {holder['pid']} on {holder.get('host', '?')}, since {holder.get('started', '?')}"
        if holder.get("command"):
            who += f": {holder['command']}"
    else:
        who = "a process that is just starting"
    tail = "wait for it to finish" if sure else f"wait for it to finish, or delete {file} if that process is gone"
    return BlocksegError(f"{path} is being written by another blockseg command ({who}); {tail}")


def _stale(holder: dict) -> bool:
    """A holder is gone: it ran on this host and its process no longer exists."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _take_local(path: str) -> OutputLock | None:
    """flock the lock file (released by the kernel when the holder dies, on any host sharing the
    file system); file systems without flock fall back to an exclusive create (:func:`_take_exclusive`)."""
    import fcntl  # POSIX only: importing blockseg must not fail where it is missing

    file = lock_file(path)
    for _ in range(50):
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None  # no right to create a file beside the output: unlocked (see docs/guide/data-safety.md)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = {}
            for _ in range(20):  # the holder writes its details right after taking the lock
                holder = _parse_holder(os.pread(fd, 4096, 0))
                if holder:
                    break
                time.sleep(0.01)
            os.close(fd)
            raise _busy(path, holder, file, sure=True) from None
        except OSError:  # no flock here (some network file systems)
            os.close(fd)
            return _take_exclusive(path, file)
        try:  # the file locked must still be the one at the path (a holder deletes it on release)
            same = os.stat(file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        info = _holder_info()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return OutputLock(path, file, info, threading.get_ident(), fd)
    raise BlocksegError(f"{path}: could not take its lock {file} (it keeps changing); try again")


def _take_exclusive(path: str, file: str) -> OutputLock:
    """A lock file made by an exclusive create; a leftover of a dead process on this host is stale."""
    for _ in range(3):
        info = _holder_info()
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(file, "rb") as fh:
                    holder = _parse_holder(fh.read())
            except FileNotFoundError:
                continue
            if not _stale(holder):
                raise _busy(path, holder, file, sure=False) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(file)
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(info).encode())
        return OutputLock(path, file, info, threading.get_ident())
    raise BlocksegError(f"{path}: could not take its lock {file}; try again")


def _take_url(path: str) -> OutputLock:
    """The lock object on object storage, created with a conditional put ("xb": S3's
    ``If-None-Match: *``) where the store offers it; else written and read back (two writers
    starting within one round trip may both win: see docs/guide/data-safety.md)."""
    file = lock_file(path)
    fs, key = fsspec.core.url_to_fs(file)
    for _ in range(3):
        info = _holder_info()
        data = json.dumps(info).encode()
        try:
            with fs.open(key, "xb") as fh:
                fh.write(data)
            return OutputLock(path, file, info, threading.get_ident())
        except FileExistsError:
            pass
        except (ValueError, NotImplementedError, TypeError):  # no exclusive create: write, then read back
            fs.invalidate_cache(key)
            if not fs.exists(key):
                fs.pipe_file(key, data)
                fs.invalidate_cache(key)
                if _parse_holder(fs.cat_file(key)).get("token") == info["token"]:
                    return OutputLock(path, file, info, threading.get_ident())
        except OSError:  # a refused conditional put (HTTP 412) surfaces as some OSError
            fs.invalidate_cache(key)
            if not fs.exists(key):
                raise
        try:
            fs.invalidate_cache(key)
            holder = _parse_holder(fs.cat_file(key))
        except FileNotFoundError:
            continue
        if not _stale(holder):
            raise _busy(path, holder, file, sure=False)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(key)
    raise BlocksegError(f"{path}: could not take its lock {file}; try again")


def acquire_lock(path: str | os.PathLike) -> OutputLock | None:
    """Claim output ``path`` for this process and thread, or refuse in one line naming the holder.

    The claim is a lock file beside the output (:func:`lock_file`) holding host, pid, start time
    and command. Locally it is ``flock``-ed: the kernel releases it when the holder exits or is
    killed, so a lock is never stale; on object storage it is created exclusively where the store
    can, and a leftover of a dead process on this host is taken over (one of another host is
    named, with the object to delete). Re-entrant in one thread (counted: each acquire needs a
    :func:`release_lock`); another thread of the process is refused like another process. None
    when no lock file can be made beside the output (a read-only folder): unlocked.

    Raises
    ------
    BlocksegError
        When another command (or thread) holds the output.
    """
    path = str(path)
    key = resolve(path)
    with _LOCKS_MUTEX:
        held = _LOCKS.get(key)
        if held is not None:
            if held.thread != threading.get_ident():
                raise _busy(path, {**held.info, "command": f"another thread of this process ({held.info.get('command')})"},
                            held.file, sure=True)  # fmt: skip
            held.count += 1
            return held
        if is_url(path):
            probe(path)  # no credentials, a missing bucket, no endpoint: one line naming the output
        lock = _take_url(path) if is_url(path) else _take_local(path)
        if lock is not None:
            _LOCKS[key] = lock
            _install_release_at_exit()
        return lock


def release_lock(path: str | os.PathLike, force: bool = False) -> None:
    """Undo one :func:`acquire_lock` of ``path`` (all of them with ``force``); the last one
    deletes the lock file."""
    key = resolve(str(path))
    with _LOCKS_MUTEX:
        lock = _LOCKS.get(key)
        if lock is None:
            return
        lock.count = 0 if force else lock.count - 1
        if lock.count > 0:
            return
        del _LOCKS[key]
        _drop_lock(lock)


def _drop_lock(lock: OutputLock) -> None:
    with contextlib.suppress(Exception):
        if is_url(lock.path):
            fs, key = fsspec.core.url_to_fs(lock.file)
            fs.invalidate_cache(key)
            if _parse_holder(fs.cat_file(key)).get("token") == lock.info["token"]:
                fs.rm_file(key)
        elif lock.fd is not None:  # delete while still holding it, then let go
            with contextlib.suppress(FileNotFoundError):
                if os.stat(lock.file).st_ino == os.fstat(lock.fd).st_ino:
                    os.remove(lock.file)
            os.close(lock.fd)
        else:
            with open(lock.file, "rb") as fh:
                if _parse_holder(fh.read()).get("token") == lock.info["token"]:
                    os.remove(lock.file)


def held_locks() -> list[str]:
    """Outputs this process holds (resolved paths)."""
    with _LOCKS_MUTEX:
        return sorted(_LOCKS)


def release_all_locks() -> None:
    """Release every lock of this process (at exit; after a signal)."""
    with _LOCKS_MUTEX:
        locks = list(_LOCKS.values())
        _LOCKS.clear()
    for lock in locks:
        _drop_lock(lock)


_AT_EXIT = False


def _forget_locks_in_child() -> None:
    """A forked child does not hold its parent's locks: close the copies of their files (the
    parent keeps them locked) and forget them, so the child neither reuses nor deletes them."""
    for lock in _LOCKS.values():
        if lock.fd is not None:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
    _LOCKS.clear()


def _install_release_at_exit() -> None:
    global _AT_EXIT
    if not _AT_EXIT:
        atexit.register(release_all_locks)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forget_locks_in_child)
        _AT_EXIT = True


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[OutputLock | None]:
    """Hold the lock of ``path`` for the ``with`` block (:func:`acquire_lock`)."""
    lock = acquire_lock(path)
    try:
        yield lock
    finally:
        if lock is not None:
            release_lock(path)


# ---------------------------------------------------------------------------- corrupt chunks
class CorruptChunkError(BlocksegError):
    """A stored chunk (or shard) that cannot be decoded; the message names array and key."""


#: the guard's state: how many guarded blocks run now, and zarr's own read while any does
_GUARD = {"depth": 0, "original": None}
_GUARD_LOCK = threading.Lock()


@contextlib.contextmanager
def chunk_errors() -> Iterator[None]:
    """Within the block, a chunk zarr cannot decode raises :class:`CorruptChunkError`: one line,
    ``ARRAY: chunk KEY ... (reason)``, instead of the codec's own error.

    zarr's batched codec pipeline read is wrapped while the block runs (when decoding a batch
    fails, its chunks are decoded one by one to find the culprit) and restored when the last
    guarded block of the process ends; importing blockseg changes nothing in zarr. Every block
    task (:func:`blockseg.runtime.cluster.run_blocks`) and every CLI command runs in it. Reading
    good chunks costs nothing extra.
    """
    _guard_enter()
    try:
        yield
    finally:
        _guard_exit()


def _guard_enter() -> None:
    with _GUARD_LOCK:
        if _GUARD["depth"] == 0 and BatchedCodecPipeline is not None:
            _GUARD["original"] = BatchedCodecPipeline.read_batch
            BatchedCodecPipeline.read_batch = _named_read_batch(BatchedCodecPipeline.read_batch)
        _GUARD["depth"] += 1


def _guard_exit() -> None:
    with _GUARD_LOCK:
        _GUARD["depth"] -= 1
        if _GUARD["depth"] == 0 and _GUARD["original"] is not None:
            BatchedCodecPipeline.read_batch = _GUARD["original"]
            _GUARD["original"] = None


def _named_read_batch(original):
    """zarr's ``read_batch``, naming the chunk it cannot decode."""

    async def read_batch(self, batch_info, out, drop_axes=()):
        batch_info = list(batch_info)
        try:
            return await original(self, batch_info, out, drop_axes)
        except BlocksegError:
            raise
        except Exception as exc:
            for item in batch_info:
                byte_getter, spec = item[0], item[1]
                try:
                    raw = await byte_getter.get(prototype=spec.prototype)
                    if raw is not None:
                        list(await self.decode_batch([(raw, spec)]))
                except Exception as one:
                    raise CorruptChunkError(_describe(byte_getter, one)) from None
            raise exc

    return read_batch


def _describe(byte_getter, exc: Exception) -> str:
    path = str(getattr(byte_getter, "path", "") or "")
    store = getattr(byte_getter, "store", None)
    root = str(getattr(store, "root", "") or getattr(store, "path", "") or "")
    array, sep, key = path.rpartition("/c/")
    if not sep:
        array, key = path.rpartition("/")[0], path.rpartition("/")[2]
    else:
        key = "c/" + key
    where = os.path.join(root, array) if root and not is_url(root) else (f"{root}/{array}" if root else array)
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{where}: chunk {key} is corrupt or unreadable ({reason}); restore it or re-create the volume"
