#!/usr/bin/env python3
"""Interleaved wall-clock timer for the peer benchmarks.

Reads a plan (JSON) naming several variants, each a command line, and runs
them round-robin: every round runs each variant once, so slow drift on a
shared machine (other tenants, page cache, thermal state) hits all variants
alike instead of whichever happened to run last. Each run is timed with
the monotonic clock (time.perf_counter_ns) around the child's whole life,
from spawn to reaped exit, which is what a caller of the sandbox waits for.

Plan:
    {"warmup": 5, "rounds": 100,
     "variants": [{"name": "bwrap", "argv": ["bwrap", "..."],
                   "setup": ["sh", "-c", "untimed step before each run"],
                   "every": 1}]}

`"env": {"NAME": "value"}` in a variant adds to the environment its command
runs with. `"settle": true` at the top of the plan makes every run wait,
untimed, until all that it left running has exited (see `settle`); the
wait after each run is kept as "settle_ns". `{run}` in an argument becomes a number unique to the run (runc needs a
fresh container id each time). `setup`, when given, runs untimed right
before each timed run (e.g. `make clean`). `every: k` runs the variant only
in every k-th round, for a peer too slow to run in all of them.

A variant that fails during warm-up is dropped and reported as skipped
with its error; a failed measured run is counted, never timed, and shown
in the results. Output (JSON, to the file named by --out): per variant its
samples in nanoseconds, failure count, first error and skip reason.

Usage: timer.py PLAN.json --out SAMPLES.json [--label TEXT]
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

# Kept for the error message of a failed run: enough to see the reason.
STDERR_TAIL = 600


def run_once(argv, cwd, env=None):
    """Runs argv to completion; returns (elapsed_ns, exit_code, stderr_tail).

    stdout goes to /dev/null and stderr to a temporary file rather than a
    pipe, so that no reader thread sits inside the timed region and a peer
    that leaves a descendant holding stderr open cannot stretch the time.
    """
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter_ns()
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=err)
        code = proc.wait()
        elapsed = time.perf_counter_ns() - start
        tail = ""
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-STDERR_TAIL:].strip()
    return elapsed, code, tail


def expand(argv, run_id):
    return [a.replace("{run}", str(run_id)) for a in argv]


def env_of(variant):
    """The variant's environment: ours plus its "env", or None for ours."""
    extra = variant.get("env")
    return {**os.environ, **extra} if extra else None


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    """Makes this process the reaper of its orphaned descendants: what a
    variant leaves running after its exit (stockade's detached cleaner,
    podman's cleanup) becomes our child, so `settle` can wait for it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"timer.py: prctl(PR_SET_CHILD_SUBREAPER): "
                 f"{os.strerror(ctypes.get_errno())}")


# Processes that stay by design and only sleep: a rootless user's base
# user namespace holder and its namespace pool's keepers (stockade's
# isolate basens.rs and userpool.rs). Left running, they are no work.
IDLE_KEEPERS = {"stockade-userns", "stockade-nspool"}


def only_idle_keepers_left():
    """Whether every child we still have (as subreaper) is an idle keeper."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) != me or fields[0] == "Z":
            continue
        if name not in IDLE_KEEPERS or fields[0] != "S":
            return False
    return True


def settle(limit_s=5.0):
    """Waits, untimed, until every descendant the last run left behind has
    exited (we are their subreaper), so work deferred past one variant's
    exit never runs beside the next variant's timed run, where it would
    slow that one down instead of itself; idle keepers (IDLE_KEEPERS) are
    not waited for. Returns the seconds waited."""
    start = time.monotonic()
    polls = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no descendant left
        if pid == 0:
            if time.monotonic() - start > limit_s:
                break
            polls += 1
            if polls % 25 == 0 and only_idle_keepers_left():
                break
            time.sleep(0.0002)
    return time.monotonic() - start


def run_setup(variant, run_id):
    """Runs the untimed setup step; a failure here aborts the benchmark,
    because it means the plan itself is broken, not the sandbox."""
    setup = variant.get("setup")
    if setup:
        subprocess.run(expand(setup, run_id), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan")
    parser.add_argument("--out", required=True)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    with open(args.plan) as f:
        plan = json.load(f)

    variants = plan["variants"]
    if not variants:
        sys.exit(f"timer.py: the plan {args.plan} has no variants")
    results = {
        v["name"]: {"argv": v["argv"], "env": v.get("env", {}),
                    "every": v.get("every", 1),
                    "samples_ns": [], "settle_ns": [], "failures": 0, "first_error": None,
                    "skipped": None}
        for v in variants
    }
    run_id = 0

    # Warm-up: fills the page cache, creates state directories (podman's
    # storage, stockade's cached /etc) and finds peers that do not work
    # here at all, so they are skipped instead of failing every round.
    active = list(variants)
    for _ in range(plan.get("warmup", 3)):
        for v in list(active):
            run_id += 1
            run_setup(v, run_id)
            _, code, tail = run_once(expand(v["argv"], run_id), v.get("cwd"),
                                     env_of(v))
            if code != 0:
                results[v["name"]]["skipped"] = (
                    f"failed during warm-up with exit status {code}: {tail}")
                active.remove(v)
                print(f"  {v['name']}: skipped (warm-up failed, exit {code})",
                      file=sys.stderr)

    rounds = plan["rounds"]
    if plan.get("settle"):
        become_subreaper()
    started = time.monotonic()
    for r in range(rounds):
        # Rotate the starting variant each round: still strictly
        # interleaved, but no variant always runs right after the same
        # neighbour (e.g. after podman's teardown work in the kernel).
        order = active[r % len(active):] + active[:r % len(active)] if active else []
        for v in order:
            if r % v.get("every", 1) != 0:
                continue
            run_id += 1
            run_setup(v, run_id)
            elapsed, code, tail = run_once(expand(v["argv"], run_id),
                                           v.get("cwd"), env_of(v))
            waited = settle() if plan.get("settle") else 0.0
            res = results[v["name"]]
            if code == 0:
                res["samples_ns"].append(elapsed)
                res["settle_ns"].append(int(waited * 1e9))
            else:
                res["failures"] += 1
                res["first_error"] = res["first_error"] or (
                    f"exit status {code}: {tail}")
        if sys.stderr.isatty() or (r + 1) % max(1, rounds // 10) == 0:
            print(f"  {args.label} round {r + 1}/{rounds} "
                  f"({time.monotonic() - started:.0f}s)", file=sys.stderr)

    with open(args.out, "w") as f:
        json.dump({"label": args.label, "rounds": rounds,
                   "settle": bool(plan.get("settle")),
                   "warmup": plan.get("warmup", 3), "variants": results},
                  f, indent=1)


if __name__ == "__main__":
    main()
