"""Container images (issue 15), measured against their goals:

(a) start: `stockade run --image` on the unpacked 5-layer busybox image
    against `stockade run` without an image, interleaved (goal <= 1.3x);
(b) pull + unpack of the debian-python image from a local docker-registry
    (127.0.0.1) into a cold store, against `podman pull` (its own --root,
    runtime runc, --tls-verify=false) and `skopeo copy` + `umoci unpack`
    (goal: stockade >= 1.5x faster than podman);
(c) 100 sandboxes on one image through the daemon: disk (du of the store
    against the rest of the state directory: uppers and records) and
    memory (page cache and MemAvailable after one sandbox reads a large
    file of the image, then after 100 do: the lower layer's pages are
    shared, so the second step should add next to nothing).

The images come from tests/images/build.sh (run first). Writes Markdown
(--md) and raw numbers (--out). Standard library only.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

LIB = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(LIB))
sys.path.insert(0, LIB)
import daemon_bench  # noqa: E402  (Api, Daemon, meminfo helpers)

IMAGES = os.environ.get("STOCKADE_IMAGES", "/var/cache/stockade-images")
BIG_FILE = "/usr/bin/python3.11"


def log(msg):
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def timed(argv, **kw):
    t = time.perf_counter_ns()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, **kw)
    ns = time.perf_counter_ns() - t
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:4]}... exited {r.returncode}: {r.stderr[-400:]!r}")
    return ns


def ms(xs):
    return {"median_ms": round(statistics.median(xs) / 1e6, 2),
            "min_ms": round(min(xs) / 1e6, 2), "n": len(xs)}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Registry:
    """Debian's docker-registry on 127.0.0.1, storage in a temp dir."""

    def __init__(self, work):
        self.dir = os.path.join(work, "registry")
        os.makedirs(self.dir, exist_ok=True)
        self.addr = f"127.0.0.1:{free_port()}"
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/storage\n"
                    f"http:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        host, port = self.addr.split(":")
        for _ in range(400):
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("docker-registry did not start")

    def push(self, layout, dest):
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{IMAGES}/{layout}:latest", f"docker://{self.addr}/{dest}"],
                       check=True)
        return f"{self.addr}/{dest}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def bench_start(sk, work, rounds, warmup):
    state = os.path.join(work, "start-state")
    subprocess.run([sk, "pull", "--quiet", "--state-dir", state,
                    f"oci:{IMAGES}/busybox:latest"], check=True, stdout=subprocess.DEVNULL)
    ref = f"oci:{IMAGES}/busybox:latest"
    plain = [sk, "run", "--state-dir", state, "--", "true"]
    image = [sk, "run", "--state-dir", state, "--image", ref, "--pull", "never", "--", "true"]
    a, b = [], []
    for i in range(warmup + rounds):
        x, y = timed(plain), timed(image)
        if i >= warmup:
            a.append(x)
            b.append(y)
    return {"no_image": ms(a), "image_5_layers": ms(b),
            "ratio": round(statistics.median(b) / statistics.median(a), 2)}


def bench_pull(sk, work, reg, rounds):
    ref = reg.push("debian-python", "bench/debian-python:latest")
    have_podman = shutil.which("podman") is not None
    have_umoci = shutil.which("umoci") is not None and shutil.which("skopeo") is not None
    res = {"stockade": [], "podman": [], "skopeo_umoci": []}
    for _ in range(rounds):
        # Each tool starts with nothing of another's left to write back:
        # stockade syncs its store before a layer is published, and would
        # otherwise pay for podman's and umoci's unsynced writes too.
        os.sync()
        d = tempfile.mkdtemp(dir=work)
        os.chmod(d, 0o755)
        res["stockade"].append(timed([sk, "pull", "--quiet", "--state-dir", d, ref]))
        shutil.rmtree(d)
        if have_podman:
            # podman refuses a run root longer than 50 characters.
            d = tempfile.mkdtemp(prefix="skp-", dir="/tmp")
            os.sync()
            res["podman"].append(timed(
                ["podman", "--root", f"{d}/root", "--runroot", f"{d}/run",
                 "--runtime", "runc", "pull", "-q", "--tls-verify=false", ref]))
            subprocess.run(["podman", "--root", f"{d}/root", "--runroot", f"{d}/run",
                            "system", "reset", "-f"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shutil.rmtree(d, ignore_errors=True)
        if have_umoci:
            d = tempfile.mkdtemp(dir=work)
            os.sync()
            t = timed(["skopeo", "copy", "-q", "--src-tls-verify=false",
                       f"docker://{ref}", f"oci:{d}/layout:latest"])
            t += timed(["umoci", "unpack", "--image", f"{d}/layout:latest", f"{d}/bundle"])
            res["skopeo_umoci"].append(t)
            shutil.rmtree(d)
    out = {k: ms(v) for k, v in res.items() if v}
    for k in ("podman", "skopeo_umoci"):
        if k in out:
            out[f"{k}_over_stockade"] = round(
                statistics.median(res[k]) / statistics.median(res["stockade"]), 2)
    return out


def du_kib(path, one_fs=True):
    # The scratch filesystem's subvolumes are filesystems of their own to du.
    r = subprocess.run(["du", "-sxk" if one_fs else "-sk", path], stdout=subprocess.PIPE, text=True)
    return int(r.stdout.split()[0]) if r.returncode == 0 else 0


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def bench_density(sk, work, count):
    d = daemon_bench.Daemon(sk, work)
    # Pulled here, named by its digest in the requests: an API client may
    # name a local source only under the daemon's --allow-bind-root.
    digest = subprocess.run([sk, "pull", "--quiet", "--state-dir", d.state,
                             f"oci:{IMAGES}/debian-python:latest"], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.split()[-1]
    store = os.path.join(d.state, "images")
    store_kib = du_kib(store)
    d.start()
    # The sandboxes' writable uppers live on the btrfs scratch filesystem
    # when there is one (else in the state directory, counted below).
    scratch = "/run/stockade-scratch"
    scratch0 = du_kib(scratch, False) if os.path.isdir(scratch) else 0
    out = {"sandboxes": count, "store_kib": store_kib}
    try:
        ids = []
        for _ in range(count):
            sid = d.api.ok("POST", "/v1/sandboxes",
                           {"image": digest}, want=(201,))["id"]
            d.created.add(sid)
            ids.append(sid)
        read = ["sh", "-c", f"cat {BIG_FILE} >/dev/null; "
                "head -c 1048576 /dev/zero > /var/tmp/upper-probe"]
        drop_caches()
        m0 = daemon_bench.meminfo_snapshot()
        c0 = daemon_bench.meminfo_kib("Cached")
        d.api.ok("POST", f"/v1/sandboxes/{ids[0]}/exec", {"cmd": read})
        c1 = daemon_bench.meminfo_kib("Cached")
        m1 = daemon_bench.meminfo_snapshot()
        for sid in ids[1:]:
            d.api.ok("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": read})
        c2 = daemon_bench.meminfo_kib("Cached")
        m2 = daemon_bench.meminfo_snapshot()
        state_kib = du_kib(d.state)
        scratch1 = du_kib(scratch, False) if os.path.isdir(scratch) else 0
        out.update({
            "scratch_growth_kib": scratch1 - scratch0,
            "state_dir_kib": state_kib,
            "besides_store_kib": state_kib - du_kib(store),
            "big_file": BIG_FILE,
            "cached_growth_first_kib": c1 - c0,
            "cached_growth_next_kib": c2 - c1,
            "mem_available_drop_first_kib": m0["MemAvailable"] - m1["MemAvailable"],
            "mem_available_drop_next_kib": m1["MemAvailable"] - m2["MemAvailable"],
        })
    finally:
        d.stop()
    return out


def markdown(r):
    lines = ["## Container images", ""]
    if "start" in r:
        s = r["start"]
        lines += [f"- Start, `run -- true`: without an image {s['no_image']['median_ms']} ms, "
                  f"on the 5-layer busybox image {s['image_5_layers']['median_ms']} ms "
                  f"(median of {s['no_image']['n']}): **{s['ratio']}x** (goal <= 1.3x)."]
    if "pull" in r:
        p = r["pull"]
        line = (f"- Pull + unpack of debian-python from a local registry, cold store: "
                f"stockade {p['stockade']['median_ms']} ms")
        if "podman" in p:
            line += (f", `podman pull` {p['podman']['median_ms']} ms "
                     f"(**{p['podman_over_stockade']}x** stockade's; goal >= 1.5x)")
        if "skopeo_umoci" in p:
            line += (f", `skopeo copy` + `umoci unpack` {p['skopeo_umoci']['median_ms']} ms "
                     f"({p['skopeo_umoci_over_stockade']}x)")
        lines += [line + f" (median of {p['stockade']['n']})."]
    if "density" in r:
        d = r["density"]
        lines += [
            f"- {d['sandboxes']} sandboxes on debian-python (daemon): the store "
            f"{d['store_kib'] // 1024} MiB (one copy of the image), everything else in the "
            f"state directory (records, sockets) {d['besides_store_kib'] // 1024} MiB, the "
            f"sandboxes' uppers and scratch space (1 MiB written by each) "
            f"+{d.get('scratch_growth_kib', 0) // 1024} MiB on the scratch filesystem.",
            f"- Page cache after one sandbox reads `{d['big_file']}`: "
            f"+{d['cached_growth_first_kib'] // 1024} MiB; after the other "
            f"{d['sandboxes'] - 1} read it too: +{d['cached_growth_next_kib'] // 1024} MiB "
            f"(MemAvailable -{d['mem_available_drop_first_kib'] // 1024} MiB, then "
            f"-{d['mem_available_drop_next_kib'] // 1024} MiB: sandboxes' own memory "
            "included).",
        ]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stockade", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    subprocess.run([os.path.join(REPO, "tests/images/build.sh")], check=True)
    work = tempfile.mkdtemp(prefix="stockade-images-bench-")
    # The state directories live here: a sandbox's root (an unprivileged
    # host id) must be able to reach their mount point.
    os.chmod(work, 0o755)
    reg = None
    res = {}
    try:
        rounds = 10 if args.quick else 60
        log("start on an image")
        res["start"] = bench_start(args.stockade, work, rounds, 3)
        reg = Registry(work)
        log("pull + unpack against podman and skopeo+umoci")
        res["pull"] = bench_pull(args.stockade, work, reg, 1 if args.quick else 3)
        log("density: sandboxes on one image")
        res["density"] = bench_density(args.stockade, work, 10 if args.quick else 100)
    except Exception as e:  # report what was measured, and the failure
        res["error"] = str(e)
        log(f"failed: {e}")
    finally:
        if reg:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    md = markdown(res)
    if "error" in res:
        md += f"\n(The images benchmark stopped: {res['error']})\n"
    with open(args.md, "w") as f:
        f.write(md)
    return 1 if "error" in res else 0


if __name__ == "__main__":
    sys.exit(main())
