"""Phase timeline of `stockade run` from kernel tracepoints.

compare.sh records TIMELINE_EVENTS with `perf record -e` over a few spaced
starts and dumps them with `perf script -F pid,time,event,trace`. Each
start is cut at marker events (its exec, the first cgroup mkdir, the clone
of init, init's first mount, pivot_root, the workload's exec, ...) into
phases. Tracepoints do not stop the traced process the way ptrace does, so
the phases keep their real proportions; this is the view that shows
waiting, which a CPU profile cannot.
"""

import collections
import re
import statistics

EVENT = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s+(\S+):\s?(.*)$")

# The tracepoints compare.sh records for the timeline (perf record -e).
TIMELINE_EVENTS = [
    "sched:sched_process_exec", "sched:sched_process_exit",
    "syscalls:sys_enter_statfs", "syscalls:sys_enter_mkdir",
    "cgroup:cgroup_mkdir", "syscalls:sys_enter_clone",
    "syscalls:sys_exit_clone", "syscalls:sys_enter_clone3",
    "syscalls:sys_exit_clone3", "syscalls:sys_enter_write",
    "cgroup:cgroup_attach_task", "syscalls:sys_enter_mount",
    "syscalls:sys_enter_pivot_root", "syscalls:sys_exit_umount",
    "syscalls:sys_enter_seccomp", "syscalls:sys_exit_wait4",
    "cgroup:cgroup_rmdir",
]

# Phase boundaries, in the order they happen, and the phase that starts at
# each one: (marker, label, what happens until the next marker).
MARKERS = [
    ("start", "exec + start-up", "exec of the (static) binary, libc "
     "start-up (CPU feature probing, relocation), "
     "Rust runtime, argument parsing, opening the state directory"),
    ("detect", "cgroup detection", "statfs and /proc/self/mountinfo to "
     "find the hierarchies (gc of older leftovers runs in the detached "
     "cleaner, after the run)"),
    ("sandbox_dir", "prepare", "sandbox directory and lock, scratch "
     "workspace and home, check of the cached /etc, seccomp program "
     "compiled"),
    ("cgroup_mkdir", "cgroup create + limits", "mkdir in each v1 hierarchy, "
     "limit files written"),
    ("clone", "clone into namespaces", "clone(NEWUSER|NEWNS|NEWPID|NEWIPC|"
     "NEWUTS|NEWNET): the kernel builds the namespaces"),
    ("clone_done", "id maps", "uid_map and gid_map of init written (init "
     "joins its cgroup meanwhile)"),
    ("attach", "cgroup join", "v1: init writes 0 to each hierarchy's tasks "
     "file, moving itself without the global threadgroup lock"),
    ("attach_done", "go-ahead to init", "go-ahead sent, init wakes up, "
     "becomes root in its namespace"),
    ("mount", "rootfs build", "init: tmpfs root, binds of /usr, /etc, "
     "workspace, home; /tmp, /proc, /dev nodes, devpts, sysfs"),
    ("pivot", "pivot_root + detach old root", "pivot_root, then "
     "umount2(MNT_DETACH) of the old root: the copy of every host mount "
     "that the new mount namespace started with"),
    ("old_root_detached", "host name, loopback, spawn", "sethostname, "
     "loopback up, new session; the workload's exec arguments and Landlock "
     "ruleset built; clone(CLONE_VM|CLONE_VFORK) of the workload"),
    ("workload_fork", "workload: ids, Landlock, capabilities", "in the "
     "workload: signals reset, fds closed, uid/gid set, Landlock ruleset "
     "applied, capabilities dropped, no_new_privs"),
    ("workload_seccomp", "seccomp + execve", "seccomp filters loaded, "
     "execve of the command"),
    ("workload_exec", "workload (/bin/true)", "the command itself: exec, "
     "dynamic linking, exit"),
    ("workload_exit", "status, usage, hand-off, exit", "init reports the "
     "status; the supervisor kills init, reads the final usage, writes "
     "the report, starts the detached cleaner that tears the sandbox down "
     "(clone with CLONE_VM: no page-table copy) and exits (when it "
     "waits for the teardown instead: init's exit and reap, then the "
     "phases below)"),
    ("reaped", "stats + cgroup removal", "usage read from the cgroups, "
     "kill, rmdir in each hierarchy"),
    ("cgroups_removed", "state cleanup + exit", "sandbox directory removed, "
     "process exit"),
    ("end", None, None),
]


# Teardown steps the supervisor takes only when it waits for the teardown
# itself; otherwise a detached cleaner does them after the run.
SUPERVISOR_TEARDOWN = {"reaped", "cgroups_removed"}


def parse_events(path):
    """perf script lines (-F pid,time,event,trace) -> list of events."""
    out = []
    for line in open(path, errors="replace"):
        m = EVENT.match(line)
        if m:
            out.append({"pid": int(m.group(1)), "t": float(m.group(2)),
                        "ev": m.group(3), "args": m.group(4)})
    return out


def split_runs(events):
    """One list of events per `stockade run`, from its exec to its exit."""
    runs, cur, sup = [], None, None
    for e in events:
        if (e["ev"] == "sched:sched_process_exec"
                and re.search(r"filename=\S*/stockade\b", e["args"])):
            cur, sup = [], e["pid"]
        if cur is None:
            continue
        cur.append(e)
        if e["ev"] == "sched:sched_process_exit" and e["pid"] == sup:
            runs.append(cur)
            cur = None
    return runs


def hexval(s):
    try:
        return int(s.strip(), 16)
    except ValueError:
        return None


def run_markers(ev):
    """Marker name -> time (seconds) for one run; absent when not seen."""
    sup = ev[0]["pid"]
    m = {"start": ev[0]["t"]}

    def first(pred, after=0.0):
        return next((e for e in ev if e["t"] >= after and pred(e)), None)

    def put(name, e):
        if e is not None:
            m[name] = e["t"]

    put("detect", first(lambda e: e["pid"] == sup
                        and e["ev"] == "syscalls:sys_enter_statfs"))
    put("sandbox_dir", first(lambda e: e["pid"] == sup
                             and e["ev"] == "syscalls:sys_enter_mkdir"))
    cgmk = first(lambda e: e["pid"] == sup and e["ev"] == "cgroup:cgroup_mkdir")
    if cgmk:
        before = [e for e in ev if e["pid"] == sup and e["t"] <= cgmk["t"]
                  and e["ev"] == "syscalls:sys_enter_mkdir"]
        put("cgroup_mkdir", before[-1] if before else cgmk)
    clone = first(lambda e: e["pid"] == sup and e["ev"] in (
        "syscalls:sys_enter_clone", "syscalls:sys_enter_clone3"),
        m.get("cgroup_mkdir", 0.0))
    put("clone", clone)
    init = None
    if clone:
        done = first(lambda e: e["pid"] == sup and e["ev"] in (
            "syscalls:sys_exit_clone", "syscalls:sys_exit_clone3"), clone["t"])
        put("clone_done", done)
        init = hexval(done["args"]) if done else None
    if init:
        mount = first(lambda e: e["pid"] == init
                      and e["ev"] == "syscalls:sys_enter_mount")
        put("mount", mount)
        attaches = [e for e in ev if e["ev"] == "cgroup:cgroup_attach_task"
                    and f"pid={init} " in e["args"] + " "
                    and (not mount or e["t"] <= mount["t"])]
        if attaches:
            a0 = attaches[0]
            writes = [e for e in ev if e["pid"] == a0["pid"] and e["t"] <= a0["t"]
                      and e["ev"] == "syscalls:sys_enter_write"]
            put("attach", writes[-1] if writes else None)
            put("attach_done", attaches[-1])
        pivot = first(lambda e: e["pid"] == init
                      and e["ev"] == "syscalls:sys_enter_pivot_root")
        put("pivot", pivot)
        if pivot:
            put("old_root_detached", first(
                lambda e: e["pid"] == init
                and e["ev"] == "syscalls:sys_exit_umount", pivot["t"]))
            put("workload_fork", first(
                lambda e: e["pid"] == init and e["ev"] in (
                    "syscalls:sys_enter_clone", "syscalls:sys_enter_clone3"),
                pivot["t"]))
        put("reaped", first(lambda e: e["pid"] == sup
                            and e["ev"] == "syscalls:sys_exit_wait4"
                            and hexval(e["args"]) == init))
    wexec = first(lambda e: e["ev"] == "sched:sched_process_exec"
                  and e["pid"] not in (sup, init))
    put("workload_exec", wexec)
    if wexec:
        put("workload_seccomp", first(
            lambda e: e["pid"] == wexec["pid"]
            and e["ev"] == "syscalls:sys_enter_seccomp"))
        put("workload_exit", first(lambda e: e["pid"] == wexec["pid"]
                                   and e["ev"] == "sched:sched_process_exit"))
    # The supervisor's own removals only: with the teardown deferred, the
    # detached cleaner removes the groups, possibly before the supervisor
    # has exited, and that is no longer on the caller's path.
    rms = [e for e in ev if e["ev"] == "cgroup:cgroup_rmdir" and e["pid"] == sup]
    put("cgroups_removed", rms[-1] if rms else None)
    put("end", ev[-1])
    return m


def run_phases(marks):
    """[(label, what, ms)] between consecutive markers that were seen and
    are in order; a missing marker merges the phases on both sides."""
    out = []
    prev_t, labels, whats = None, [], []
    for name, label, what in MARKERS:
        t = marks.get(name)
        if t is None and name in SUPERVISOR_TEARDOWN:
            # Left to the detached cleaner: not part of this start.
            continue
        if t is not None and (prev_t is None or t >= prev_t):
            if prev_t is not None:
                out.append((" + ".join(labels), "; ".join(whats),
                            (t - prev_t) * 1000))
            prev_t, labels, whats = t, [], []
        if label:
            labels.append(label)
            whats.append(what)
    return out


def timeline_section(path, untraced_ms):
    runs = split_runs(parse_events(path))
    per = collections.OrderedDict()
    totals = []
    for ev in runs:
        marks = run_markers(ev)
        totals.append((marks["end"] - marks["start"]) * 1000)
        for label, what, ms in run_phases(marks):
            per.setdefault(label, (what, []))[1].append(ms)
    if not totals:
        return "No complete run was recorded.", []
    med_total = statistics.median(totals)
    rows = ["| # | phase | median ms | share | min ms | max ms | runs "
            "| what happens |", "|---|---|---|---|---|---|---|---|"]
    ranked = []
    for i, (label, (what, xs)) in enumerate(per.items(), 1):
        med = statistics.median(xs)
        ranked.append((med, label, max(xs)))
        rows.append(f"| {i} | {label} | {med:.2f} | {med / med_total:.0%} "
                    f"| {min(xs):.2f} | {max(xs):.2f} | {len(xs)} | {what} |")
    head = (f"{len(totals)} starts, 250 ms apart (like sandboxes started now "
            "and then, and like the interleaved benchmark). Kernel "
            "tracepoints recorded by `perf record` (no ptrace, so the "
            "processes run at nearly full speed): median total "
            f"**{med_total:.1f} ms** traced against **{untraced_ms:.1f} ms** "
            "in the cold-start benchmark. Phases with little work still show "
            "scheduling delays: init and the supervisor hand over to each "
            "other several times.")
    return head + "\n\n" + "\n".join(rows), sorted(ranked, reverse=True)
