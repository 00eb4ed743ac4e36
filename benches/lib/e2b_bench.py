"""The E2B-compatible listener (issue 17), measured against its goal.

One cycle is what an agent platform written for E2B does for each task:
`Sandbox.create()` -> `commands.run("true")` -> `kill()`, through the
official `e2b` SDK, unmodified, against `stockade serve --e2b-listen` on
127.0.0.1. The same cycle through stockade's own SDK (`Sandbox()` ->
`process.run(["true"])` -> `kill()`) on the same daemon is the reference;
the two alternate round by round. Goal: a median of at most 20 ms through
the E2B SDK on this machine (E2B's cloud publishes about 150 ms).

Run it with a Python that has both SDKs (`pip install e2b==<pinned>
-e sdk/python`), as root:

    python3 benches/lib/e2b_bench.py --stockade target/.../release/stockade
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def log(msg):
    print(f"[e2b] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def summary(xs):
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return {"median_ms": round(statistics.median(xs) * 1e3, 2),
            "p90_ms": round(p90 * 1e3, 2), "n": len(xs)}


def start_daemon(sk, work):
    token = os.path.join(work, "token")
    with open(token, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    port = free_port()
    sock = os.path.join(work, "s.sock")
    state = os.path.join(work, "state")
    logf = open(os.path.join(work, "daemon.log"), "wb")
    proc = subprocess.Popen(
        [sk, "serve", "--socket", sock, "--state-dir", state, "--token-file", token,
         "--e2b-listen", f"127.0.0.1:{port}", "--log-format", "none"],
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    key_file = os.path.join(state, "e2b-api-key")
    for _ in range(100):
        if os.path.exists(key_file):
            break
        time.sleep(0.05)
    with open(key_file) as f:
        key = f.read().strip()
    os.environ["E2B_API_URL"] = url
    os.environ["E2B_SANDBOX_URL"] = url
    os.environ["E2B_API_KEY"] = key
    os.environ.pop("E2B_DOMAIN", None)
    os.environ.pop("E2B_DEBUG", None)
    return proc, sock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stockade", required=True)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out")
    ap.add_argument("--md")
    args = ap.parse_args()
    import e2b  # noqa: F401  (fail early without the SDK)
    from e2b import Sandbox as E2bSandbox
    import stockade

    work = tempfile.mkdtemp(prefix="stk-e2b-bench-")
    os.chmod(work, 0o755)
    proc, sock = start_daemon(os.path.abspath(args.stockade), work)
    e2b_times, own_times = [], []
    try:
        for i in range(args.warmup + args.rounds):
            t = time.perf_counter()
            sb = E2bSandbox.create()
            r = sb.commands.run("true")
            sb.kill()
            e = time.perf_counter() - t
            assert r.exit_code == 0
            t = time.perf_counter()
            own = stockade.Sandbox(socket=sock)
            r2 = own.process.run(["true"])
            own.kill()
            o = time.perf_counter() - t
            assert r2.exit_code == 0
            if i >= args.warmup:
                e2b_times.append(e)
                own_times.append(o)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    res = {"e2b_sdk": summary(e2b_times), "stockade_sdk": summary(own_times)}
    res["ratio_median"] = round(res["e2b_sdk"]["median_ms"] / res["stockade_sdk"]["median_ms"], 2)
    md = ("## E2B SDK against `stockade serve --e2b-listen`\n\n"
          f"- `Sandbox.create()` -> `commands.run(\"true\")` -> `kill()` through the official "
          f"`e2b` SDK: median {res['e2b_sdk']['median_ms']} ms, p90 {res['e2b_sdk']['p90_ms']} ms "
          f"(goal: median <= 20 ms); the same cycle through stockade's own SDK on the same "
          f"daemon: median {res['stockade_sdk']['median_ms']} ms, p90 "
          f"{res['stockade_sdk']['p90_ms']} ms ({res['ratio_median']}x; "
          f"{res['e2b_sdk']['n']} rounds each, alternating).\n")
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md, file=sys.stderr)


if __name__ == "__main__":
    main()
