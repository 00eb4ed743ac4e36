#!/usr/bin/env python3
"""A/B comparison of stockade binaries, the way benches/OPTIMISATIONS.md
measures each change.

    benches/ab.py old=/path/to/stockade-before new=target/x86_64-unknown-linux-gnu/release/stockade
    benches/ab.py --warm-exec old=... new=...

Cold start (default): `stockade run -- /bin/true` for each binary and the
brief's `bwrap --unshare-all` command, all in the same rounds. Two things
make the comparison honest on a small, shared machine:

- the runs go through compare.sh's own timer (lib/timer.py), which
  rotates the order of the variants every round. With a fixed order, the variant that ran right after bwrap came out
  0.1-0.35 ms slower than an identical binary later in the round;
- every binary is run from a fresh copy made just before the rounds. Two
  copies of one binary made at different times differed by up to 0.36 ms;
- after every run the timer waits, untimed, until what the run left
  running (stockade's detached cleaner) has exited, so its work (teardown, namespace pool refill) never
  runs beside the next variant; "after exit" is that wait.

Give the same binary twice under two names to see how far apart equal
things come out on the machine that day.

--user NAME (cold start only): every variant, bwrap included, is run by
that ordinary user through setpriv, as compare.sh's rootless rows are
(`stockade, rootless` against `bwrap, same user`); the stockade variants
share a state directory the user owns.

--warm-exec: for each binary a fresh `stockade serve`, one sandbox, then
`exec true` through the API, in alternating rounds (the order flips every
round). Every sample counts; the medians of each round are printed too.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "lib"))

from stats import loadavg, percentile  # noqa: E402

# The brief's bubblewrap command line (compare.sh's bwrap_base), for /bin/true.
BWRAP = ["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"]


def parse_variants(specs):
    out = []
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep or not name or not path:
            sys.exit(f"ab.py: expected NAME=BINARY, got {s!r}")
        if not os.access(path, os.X_OK):
            sys.exit(f"ab.py: {path} is not an executable file")
        if name == "bwrap" or name in (n for n, _ in out):
            sys.exit(f"ab.py: the name {name!r} is taken")
        out.append((name, path))
    if not out:
        sys.exit("ab.py: give at least one NAME=BINARY")
    return out


def fresh_copies(variants, work):
    copies = []
    for name, path in variants:
        dst = os.path.join(work, name)
        shutil.copy2(path, dst)
        copies.append((name, dst))
    return copies


def summary(samples):
    s = sorted(samples)
    return statistics.median(s), percentile(s, 90)


def cold_start(variants, rounds, warmup, work, user=None):
    """Through compare.sh's own interleaved timer (lib/timer.py), which
    rotates the starting variant every round."""
    as_user, env = [], []
    if user:
        import pwd
        pw = pwd.getpwnam(user)
        state = os.path.join(work, "state")
        os.mkdir(state)
        os.chown(state, pw.pw_uid, pw.pw_gid)
        as_user = ["setpriv", "--reuid", user, "--regid", user, "--init-groups",
                   "--reset-env"]
        env = ["env", f"STOCKADE_STATE_DIR={state}"]
    runs = [{"name": "bwrap", "argv": as_user + BWRAP}] if shutil.which("bwrap") else []
    runs += [{"name": name, "argv": as_user + env + [path, "run", "--", "/bin/true"]}
             for name, path in variants]
    plan = os.path.join(work, "plan.json")
    out = os.path.join(work, "samples.json")
    with open(plan, "w") as f:
        # Untimed wait for each run's detached cleaner (teardown, pool
        # refill) before the next run, as compare.sh does.
        json.dump({"warmup": warmup, "rounds": rounds, "variants": runs,
                   "settle": True}, f)
    subprocess.run([sys.executable, os.path.join(HERE, "lib", "timer.py"),
                    plan, "--out", out, "--label", "ab"], check=True)
    with open(out) as f:
        results = json.load(f)["variants"]
    ms, after = {}, {}
    for name, r in results.items():
        after[name] = statistics.median(r["settle_ns"]) / 1e6 if r.get("settle_ns") else 0.0
        if r["skipped"] or r["failures"]:
            print(f"{name}: {r['skipped'] or ''} {r['failures']} failed runs "
                  f"({r['first_error']})")
        if r["samples_ns"]:
            ms[name] = [ns / 1e6 for ns in r["samples_ns"]]
    base = statistics.median(ms["bwrap"]) if "bwrap" in ms else None
    print(f"cold start, {rounds} rounds, order rotated each round")
    print("| variant | median ms | p90 ms | vs bwrap | after exit ms |")
    print("|---|---|---|---|---|")
    for name, xs in ms.items():
        med, p90 = summary(xs)
        ratio = f"{med / base:.2f}x" if base else "-"
        print(f"| {name} | {med:.2f} | {p90:.2f} | {ratio} | {after[name]:.2f} |")


def warm_exec(variants, rounds, per_round, work):
    from daemon_bench import Daemon
    samples = {name: [] for name, _ in variants}
    medians = {name: [] for name, _ in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, path in order:
            d = Daemon(path, os.path.join(work, f"daemon-{name}"))
            d.start()
            try:
                sid = d.create()
                xs = []
                for i in range(per_round + 20):
                    t = time.perf_counter_ns()
                    d.api.exec_true(sid)
                    if i >= 20:
                        xs.append((time.perf_counter_ns() - t) / 1e6)
            finally:
                d.stop()
            samples[name] += xs
            medians[name].append(statistics.median(xs))
    print(f"exec true into a warm sandbox, {rounds} rounds of {per_round}, "
          "a fresh daemon per round, order alternating")
    print("| variant | median ms | p90 ms | round medians |")
    print("|---|---|---|---|")
    for name, xs in samples.items():
        med, p90 = summary(xs)
        rs = ", ".join(f"{m:.2f}" for m in medians[name])
        print(f"| {name} | {med:.2f} | {p90:.2f} | {rs} |")


def main():
    ap = argparse.ArgumentParser(
        description="A/B of stockade binaries: cold start (default) or warm exec.")
    ap.add_argument("variants", nargs="+", metavar="NAME=BINARY")
    ap.add_argument("--warm-exec", action="store_true",
                    help="exec into a running sandbox through the daemon instead")
    ap.add_argument("--rounds", type=int, default=None,
                    help="cold start: rounds (default 200); warm exec: rounds (default 4)")
    ap.add_argument("--warmup", type=int, default=5, help="cold start: unmeasured rounds")
    ap.add_argument("--per-round", type=int, default=300,
                    help="warm exec: measured execs per round (default 300)")
    ap.add_argument("--user", default=None,
                    help="cold start: run every variant as this ordinary user (rootless)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("ab.py: run as root (stockade run and serve need it)")
    variants = parse_variants(args.variants)
    with tempfile.TemporaryDirectory(prefix="stockade-ab-") as work:
        # The sandboxes' own ids must traverse it to reach their state
        # directories (mkdtemp makes it 0700).
        os.chmod(work, 0o711)
        copies = fresh_copies(variants, work)
        if args.user:
            for _, path in copies:
                os.chmod(path, 0o755)
        print(f"load average: {loadavg()}")
        if args.warm_exec:
            warm_exec(copies, args.rounds or 4, args.per_round, work)
        else:
            cold_start(copies, args.rounds or 200, args.warmup, work, args.user)
        print(f"load average: {loadavg()}")


if __name__ == "__main__":
    main()
