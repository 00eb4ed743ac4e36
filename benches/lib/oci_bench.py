"""stockade as an OCI runtime (issue 16), against runc and crun:

(a) `RUNTIME run` of /bin/true on one bundle (the busybox test image
    unpacked by umoci), interleaved rounds: stockade-runc vs runc vs crun
    (goal: stockade-runc <= 0.3x runc, medians);
(b) `podman run --rm --network none` of the same image with each runtime
    (podman with its own root in a temporary directory; the image comes
    from the OCI layout on disk, no registry, no network).

A runtime that does not work here (crun 1.8 refuses hybrid cgroup
layouts; a stockade binary without its runc front) is reported with its
error instead of numbers. Writes Markdown (--md) and raw numbers (--out).
Standard library only. Run as root.
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

IMAGES = os.environ.get("STOCKADE_IMAGES", "/var/cache/stockade-images")
TARGET_VS_RUNC = 0.3


def log(msg):
    print(f"[oci] {msg}", file=sys.stderr, flush=True)


def run(argv, **kw):
    t = time.perf_counter_ns()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, **kw)
    ns = time.perf_counter_ns() - t
    if r.returncode != 0:
        name = os.path.basename(str(argv[0])) if argv[0] != "podman" else "podman"
        raise RuntimeError(f"`{name} {argv[1] if len(argv) > 1 else ''} …` exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()[-300:]}")
    return ns


def summary(xs):
    if not xs:
        return None
    return {"median_ms": round(statistics.median(xs) / 1e6, 2),
            "min_ms": round(min(xs) / 1e6, 2),
            "max_ms": round(max(xs) / 1e6, 2), "n": len(xs)}


def make_bundle(work):
    bundle = os.path.join(work, "bundle")
    subprocess.run(["umoci", "unpack", "--image", f"{IMAGES}/busybox:latest", bundle],
                   check=True, stdout=subprocess.DEVNULL)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    with open(path, "w") as f:
        json.dump(cfg, f)
    return bundle


def runtimes(stockade):
    """name -> path, and name -> why it is left out."""
    found, missing = {}, {}
    for name in ("runc", "crun"):
        p = shutil.which(name)
        if p:
            found[name] = p
        else:
            missing[name] = "not installed"
    if stockade:
        link = os.path.join(os.path.dirname(os.path.abspath(stockade)), "stockade-runc")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(stockade), link)
        r = subprocess.run([link, "--version"], capture_output=True, text=True)
        if r.returncode == 0 and "spec" in r.stdout.lower():
            found["stockade-runc"] = link
        else:
            missing["stockade-runc"] = ("this stockade binary has no runc front yet "
                                        f"(`stockade-runc --version`: {r.stdout.strip()[:80]!r})")
    return found, missing


def bench_run(rts, bundle, work, rounds, warmup):
    samples = {n: [] for n in rts}
    errors = {}
    names = list(rts)
    for i in range(warmup + rounds):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            if name in errors:
                continue
            root = os.path.join(work, "state", name)
            try:
                ns = run([rts[name], "--root", root, "run", "--bundle", bundle,
                          f"bench-{name}-{i}"])
            except RuntimeError as e:
                errors[name] = str(e)
                continue
            if i >= warmup:
                samples[name].append(ns)
    return samples, errors


class Podman:
    def __init__(self, work):
        self.dir = os.path.join(work, "podman")
        for sub in ("root", "runroot", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        p = lambda s: os.path.join(self.dir, s)  # noqa: E731
        with open(p("storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{p("root")}"\n'
                    f'runroot = "{p("runroot")}"\n')
        with open(p("containers.conf"), "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    'log_driver = "k8s-file"\n[engine]\ncgroup_manager = "cgroupfs"\n'
                    f'events_logger = "none"\ntmp_dir = "{p("tmp")}"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=p("containers.conf"),
                        CONTAINERS_STORAGE_CONF=p("storage.conf"), TMPDIR=p("tmp"))
        out = subprocess.run(["podman", "pull", "-q", f"oci:{IMAGES}/busybox:latest"],
                             env=self.env, check=True, capture_output=True, text=True)
        self.image = out.stdout.strip().splitlines()[-1]

    def argv(self, runtime):
        return ["podman", "--runtime", runtime, "run", "--rm", "--network", "none",
                self.image, "/bin/true"]

    def close(self):
        subprocess.run(["podman", "system", "reset", "--force"], env=self.env,
                       capture_output=True)
        # Overlay mounts podman may keep under its root.
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for m in sorted((m for m in mounts if m.startswith(self.dir)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)


def bench_podman(rts, work, rounds, warmup):
    pod = Podman(work)
    samples = {n: [] for n in rts}
    errors = {}
    names = list(rts)
    try:
        for i in range(warmup + rounds):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                if name in errors:
                    continue
                try:
                    ns = run(pod.argv(rts[name]), env=pod.env)
                except RuntimeError as e:
                    errors[name] = str(e)
                    continue
                if i >= warmup:
                    samples[name].append(ns)
    finally:
        pod.close()
    return samples, errors


def table(title, samples, errors, missing):
    lines = [f"| {title} | median ms | min | max | runs |", "|---|---|---|---|---|"]
    for name, xs in samples.items():
        s = summary(xs)
        if s and name not in errors:
            lines.append(f"| {name} | {s['median_ms']} | {s['min_ms']} | {s['max_ms']} | {s['n']} |")
    for name, why in list(errors.items()) + list(missing.items()):
        lines.append(f"| {name} | — | | | failed here: {why.replace('|', '/')} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stockade", help="the stockade binary (stockade-runc is linked beside it)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("OCI_ROUNDS", 100)))
    ap.add_argument("--podman-rounds", type=int,
                    default=int(os.environ.get("OCI_PODMAN_ROUNDS", 15)))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.podman_rounds = 15, 4
    rts, missing = runtimes(args.stockade)
    work = tempfile.mkdtemp(prefix="stockade-oci-bench-")
    try:
        bundle = make_bundle(work)
        log(f"`RUNTIME run` /bin/true: {args.rounds} rounds of {', '.join(rts)}")
        run_s, run_err = bench_run(rts, bundle, work, args.rounds, args.warmup)
        log(f"`podman run --rm`: {args.podman_rounds} rounds")
        pod_s, pod_err = bench_podman(rts, work, args.podman_rounds, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw = {"run": {n: summary(x) for n, x in run_s.items()}, "run_errors": run_err,
           "podman": {n: summary(x) for n, x in pod_s.items()}, "podman_errors": pod_err,
           "missing": missing, "rounds": args.rounds, "podman_rounds": args.podman_rounds}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(raw, f, indent=1)
    s, r = raw["run"].get("stockade-runc"), raw["run"].get("runc")
    if s and r and "stockade-runc" not in run_err:
        ratio = s["median_ms"] / r["median_ms"]
        verdict = "**met**" if ratio <= TARGET_VS_RUNC else "**missed**"
        target = f"| `stockade-runc run` <= {TARGET_VS_RUNC}x `runc run` | {ratio:.2f}x (median) | {verdict} |"
    else:
        target = (f"| `stockade-runc run` <= {TARGET_VS_RUNC}x `runc run` | not measured: "
                  f"{(missing.get('stockade-runc') or run_err.get('stockade-runc', '?')).replace('|', '/')} | — |")
    md = "\n".join([
        "## OCI runtime: stockade-runc vs runc and crun",
        "",
        "`benches/lib/oci_bench.py`: `/bin/true` on one bundle (the busybox test image "
        "unpacked by umoci), each runtime's `run` interleaved round by round; then "
        "`podman run --rm --network none` of the same image with each runtime as "
        "`--runtime`. Wall clock from spawn to reap.",
        "",
        "| target (issue 16) | measured | status |",
        "|---|---|---|",
        target,
        "",
        table(f"`RUNTIME run` ({args.rounds} rounds)", run_s, run_err, missing),
        "",
        table(f"`podman run --rm` ({args.podman_rounds} rounds)", pod_s, pod_err, missing),
    ])
    with open(args.md, "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
