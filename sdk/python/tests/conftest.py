"""Fixtures: a real ``stockade serve`` for the session, and a fake daemon.

The real daemon is the binary at ``$STOCKADE_BIN`` (default: the newest
``<repo>/target/<host triple>/debug/stockade``, where the repository's cargo
configuration puts it); nothing is built here. Its tests need
root (sandboxes need it), as CI has.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakedaemon import FakeDaemon  # noqa: E402

from stockade import Client, StockadeError  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


class Daemon:
    """A running ``stockade serve``."""

    def __init__(self, proc: "subprocess.Popen[bytes]", socket: str, log: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.log = log

    def client(self) -> Client:
        return Client(self.socket)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def _default_binary() -> Path:
    built = sorted(REPO.glob("target/*-linux-*/debug/stockade"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else REPO / "target" / "<host triple>" / "debug" / "stockade"


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    binary = Path(os.environ.get("STOCKADE_BIN") or _default_binary())
    if not binary.is_file():
        pytest.fail(f"no stockade binary at {binary}; build it (cargo build -p stockade) or set STOCKADE_BIN")
    if os.geteuid() != 0:
        pytest.skip("the real-daemon tests need root (sandboxes need it); CI runs them as root")
    # Unix socket paths are limited to 108 bytes: keep the directory short.
    tmp = Path(tempfile.mkdtemp(prefix="stk-sdk-"))
    # The sandboxes' own users must traverse it to reach their mounts
    # (mkdtemp makes it 0700).
    tmp.chmod(0o755)
    sock = str(tmp / "s.sock")
    log = tmp / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("STOCKADE_SOCKET", "STOCKADE_STATE_DIR")}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--socket",
                sock,
                "--state-dir",
                str(tmp / "state"),
                # Tests' repositories live under pytest's temporary directory:
                # the one host directory this daemon lets clients name.
                "--allow-bind-root",
                str(tmp_path_factory.getbasetemp()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
        )
    d = Daemon(proc, sock, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"stockade serve exited with {proc.returncode}:\n{d.log_text()}")
            try:
                if Client(sock, timeout=5).health().get("status") == "ok":
                    break
            except StockadeError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"stockade serve did not answer /healthz within 30s:\n{d.log_text()}")
            time.sleep(0.1)
        yield d
        # Destroy what a failed test may have left running.
        try:
            for sb in d.client().list(state="running"):
                d.client().destroy(sb.id)
        except StockadeError:
            pass
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    with tempfile.TemporaryDirectory(prefix="stk-fake-") as tmp:
        srv = FakeDaemon(os.path.join(tmp, "s.sock"))
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()
