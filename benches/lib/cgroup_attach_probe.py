#!/usr/bin/env python3
"""Measures how long moving one process into a cgroup takes, on its own.

Why: the start profile shows the first write to `cgroup.procs` as the
longest single step of `stockade run`. Moving a task between cgroups takes
the kernel's cgroup_threadgroup_rwsem for writing; when that lock has been
idle, taking it waits for an RCU grace period (milliseconds), while a write
shortly after another one is quick. This probe separates the two cases, in
a scratch group of its own that it removes again:

- "idle": 200 ms of quiet before each move, like a sandbox started now
  and then;
- "back-to-back": moves one right after the other.

Usage: cgroup_attach_probe.py --out PROBE.json [--moves N]
"""

import argparse
import json
import os
import statistics
import time


def find_hierarchy():
    """A cgroup directory we may create a child in: the v1 pids hierarchy
    (cheap, no controller state to set up) or else the v2 root."""
    v2 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, opts = right.split()[:3]
            mountpoint = left.split()[4]
            if fstype == "cgroup" and "pids" in opts.split(","):
                return mountpoint, "v1 pids"
            if fstype == "cgroup2" and v2 is None:
                v2 = mountpoint
    return (v2, "v2") if v2 else (None, None)


def move_one(procs_file):
    """Forks a child that waits on a pipe, times writing its pid into the
    group, then lets it exit. Returns nanoseconds spent in the write."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    fd = os.open(procs_file, os.O_WRONLY)
    start = time.perf_counter_ns()
    os.write(fd, str(pid).encode())
    took = time.perf_counter_ns() - start
    os.close(fd)
    os.close(w)
    os.waitpid(pid, 0)
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--moves", type=int, default=15)
    a = ap.parse_args()
    root, kind = find_hierarchy()
    result = {"hierarchy": kind}
    if root is None:
        result["error"] = "no cgroup hierarchy found"
    else:
        group = os.path.join(root, f"stockade-bench-probe-{os.getpid()}")
        os.mkdir(group)
        try:
            procs = os.path.join(group, "cgroup.procs")
            for label, gap in (("idle", 0.2), ("back-to-back", 0.0)):
                xs = []
                for _ in range(a.moves):
                    time.sleep(gap)
                    xs.append(move_one(procs) / 1e6)
                result[label] = {"median_ms": statistics.median(xs),
                                 "min_ms": min(xs), "max_ms": max(xs),
                                 "moves": len(xs)}
        finally:
            os.rmdir(group)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
