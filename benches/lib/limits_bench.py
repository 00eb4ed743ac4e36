"""How well the disk and memory caps hold against a workload that attacks
them (issue 13's attacks), measured, not asserted.

1. Disk overshoot. `disk_attack.py` fills the scratch workspace of a
   `--disk 50M` sandbox four ways (one large write, fallocate, many small
   files, paths deeper than PATH_MAX). With the kernel cap (btrfs qgroup),
   the overshoot is what the workload got allocated beyond the limit, and
   the peak the report read from the quota. The same attacks with the
   scratch filesystem turned off (STOCKADE_SCRATCH=off: the polling meter
   kills the sandbox once it sees the usage over the limit) give the
   comparison, the attack capped at 1 GiB.
2. Socket memory. `socket_hog.py` fills TCP buffers over the sandbox's
   own loopback and never reads them (aiming at 1 GiB, holding it 3 s),
   in a `--memory 64M` sandbox; the drop of the host's MemAvailable is
   sampled every 20 ms. The same script run directly on the host, in a
   network namespace of its own (`unshare --net`: its own loopback only),
   is the uncapped reference.

Writes Markdown (--md) and the raw numbers (--out). Standard library only.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

LIMIT = 50 << 20
LIB = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(LIB))
HOG = os.path.join(REPO, "crates/stockade-cli/tests/data/socket_hog.py")


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def mib(n):
    return f"{n / (1 << 20):.2f}"


def disk_run(sk, mode, kernel, work):
    report = os.path.join(work, f"disk-{mode}-{int(kernel)}.json")
    env = dict(os.environ)
    if not kernel:
        env["STOCKADE_SCRATCH"] = "off"
    cmd = [sk, "run", "--disk", "50M", "--timeout", "120s", "--report", report,
           "--ro-bind", f"{LIB}:/bench", "--",
           "sh", "-c", f"python3 /bench/disk_attack.py {mode} {1 << 30}; sleep 0.5"]
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    secs = time.monotonic() - t
    written, why = 0, "killed"
    for line in p.stdout.splitlines():
        m = re.match(r"P (\d+)$", line)
        if m:
            written = int(m.group(1))
        m = re.match(r"WRITTEN (\d+) (.*)$", line)
        if m:
            written, why = int(m.group(1)), m.group(2)
    try:
        with open(report) as f:
            r = json.load(f)
    except (OSError, ValueError):
        r = {}
    usage = r.get("usage", {})
    kinds = [v.get("kind") for v in r.get("violations", [])]
    return {
        "mode": mode,
        "enforced": usage.get("disk_enforced", "?"),
        "written": written,
        "stopped": why,
        "report_peak": usage.get("disk_bytes", 0),
        "outcome": r.get("outcome", "?"),
        "violation": "disk-limit" in kinds,
        "seconds": round(secs, 2),
        "stderr": p.stderr[-400:] if p.returncode not in (0, 1) and not r else "",
    }


def hog_sandbox(sk, work):
    report = os.path.join(work, "hog.json")
    cmd = [sk, "run", "--memory", "64M", "--timeout", "60s", "--report", report,
           "--ro-bind", f"{os.path.dirname(HOG)}:/data", "--",
           "python3", "/data/socket_hog.py", str(1 << 30), "3"]
    res = watch(cmd)
    try:
        with open(report) as f:
            r = json.load(f)
        res["socket_peak"] = r["usage"].get("socket_memory_peak_bytes", 0)
        res["memory_peak"] = r["usage"].get("peak_memory_bytes", 0)
    except (OSError, ValueError, KeyError):
        res["socket_peak"] = res["memory_peak"] = 0
    return res


def hog_direct():
    # Its own network namespace: loopback only, nothing leaves it.
    cmd = ["unshare", "--net", "sh", "-c",
           f"ip link set lo up && exec {sys.executable} {HOG} {1 << 30} 3"]
    return watch(cmd)


def watch(cmd):
    before = mem_available()
    lowest = before
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while p.poll() is None:
        lowest = min(lowest, mem_available())
        time.sleep(0.02)
    out = p.stdout.read()
    m = re.search(r"SENT (\d+)", out)
    time.sleep(1)
    return {"sent": int(m.group(1)) if m else 0, "drop": before - lowest,
            "after": before - mem_available()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stockade", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    reps = 1 if a.quick else a.reps
    work = tempfile.mkdtemp(prefix="stockade-limits-")
    modes = ["dd", "fallocate", "files", "deep"]
    kernel = [disk_run(a.stockade, m, True, work) for _ in range(reps) for m in modes]
    polling = [disk_run(a.stockade, m, False, work) for m in ["dd", "files", "deep"]]
    hog = [hog_sandbox(a.stockade, work) for _ in range(reps)]
    direct = hog_direct()
    raw = {"limit": LIMIT, "kernel": kernel, "polling": polling,
           "socket": {"sandbox": hog, "direct": direct}}
    with open(a.out, "w") as f:
        json.dump(raw, f, indent=1)

    md = ["## Limits under attack", "",
          "`benches/lib/limits_bench.py`: the attacks of issue 13 against the disk and "
          "memory caps; each number is measured in this run.", "",
          "### Disk overshoot (`--disk 50M`)", "",
          "`benches/lib/disk_attack.py` runs in the sandbox and fills `/workspace` one way "
          "until a write is refused (or 1 GiB): **dd** (1 MiB writes to one file), "
          "**fallocate** (20 GiB at once, then 8 MiB files), **files** (4 KiB files, each "
          "fsynced), **deep** (a 256 KiB file per level of 200-character directory names, "
          "far past PATH_MAX). *Allocated* is what the filesystem gave the workload "
          "(st_blocks of what it wrote, after fsync), *report* the peak the supervisor "
          "read from the quota (referenced + reserved bytes), *over* the larger of the two "
          f"minus the limit. {reps} run(s) per attack; the worst is shown.", "",
          "| enforcement | attack | stopped by | allocated MiB | report MiB | over MiB | "
          "outcome | breach reported | s |",
          "|---|---|---|---|---|---|---|---|---|"]
    def row(r):
        over = max(r["written"], r["report_peak"]) - LIMIT
        md.append(f"| {r['enforced']} | {r['mode']} | {r['stopped']} | {mib(r['written'])} | "
                  f"{mib(r['report_peak'])} | {mib(over)} | {r['outcome']} | "
                  f"{'yes' if r['violation'] else 'no'} | {r['seconds']} |")
    for m in modes:
        runs = [r for r in kernel if r["mode"] == m]
        row(max(runs, key=lambda r: max(r["written"], r["report_peak"])))
    for r in polling:
        row(r)
    worst = max(max(r["written"], r["report_peak"]) for r in kernel) - LIMIT
    md += ["", f"Worst overshoot with the kernel cap: **{mib(worst)} MiB** past 50 MiB "
           "(target: at most 1 MiB). The polling rows are the fallback without btrfs "
           "(`STOCKADE_SCRATCH=off`), where what lands before the meter's next look "
           "stays on the disk until the kill; `killed` means the supervisor stopped the "
           "workload before it could say why it stopped.", ""]

    md += ["### Socket memory (`--memory 64M`)", "",
           "`socket_hog.py` (the test's) opens loopback connections with 64 MiB buffers "
           "and sends into them without ever reading, up to 1 GiB, then holds them 3 s. "
           "*Host drop* is the largest fall of MemAvailable while it ran (sampled every "
           "20 ms); the direct row is the same script on the host in its own network "
           "namespace, with no cap.", "",
           "| side | sent MiB | host drop MiB | report: socket peak MiB | report: memory peak MiB |",
           "|---|---|---|---|---|"]
    for i, h in enumerate(hog):
        md.append(f"| stockade run {i + 1} | {mib(h['sent'])} | {mib(h['drop'])} | "
                  f"{mib(h['socket_peak'])} | {mib(h['memory_peak'])} |")
    md.append(f"| direct (no sandbox) | {mib(direct['sent'])} | {mib(direct['drop'])} | - | - |")
    worst_drop = max(h["drop"] for h in hog)
    md += ["", f"Largest host drop under the sandbox: **{mib(worst_drop)} MiB** against a "
           f"64 MiB limit (on cgroup v1 the TCP buffers have a cap of their own, a quarter "
           f"of the limit, 16 MiB); without a sandbox the same script held "
           f"{mib(direct['drop'])} MiB. Host MemAvailable moves with other tenants too, "
           "so small drops are noise.", ""]
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(md))


if __name__ == "__main__":
    main()
