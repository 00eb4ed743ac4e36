#!/usr/bin/env python3
"""Turns the timer's samples into benches/RESULTS.md and prints the tables.

Every successful measured run counts: nothing is trimmed or filtered, and
failed runs are listed next to the numbers. Percentiles use linear
interpolation between order statistics (the common "type 7" definition),
so with 100 runs p99 sits between the 99th and 100th slowest values.

Usage: report.py --meta META.json --cold COLD.json --workload WORK.json
                 --out RESULTS.md
"""

import argparse
import json
import statistics

# Targets from the issue "Benchmarks against peers".
TARGET_VS_BWRAP = 1.5      # stockade cold start <= 1.5 x bwrap
TARGET_VS_RUNC = 0.3       # stockade cold start <= 0.3 x runc
TARGET_VS_PODMAN = 30.0    # stockade cold start >= 30 x faster than podman
TARGET_OVERHEAD = 0.03     # workload inside stockade <= 3 % slower

# Row order and the peers the ratios are taken against.
COLD_ORDER = ["host", "stockade", "bwrap", "runc", "podman"]
WORK_ORDER = ["host", "stockade", "bwrap"]


def percentile(sorted_xs, p):
    if not sorted_xs:
        return float("nan")
    k = (len(sorted_xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize(variant):
    xs = sorted(variant["samples_ns"])
    return {
        "n": len(xs),
        "median": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "min": xs[0] if xs else float("nan"),
        "mean": statistics.fmean(xs) if xs else float("nan"),
    }


def ratio(a, b):
    if not a or not b or a != a or b != b:
        return None
    return a / b


def fmt_ratio(r, digits=2):
    return "n/a" if r is None else f"{r:.{digits}f}x"


def show_command(v, work_dir):
    """A variant's command line as Markdown, with the scratch directory
    shown as $WORK so the text does not change from run to run."""
    def w(text):
        return text.replace(work_dir, "$WORK") if work_dir else text
    md = f"`{w(' '.join(v['argv']))}`"
    if v.get("cwd"):
        md += f" (in `{w(v['cwd'])}`)"
    return md


def ordered(results, order):
    names = [n for n in order if n in results]
    return names + [n for n in results if n not in names]


def skipped_lines(results, extra_notes):
    lines = []
    for name, v in results.items():
        if v.get("skipped"):
            lines.append(f"- **{name}** skipped: {v['skipped']}")
        if v.get("failures"):
            lines.append(f"- **{name}**: {v['failures']} measured run(s) "
                         f"failed and are not timed; first error: "
                         f"{v['first_error']}")
    lines += [f"- {n}" for n in extra_notes]
    return lines


def cold_table(results):
    """Markdown table of cold-start times in milliseconds."""
    stats = {n: summarize(v) for n, v in results.items() if v["samples_ns"]}
    ms = 1e6
    head = ("| sandbox | runs | failed | median ms | p90 ms | p99 ms | min ms "
            "| median vs bwrap | median vs runc | p90 vs bwrap | p90 vs runc |")
    rows = [head, "|" + "---|" * 11]
    for name in ordered(results, COLD_ORDER):
        if name not in stats:
            rows.append(f"| {name} | 0 | - | skipped | | | | | | | |")
            continue
        s = stats[name]
        b, r = stats.get("bwrap"), stats.get("runc")
        rows.append(
            f"| {name} | {s['n']} | {results[name]['failures']} "
            f"| {s['median'] / ms:.2f} | {s['p90'] / ms:.2f} "
            f"| {s['p99'] / ms:.2f} | {s['min'] / ms:.2f} "
            f"| {fmt_ratio(ratio(s['median'], b and b['median']))} "
            f"| {fmt_ratio(ratio(s['median'], r and r['median']))} "
            f"| {fmt_ratio(ratio(s['p90'], b and b['p90']))} "
            f"| {fmt_ratio(ratio(s['p90'], r and r['p90']))} |")
    return "\n".join(rows), stats


def paired_median_ratio(results, name, base):
    """Median over rounds of (name's time / base's time) in the same round.

    The timer records samples in round order, so the i-th sample of each
    variant comes from the same round; pairing cancels slow drift of the
    machine that a ratio of medians would still carry.
    """
    a, b = results[name]["samples_ns"], results[base]["samples_ns"]
    if (results[name]["failures"] or results[base]["failures"]
            or len(a) != len(b) or not a):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


def work_table(results):
    stats = {n: summarize(v) for n, v in results.items() if v["samples_ns"]}
    s_ = 1e9
    rows = ["| where | runs | failed | median s | p90 s | p99 s | min s "
            "| overhead vs host (medians) | overhead vs host (paired) |",
            "|" + "---|" * 9]
    host = stats.get("host")
    for name in ordered(results, WORK_ORDER):
        if name not in stats:
            rows.append(f"| {name} | 0 | - | skipped | | | | | |")
            continue
        s = stats[name]
        r = ratio(s["median"], host and host["median"])
        pr = (paired_median_ratio(results, name, "host")
              if "host" in stats else None)
        over = "n/a" if r is None else f"{(r - 1) * 100:+.1f} %"
        pover = "n/a" if pr is None else f"{(pr - 1) * 100:+.1f} %"
        rows.append(
            f"| {name} | {s['n']} | {results[name]['failures']} "
            f"| {s['median'] / s_:.3f} | {s['p90'] / s_:.3f} "
            f"| {s['p99'] / s_:.3f} | {s['min'] / s_:.3f} | {over} | {pover} |")
    return "\n".join(rows), stats


def targets_table(cold, work):
    def met(ok):
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    st = cold.get("stockade")
    rows = ["| target (issue) | measured | status |", "|---|---|---|"]
    b = cold.get("bwrap")
    r = ratio(st and st["median"], b and b["median"])
    rows.append(f"| cold start <= {TARGET_VS_BWRAP}x bwrap "
                f"| {fmt_ratio(r)} (median) "
                f"| {met(None if r is None else r <= TARGET_VS_BWRAP)} |")
    rc = cold.get("runc")
    r = ratio(st and st["median"], rc and rc["median"])
    rows.append(f"| cold start <= {TARGET_VS_RUNC}x runc "
                f"| {fmt_ratio(r)} (median) "
                f"| {met(None if r is None else r <= TARGET_VS_RUNC)} |")
    p = cold.get("podman")
    r = ratio(p and p["median"], st and st["median"])
    rows.append(f"| cold start >= {TARGET_VS_PODMAN:.0f}x faster than podman "
                f"| {fmt_ratio(r, 1)} faster (median) "
                f"| {met(None if r is None else r >= TARGET_VS_PODMAN)} |")
    h, s = work.get("host"), work.get("stockade")
    r = ratio(s and s["median"], h and h["median"])
    over = None if r is None else r - 1
    rows.append(f"| workload overhead <= {TARGET_OVERHEAD * 100:.0f} % "
                f"| {'n/a' if over is None else f'{over * 100:+.1f} %'} "
                f"(ratio of medians) "
                f"| {met(None if over is None else over <= TARGET_OVERHEAD)} |")
    return "\n".join(rows)


# What each side of the cold-start comparison does: the work is the same
# `/bin/true`, the isolation around it differs.
SETUPS = {
    "host": "no sandbox: the timer spawns `/bin/true` itself",
    "stockade": "defaults: user, mount, pid, ipc, uts, network and cgroup "
                "namespaces; cgroup limits (16 GiB memory, 4 CPUs, 4096 "
                "pids); seccomp, Landlock, no capabilities; tmpfs root with "
                "/usr read-only, generated /etc, /tmp, /dev, /proc, sysfs; a "
                "supervisor that watches time, memory, disk and processes "
                "and cleans up",
    "bwrap": "user, mount, pid, ipc, uts, network and cgroup namespaces "
             "(--unshare-all); /usr read-only, /proc, /dev, /tmp; no cgroup "
             "limits, no seccomp filter",
    "runc": "bundle from `runc spec`: read-only root with host /usr bound "
            "read-only; pid, ipc, uts, mount, network and cgroup namespaces "
            "(no user namespace); the same cgroup limits as stockade; runc's "
            "default capabilities, masked paths, /dev, /proc, /sys; no "
            "seccomp filter",
    "podman": "`podman run --rm` of the same root directory with /usr bound "
              "read-only, runtime runc, --network none, the same limits; "
              "podman's default seccomp profile, conmon, container storage "
              "and event log",
}

WORKLOAD = (
    "`make -j2` of a generated C project (`benches/lib/cproject.py`: 40 "
    "units of about 50 lines plus main.c, `gcc -O2 -pipe`, linked into one "
    "program), built from clean on the host, inside stockade (the project "
    "is its `--workspace`, owned by uid 1000) and inside bwrap (project "
    "bound at /workspace). Each side has its own identical copy. Overhead "
    "is the sandboxed median over the host median; the paired column is "
    "the median of the per-round ratios, which cancels slow drift of a "
    "shared machine.")

PLACEHOLDERS = """\
## Not measured yet

These targets need parts of stockade that do not exist yet. The sections
stay here so the numbers land in the same file when they do.

| benchmark | status |
|---|---|
| daemon: create -> exec -> destroy latency | not measured yet: needs the daemon (`stockade serve`) |
| exec into a warm sandbox | not measured yet: needs the daemon |
| sandbox creates per second (sustained) | not measured yet: needs the daemon |
| density: memory per idle sandbox | not measured yet: needs the daemon (long-lived sandboxes) |
| egress throughput through the allowlist proxy | not measured yet: needs the egress layer (`--net allowlist`) |
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--cold", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    meta = json.load(open(args.meta))
    cold = json.load(open(args.cold))
    work = json.load(open(args.workload))

    cold_md, cold_stats = cold_table(cold["variants"])
    work_md, work_stats = work_table(work["variants"])
    targets_md = targets_table(cold_stats, work_stats)

    machine = meta["machine"]
    lines = [
        "# stockade vs peers: results",
        "",
        f"Generated by `benches/compare.sh` on {meta['date']}. "
        "Re-run it to refresh this file; do not edit the numbers by hand.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']} ({machine['nproc']} cores online)",
        f"- memory: {machine['memory']}",
        f"- kernel: {machine['kernel']}; {machine['os']}",
        f"- cgroups: {machine['cgroups']}",
        f"- load average before / after: {meta['load_before']} / "
        f"{meta['load_after']} (a shared machine: other tenants add noise)",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in meta["versions"].items()]
    lines += [
        "",
        "## Targets",
        "",
        targets_md,
        "",
        "Ratios are of medians. Where stockade's start time goes, phase by "
        "phase: `PROFILE.md`.",
        "",
        "## Cold start: `/bin/true` in a fresh sandbox",
        "",
        f"{cold['rounds']} interleaved rounds after {cold['warmup']} warm-up "
        "rounds; each round runs every variant once, starting one variant "
        "later each round. Time is wall clock from spawning the command "
        "to reaping it. `host` is `/bin/true` without a sandbox: the "
        "harness's own floor (fork, exec, wait from Python).",
        "",
        cold_md,
        "",
        "Commands:",
        "",
    ]
    work_dir = meta.get("work_dir", "")
    lines += [f"- {n}: {show_command(v, work_dir)}"
              for n, v in cold["variants"].items()]
    lines += ["", "`$WORK` is the script's scratch directory; `{run}` is "
              "the run's number (runc needs a fresh container name)."]
    lines += ["", "What each side does (the work is the same `/bin/true`; "
              "the isolation differs):", ""]
    lines += [f"- {n}: {SETUPS.get(n, '')}" for n in cold["variants"]]
    lines += [
        "",
        "## Workload overhead: building a C project",
        "",
        WORKLOAD +
        f" {work['rounds']} interleaved rounds after {work['warmup']} "
        "warm-up rounds; `make clean` runs untimed before each build.",
        "",
        work_md,
        "",
        "Commands:",
        "",
    ]
    lines += [f"- {n}: {show_command(v, work_dir)}"
              for n, v in work["variants"].items()]
    notes = skipped_lines(cold["variants"], []) + \
        skipped_lines(work["variants"], meta.get("notes", []))
    lines += ["", "## Skipped, failed and notes", ""]
    lines += notes or ["- nothing skipped, no run failed"]
    lines += ["", PLACEHOLDERS]
    lines += ["Raw samples (nanoseconds, in round order): "
              "`benches/raw/cold-start.json`, `benches/raw/workload.json`.",
              ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))

    print("\nTargets\n" + targets_md)
    print("\nCold start (ms)\n" + cold_md)
    print("\nWorkload (s)\n" + work_md)
    if notes:
        print("\nNotes\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
