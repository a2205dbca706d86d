"""Run a command; report its wall time and the peak RSS of its whole process tree.

Dask workers are child processes, so the peak of the tree (sampled every 50 ms with psutil)
is what the machine had to hold. Usage::

    python benchmarks/measure.py --json out.json -- blockseg synth ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil

from blockseg.provenance import tree_rss


class FolderPeak:
    """Largest total size of the files under a folder, sampled every ``dt`` seconds in a
    thread while the ``with`` block runs (a folder that does not exist yet counts 0)."""

    def __init__(self, folder: str, dt: float = 0.02):
        self.folder, self.dt, self.peak = str(folder), dt, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.folder):
            for f in files:
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:  # deleted while walking
                    pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            time.sleep(self.dt)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())


class RssSampler(threading.Thread):
    """Peak RSS of given process ids (e.g. Dask workers), sampled every ``interval`` seconds."""

    def __init__(self, pids, interval=0.1):
        super().__init__(daemon=True)
        self.procs = {p: psutil.Process(p) for p in pids}
        self.peak = {p: 0 for p in pids}
        self.interval, self.stop = interval, threading.Event()

    def run(self):
        while not self.stop.is_set():
            for p, proc in self.procs.items():
                try:
                    self.peak[p] = max(self.peak[p], proc.memory_info().rss)
                except Exception:
                    pass
            time.sleep(self.interval)


def measure(cmd: list[str], interval: float = 0.05) -> dict:
    """Run ``cmd``; return exit code, wall seconds and peak tree RSS (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(ps))
            except psutil.NoSuchProcess:
                return
            done.wait(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    return {"cmd": cmd, "returncode": rc, "wall_s": round(wall, 2), "peak_rss_bytes": peak, "peak_rss_gib": round(peak / 2**30, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (after --)")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")
    res = measure(cmd)
    print(json.dumps(res), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res["returncode"]


if __name__ == "__main__":
    sys.exit(main())
