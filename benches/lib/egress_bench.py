#!/usr/bin/env python3
"""Benchmarks stockade's egress path (`--net allowlist`) against direct traffic.

Network safety: nothing here talks to any real address. The script re-runs
itself under `unshare --net` and refuses to measure unless the namespace it
finds itself in has only `lo`. Its upstream server runs in a second fresh
network namespace (`unshare --net` again) joined to the first by a veth pair:
203.0.113.1/24 on our side, the documentation address 203.0.113.10/24 on the
server's. Every client, direct or sandboxed, and the stockade supervisor
(whose proxied upstream connections leave from its own namespace) can
therefore reach only that server; the server is not on the supervisor's own
addresses, which stockade's policy refuses. The sandbox finds it as
`bench.test` through `--map-host bench.test=203.0.113.10`.

Measures, interleaved (direct and sandboxed alternate, starting side
alternating per repetition):

1. bulk throughput: `curl -o /dev/null` of N bytes over HTTP, directly in
   the test namespace and inside `stockade run --net allowlist` (one fresh
   sandbox per transfer; the rate is curl's own, so sandbox start-up is not
   in it). Also the CPU time of each side's whole process tree per GiB
   (getrusage of reaped children: curl alone, or stockade + init + curl).
2. connection latency: a Python client making C sequential TCP connections,
   each a tiny HTTP request and its answer, directly and inside ONE sandbox
   per repetition (start-up not counted); per-connection times pooled.
3. cold start: `stockade run --net allowlist --allow-host bench.test --
   true` against `--net none`, and bwrap `--unshare-all`, through
   timer.py (round-robin, rotating start).

Writes JSON for report.py and prints progress to stderr.

Usage: egress_bench.py --stockade BIN --timer TIMER.py --work DIR
                       --out EGRESS.json [--bwrap-args FILE] [--quick]
Environment overrides: EGRESS_MIB (256), EGRESS_REPS (5), EGRESS_CONNECTS
(200), EGRESS_LAT_REPS (3), EGRESS_COLD_ROUNDS (60), EGRESS_WARMUP (5).
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time

from stats import loadavg, percentile

ADDR = "203.0.113.10"   # TEST-NET-3 (RFC 5737), the server's end of the veth
LOCAL = "203.0.113.1"   # our end
VETH = ("skbench0", "skbench1")
PORT = 8080
NAME = "bench.test"
PING_PATH = "/ping"


def log(msg):
    print(f"  egress: {msg}", file=sys.stderr, flush=True)


def summary(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median": percentile(xs, 50),
            "p90": percentile(xs, 90), "p99": percentile(xs, 99),
            "min": xs[0] if xs else None, "max": xs[-1] if xs else None}


# --- the upstream server (a separate process: no GIL shared with timing) -------

def serve(addr, port):
    """Minimal HTTP/1.0: GET /bytes/N sends N bytes; anything else "ok"."""
    chunk = memoryview(b"\0" * (4 << 20))
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 10
    while True:  # the address appears once the parent has set up the veth
        try:
            ls.bind((addr, port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    ls.listen(512)

    def handle(c):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            path = buf.split(b" ", 2)[1].decode()
            if path.startswith("/bytes/"):
                n = int(path[len("/bytes/"):])
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: "
                          b"application/octet-stream\r\nContent-Length: "
                          + str(n).encode() + b"\r\n\r\n")
                while n > 0:
                    k = min(n, len(chunk))
                    c.sendall(chunk[:k])
                    n -= k
            else:
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


# The latency client: runs as `python3 -c` both directly and inside the
# sandbox (/usr is the host's there). argv: host port count path [address];
# without an address the host name is resolved once (through stockade's DNS
# in the sandbox), untimed in the loop.
LAT_CLIENT = r"""
import json, socket, sys, time
host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter_ns()
if len(sys.argv) > 5:
    ip = sys.argv[5]
else:
    ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
resolve = time.perf_counter_ns() - t0
req = ("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host)).encode()
total, conn, fails = [], [], 0
for _ in range(n):
    a = time.perf_counter_ns()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect((ip, port))
        b = time.perf_counter_ns()
        s.sendall(req)
        got = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except OSError:
        fails += 1
        continue
    finally:
        s.close()
    if not got.endswith(b"ok"):
        fails += 1
        continue
    c = time.perf_counter_ns()
    conn.append(b - a)
    total.append(c - a)
print(json.dumps({"resolve_ns": resolve, "connect_ns": conn,
                  "total_ns": total, "failures": fails}))
"""


# --- the test namespace ---------------------------------------------------------

def check_fresh_netns():
    """Refuses to go on unless this namespace has no interface but lo and
    no address but loopback ones: a fresh `unshare --net`."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    links = [l.split(":")[1].strip() for l in out.splitlines() if l.strip()]
    if links != ["lo"]:
        sys.exit(f"egress_bench.py: refusing to run: this network namespace "
                 f"has interfaces {links}, not just lo (not a fresh one)")
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"],
                         capture_output=True, text=True, check=True).stdout
    if out.strip():  # a fresh namespace's lo is down with no address
        sys.exit("egress_bench.py: refusing to run: lo already has "
                 f"addresses: {out.strip()}")


def setup_netns():
    check_fresh_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def start_server():
    """Starts the server in a namespace of its own and joins it to ours by
    a veth pair."""
    proc = subprocess.Popen(
        ["unshare", "--net", "--", sys.executable, os.path.abspath(__file__),
         "--serve"], stdin=subprocess.DEVNULL)
    try:
        # unshare execs python in place, so proc.pid is in the new namespace
        # once its net link differs from ours.
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/net") == mine:
            if time.monotonic() > deadline:
                raise RuntimeError("the server's namespace did not appear")
            time.sleep(0.01)
        ours, theirs = VETH
        subprocess.run(["ip", "link", "add", ours, "type", "veth", "peer",
                        "name", theirs, "netns", str(proc.pid)], check=True)
        subprocess.run(["ip", "addr", "add", f"{LOCAL}/24", "dev", ours],
                       check=True)
        subprocess.run(["ip", "link", "set", ours, "up"], check=True)
        inner = ["nsenter", "--net", "--target", str(proc.pid), "--", "ip"]
        subprocess.run(inner + ["link", "set", "lo", "up"], check=True)
        subprocess.run(inner + ["addr", "add", f"{ADDR}/24", "dev", theirs],
                       check=True)
        subprocess.run(inner + ["link", "set", theirs, "up"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((ADDR, PORT), timeout=1).close()
                return proc
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the test server did not start")
    except BaseException:
        proc.kill()
        proc.wait()
        raise


# --- measurements -------------------------------------------------------------------

def sandbox_argv(sk, cmd):
    return [sk, "run", "--net", "allowlist", "--allow-host", NAME,
            "--map-host", f"{NAME}={ADDR}", "--"] + cmd


def run_tree(argv):
    """Runs argv; returns (stdout, stderr, rc, wall_ns, cpu_s of the whole
    reaped tree). Nothing else is reaped meanwhile (the server is reaped
    only at the end), so the RUSAGE_CHILDREN delta is this tree's."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter_ns()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
    wall = time.perf_counter_ns() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return (p.stdout.decode(errors="replace"),
            p.stderr.decode(errors="replace"), p.returncode, wall, cpu)


def bench_throughput(sk, nbytes, reps):
    url = f"http://{NAME}:{PORT}/bytes/{nbytes}"
    curl = ["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
            "-w", "%{size_download} %{time_total} %{time_starttransfer}"]
    sides = {
        # direct: the same request (Host: bench.test) straight to the server
        "direct": curl + ["--resolve", f"{NAME}:{PORT}:{ADDR}", url],
        "stockade": sandbox_argv(sk, curl + [url]),
    }
    res = {n: {"argv": a, "mbytes_per_s": [], "seconds": [], "cpu_s": [],
               "wall_s": [], "failures": 0, "first_error": None}
           for n, a in sides.items()}
    names = list(sides)
    for r in range(-1, reps):  # r == -1: one untimed warm-up each
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            out, err, rc, wall, cpu = run_tree(sides[n])
            v = res[n]
            try:
                size, total, _ = out.split()
                size, total = int(size), float(total)
                ok = rc == 0 and size == nbytes
            except ValueError:
                ok = False
            if r < 0:
                continue
            if not ok:
                v["failures"] += 1
                v["first_error"] = v["first_error"] or (
                    f"exit {rc}, stdout {out.strip()!r}: {err.strip()[-300:]}")
                continue
            v["seconds"].append(total)
            v["mbytes_per_s"].append(nbytes / total / 1e6)
            v["cpu_s"].append(cpu)
            v["wall_s"].append(wall / 1e9)
        log(f"throughput rep {r + 1}/{reps}")
    for v in res.values():
        v["summary_mbytes_per_s"] = summary(v["mbytes_per_s"])
        v["cpu_s_per_gib"] = (
            statistics.median(v["cpu_s"]) / (nbytes / 2**30)
            if v["cpu_s"] else None)
    return {"bytes": nbytes, "reps": reps, "variants": res}


def bench_latency(sk, connects, reps):
    py = "/usr/bin/python3"
    sides = {
        # direct: connect to the address (no resolver in the namespace),
        # with the same Host header
        "direct": [py, "-c", LAT_CLIENT, NAME, str(PORT), str(connects),
                   PING_PATH, ADDR],
        "stockade": sandbox_argv(sk, [py, "-c", LAT_CLIENT, NAME, str(PORT),
                                      str(connects), PING_PATH]),
    }
    res = {n: {"total_ns": [], "connect_ns": [], "resolve_ns": [],
               "rep_medians_ns": [], "failures": 0, "first_error": None}
           for n in sides}
    names = list(sides)
    for r in range(-1, reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            out, err, rc, _, _ = run_tree(sides[n])
            if r < 0:
                continue
            v = res[n]
            try:
                doc = json.loads(out)
            except ValueError:
                v["failures"] += connects
                v["first_error"] = v["first_error"] or (
                    f"exit {rc}: {err.strip()[-300:]}")
                continue
            v["total_ns"] += doc["total_ns"]
            v["connect_ns"] += doc["connect_ns"]
            v["resolve_ns"].append(doc["resolve_ns"])
            v["failures"] += doc["failures"]
            if doc["total_ns"]:
                v["rep_medians_ns"].append(statistics.median(doc["total_ns"]))
        log(f"latency rep {r + 1}/{reps}")
    for v in res.values():
        v["summary_total_ns"] = summary(v["total_ns"])
        v["summary_connect_ns"] = summary(v["connect_ns"])
        v["summary_resolve_ns"] = summary(v["resolve_ns"])
    return {"connects": connects, "reps": reps, "path": PING_PATH,
            "variants": res}


def bench_cold(sk, timer, work, bwrap_args, warmup, rounds):
    variants = [
        {"name": "stockade --net none",
         "argv": [sk, "run", "--net", "none", "--", "/bin/true"]},
        {"name": "stockade --net allowlist",
         "argv": [sk, "run", "--net", "allowlist", "--allow-host", NAME,
                  "--", "/bin/true"]},
    ]
    if bwrap_args:
        variants.append({"name": "bwrap", "argv": bwrap_args + ["/bin/true"]})
    plan = os.path.join(work, "egress-cold-plan.json")
    out = os.path.join(work, "egress-cold.json")
    with open(plan, "w") as f:
        json.dump({"warmup": warmup, "rounds": rounds, "variants": variants},
                  f, indent=1)
    subprocess.run([sys.executable, timer, plan, "--out", out,
                    "--label", "egress cold start"], check=True)
    with open(out) as f:
        return json.load(f)


# --- main -------------------------------------------------------------------------------

def inside(args):
    env = os.environ.get
    if args.quick:
        mib, reps = int(env("EGRESS_MIB", 64)), int(env("EGRESS_REPS", 3))
        connects = int(env("EGRESS_CONNECTS", 100))
        lat_reps = int(env("EGRESS_LAT_REPS", 2))
        cold_rounds = int(env("EGRESS_COLD_ROUNDS", 20))
        warmup = int(env("EGRESS_WARMUP", 2))
    else:
        mib, reps = int(env("EGRESS_MIB", 256)), int(env("EGRESS_REPS", 5))
        connects = int(env("EGRESS_CONNECTS", 200))
        lat_reps = int(env("EGRESS_LAT_REPS", 3))
        cold_rounds = int(env("EGRESS_COLD_ROUNDS", 60))
        warmup = int(env("EGRESS_WARMUP", 5))
    bwrap_args = None
    if args.bwrap_args:
        with open(args.bwrap_args) as f:
            bwrap_args = [l for l in f.read().split("\n") if l]

    setup_netns()
    out = {"load_start": loadavg(), "address": ADDR, "name": NAME,
           "port": PORT, "nproc": os.cpu_count()}
    started = time.monotonic()
    server = start_server()
    try:
        log(f"throughput: {mib} MiB x {reps} interleaved reps (+1 warm-up)")
        out["throughput"] = bench_throughput(args.stockade, mib << 20, reps)
        out["throughput"]["load"] = loadavg()
        log(f"latency: {connects} connections x {lat_reps} reps per side")
        out["latency"] = bench_latency(args.stockade, connects, lat_reps)
        out["latency"]["load"] = loadavg()
        log(f"cold start: {cold_rounds} interleaved rounds (+{warmup})")
        out["cold"] = bench_cold(args.stockade, args.timer, args.work,
                                 bwrap_args, warmup, cold_rounds)
        out["cold"]["load"] = loadavg()
    except Exception as e:  # keep what was measured; report.py shows this
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"failed: {out['error']}")
    finally:
        server.kill()
        server.wait()
    out["load_end"] = loadavg()
    out["elapsed_s"] = time.monotonic() - started
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    log(f"done in {out['elapsed_s']:.0f}s")
    if out.get("error"):
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stockade")
    ap.add_argument("--timer")
    ap.add_argument("--work")
    ap.add_argument("--out")
    ap.add_argument("--bwrap-args", help="file: bwrap's base argv, one a line")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.serve:
        serve(ADDR, PORT)
        return
    for k in ("stockade", "timer", "work", "out"):
        if not getattr(args, k):
            sys.exit(f"egress_bench.py: --{k} is required")
    args.stockade = os.path.abspath(args.stockade)
    if args.in_netns:
        inside(args)
        return
    # Everything runs in a network namespace of our own, made here.
    argv = ["unshare", "--net", "--", sys.executable,
            os.path.abspath(__file__), "--in-netns"] + sys.argv[1:]
    sys.exit(subprocess.run(argv).returncode)


if __name__ == "__main__":
    main()
