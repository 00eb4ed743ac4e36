"""PTYs through the official SDK: `sandbox.pty.*` (envd's `Start` with a
`pty`, `pty` input and output, `Update` for the size)."""

from __future__ import annotations

import asyncio
import re

import pytest
from e2b.sandbox.commands.command_handle import CommandExitException, PtySize


class Screen:
    """What a pty printed, read from the handle's event stream up to a
    pattern (the terminal echoes the typed input, so patterns only match
    what a command printed)."""

    def __init__(self, handle) -> None:
        self.events = iter(handle)
        self.data = bytearray()

    def until(self, pattern: bytes) -> re.Match:
        while True:
            m = re.search(pattern, self.data)
            if m:
                return m
            _, _, pty = next(self.events)
            if pty:
                self.data.extend(pty)


def test_pty_runs_a_shell_on_a_terminal_and_resizes(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    screen = Screen(h)

    sandbox.pty.send_stdin(h.pid, b"tty\n")
    assert screen.until(rb"/dev/pts/\d+")

    sandbox.pty.send_stdin(h.pid, b"stty size\n")
    screen.until(rb"\b24 80\b")

    sandbox.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(h.pid, b"stty size\n")
    screen.until(rb"\b30 100\b")

    sandbox.pty.send_stdin(h.pid, b"echo hi-$((1+2))\n")
    sandbox.pty.send_stdin(h.pid, b"exit\n")
    r = h.wait(on_pty=screen.data.extend)
    assert r.exit_code == 0
    assert b"hi-3" in screen.data
    assert h.pid not in [p.pid for p in sandbox.commands.list()]


def test_pty_on_data_callback_async(sandbox):
    from e2b import AsyncSandbox

    async def run() -> bytes:
        sb = await AsyncSandbox.connect(sandbox.sandbox_id)
        got = bytearray()
        h = await sb.pty.create(PtySize(rows=24, cols=80), on_data=got.extend)
        await sb.pty.send_stdin(h.pid, b"echo hi-$((1+2))\n")
        await sb.pty.send_stdin(h.pid, b"exit\n")
        r = await h.wait()
        assert r.exit_code == 0
        return bytes(got)

    assert b"hi-3" in asyncio.run(run())


def test_pty_kill(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=0)
    assert sandbox.pty.kill(h.pid)
    with pytest.raises(CommandExitException):
        h.wait()
    # It is gone: killing it again finds nothing.
    assert not sandbox.pty.kill(h.pid)
    assert h.pid not in [p.pid for p in sandbox.commands.list()]


def test_pty_input_and_resize_need_a_terminal(sandbox):
    from e2b.exceptions import SandboxException

    h = sandbox.commands.run("cat", background=True, stdin=True, timeout=0)
    try:
        with pytest.raises(SandboxException, match="no terminal"):
            sandbox.pty.send_stdin(h.pid, b"x\n")
        with pytest.raises(SandboxException, match="no terminal"):
            sandbox.pty.resize(h.pid, PtySize(rows=30, cols=100))
    finally:
        h.kill()


def test_pty_connect_after_disconnect(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80), timeout=0)
    h.disconnect()
    again = sandbox.pty.connect(h.pid, timeout=0)
    screen = Screen(again)
    sandbox.pty.send_stdin(h.pid, b"echo back-$((40+2))\n")
    screen.until(rb"back-42")
    sandbox.pty.send_stdin(h.pid, b"exit\n")
    assert again.wait().exit_code == 0


def test_pty_size_must_be_at_least_one(sandbox):
    from e2b.exceptions import InvalidArgumentException

    with pytest.raises(InvalidArgumentException, match="rows and cols"):
        sandbox.pty.create(PtySize(rows=0, cols=80))
