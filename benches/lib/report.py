#!/usr/bin/env python3
"""Turns the timer's samples into benches/RESULTS.md and prints the tables.

Every successful measured run counts: nothing is trimmed or filtered, and
failed runs are listed next to the numbers. Percentiles use linear
interpolation between order statistics (the common "type 7" definition),
so with 100 runs p99 sits between the 99th and 100th slowest values.

Usage: report.py --meta META.json --cold COLD.json --workload WORK.json
                 [--daemon DAEMON.json] [--egress EGRESS.json]
                 --out RESULTS.md
"""

import argparse
import json
import statistics

from stats import percentile

# Targets from the issue "Benchmarks against peers".
TARGET_VS_BWRAP = 1.5      # stockade cold start <= 1.5 x bwrap
TARGET_VS_RUNC = 0.3       # stockade cold start <= 0.3 x runc
TARGET_VS_PODMAN = 30.0    # stockade cold start >= 30 x faster than podman
TARGET_OVERHEAD = 0.03     # workload inside stockade <= 3 % slower
# Targets from the issues "Benchmarks against peers" and "Sandbox manager"
# (the daemon, measured by daemon_bench.py).
TARGET_CYCLE_MS = 10.0     # create -> exec true -> destroy, p50
TARGET_EXEC_MS = 3.0       # exec true into a warm sandbox, p50
TARGET_PER_SECOND = 100.0  # sustained create+destroy per second, 2 cores
TARGET_DENSITY_MIB = 2.0   # host memory per idle sandbox
# Targets from the issues "Egress policy" and "Benchmarks" (item 5),
# measured by egress_bench.py.
TARGET_EGRESS_GBIT = 1.0          # bulk throughput through the stack
TARGET_EGRESS_VS_DIRECT = 0.5     # ... and at least half of direct
TARGET_EGRESS_CONNECT_MS = 1.0    # added per connection
TARGET_EGRESS_COLD_VS_NONE = 2.0  # allowlist cold start <= 2x --net none
TARGET_EGRESS_COLD_VS_BWRAP = 2.0  # ... and <= 2x bwrap --unshare-all

# Row order and the peers the ratios are taken against.
SYNC = "stockade, teardown waited for"
NOPOOL = "stockade, no namespace pool"
ROOTLESS, BWRAP_USER = "stockade, rootless", "bwrap, same user"
TARGET_ROOTLESS_VS_BWRAP = 1.2  # rootless cold start <= 1.2 x bwrap, same user
COLD_ORDER = ["host", "stockade", SYNC, NOPOOL, "bwrap", "runc", "podman",
              ROOTLESS, BWRAP_USER]
WORK_ORDER = ["host", "stockade", "bwrap"]



def first_errors(variants):
    """A line for each variant that failed somewhere, with its first error."""
    return [f"\nfirst error ({name}): {r['first_error']}\n"
            for name, r in variants.items() if r.get("first_error")]

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
    env = " ".join(f"{k}={val}" for k, val in v.get("env", {}).items())
    md = f"`{w(' '.join(([env] if env else []) + v['argv']))}`"
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
            "| median vs bwrap | median vs runc | p90 vs bwrap | p90 vs runc "
            "| after exit ms |")
    rows = [head, "|" + "---|" * 12]
    for name in ordered(results, COLD_ORDER):
        if name not in stats:
            rows.append(f"| {name} | 0 | - | skipped | | | | | | | | |")
            continue
        s = stats[name]
        b, r = stats.get("bwrap"), stats.get("runc")
        settle = results[name].get("settle_ns") or []
        after = (f"{statistics.median(settle) / ms:.2f}" if settle else "-")
        rows.append(
            f"| {name} | {s['n']} | {results[name]['failures']} "
            f"| {s['median'] / ms:.2f} | {s['p90'] / ms:.2f} "
            f"| {s['p99'] / ms:.2f} | {s['min'] / ms:.2f} "
            f"| {fmt_ratio(ratio(s['median'], b and b['median']))} "
            f"| {fmt_ratio(ratio(s['median'], r and r['median']))} "
            f"| {fmt_ratio(ratio(s['p90'], b and b['p90']))} "
            f"| {fmt_ratio(ratio(s['p90'], r and r['p90']))} | {after} |")
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
    rl, bu = cold.get(ROOTLESS), cold.get(BWRAP_USER)
    if rl or bu:
        r = ratio(rl and rl["median"], bu and bu["median"])
        rows.append(f"| rootless cold start <= {TARGET_ROOTLESS_VS_BWRAP}x "
                    f"bwrap as the same user "
                    f"| {fmt_ratio(r)} (median) "
                    f"| {met(None if r is None else r <= TARGET_ROOTLESS_VS_BWRAP)} |")
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
    SYNC: "the same sandbox, but `stockade run` waits for its own teardown "
          "(init's exit, cgroup and directory removal, gc) before exiting, "
          "as it did before the detached cleaner "
          "(the hidden `--wait-for-teardown`)",
    NOPOOL: "the same sandbox, but its user and network namespaces are "
            "made as it starts instead of taken ready from the pool "
            "(`STOCKADE_NS_POOL=0`)",
    ROOTLESS: "the `stockade` sandbox started by an ordinary user "
              "(`stockade-bench`, subordinate ids through newuidmap) "
              "through `setpriv`: no cgroup on this host, so memory polled, "
              "processes by RLIMIT_NPROC (docs/rootless.md)",
    BWRAP_USER: "the `bwrap` line run by the same user through `setpriv`",
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

PLACEHOLDERS_HEAD = """\
## Not measured in this run

These benchmarks were skipped (`--no-daemon`, `--no-egress`) or failed
before measuring; the sections stay here so the numbers land in the same
file when they run.

| benchmark | status |
|---|---|
"""

# Shown instead of the egress section when compare.sh ran without it.
EGRESS_PLACEHOLDERS = """\
| egress: throughput, connection latency and cold start with `--net allowlist` | not measured in this run (egress_bench.py did not run or failed) |
"""

# Shown instead of the daemon section when compare.sh ran without it.
DAEMON_PLACEHOLDERS = """\
| daemon: create -> exec -> destroy latency | not measured in this run (daemon_bench.py did not run or failed) |
| exec into a warm sandbox | not measured in this run |
| sandbox creates per second (sustained) | not measured in this run |
| density: memory per idle sandbox | not measured in this run |
"""


def met(ok):
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def f2(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def leak_text(lk):
    """One line saying what a leak check found."""
    if lk is None:
        return "not checked"
    def found(look):
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in look.items()
                 if v]
        return ", ".join(parts) or "nothing"
    if lk["clean"]:
        return (f"nothing left of {lk['checked_ids']} destroyed sandboxes "
                "(sandbox directories under the state dir's sandboxes/, "
                "their cgroups, shim/init processes of this binary, running "
                "in the API), checked right after the last destroy")
    text = f"right after the last destroy: {found(lk['right_after'])}"
    text += (f"; after {lk['settle_s']:.0f} s more: "
             f"{found(lk['after_settle'])}")
    return f"**leak**: {text} (of {lk['checked_ids']} destroyed sandboxes)"


def density_verdict(dn):
    """(ok, why): judged on the largest of the measures. MemAvailable counts
    only when the machine held still: when it did not come back to where it
    started after the sandboxes were destroyed by more than the target per
    sandbox (other tenants), or dropped below zero, it is left out and said
    so."""
    pm = dn["per_sandbox_mib"]
    noise = dn.get("mem_available_noise_mib_per_sandbox")
    measures = {"PSS + cgroup": pm["pss_plus_cgroup"]}
    if dn.get("pss_plus_kernel_mib") is not None:
        measures["PSS + kernel"] = dn["pss_plus_kernel_mib"]
    drop = pm["mem_available_drop"]
    if drop < 0 or (noise is not None and noise > TARGET_DENSITY_MIB):
        left_out = (f"MemAvailable left out: it moved {noise:.2f} MiB per "
                    "sandbox for other reasons during the measurement"
                    if noise is not None else "MemAvailable left out")
    else:
        measures["MemAvailable drop"] = drop
        left_out = None
    name = max(measures, key=measures.get)
    why = f"judged on the largest counted measure, {name}"
    if left_out:
        why += "; " + left_out
    return measures[name] <= TARGET_DENSITY_MIB, why


def daemon_section(dm, work_dir):
    """Markdown for daemon_bench.py's results, and the targets table."""
    cyc, ex, tp, dn = (dm.get("cycle"), dm.get("warm_exec"),
                       dm.get("throughput", []), dm.get("density"))
    targets = ["| target (issue) | measured | status |", "|---|---|---|"]
    if cyc:
        m = cyc["summary_ms"]["total"]["median"]
        targets.append(f"| create -> exec -> destroy p50 <= "
                       f"{TARGET_CYCLE_MS:.0f} ms | {f2(m)} ms "
                       f"(p90 {f2(cyc['summary_ms']['total']['p90'])}, p99 "
                       f"{f2(cyc['summary_ms']['total']['p99'])}) "
                       f"| {met(None if m is None else m <= TARGET_CYCLE_MS)} |")
    if ex:
        api = ex["variants"].get("stockade API", {}).get("summary_ms", {})
        m = api.get("median")
        targets.append(f"| exec into a warm sandbox p50 <= "
                       f"{TARGET_EXEC_MS:.0f} ms | {f2(m)} ms via the API "
                       f"(p90 {f2(api.get('p90'))}, p99 {f2(api.get('p99'))})"
                       f" | {met(None if m is None else m <= TARGET_EXEC_MS)} |")
    for t in tp:
        if t["clients"] == 2 or len(tp) == 1:
            targets.append(
                f"| >= {TARGET_PER_SECOND:.0f} creates+destroys/s on "
                f"{dm.get('nproc', '?')} cores | {t['per_second']:.0f}/s with "
                f"{t['clients']} client(s) | "
                f"{met(t['per_second'] >= TARGET_PER_SECOND)} |")
    if dn:
        pm = dn["per_sandbox_mib"]
        verdict, why = density_verdict(dn)
        targets.append(
            f"| <= {TARGET_DENSITY_MIB:.0f} MiB host memory per idle sandbox "
            f"| {pm['mem_available_drop']:.2f} MiB (MemAvailable drop), "
            f"{pm['pss_plus_cgroup']:.2f} MiB (PSS + cgroup), "
            f"{dn.get('pss_plus_kernel_mib', float('nan')):.2f} MiB "
            f"(PSS + kernel) | {met(verdict)} ({why}) |")

    L = ["## Daemon (`stockade serve`)", "",
         "`benches/lib/daemon_bench.py` starts `stockade serve --socket "
         "$WORK/daemon/s.sock --state-dir $WORK/daemon/state` (the same "
         "binary copy as above, default policy for every sandbox) and drives "
         "it over the unix socket with Python's http.client, one fresh "
         "connection per request (as stockade's own client does). Times are "
         "wall clock in the client, from sending the request to having read "
         "the whole answer. Every measured sample counts; failures are "
         "counted, not timed.", "",
         f"Load average: {dm.get('load_start', '?')} at the start, "
         f"{dm.get('load_end', '?')} at the end "
         f"({dm.get('elapsed_s', 0):.0f} s, {dm.get('created_total', 0)} "
         "sandboxes created in all). Its targets are in the Targets section "
         "at the top.", ""]
    if cyc:
        L += ["### create -> exec `true` -> destroy", "",
              f"{cyc['rounds']} cycles after {cyc['warmup']} warm-up cycles, "
              "one after another: `POST /v1/sandboxes` `{}`, `POST "
              "/v1/sandboxes/{id}/exec` `{\"cmd\": [\"true\"]}`, `DELETE "
              f"/v1/sandboxes/{{id}}`. Failed cycles: {cyc['failures']}"
              + (f" (first: {cyc['first_error']})" if cyc["first_error"]
                 else "") + f". Load average after: {cyc.get('load', '?')}.",
              "", "| phase | n | median ms | p90 ms | p99 ms | min ms | max ms |",
              "|---|---|---|---|---|---|---|"]
        for ph in ("create", "exec", "destroy", "total"):
            m = cyc["summary_ms"][ph]
            L.append(f"| {ph} | {m['n']} | {f2(m['median'])} | {f2(m['p90'])} "
                     f"| {f2(m['p99'])} | {f2(m['min'])} | {f2(m['max'])} |")
        L += ["", "`exec` here is the first exec into a sandbox created a "
              "moment before; the warm case is below.", ""]
    if ex:
        v = ex["variants"]
        base = v.get("stockade API", {}).get("summary_ms", {})
        L += ["### exec `true` into a warm sandbox, against `podman exec`", "",
              f"{ex['rounds']} interleaved rounds after {ex['warmup']} warm-up "
              "rounds, starting one variant later each round (as the timer "
              "does). Each side runs `true` in one long-lived sandbox / "
              "container. `podman exec` is a new CLI process per call, so "
              "`stockade exec` (the CLI, also a new process per call) is the "
              "like-for-like row; the API row is what an SDK client sees. "
              "`GET /healthz` is the floor of one API round trip from this "
              "client.", "",
              "| variant | n | failed | median ms | p90 ms | p99 ms | min ms "
              "| median vs podman | p90 vs podman |",
              "|---|---|---|---|---|---|---|---|---|"]
        pod = v.get("podman exec", {}).get("summary_ms", {})
        for name, r in v.items():
            m = r["summary_ms"]
            if r.get("skipped") or not m["n"]:
                L.append(f"| {name} | 0 | - | skipped | | | | | |")
                continue
            rm = ratio(m["median"], pod.get("median"))
            rp = ratio(m["p90"], pod.get("p90"))
            every = (f" (1 round in {r['every']})"
                     if r.get("every", 1) != 1 else "")
            L.append(f"| {name}{every} | {m['n']} | {r['failures']} "
                     f"| {f2(m['median'])} | {f2(m['p90'])} | {f2(m['p99'])} "
                     f"| {f2(m['min'])} | {fmt_ratio(rm, 3)} "
                     f"| {fmt_ratio(rp, 3)} |")
        for name in ("stockade exec (CLI)", "stockade API"):
            r = ratio(pod.get("median"), v.get(name, {}).get(
                "summary_ms", {}).get("median"))
            if r is not None:
                L += ["", f"`podman exec` median / {name} median: "
                      f"**{r:.0f}x** (p90: {fmt_ratio(ratio(pod.get('p90'), v[name]['summary_ms']['p90']), 0)})."]
        sd = ex.get("server_duration_ms", {})
        if sd and sd.get("n"):
            L += ["", f"Of the API's median {f2(base.get('median'))} ms, the "
                  "daemon reports the process itself took (its "
                  f"`duration_seconds`) median {f2(sd['median'], 3)} ms, "
                  f"p90 {f2(sd['p90'], 3)} ms; the rest is the HTTP round "
                  "trip, the daemon and the shim."]
        if ex.get("podman_argv"):
            L += ["", "podman's container: "
                  f"`{' '.join(ex['podman_argv']).replace(work_dir or chr(0), '$WORK')}`"
                  ", then `podman exec <name> true` each time. stockade's CLI: "
                  "`stockade exec --socket S ID -- true`."]
        L += ["", f"Load average after: {ex.get('load', '?')}.", ""]
    if tp:
        L += ["### Sustained create+destroy", "",
              "Each client loops `POST /v1/sandboxes` then `DELETE` for a fixed "
              "time; the rate counts completed pairs over the elapsed time "
              "(the last pair in flight included).", "",
              "| clients | seconds | completed | per second | failed "
              "| pair median ms | pair p90 ms | pair p99 ms | load after |",
              "|---|---|---|---|---|---|---|---|---|"]
        for t in tp:
            c = t["cycle_ms"]
            L.append(f"| {t['clients']} | {t['seconds']:.1f} | {t['done']} "
                     f"| {t['per_second']:.1f} | {t['failures']} "
                     f"| {f2(c['median'])} | {f2(c['p90'])} | {f2(c['p99'])} "
                     f"| {t['load']} |")
            if t["first_error"]:
                L.append(f"\nfirst error ({t['clients']} clients): "
                         f"{t['first_error']}\n")
        L += ["", "Leaks after these and all the earlier benchmarks: "
              + leak_text(dm.get("throughput_leaks")) + ".", ""]
    if dn:
        pm = dn["per_sandbox_mib"]
        md = dn.get("meminfo_delta_kib_per_sandbox", {})
        drift = None
        if dn.get("mem_available_after_destroy_kib") is not None:
            drift = (dn["mem_available_before_kib"]
                     - dn["mem_available_after_destroy_kib"]) / 1024
        L += ["### Density: host memory per idle sandbox", "",
              f"{dn['created']} idle sandboxes (created one after another in "
              f"{dn['create_seconds']:.1f} s, {dn['failures']} failed), "
              "measured 2 s after the last, then all destroyed in "
              f"{dn['destroy_seconds']:.1f} s ({dn['destroy_failures']} "
              f"failed). {dn['shim_processes']} shim and "
              f"{dn['init_processes']} init processes were found; "
              f"{dn['memory_cgroups_found']} memory cgroups. Load average "
              f"{dn['load_before']} before, {dn['load_after']} after.", "",
              "| measure (per sandbox) | MiB | what it is |", "|---|---|---|",
              f"| host MemAvailable drop | {pm['mem_available_drop']:.2f} "
              "| /proc/meminfo MemAvailable before minus after, over the "
              "sandbox count (median of 5 reads each side): everything, "
              "kernel included, but also whatever other tenants did meanwhile |",
              f"| PSS of the shims | {pm['pss_shim']:.2f} | /proc/PID/smaps_rollup |",
              f"| PSS of the sandboxes' init | {pm['pss_init']:.2f} | idem |",
              f"| memory cgroup usage | {pm['cgroup_usage']:.2f} | the sandbox's "
              "memory cgroup (usage_in_bytes / memory.current), of which "
              f"{pm['cgroup_anon']:.2f} anonymous |",
              f"| PSS + cgroup | {pm['pss_plus_cgroup']:.2f} | the three rows "
              "above added; counts init's anonymous pages charged to its "
              "cgroup twice |",
              f"| PSS + cgroup minus its anon | {pm['pss_plus_cgroup_non_anon']:.2f} "
              "| without that overlap |"]
        if dn.get("pss_plus_kernel_mib") is not None:
            L += [f"| PSS + kernel | {dn['pss_plus_kernel_mib']:.2f} | PSS of "
                  "shims and inits plus the host-wide growth of Slab, "
                  "KernelStack, PageTables and Percpu (/proc/meminfo): the "
                  "kernel's share (namespaces, mounts, cgroups, tasks), less "
                  "exposed to other tenants' user memory than MemAvailable |"]
        L += ["", "Target status: " + density_verdict(dn)[1] + ".", ""]
        if md:
            L += ["Where the MemAvailable drop went, host-wide /proc/meminfo "
                  "deltas in KiB per sandbox (noisy: other tenants): "
                  + ", ".join(f"{k} {v:+.0f}" for k, v in md.items()) + "."]
        if drift is not None:
            back = (dn["mem_available_after_destroy_kib"]
                    - dn["mem_available_after_kib"]) / 1024 / max(
                        dn["created"], 1)
            L += ["", "Cross-check from the other side: MemAvailable rose by "
                  f"{back:.2f} MiB per sandbox when they were destroyed; 2 s "
                  f"after that it was {abs(drift):.1f} MiB (in total) "
                  f"{'below' if drift > 0 else 'above'} where it started. "
                  "Both show the size of the noise from other tenants."]
        L += ["", "Leaks after destroying them: " + leak_text(dn.get("leaks"))
              + ".", ""]
    if dm.get("error"):
        L += [f"**daemon_bench.py failed**: {dm['error']}", ""]
    return "\n".join(L), "\n".join(targets)


def egress_section(eg, work_dir):
    """Markdown for egress_bench.py's results, and its targets table."""
    tp, lat, cold = eg.get("throughput"), eg.get("latency"), eg.get("cold")
    targets = ["| target (issue) | measured | status |", "|---|---|---|"]

    def w(text):
        return text.replace(work_dir, "$WORK") if work_dir else text

    L = ["## Egress (`--net allowlist`)", "",
         "`benches/lib/egress_bench.py` runs under `unshare --net`: a fresh "
         "network namespace with only `lo` (it refuses to run otherwise), "
         "and serves minimal HTTP from a second fresh namespace joined to "
         f"it by a veth pair, on {eg.get('address')} (a documentation "
         "address; the stockade supervisor refuses its own addresses, so "
         "the server is not on them). Nothing leaves those namespaces: the "
         "stockade supervisor, whose proxied upstream connections start in "
         "its own namespace, can reach only that server. Sandboxes use "
         "`--net allowlist "
         f"--allow-host {eg.get('name')} --map-host "
         f"{eg.get('name')}={eg.get('address')}`; `direct` is the same "
         "client in the test namespace without a sandbox. Direct and "
         "sandboxed runs alternate, the first side alternating per "
         "repetition.", "",
         f"Load average: {eg.get('load_start', '?')} at the start, "
         f"{eg.get('load_end', '?')} at the end "
         f"({eg.get('elapsed_s', 0):.0f} s).", ""]
    if tp:
        v = tp["variants"]
        d, s = v.get("direct", {}), v.get("stockade", {})
        ds, ss = d.get("summary_mbytes_per_s", {}), s.get("summary_mbytes_per_s", {})
        mib = tp["bytes"] / 2**20
        L += ["### Bulk throughput", "",
              f"`curl -o /dev/null` of {mib:.0f} MiB (`GET /bytes/N`, one "
              f"connection), {tp['reps']} repetitions per side after one "
              "warm-up each; a fresh sandbox per transfer, and the rate is "
              "curl's own (`size_download / time_total`), so sandbox "
              "start-up is not in it. CPU is user + system time of the "
              "side's whole process tree (curl alone; stockade's supervisor, "
              "init and curl) per GiB moved, median; the upstream server's "
              "is not counted on either side.", "",
              "| side | n | failed | median MB/s | median Gbit/s "
              "| p10 (slow) Gbit/s | min MB/s | max MB/s | CPU s per GiB |",
              "|---|---|---|---|---|---|---|---|---|"]
        for name, r in v.items():
            m = r["summary_mbytes_per_s"]
            if not m["n"]:
                L.append(f"| {name} | 0 | {r['failures']} | failed | | | | | |")
                continue
            slow = percentile(sorted(r["mbytes_per_s"]), 10)
            cpu = r.get("cpu_s_per_gib")
            L.append(f"| {name} | {m['n']} | {r['failures']} "
                     f"| {m['median']:.0f} | {m['median'] * 8 / 1000:.2f} "
                     f"| {slow * 8 / 1000:.2f} | {m['min']:.0f} "
                     f"| {m['max']:.0f} | {f2(cpu)} |")
        L += first_errors(v)
        rr = ratio(ss.get("median"), ds.get("median"))
        L += ["", f"stockade / direct (medians): **{fmt_ratio(rr)}**. "
              f"Load average after: {tp.get('load', '?')}.", ""]
        L += ["Commands:", ""] + [f"- {n}: `{w(' '.join(r['argv']))}`"
                                  for n, r in v.items()] + [""]
        g = None if ss.get("median") is None else ss["median"] * 8 / 1000
        targets.append(
            f"| egress throughput >= {TARGET_EGRESS_GBIT:g} Gbit/s "
            f"| {f2(g)} Gbit/s ({f2(ss.get('median'), 0)} MB/s, median) "
            f"| {met(None if g is None else g >= TARGET_EGRESS_GBIT)} |")
        targets.append(
            f"| egress throughput >= {TARGET_EGRESS_VS_DIRECT * 100:.0f} % "
            f"of direct | {'n/a' if rr is None else f'{rr * 100:.0f} %'} "
            f"(direct {f2(ds.get('median'), 0)} MB/s) "
            f"| {met(None if rr is None else rr >= TARGET_EGRESS_VS_DIRECT)} |")
    if lat:
        v = lat["variants"]
        L += ["### Connection latency", "",
              f"A Python client makes {lat['connects']} sequential "
              "connections, each `connect`, a tiny `GET "
              f"{lat['path']}` with `Host: {eg.get('name')}`, and reading "
              "the 2-byte answer to the server's close. It runs "
              f"{lat['reps']} times per side (after one warm-up each); the "
              "sandboxed side runs in ONE sandbox per repetition, so its "
              "start-up is not counted, and resolves the name once through "
              "stockade's DNS before the loop. Per-connection times from all "
              "repetitions are pooled. `connect()` alone means little "
              "through stockade: the userspace stack completes the "
              "handshake with the sandbox itself and opens the upstream "
              "connection only after checking the first bytes, so the whole "
              "exchange is the number that counts.", "",
              "| side | connections | failed | median ms | p90 ms | p99 ms "
              "| min ms | connect() median ms |",
              "|---|---|---|---|---|---|---|---|"]
        ms = 1e6
        for name, r in v.items():
            m, c = r["summary_total_ns"], r["summary_connect_ns"]
            if not m["n"]:
                L.append(f"| {name} | 0 | {r['failures']} | failed | | | | |")
                continue
            L.append(f"| {name} | {m['n']} | {r['failures']} "
                     f"| {m['median'] / ms:.3f} | {m['p90'] / ms:.3f} "
                     f"| {m['p99'] / ms:.3f} | {m['min'] / ms:.3f} "
                     f"| {c['median'] / ms:.3f} |")
        L += first_errors(v)
        dm_ = v.get("direct", {}).get("summary_total_ns", {}).get("median")
        sm_ = v.get("stockade", {}).get("summary_total_ns", {}).get("median")
        dp = v.get("direct", {}).get("summary_total_ns", {}).get("p90")
        sp = v.get("stockade", {}).get("summary_total_ns", {}).get("p90")
        add = None if dm_ is None or sm_ is None else (sm_ - dm_) / ms
        addp = None if dp is None or sp is None else (sp - dp) / ms
        rs = v.get("stockade", {}).get("summary_resolve_ns", {})
        L += ["", f"Added per connection (stockade median - direct median): "
              f"**{f2(add, 3)} ms** (p90 - p90: {f2(addp, 3)} ms). The one "
              "name lookup through stockade's DNS before the loop took "
              f"median {f2(rs.get('median') and rs['median'] / ms, 3)} ms. "
              f"Load average after: {lat.get('load', '?')}.", ""]
        targets.append(
            f"| egress latency added <= {TARGET_EGRESS_CONNECT_MS:g} ms per "
            f"connection | {f2(add, 3)} ms (medians; p90 {f2(addp, 3)} ms) "
            f"| {met(None if add is None else add <= TARGET_EGRESS_CONNECT_MS)} |")
    if cold:
        cv = cold["variants"]
        cm, cst = cold_table_egress(cv)
        L += ["### Cold start with egress", "",
              f"`/bin/true`, {cold['rounds']} interleaved rounds after "
              f"{cold['warmup']} warm-up rounds (timer.py, as the cold-start "
              "section above, but inside the test namespace). The allowlist "
              "sandbox gets its TUN device, and the supervisor starts its "
              "egress thread and stack; `true` sends nothing.", "",
              cm, "", "Commands:", ""]
        L += [f"- {n}: {show_command(r, work_dir)}" for n, r in cv.items()]
        L += ["", f"Load average after: {cold.get('load', '?')}.", ""]
        for line in skipped_lines(cv, []):
            L.append(line)
        a, n_, b = (cst.get("stockade --net allowlist"),
                    cst.get("stockade --net none"), cst.get("bwrap"))
        r1 = ratio(a and a["median"], n_ and n_["median"])
        r1p = ratio(a and a["p90"], n_ and n_["p90"])
        targets.append(
            f"| allowlist cold start <= {TARGET_EGRESS_COLD_VS_NONE:g}x "
            f"`--net none` | {fmt_ratio(r1)} (median; p90 {fmt_ratio(r1p)}) "
            f"| {met(None if r1 is None else r1 <= TARGET_EGRESS_COLD_VS_NONE)} |")
        r2 = ratio(a and a["median"], b and b["median"])
        r2p = ratio(a and a["p90"], b and b["p90"])
        targets.append(
            f"| allowlist cold start <= {TARGET_EGRESS_COLD_VS_BWRAP:g}x bwrap "
            f"`--unshare-all` | {fmt_ratio(r2)} (median; p90 {fmt_ratio(r2p)}) "
            f"| {met(None if r2 is None else r2 <= TARGET_EGRESS_COLD_VS_BWRAP)} |")
    if eg.get("error"):
        L += [f"**egress_bench.py failed**: {eg['error']}", ""]
    return "\n".join(L), "\n".join(targets)


def cold_table_egress(results):
    """Cold-start table for the egress variants, in ms, ratios against
    `--net none` and bwrap."""
    stats = {n: summarize(v) for n, v in results.items() if v["samples_ns"]}
    ms = 1e6
    rows = ["| variant | runs | failed | median ms | p90 ms | p99 ms | min ms "
            "| median vs --net none | median vs bwrap | p90 vs --net none |",
            "|" + "---|" * 10]
    base, bw = stats.get("stockade --net none"), stats.get("bwrap")
    for name in results:
        if name not in stats:
            rows.append(f"| {name} | 0 | - | skipped | | | | | | |")
            continue
        s = stats[name]
        rows.append(
            f"| {name} | {s['n']} | {results[name]['failures']} "
            f"| {s['median'] / ms:.2f} | {s['p90'] / ms:.2f} "
            f"| {s['p99'] / ms:.2f} | {s['min'] / ms:.2f} "
            f"| {fmt_ratio(ratio(s['median'], base and base['median']))} "
            f"| {fmt_ratio(ratio(s['median'], bw and bw['median']))} "
            f"| {fmt_ratio(ratio(s['p90'], base and base['p90']))} |")
    return "\n".join(rows), stats


def optimisations_section(cold_stats, v1_attach_md):
    """What each start-up optimisation bought, measured in this run where
    the harness can switch it off; the history is in OPTIMISATIONS.md."""
    L = ["## What each optimisation bought", "",
         "Measured in this run, each against the same binary with the "
         "optimisation switched off. Earlier steps, measured when they were "
         "made, are listed in `benches/OPTIMISATIONS.md`.", ""]
    st = cold_stats.get("stockade")

    def gain(title, what, off_variant, after):
        """One bullet: stockade against `off_variant`, the same binary with
        the optimisation switched off, in the same rounds."""
        off = cold_stats.get(off_variant)
        if not (st and off):
            return f"- {title}: not measured (a variant was skipped)."
        d = (off["median"] - st["median"]) / 1e6
        return (f"- **{title}** ({what}): median {off['median'] / 1e6:.2f} "
                f"-> {st['median'] / 1e6:.2f} ms, **{d:.2f} ms** less per "
                f"`--net none` start (cold-start table above). {after}")

    L.append(gain(
        "Teardown off the critical path",
        "a detached cleaner removes init, cgroup, network device and "
        "directory after `stockade run` has returned", SYNC,
        "With `--net allowlist` it also takes the TUN device's last close "
        "(10-15 ms of RCU waits) off the path: see the egress cold start "
        "below."))
    L.append(gain(
        "Namespace pool",
        "a ready user + network namespace pair, made by the cleaner of an "
        "earlier run, with its id maps written and loopback up; used by one "
        "sandbox only", NOPOOL,
        "The work moves after the run, into the cleaner (the \"after exit\" "
        "column: the timer waits for it, untimed, before the next run of any "
        "variant)."))
    if v1_attach_md:
        L += ["- **init joins its cgroup itself on cgroup v1** (no global "
              "threadgroup lock, so no RCU grace period): this host's cgroups "
              "no longer show the cost (see PROFILE.md), so "
              "`benches/cgroup-v1-attach.sh` measured it in a default Debian "
              "kernel under QEMU:", "", v1_attach_md.strip(), ""]
    else:
        L.append("- init joins its cgroup itself on cgroup v1: not measured "
                 "in this run (`benches/cgroup-v1-attach.sh` needs QEMU).")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--cold", required=True)
    ap.add_argument("--workload", required=True)
    ap.add_argument("--daemon", help="daemon_bench.py's JSON (optional)")
    ap.add_argument("--egress", help="egress_bench.py's JSON (optional)")
    ap.add_argument("--v1-attach",
                    help="cgroup-v1-attach.sh's Markdown output (optional)")
    ap.add_argument("--limits",
                    help="limits_bench.py's Markdown output (optional)")
    ap.add_argument("--images",
                    help="images_bench.py's Markdown output (optional)")
    ap.add_argument("--oci",
                    help="oci_bench.py's Markdown output (optional)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    meta = json.load(open(args.meta))
    cold = json.load(open(args.cold))
    work = json.load(open(args.workload))

    cold_md, cold_stats = cold_table(cold["variants"])
    work_md, work_stats = work_table(work["variants"])
    targets_md = targets_table(cold_stats, work_stats)

    machine = meta["machine"]
    work_dir = meta.get("work_dir", "")
    daemon_md = daemon_targets = None
    if args.daemon:
        try:
            dm = json.load(open(args.daemon))
            dm.setdefault("nproc", machine.get("nproc"))
            daemon_md, daemon_targets = daemon_section(dm, work_dir)
        except (OSError, ValueError, KeyError) as e:
            print(f"report.py: no daemon section: {e}")
    egress_md = egress_targets = None
    if args.egress:
        try:
            eg = json.load(open(args.egress))
            egress_md, egress_targets = egress_section(eg, work_dir)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"report.py: no egress section: {e}")
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
    ] + (["Daemon (details in its section below):", "", daemon_targets, ""]
         if daemon_targets else []) + (
        ["Egress (details in its section below):", "", egress_targets, ""]
        if egress_targets else []) + [
        "Ratios are of medians. Where stockade's start time goes, phase by "
        "phase: `PROFILE.md`.",
        "",
        "## Cold start: `/bin/true` in a fresh sandbox",
        "",
        f"{cold['rounds']} interleaved rounds after {cold['warmup']} warm-up "
        "rounds; each round runs every variant once, starting one variant "
        "later each round. Time is wall clock from spawning the command "
        "to reaping it. `host` is `/bin/true` without a sandbox: the "
        "harness's own floor (fork, exec, wait from Python). "
        + ("After every run the timer waits, untimed, until everything "
           "the run left running has exited (the timer is their subreaper), "
           "so what one variant does after its exit (stockade's detached "
           "cleaner, podman's cleanup) never runs beside the next variant's "
           "timed run; \"after exit\" is the median of that wait."
           if cold.get("settle") else
           "Runs follow each other without a pause: work a variant leaves "
           "running after its exit overlaps the next run."),
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
    v1_md = None
    if args.v1_attach:
        try:
            v1_md = open(args.v1_attach).read()
        except OSError as e:
            print(f"report.py: no cgroup v1 attach numbers: {e}")
    lines += ["", optimisations_section(cold_stats, v1_md)]
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
    if daemon_md:
        lines += ["", daemon_md]
    if egress_md:
        lines += ["", egress_md]
    limits_md = None
    if args.limits:
        try:
            limits_md = open(args.limits).read().strip()
            lines += ["", limits_md]
        except OSError as e:
            print(f"report.py: no limits section: {e}")
    if args.images:
        try:
            lines += ["", open(args.images).read().strip()]
        except OSError as e:
            print(f"report.py: no images section: {e}")
    if args.oci:
        try:
            lines += ["", open(args.oci).read().strip()]
        except OSError as e:
            print(f"report.py: no OCI runtime section: {e}")
    missing = ("" if daemon_md else DAEMON_PLACEHOLDERS) + \
        ("" if egress_md else EGRESS_PLACEHOLDERS)
    if missing:
        lines += ["", PLACEHOLDERS_HEAD + missing]
    else:
        lines += [""]
    lines += ["Raw samples (nanoseconds, in round order): "
              "`benches/raw/cold-start.json`, `benches/raw/workload.json`"
              + (", `benches/raw/daemon.json`" if daemon_md else "")
              + (", `benches/raw/egress.json`" if egress_md else "")
              + (", `benches/raw/limits.json`" if limits_md else "") + ".",
              ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))

    print("\nTargets\n" + targets_md)
    if daemon_targets:
        print(daemon_targets)
    print("\nCold start (ms)\n" + cold_md)
    print("\nWorkload (s)\n" + work_md)
    if daemon_md:
        print("\nDaemon\n" + daemon_md)
    if egress_targets:
        print("\nEgress targets\n" + egress_targets)
    if egress_md:
        print("\nEgress\n" + egress_md)
    if notes:
        print("\nNotes\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
