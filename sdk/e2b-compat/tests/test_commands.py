"""Commands through the official SDK (envd's process.Process over Connect)."""

from __future__ import annotations

import pytest
from e2b.exceptions import TimeoutException
from e2b.sandbox.commands.command_handle import CommandExitException

from conftest import wait_for


def test_run_returns_stdout_stderr_and_exit_code(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2; printf 'a\\nb'")
    assert r.stdout == "out\na\nb"
    assert r.stderr == "err\n"
    assert r.exit_code == 0


def test_a_failing_command_raises_with_its_exit_code(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"


def test_envs_cwd_and_callbacks(sandbox):
    seen = []
    r = sandbox.commands.run(
        "echo $GREETING; pwd",
        envs={"GREETING": "hello there"},
        cwd="/tmp",
        on_stdout=seen.append,
    )
    assert r.stdout == "hello there\n/tmp\n"
    assert "".join(seen) == r.stdout


def test_user_root_and_default_user(sandbox):
    assert sandbox.commands.run("id -u").stdout.strip() != "0"
    assert sandbox.commands.run("id -u", user="root").stdout.strip() == "0"
    assert sandbox.commands.run("id -u", user="user").stdout.strip() != "0"


def test_timeout_kills_the_command(sandbox):
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30; echo late > /tmp/late", timeout=1)
    # The command was killed, not left running.
    wait_for(
        lambda: "sleep 30" not in sandbox.commands.run("ps -eo args").stdout,
        "the timed-out command to be gone",
    )
    assert not sandbox.files.exists("/tmp/late")


def test_background_wait_and_list(sandbox):
    h = sandbox.commands.run("sleep 0.5; echo done", background=True)
    assert h.pid > 0
    assert h.pid in [p.pid for p in sandbox.commands.list()]
    r = h.wait()
    assert r.stdout == "done\n"
    assert h.pid not in [p.pid for p in sandbox.commands.list()]


def test_background_kill(sandbox):
    h = sandbox.commands.run("sleep 300", background=True, timeout=0)
    listed = {p.pid: p for p in sandbox.commands.list()}
    assert h.pid in listed and listed[h.pid].cmd == "/bin/bash"
    assert h.kill()
    with pytest.raises(CommandExitException):
        h.wait()
    assert h.pid not in [p.pid for p in sandbox.commands.list()]


def test_send_stdin_and_close(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True, timeout=0)
    sandbox.commands.send_stdin(h.pid, "line one\n")
    h.send_stdin("line two\n")
    sandbox.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "line one\nline two\n"


def test_stdin_is_closed_unless_asked_for(sandbox):
    # Without stdin=True a reader of stdin sees EOF at once.
    assert sandbox.commands.run("cat; echo eof").stdout == "eof\n"


def test_connect_to_a_running_command(sandbox):
    h = sandbox.commands.run("read x; echo got $x", background=True, stdin=True, timeout=0)
    again = sandbox.commands.connect(h.pid)
    sandbox.commands.send_stdin(h.pid, "it\n")
    assert again.wait().stdout == "got it\n"


def test_binary_output_survives(sandbox):
    r = sandbox.commands.run("printf 'caf\\xc3\\xa9'")
    assert r.stdout == "café"
