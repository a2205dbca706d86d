"""Run a command; report its wall time and the peak RSS of its whole process tree.

Dask workers are child processes, so the peak of the tree (sampled every 50 ms with psutil)
is what the machine had to hold. Usage::

    python benchmarks/measure.py --json out.json -- blockseg synth ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of ``proc`` and all its descendants, in bytes."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


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
