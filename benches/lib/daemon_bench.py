#!/usr/bin/env python3
"""Benchmarks the daemon (`stockade serve`) through its HTTP API.

Starts its own daemon on a scratch socket and state directory, talks to it
over the unix socket with the standard library's http.client (a fresh
connection per request, like stockade's own Rust client), and measures:

1. cycle: create -> exec `true` -> destroy, one after the other, timed
   from the client (each phase and the whole cycle);
2. warm exec: `true` in one long-lived sandbox, interleaved round-robin
   with `stockade exec` (the CLI, a new process per call) and, when
   --podman is given, `podman exec` into a long-lived podman container of
   the same root directory;
3. throughput: create+destroy in a loop for a fixed time with 1 and with 2
   concurrent clients, then a leak check (state directory, cgroups, shim
   processes);
4. density: host memory per idle sandbox with N idle sandboxes, then
   destroys them and checks for leaks again.

Every measured sample counts (failures are counted and reported, never
timed). Writes JSON for report.py; prints progress to stderr.

Usage: daemon_bench.py --stockade BIN --work DIR --out DAEMON.json
                       [--podman --rootfs DIR --memory 16g --cpus 4 --pids 4096]
                       [--quick]
"""

import argparse
import glob
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

from stats import loadavg, percentile


def log(msg):
    print(f"  daemon: {msg}", file=sys.stderr, flush=True)


# --- the API client -----------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: only connect() differs."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class ApiError(Exception):
    pass


class Api:
    def __init__(self, sock_path):
        self.path = sock_path

    def call(self, method, url, body=None):
        """One request on a fresh connection; returns (status, parsed JSON)."""
        conn = UnixHTTPConnection(self.path)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return resp.status, doc

    def ok(self, method, url, body=None, want=(200,)):
        status, doc = self.call(method, url, body)
        if status not in want:
            raise ApiError(f"{method} {url} -> {status}: {str(doc)[:300]}")
        return doc

    def create(self):
        return self.ok("POST", "/v1/sandboxes", {}, want=(201,))["id"]

    def exec_true(self, sid):
        doc = self.ok("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": ["true"]})
        if doc.get("exit_code") != 0:
            raise ApiError(f"exec true in {sid}: {doc}")
        return doc

    def destroy(self, sid):
        return self.ok("DELETE", f"/v1/sandboxes/{sid}")


# --- the daemon -------------------------------------------------------------------

class Daemon:
    def __init__(self, binary, work):
        self.binary = binary
        self.dir = os.path.join(work, "daemon")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "s.sock")
        self.state = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "serve.log")
        self.proc = None
        self.api = Api(self.sock)
        self.created = set()  # every id this run made: for cleanup and leaks

    def start(self):
        logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--socket", self.sock,
             "--state-dir", self.state],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stockade serve exited with {self.proc.returncode}: "
                    f"{self.log_tail()}")
            try:
                if self.api.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"stockade serve did not answer /healthz within "
                           f"20 s: {self.log_tail()}")

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-600:].decode(errors="replace").strip()
        except OSError:
            return ""

    def create(self):
        sid = self.api.create()
        self.created.add(sid)
        return sid

    def stop(self):
        """Destroys whatever is still running (shims outlive the daemon),
        then stops the daemon."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            _, doc = self.api.call("GET", "/v1/sandboxes?state=running")
            items = doc if isinstance(doc, list) else (doc or {}).get(
                "sandboxes", [])
            for sb in items:
                self.api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
        except Exception as e:  # best effort: never hide the real error
            log(f"cleanup: listing/destroying sandboxes failed: {e}")
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- statistics -------------------------------------------------------------------


def summary_ms(samples_ns):
    xs = sorted(samples_ns)
    ms = lambda v: None if v is None else v / 1e6  # noqa: E731
    return {"n": len(xs), "median": ms(percentile(xs, 50)),
            "p90": ms(percentile(xs, 90)), "p99": ms(percentile(xs, 99)),
            "min": ms(xs[0]) if xs else None,
            "max": ms(xs[-1]) if xs else None}


# --- 1. create -> exec -> destroy ------------------------------------------------------

def bench_cycle(d, warmup, rounds):
    phases = {"create": [], "exec": [], "destroy": [], "total": []}
    failures, first_error = 0, None
    for i in range(warmup + rounds):
        try:
            t0 = time.perf_counter_ns()
            sid = d.create()
            t1 = time.perf_counter_ns()
            d.api.exec_true(sid)
            t2 = time.perf_counter_ns()
            d.api.destroy(sid)
            t3 = time.perf_counter_ns()
        except (ApiError, OSError) as e:
            if i >= warmup:
                failures += 1
                first_error = first_error or str(e)
            continue
        if i >= warmup:
            phases["create"].append(t1 - t0)
            phases["exec"].append(t2 - t1)
            phases["destroy"].append(t3 - t2)
            phases["total"].append(t3 - t0)
    return {"warmup": warmup, "rounds": rounds, "failures": failures,
            "first_error": first_error, "samples_ns": phases,
            "summary_ms": {k: summary_ms(v) for k, v in phases.items()}}


# --- 2. exec into a warm sandbox, against podman exec ---------------------------------

def run_cmd_ns(argv):
    """Wall time of one child process, spawn to reap (as timer.py)."""
    t0 = time.perf_counter_ns()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t1 = time.perf_counter_ns()
    if p.returncode != 0:
        raise ApiError(f"{' '.join(argv)} exited {p.returncode}: "
                       f"{p.stderr.decode(errors='replace')[-300:].strip()}")
    return t1 - t0


class PodmanWarm:
    def __init__(self, args):
        self.name = f"stockade-bench-warm-{os.getpid()}"
        self.run_argv = [
            "podman", "run", "-d", "--name", self.name, "--runtime", "runc",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
            "--network", "none", "--memory", args.memory,
            "--memory-swap", args.memory, "--cpus", str(args.cpus),
            "--pids-limit", str(args.pids), "-v", "/usr:/usr:ro",
            "--rootfs", args.rootfs, "/bin/sleep", "infinity"]
        self.started = False

    def start(self):
        p = subprocess.run(self.run_argv, stdin=subprocess.DEVNULL,
                           capture_output=True)
        if p.returncode != 0:
            raise RuntimeError(
                f"podman run -d failed ({p.returncode}): "
                f"{p.stderr.decode(errors='replace')[-400:].strip()}")
        self.started = True

    def exec_argv(self):
        return ["podman", "exec", self.name, "true"]

    def stop(self):
        if self.started:
            subprocess.run(["podman", "rm", "-f", "-t", "0", self.name],
                           stdin=subprocess.DEVNULL, capture_output=True)


def bench_warm_exec(d, podman, warmup, rounds, podman_every):
    sid = d.create()
    server_ns = []  # the daemon's own duration_seconds for each API exec

    def api_exec():
        t0 = time.perf_counter_ns()
        doc = d.api.exec_true(sid)
        t1 = time.perf_counter_ns()
        return t1 - t0, doc

    def api_variant():
        ns, doc = api_exec()
        server_ns.append(int(doc.get("duration_seconds", 0) * 1e9))
        return ns

    def healthz():
        t0 = time.perf_counter_ns()
        status, _ = d.api.call("GET", "/healthz")
        t1 = time.perf_counter_ns()
        if status != 200:
            raise ApiError(f"GET /healthz -> {status}")
        return t1 - t0

    variants = {
        "API floor (GET /healthz)": healthz,
        "stockade API": api_variant,
        "stockade exec (CLI)": lambda: run_cmd_ns(
            [d.binary, "exec", "--socket", d.sock, sid, "--", "true"]),
    }
    every = {n: 1 for n in variants}
    skipped = {}
    if podman is not None:
        try:
            podman.start()
            variants["podman exec"] = lambda: run_cmd_ns(podman.exec_argv())
            every["podman exec"] = podman_every
        except (RuntimeError, OSError) as e:
            skipped["podman exec"] = str(e)
            log(f"podman skipped: {e}")

    res = {n: {"samples_ns": [], "failures": 0, "first_error": None,
               "every": every[n]} for n in variants}
    active = list(variants)
    for _ in range(warmup):
        for n in list(active):
            try:
                variants[n]()
            except (ApiError, OSError) as e:
                skipped[n] = f"failed during warm-up: {e}"
                active.remove(n)
    server_ns.clear()
    for r in range(rounds):
        order = active[r % len(active):] + active[:r % len(active)] \
            if active else []
        for n in order:
            if r % every[n] != 0:
                continue
            try:
                res[n]["samples_ns"].append(variants[n]())
            except (ApiError, OSError) as e:
                res[n]["failures"] += 1
                res[n]["first_error"] = res[n]["first_error"] or str(e)
    d.api.destroy(sid)
    if podman is not None:
        podman.stop()
    for n, v in res.items():
        v["summary_ms"] = summary_ms(v["samples_ns"])
        v["skipped"] = skipped.get(n)
    for n, why in skipped.items():
        res.setdefault(n, {"samples_ns": [], "failures": 0,
                           "first_error": None, "every": every.get(n, 1),
                           "summary_ms": summary_ms([]), "skipped": why})
    return {"warmup": warmup, "rounds": rounds, "variants": res,
            "server_duration_ms": summary_ms(server_ns),
            "podman_argv": podman.run_argv if podman else None}


# --- 3. sustained create+destroy, and leaks -------------------------------------------

def bench_throughput(d, clients, seconds):
    stop_at = [0.0]
    lock = threading.Lock()
    out = {"done": 0, "failures": 0, "first_error": None, "latency_ns": []}

    def worker():
        done, lat, fails, err = 0, [], 0, None
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter_ns()
            try:
                sid = d.create()
                d.api.destroy(sid)
            except (ApiError, OSError) as e:
                fails += 1
                err = err or str(e)
                continue
            lat.append(time.perf_counter_ns() - t0)
            done += 1
        with lock:
            out["done"] += done
            out["failures"] += fails
            out["first_error"] = out["first_error"] or err
            out["latency_ns"] += lat

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.monotonic()
    stop_at[0] = start + seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start  # includes the last cycle in flight
    return {"clients": clients, "seconds": elapsed, "done": out["done"],
            "per_second": out["done"] / elapsed, "failures": out["failures"],
            "first_error": out["first_error"],
            "cycle_ms": summary_ms(out["latency_ns"]), "load": loadavg()}


POOLED_ID = b"pool-waiting"  # stockade_core::shim::POOLED_ID


def stockade_procs(binary, pooled=False):
    """Pids of processes running our binary copy as `stockade shim`: each
    sandbox's shim and, below it, the sandbox's init (the same program).
    Other users of this machine may run their own stockade daemons; their
    processes run other binaries and are not counted. The daemon's idle
    pooled shims (`shim --id pool-waiting`, no sandbox yet, a fixed number)
    are left out, or with pooled=True are the only ones listed."""
    pids = []
    for p in glob.glob("/proc/[0-9]*"):
        try:
            with open(p + "/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            exe = os.readlink(p + "/exe")
        except OSError:
            continue
        if len(argv) > 1 and argv[1] == b"shim" and (
                exe == binary or argv[0].decode(errors="replace") == binary):
            is_pooled = len(argv) > 3 and argv[3] == POOLED_ID
            if is_pooled == pooled:
                pids.append(int(p[6:]))
    return sorted(pids)


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def shims_and_inits(binary):
    """(shims, inits): a shim's parent is not one of ours; an init's is."""
    procs = stockade_procs(binary)
    ours = set(procs)
    shims = [p for p in procs if ppid(p) not in ours]
    return shims, [p for p in procs if p not in shims]


def cgroup_dirs(sid):
    return [p for p in glob.glob(f"/sys/fs/cgroup/*/stockade/{sid}")
            + glob.glob(f"/sys/fs/cgroup/stockade/{sid}") if os.path.isdir(p)]


def leak_check(d, ids, settle=2.0, teardown=1.0):
    """What is left of the given (destroyed) sandboxes; looked at right away
    and, if anything is found, again after `settle` seconds.

    A destroy answers once the sandbox is dead and its directory and
    cgroups are removed just after, off the request path: "right away"
    therefore means as soon as nothing is left, polled every 10 ms for at
    most `teardown` seconds (the time taken is recorded)."""
    def look():
        sb_dir = os.path.join(d.state, "sandboxes")
        dirs = sorted(os.listdir(sb_dir)) if os.path.isdir(sb_dir) else []
        cgs = [c for sid in ids for c in cgroup_dirs(sid)]
        shims = stockade_procs(d.binary)
        _, doc = d.api.call("GET", "/v1/sandboxes?state=running")
        items = doc if isinstance(doc, list) else (doc or {}).get(
            "sandboxes", [])
        running = [sb["id"] for sb in items if sb.get("id") in ids]
        return {"sandbox_dirs": dirs, "cgroups": cgs, "shim_pids": shims,
                "running_in_api": running}

    def pool_size():
        return len(stockade_procs(d.binary, pooled=True))

    t0 = time.monotonic()
    now = look()
    while any(now.values()) and time.monotonic() - t0 < teardown:
        time.sleep(0.01)
        now = look()
    teardown_wait = time.monotonic() - t0
    clean = not any(now.values())
    after = None
    if not clean:
        time.sleep(settle)
        after = look()
    return {"checked_ids": len(ids), "pooled_shims": pool_size(),
            "teardown_wait_s": teardown_wait, "right_after": now,
            "after_settle": after, "settle_s": settle if after else 0,
            "clean": clean, "clean_after_settle":
                clean or not any(after.values())}


# --- 4. density ---------------------------------------------------------------------

def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def mem_available_kib(reads=5, gap=0.2):
    """Median of a few reads: other tenants move it all the time."""
    xs = []
    for i in range(reads):
        if i:
            time.sleep(gap)
        xs.append(meminfo_kib("MemAvailable"))
    return statistics.median(xs)


MEMINFO_KEYS = ("MemAvailable", "AnonPages", "Shmem", "Slab", "SUnreclaim",
                "KernelStack", "PageTables", "Percpu")


def meminfo_snapshot():
    with open("/proc/meminfo") as f:
        vals = {l.split(":")[0]: int(l.split()[1]) for l in f}
    return {k: vals.get(k, 0) for k in MEMINFO_KEYS}


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for t in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(t) as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def memory_cgroup(sid):
    """(usage bytes, rss/anon bytes) of the sandbox's memory cgroup, v1 or v2."""
    v1 = f"/sys/fs/cgroup/memory/stockade/{sid}"
    cands = [(v1, "memory.usage_in_bytes", "total_rss")]
    for base in ("/sys/fs/cgroup/stockade", "/sys/fs/cgroup/unified/stockade"):
        cands.append((f"{base}/{sid}", "memory.current", "anon"))
    for path, usage_file, anon_key in cands:
        try:
            with open(f"{path}/{usage_file}") as f:
                usage = int(f.read())
        except OSError:
            continue
        anon = 0
        try:
            with open(f"{path}/memory.stat") as f:
                for line in f:
                    k, v = line.split()
                    if k == anon_key:
                        anon = int(v)
        except OSError:
            pass
        return usage, anon
    return None


def bench_density(d, count):
    time.sleep(1)
    before = mem_available_kib()
    snap_before = meminfo_snapshot()
    load_before = loadavg()
    ids = []
    failures, first_error = 0, None
    t0 = time.monotonic()
    for _ in range(count):
        try:
            ids.append(d.create())
        except (ApiError, OSError) as e:
            failures += 1
            first_error = first_error or str(e)
    create_s = time.monotonic() - t0
    time.sleep(2)  # let the shims and inits settle into idle
    after = mem_available_kib()
    snap_after = meminfo_snapshot()

    shims, inits = shims_and_inits(d.binary)
    shim_pss = sum(pss_kib(p) for p in shims)
    init_pss = sum(pss_kib(p) for p in inits)
    cg_usage = cg_anon = cg_found = 0
    for sid in ids:
        m = memory_cgroup(sid)
        if m:
            cg_found += 1
            cg_usage += m[0]
            cg_anon += m[1]
    n = len(ids) or 1
    mib = 1024.0
    res = {
        "requested": count, "created": len(ids), "failures": failures,
        "first_error": first_error, "create_seconds": create_s,
        "load_before": load_before, "load_after": loadavg(),
        "mem_available_before_kib": before, "mem_available_after_kib": after,
        "per_sandbox_mib": {
            "mem_available_drop": (before - after) / n / mib,
            "pss_shim": shim_pss / n / mib,
            "pss_init": init_pss / n / mib,
            "cgroup_usage": cg_usage / 1048576 / n,
            "cgroup_anon": cg_anon / 1048576 / n,
            # the brief's sum; init's anon pages charged to its cgroup are
            # counted in both PSS and cgroup usage
            "pss_plus_cgroup": (shim_pss + init_pss) / n / mib
                               + cg_usage / 1048576 / n,
            # without that overlap: PSS plus the cgroup's non-anon charge
            # (kernel memory, page cache, tmpfs)
            "pss_plus_cgroup_non_anon": (shim_pss + init_pss) / n / mib
                                        + (cg_usage - cg_anon) / 1048576 / n,
        },
        # where the MemAvailable drop went, host-wide (KiB per sandbox)
        "meminfo_delta_kib_per_sandbox": {
            k: (snap_after[k] - snap_before[k]) / n for k in MEMINFO_KEYS},
        # our processes' PSS plus the host's kernel-side growth (slab, kernel
        # stacks, page tables, per-cpu): less exposed to other tenants'
        # user memory than MemAvailable, though still host-wide
        "pss_plus_kernel_mib": (shim_pss + init_pss) / n / mib + sum(
            snap_after[k] - snap_before[k]
            for k in ("Slab", "KernelStack", "PageTables", "Percpu")) / n / mib,
        "shim_processes": len(shims), "init_processes": len(inits),
        "memory_cgroups_found": cg_found,
    }
    t0 = time.monotonic()
    destroy_fail = 0
    for sid in ids:
        try:
            d.api.destroy(sid)
        except (ApiError, OSError) as e:
            destroy_fail += 1
            res["first_error"] = res["first_error"] or str(e)
    res["destroy_seconds"] = time.monotonic() - t0
    # Back to where it started? The difference is what other tenants (or
    # a leak) moved meanwhile: the noise on the MemAvailable figure.
    time.sleep(2)
    res["mem_available_after_destroy_kib"] = mem_available_kib()
    # How far MemAvailable wandered for reasons other than our sandboxes,
    # per sandbox: it should be back where it started once they are gone.
    res["mem_available_noise_mib_per_sandbox"] = abs(
        before - res["mem_available_after_destroy_kib"]) / n / mib
    res["destroy_failures"] = destroy_fail
    res["leaks"] = leak_check(d, set(ids))
    return res


# --- main --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stockade", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--podman", action="store_true")
    ap.add_argument("--rootfs")
    ap.add_argument("--memory", default="16g")
    ap.add_argument("--cpus", default="4")
    ap.add_argument("--pids", default="4096")
    ap.add_argument("--podman-every", type=int, default=1)
    args = ap.parse_args()
    env = os.environ.get
    if args.quick:
        cyc = (5, int(env("DAEMON_CYCLES", 30)))
        ex = (3, int(env("DAEMON_EXECS", 40)))
        secs = float(env("DAEMON_SECONDS", 3))
        dens = int(env("DAEMON_DENSITY", 100))
    else:
        cyc = (20, int(env("DAEMON_CYCLES", 200)))
        ex = (10, int(env("DAEMON_EXECS", 300)))
        secs = float(env("DAEMON_SECONDS", 15))
        dens = int(env("DAEMON_DENSITY", 100))
    if args.podman and not args.rootfs:
        sys.exit("daemon_bench.py: --podman needs --rootfs")

    binary = os.path.abspath(args.stockade)
    d = Daemon(binary, args.work)
    podman = PodmanWarm(args) if args.podman else None
    out = {"load_start": loadavg()}
    started = time.monotonic()
    try:
        d.start()
        log(f"cycle: {cyc[1]} create->exec->destroy (+{cyc[0]} warm-up)")
        out["cycle"] = bench_cycle(d, *cyc)
        out["cycle"]["load"] = loadavg()
        log(f"warm exec: {ex[1]} interleaved rounds (+{ex[0]} warm-up)")
        out["warm_exec"] = bench_warm_exec(d, podman, ex[0], ex[1],
                                           args.podman_every)
        out["warm_exec"]["load"] = loadavg()
        out["throughput"] = []
        for c in (1, 2):
            log(f"throughput: {c} client(s) for {secs:.0f} s")
            out["throughput"].append(bench_throughput(d, c, secs))
        # Every sandbox made so far has been destroyed: nothing of any of
        # them may be left.
        out["throughput_leaks"] = leak_check(d, set(d.created))
        log(f"density: {dens} idle sandboxes")
        out["density"] = bench_density(d, dens)
    except Exception as e:  # keep what was measured; report.py shows this
        out["error"] = f"{type(e).__name__}: {e}"
        log(f"failed: {out['error']}")
    finally:
        d.stop()
        if podman is not None:
            podman.stop()
    # The daemon kills its idle pooled shims when it stops.
    out["pooled_shims_after_stop"] = stockade_procs(binary, pooled=True)
    out["load_end"] = loadavg()
    out["elapsed_s"] = time.monotonic() - started
    out["created_total"] = len(d.created)
    out["daemon_log_tail"] = d.log_tail()
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    log(f"done in {out['elapsed_s']:.0f}s")
    if out.get("error"):
        sys.exit(1)


if __name__ == "__main__":
    main()
