"""Provenance of a run: peak memory of the process tree, stage records, fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Any

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of ``proc`` and all its descendants (local Dask workers), in bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def worker_rss(proc: psutil.Process) -> list[int]:
    """Resident memory of each descendant process of ``proc`` (bytes)."""
    out = []
    for p in proc.children(recursive=True):
        try:
            out.append(p.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


class PeakMemory:
    """Context manager sampling the peak RSS of this process and its children.

    ``peak_total`` is the largest sum over the tree (driver + local workers);
    ``peak_child`` the largest single child (one local Dask worker, or nanny). Workers of a
    remote scheduler are not seen. Sampling every ``interval`` seconds may miss short spikes.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_total = 0
        self.peak_child = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                self.peak_total = max(self.peak_total, tree_rss(me))
                self.peak_child = max([self.peak_child, *worker_rss(me)])
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def to_dict(self) -> dict:
        return {
            "peak_rss_total_gib": round(self.peak_total / 2**30, 3),
            "peak_rss_worker_gib": round(self.peak_child / 2**30, 3),
        }


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()[:16]


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON next to ``path`` and rename it into place (never a half-written file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
