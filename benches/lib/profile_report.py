#!/usr/bin/env python3
"""Writes benches/PROFILE.md: where `stockade run -- /bin/true` spends its
time, from artefacts that compare.sh collected.

Four views, because each one alone misleads:

1. Phase timeline (wall clock). `perf record` of a few kernel tracepoints
   (exec, exit, clone, mkdir, mount, pivot_root, cgroup mkdir/attach/rmdir)
   splits each start into phases. Tracepoints do not stop the process the
   way ptrace (strace) does, so the phases keep their real proportions;
   this is the only view that shows *waiting* (for the kernel, or for the
   other process), which a CPU profile cannot see.
2. cgroup attach probe: the latency of moving one process into a cgroup
   when the cgroup lock was idle and when it was just used.
3. CPU profile. `perf record` samples on-CPU stacks (kernel and user, DWARF
   unwinding) over many starts; each sample is put in one kernel activity
   (namespace creation, cgroup mkdir, mounts, ...) and, separately, charged
   to the innermost stockade function on its stack.
4. System call totals. `strace -c` over several starts: calls, errors, the
   system time and the wall time spent in each system call.

Usage: profile_report.py --timeline-events   (prints the tracepoints to record)
       profile_report.py [--timeline PERF_SCRIPT] [--probe PROBE.json]
                  --strace-sys F... --strace-wall F...
                  [--perf-script FILE --perf-freq HZ --perf-runs N]
                  [--perf-stat FILE] [--perf-note TEXT]
                  --untraced-ms MS --date DATE --out PROFILE.md
"""

import argparse
import collections
import json
import re
import sys

from cpu_profile import cpu_section
from timeline import TIMELINE_EVENTS, timeline_section


def parse_strace_c(path):
    """Rows of `strace -c` output: name -> (seconds, calls, errors)."""
    out = {}
    for line in open(path, errors="replace"):
        parts = line.split()
        if len(parts) < 5 or not re.match(r"^\d+\.\d+$", parts[0]):
            continue
        name = parts[-1]
        if name == "total":
            continue
        secs, calls = float(parts[1]), int(parts[3])
        errors = int(parts[4]) if len(parts) == 6 else 0
        out[name] = (secs, calls, errors)
    return out


def strace_section(sys_paths, wall_paths):
    sys_tot = collections.defaultdict(lambda: [0.0, 0, 0])
    wall_tot = collections.defaultdict(float)
    for p in sys_paths:
        for name, (s, c, e) in parse_strace_c(p).items():
            sys_tot[name][0] += s
            sys_tot[name][1] += c
            sys_tot[name][2] += e
    for p in wall_paths:
        for name, (s, _, _) in parse_strace_c(p).items():
            wall_tot[name] += s
    runs = max(len(sys_paths), 1)
    wruns = max(len(wall_paths), 1)
    waits = {"wait4", "poll", "ppoll", "rt_sigtimedwait", "recvmsg", "read",
             "epoll_wait", "waitid"}
    names = sorted(set(sys_tot) | set(wall_tot),
                   key=lambda n: wall_tot.get(n, 0.0), reverse=True)
    rows = ["| system call | calls per start | errors | wall ms per start "
            "| system ms per start | note |", "|---|---|---|---|---|---|"]
    for name in names[:20]:
        s, c, e = sys_tot.get(name, (0.0, 0, 0))
        note = ("mostly waiting for the other process" if name in waits else
                "includes init's writes to the v1 tasks files (cgroup join)"
                if name == "write" else "")
        rows.append(f"| {name} | {c / runs:.0f} | {e / runs:.0f} "
                    f"| {wall_tot.get(name, 0.0) * 1000 / wruns:.2f} "
                    f"| {s * 1000 / runs:.2f} | {note} |")
    total_calls = sum(v[1] for v in sys_tot.values()) / runs
    head = (f"`strace -c -f` over {runs} starts (system time) and "
            f"`strace -c -w -f` over {wruns} (wall time per call); "
            f"{total_calls:.0f} system calls per start in all. Top 20 by "
            "wall time. strace slows every call, so read the ranking, not "
            "the absolute numbers.")
    return head + "\n\n" + "\n".join(rows)


def probe_section(path):
    """Markdown for the cgroup attach probe, and the headline sentence."""
    p = json.load(open(path))
    if "error" in p:
        return f"Not measured: {p['error']}.", None
    idle, hot = p["idle"], p["back-to-back"]
    md = "\n".join([
        f"One process moved into a scratch group of the {p['hierarchy']} "
        f"hierarchy, {idle['moves']} times each way "
        "(`benches/lib/cgroup_attach_probe.py`):",
        "",
        "| case | median ms | min ms | max ms |",
        "|---|---|---|---|",
        f"| idle: 200 ms of quiet before each move | {idle['median_ms']:.2f} "
        f"| {idle['min_ms']:.2f} | {idle['max_ms']:.2f} |",
        f"| back-to-back moves | {hot['median_ms']:.3f} "
        f"| {hot['min_ms']:.3f} | {hot['max_ms']:.3f} |",
        "",
        "Moving a task between cgroups takes the kernel's "
        "cgroup_threadgroup_rwsem for writing. When nobody wrote it "
        "recently, the writer first waits for an RCU grace period; writes "
        "soon after another skip that wait. A sandbox started on a quiet "
        "machine therefore pays the grace period once, on the first "
        "`cgroup.procs` write (the later hierarchies are fast). stockade no "
        "longer moves init that way: on v1 init moves itself, writing `0` "
        "to each hierarchy's `tasks` file, which the kernel does without "
        "that lock (on v2 init is cloned into its group). The probe shows "
        "what the old way cost on this host; `benches/cgroup-v1-attach.sh` "
        "compares both ways on a default kernel.",
    ])
    if idle["median_ms"] < 1.0:
        # No grace period even when idle: the kernel runs the lock in
        # "favordynmods" mode (a cgroup mount option, the
        # cgroup_favordynmods= boot parameter or CONFIG_CGROUP_FAVOR_DYNMODS;
        # once on, it stays on until reboot).
        md += ("\n\n**On this host the idle case is fast too**: the lock is "
               "in favordynmods mode (a cgroup mount option, the "
               "`cgroup_favordynmods=` boot parameter or "
               "CONFIG_CGROUP_FAVOR_DYNMODS; once switched on it stays on "
               "until reboot), so moving a task never waits for a grace "
               "period. Numbers from this host do not show the attach cost "
               "that a default host has.")
        line = (f"**Moving a process into a cgroup** is cheap on this host "
                f"({idle['median_ms']:.2f} ms even after idle): its cgroup "
                "lock is in favordynmods mode, unlike a default host (where "
                "stockade's init avoids the cost by joining itself).")
    else:
        line = (f"**Moving a process into a cgroup** after the cgroup lock "
                f"was idle takes {idle['median_ms']:.1f} ms (median of the "
                f"probe) against {hot['median_ms']:.2f} ms right after another "
                "move; stockade's init joins itself instead, without that "
                "lock.")
    return md, line


def main():
    if sys.argv[1:] == ["--timeline-events"]:
        print(",".join(TIMELINE_EVENTS))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeline")
    ap.add_argument("--probe")
    ap.add_argument("--strace-sys", nargs="+", required=True)
    ap.add_argument("--strace-wall", nargs="+", required=True)
    ap.add_argument("--perf-script")
    ap.add_argument("--perf-freq", type=int, default=5000)
    ap.add_argument("--perf-runs", type=int, default=1)
    ap.add_argument("--perf-stat")
    ap.add_argument("--perf-note", default="perf is not installed")
    ap.add_argument("--untraced-ms", type=float, required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    missing = f"Not measured: {a.perf_note}."
    tl_md, tl_ranked = (timeline_section(a.timeline, a.untraced_ms)
                        if a.timeline else (missing, []))
    probe_md, probe_line = (probe_section(a.probe) if a.probe
                            else ("Not measured.", None))
    cpu_md, cpu_ranked = (cpu_section(a.perf_script, a.perf_freq, a.perf_runs)
                          if a.perf_script else (missing, []))
    sc_md = strace_section(a.strace_sys, a.strace_wall)

    top = []
    if tl_ranked:
        top += ["Wall clock, by phase (timeline below):", ""]
        for med, label, worst in tl_ranked[:5]:
            top.append(f"- **{label}**: {med:.2f} ms median "
                       f"(worst {worst:.2f} ms)")
        top.append("")
    if probe_line:
        top += [probe_line, ""]
    if cpu_ranked:
        top += ["CPU, by kernel activity (CPU profile below):", ""]
        for ms, label in cpu_ranked[:6]:
            top.append(f"- **{label}**: {ms:.2f} ms per start")
        top.append("")

    doc = [
        "# Profile of `stockade run -- /bin/true`",
        "",
        f"Generated by `benches/compare.sh` on {a.date}, with the same binary "
        "and machine as `RESULTS.md`. Re-run the script to refresh it.",
        "",
        "## What costs the most",
        "",
        *top,
        "## Phase timeline (wall clock)",
        "",
        tl_md,
        "",
        "## cgroup attach latency",
        "",
        probe_md,
        "",
        "## CPU profile (perf record, DWARF stacks)",
        "",
        cpu_md,
        "",
        "## System calls (strace -c)",
        "",
        sc_md,
        "",
    ]
    if a.perf_stat:
        doc += ["## perf stat", "",
                "20 starts back to back (`perf stat -r 20`); task-clock is "
                "the CPU time of all processes of a start, elapsed its wall "
                "time.", "", "```",
                open(a.perf_stat, errors="replace").read().strip(), "```", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(doc))
    print("\n".join(top))


if __name__ == "__main__":
    main()
