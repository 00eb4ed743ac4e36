"""Fixtures: a real ``stockade serve --e2b-listen`` for the session, and the
environment the official ``e2b`` SDK reads (all traffic to 127.0.0.1).

The binary is ``$STOCKADE_BIN`` (default: the newest
``<target dir>/<host triple>/debug/stockade``); nothing is built here.
Sandboxes need root, as CI has.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[3]

# Templates the tests use besides `base`: a small disk for the disk-full
# test, a short time limit for the timeout-limit test.
TEMPLATES = """
[tiny-disk]
limits = { disk = "16m" }

[short]
limits = { timeout = "2m" }
"""


class Daemon:
    def __init__(self, proc: "subprocess.Popen[bytes]", tmp: Path, port: int, binary: Path) -> None:
        self.proc = proc
        self.tmp = tmp
        self.port = port
        self.binary = binary
        self.url = f"http://127.0.0.1:{port}"
        self.socket = str(tmp / "s.sock")
        self.api_key = (tmp / "state" / "e2b-api-key").read_text().strip()

    def log_text(self) -> str:
        try:
            return (self.tmp / "daemon.log").read_text(errors="replace")
        except OSError:
            return ""

    def ps(self) -> str:
        """`stockade ps` of this daemon: E2B sandboxes are daemon sandboxes."""
        return subprocess.run(
            [str(self.binary), "ps", "--socket", self.socket],
            capture_output=True,
            text=True,
            check=True,
        ).stdout


def _binary() -> Path:
    env = os.environ.get("STOCKADE_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    built = sorted(target.glob("*-linux-*/debug/stockade"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else target / "<host triple>" / "debug" / "stockade"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    req = urllib.request.Request(url + "/health", headers={"E2b-Sandbox-Id": "probe"})
    try:
        with urllib.request.urlopen(req, timeout=2):
            return True
    except urllib.error.HTTPError as e:
        # No sandbox "probe": the listener answers 502, so it is up.
        return e.code == 502
    except Exception:
        return False


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    binary = _binary()
    if not binary.is_file():
        pytest.fail(f"no stockade binary at {binary}; build it (cargo build -p stockade) or set STOCKADE_BIN")
    if os.geteuid() != 0:
        pytest.skip("the E2B compatibility tests need root (sandboxes need it); CI runs them as root")
    tmp = Path(tempfile.mkdtemp(prefix="stk-e2b-"))
    tmp.chmod(0o755)
    (tmp / "token").write_text(secrets.token_hex(32) + "\n")
    (tmp / "templates.toml").write_text(TEMPLATES)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("STOCKADE_SOCKET", "STOCKADE_STATE_DIR")}
    with open(tmp / "daemon.log", "wb") as logf:
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--socket",
                str(tmp / "s.sock"),
                "--state-dir",
                str(tmp / "state"),
                "--token-file",
                str(tmp / "token"),
                "--e2b-listen",
                f"127.0.0.1:{port}",
                "--e2b-templates",
                str(tmp / "templates.toml"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while not _up(f"http://127.0.0.1:{port}"):
            if proc.poll() is not None:
                pytest.fail(f"stockade serve exited with {proc.returncode}:\n{(tmp / 'daemon.log').read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the E2B listener did not answer within 30s:\n{(tmp / 'daemon.log').read_text()}")
            time.sleep(0.1)
        d = Daemon(proc, tmp, port, binary)
        # What docs/e2b.md tells users to set: the SDK sends everything to
        # stockade (the API, and envd routed by the E2b-Sandbox-Id header).
        os.environ["E2B_API_URL"] = d.url
        os.environ["E2B_SANDBOX_URL"] = d.url
        os.environ["E2B_API_KEY"] = d.api_key
        os.environ.pop("E2B_DEBUG", None)
        os.environ.pop("E2B_DOMAIN", None)
        yield d
        # Sandboxes outlive the daemon by design: destroy what a failed
        # test left running.
        from e2b import Sandbox

        for info in Sandbox.list().next_items():
            try:
                Sandbox.kill(info.sandbox_id)
            except Exception:
                pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def sandbox(daemon: Daemon):
    from e2b import Sandbox

    sb = Sandbox.create(timeout=300)
    try:
        yield sb
    finally:
        try:
            sb.kill()
        except Exception:
            pass


def wait_for(pred, what: str, limit: float = 30.0):
    """Polls ``pred`` until it is true (no wall-clock assertion: the limit
    only stops a hung test)."""
    deadline = time.monotonic() + limit
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)
