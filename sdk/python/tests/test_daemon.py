"""The SDK against a real ``stockade serve`` (needs root; see conftest)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from conftest import Daemon

from stockade import Client, Event, OutputChunk, Sandbox, StockadeError


@pytest.fixture
def sb(daemon: Daemon) -> Iterator[Sandbox]:
    with Sandbox(memory="1G", cpus=1, timeout="10m", net="none", ttl="10m", socket=daemon.socket) as s:
        yield s


def test_context_manager_creates_and_destroys(daemon: Daemon) -> None:
    tag = uuid.uuid4().hex[:8]
    with Sandbox(
        memory="2G", cpus=1, timeout="10m", net="none", ttl="30m", labels={"suite": tag}, socket=daemon.socket
    ) as sb:
        assert len(sb.id) == 12
        assert sb.info.state == "running" and sb.labels == {"suite": tag}
        assert sb.info.policy["limits"]["memory"] == "2G"
        assert sb.info.policy["network"]["mode"] == "none"
        assert sb.info.expires_at is not None
        st = sb.status()
        assert st.running and st.usage is not None and st.processes is not None
    after = daemon.client().get(sb.id)
    assert after.state == "destroyed" and after.ended_at is not None


def test_full_policy_dict(daemon: Daemon) -> None:
    policy = {"limits": {"pids": 128}, "process": {"hostname": "sdkbox"}}
    with Sandbox(policy=policy, memory="1G", socket=daemon.socket) as sb:
        assert sb.info.policy["limits"]["pids"] == 128 and sb.info.policy["limits"]["memory"] == "1G"
        assert sb.process.run(["hostname"]).stdout.strip() == "sdkbox"


def test_invalid_policy_is_a_400(daemon: Daemon) -> None:
    with pytest.raises(StockadeError) as ei:
        Sandbox(policy={"limits": {"bogus": 1}}, socket=daemon.socket)
    assert ei.value.status == 400 and ei.value.code == "invalid_request" and "bogus" in ei.value.message


def test_run_exit_code_and_output(sb: Sandbox) -> None:
    r = sb.process.run(["python3", "-c", "print(1)"], timeout=30)
    assert (r.exit_code, r.outcome, r.stdout, r.ok) == (0, "exited", "1\n", True)
    r = sb.process.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.exit_code, r.signal, r.outcome) == (3, None, "exited")
    assert (r.stdout, r.stderr, r.truncated) == ("out\n", "err\n", False)
    assert r.pid is not None and r.duration_seconds >= 0


def test_run_env_cwd_stdin_and_shell_string(sb: Sandbox) -> None:
    r = sb.process.run('echo "$FOO"; pwd; cat', env={"FOO": "bar"}, cwd="/tmp", stdin="piped")
    assert r.stdout == "bar\n/tmp\npiped"


def test_run_timeout(sb: Sandbox) -> None:
    t0 = time.monotonic()
    r = sb.process.run(["sleep", "30"], timeout="500ms")
    assert r.outcome == "timeout" and r.signal == 9 and r.exit_code is None
    assert time.monotonic() - t0 < 10
    r = sb.process.run(["sleep", "30"], timeout=0.5, on_stdout=lambda s: None)
    assert r.outcome == "timeout"


def test_on_stdout_gets_streamed_chunks(sb: Sandbox) -> None:
    seen: List[Tuple[str, str, float]] = []
    t0 = time.monotonic()
    r = sb.process.run(
        ["sh", "-c", "echo a; sleep 1; echo b >&2; sleep 1; echo c"],
        on_stdout=lambda s: seen.append(("out", s, time.monotonic() - t0)),
        on_stderr=lambda s: seen.append(("err", s, time.monotonic() - t0)),
    )
    assert [(k, s) for k, s, _ in seen] == [("out", "a\n"), ("err", "b\n"), ("out", "c\n")]
    # "a" came while the command still ran, not at its end.
    assert seen[-1][2] - seen[0][2] > 1.5
    assert (r.exit_code, r.outcome, r.stdout, r.stderr) == (0, "exited", "a\nc\n", "b\n")


def test_background_stdin_and_wait(sb: Sandbox) -> None:
    p = sb.process.start(["sh", "-c", 'while read l; do echo "got:$l"; done; echo bye'])
    assert p.pid > 0
    p.send_stdin("x\n")
    p.send_stdin(b"y\n", eof=True)
    r = p.wait(timeout=30)
    assert (r.exit_code, r.outcome, r.stdout) == (0, "exited", "got:x\ngot:y\nbye\n")
    assert p.result == r
    with pytest.raises(StockadeError) as ei:
        p.send_stdin("late")
    assert ei.value.status == 409


def test_background_signal_list_and_output(sb: Sandbox) -> None:
    p = sb.process.start(["sh", "-c", "echo started; echo warn >&2; exec sleep 100"])
    # Wait until it printed, by following its output.
    chunks: List[OutputChunk] = []
    for chunk in p.output(timeout=30):
        chunks.append(chunk)
        if "".join(t for s, t in chunks if s == "stdout") == "started\n" and any(s == "stderr" for s, _ in chunks):
            break
    procs = {i.pid: i for i in sb.process.list()}
    assert p.pid in procs
    assert procs[p.pid].running and procs[p.pid].background and procs[p.pid].via_api
    p.signal("TERM")
    r = p.wait(timeout=30)
    assert (r.outcome, r.signal, r.exit_code) == ("signaled", 15, None)
    assert r.stdout == "started\n" and r.stderr == "warn\n"
    # The output can be followed again after the end: replay, then exit.
    replay = list(p.output(timeout=30))
    assert "".join(t for s, t in replay if s == "stdout") == "started\n"
    assert "".join(t for s, t in replay if s == "stderr") == "warn\n"
    assert p.result is not None and p.result.outcome == "signaled"
    with pytest.raises(StockadeError) as ei:
        p.signal("KILL")
    assert ei.value.status == 409


def test_top_lists_every_process_with_its_pid_and_user_inside(sb: Sandbox) -> None:
    # A process the API did not start (forked by a shell started through
    # it), found by its unique duration.
    dur = f"300.{uuid.uuid4().int % 10**6:06d}"
    shell = sb.process.start(["sh", "-c", f"sleep {dur} & wait"])
    mine = None
    for _ in range(300):
        top = sb.process.top()
        mine = next((p for p in top if p.cmd == ["sleep", dur]), None)
        if mine is not None:
            break
        time.sleep(0.01)
    assert mine is not None, [p.cmd for p in top]
    assert (mine.user, mine.uid) == ("agent", 1000)
    assert mine.pid > 1 and mine.ppid == shell.pid
    assert mine.pid != mine.host_pid
    assert mine.state in ("S", "R")
    assert [p.cmd for p in top if p.pid == 1] != []
    # The host pid is the same process, seen from the host.
    with open(f"/proc/{mine.host_pid}/cmdline", "rb") as f:
        assert f.read() == f"sleep\0{dur}\0".encode()
    assert [p.pid for p in top] == sorted(p.pid for p in top)
    # What it holds now: init, the shell and the sleep at least.
    current = sb.status().current
    assert current is not None and current["pids"] >= 3 and current["memory_bytes"] > 0
    shell.kill()


def test_files(sb: Sandbox) -> None:
    assert sb.files.write("/workspace/a.txt", "héllo\n") is True
    assert sb.files.write("/workspace/a.txt", b"\x00\xffbin") is False
    assert sb.files.read("/workspace/a.txt") == b"\x00\xffbin"
    assert sb.files.write("/workspace/sub dir/b.txt", "text") is True  # parents created
    assert sb.files.read_text("/workspace/sub dir/b.txt") == "text"
    entries = {e.name: e for e in sb.files.list("/workspace")}
    assert entries["a.txt"].type == "file" and entries["a.txt"].size == 5
    assert entries["sub dir"].is_dir
    # The sandbox sees what was written.
    assert sb.process.run(["cat", "/workspace/sub dir/b.txt"]).stdout == "text"
    sb.files.remove("/workspace/sub dir/b.txt")
    sb.files.remove("/workspace/sub dir")
    assert "sub dir" not in {e.name for e in sb.files.list("/workspace")}
    with pytest.raises(StockadeError) as ei:
        sb.files.read("/workspace/sub dir/b.txt")
    assert (ei.value.status, ei.value.code) == (404, "not_found")
    assert sb.files.exists("/workspace/a.txt") and not sb.files.exists("/workspace/nope")


def test_path_traversal_is_refused(sb: Sandbox) -> None:
    with pytest.raises(StockadeError) as ei:
        sb.files.read("../../etc/shadow")
    assert 400 <= ei.value.status < 500
    with pytest.raises(StockadeError) as ei:
        sb.files.write("../../tmp/escaped", b"x")
    assert 400 <= ei.value.status < 500
    # Absolute paths with .. stay inside the sandbox's root.
    with open("/etc/shadow", "rb") as f:
        host_shadow = f.read()
    try:
        got = sb.files.read("/workspace/../../../etc/shadow")
    except StockadeError as e:
        assert 400 <= e.status < 500
    else:
        assert got != host_shadow


def test_read_only_paths(sb: Sandbox) -> None:
    with pytest.raises(StockadeError) as ei:
        sb.files.write("/usr/stockade-sdk-test", b"x")
    assert ei.value.status == 403


def test_list_and_connect(daemon: Daemon) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"sdk-{tag}"
    with Sandbox(name=name, labels={"suite": tag, "kind": "a"}, socket=daemon.socket) as sb:
        with Sandbox(labels={"suite": tag, "kind": "b"}, socket=daemon.socket) as other:
            ids = [s.id for s in Sandbox.list(labels={"suite": tag}, socket=daemon.socket)]
            assert sorted(ids) == sorted([sb.id, other.id])
            only_a = Sandbox.list(labels={"suite": tag, "kind": "a"}, state="running", socket=daemon.socket)
            assert [s.id for s in only_a] == [sb.id] and only_a[0].name == name
        assert Sandbox.list(labels={"suite": tag}, state="destroyed", socket=daemon.socket)[0].id == other.id

        with Sandbox.connect(sb.id, socket=daemon.socket) as again:
            assert again.id == sb.id and again.name == name
            assert again.process.run(["echo", "hi"]).stdout == "hi\n"
        assert sb.status().running  # connect does not destroy on exit
        by_name = Sandbox.connect(name, socket=daemon.socket)
        assert by_name.id == sb.id
    assert daemon.client().get(sb.id).state == "destroyed"


def test_duplicate_name_is_a_conflict(daemon: Daemon) -> None:
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    with Sandbox(name=name, socket=daemon.socket):
        with pytest.raises(StockadeError) as ei:
            Sandbox(name=name, socket=daemon.socket)
        assert (ei.value.status, ei.value.code) == (409, "conflict")


def test_errors_for_unknown_ids(daemon: Daemon) -> None:
    with pytest.raises(StockadeError) as ei:
        Sandbox.connect("000000000000", socket=daemon.socket)
    assert (ei.value.status, ei.value.code) == (404, "not_found")
    assert ei.value.message
    c = daemon.client()
    for call in (
        lambda: c.destroy("000000000000"),
        lambda: c.exec("000000000000", ["true"]),
        lambda: c.read_file("no-such-name", "/workspace/a"),
    ):
        with pytest.raises(StockadeError) as ei:
            call()
        assert ei.value.status == 404


def test_unknown_process(sb: Sandbox) -> None:
    with pytest.raises(StockadeError) as ei:
        sb.process.get(99999).signal("TERM")
    assert ei.value.status == 404
    with pytest.raises(StockadeError) as ei:
        sb.process.get(99999).wait(timeout=10)
    assert ei.value.status == 404


def test_kill_returns_the_report(daemon: Daemon) -> None:
    sb = Sandbox(socket=daemon.socket)
    sb.process.run(["true"])
    report = sb.kill()
    assert report["id"] == sb.id
    assert "usage" in report
    assert sb.info.state == "destroyed"
    assert sb.kill()["id"] == sb.id  # idempotent
    with pytest.raises(StockadeError) as ei:
        sb.process.run(["true"])
    assert (ei.value.status, ei.value.code) == (409, "conflict")


def test_events(sb: Sandbox) -> None:
    got: List[Event] = []
    stream = sb.events()

    def follow() -> None:
        for ev in stream:
            got.append(ev)
            if ev.type == "exec-exited":
                break

    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.3)  # the stream starts at the moment of the request
    sb.process.run(["true"])
    t.join(timeout=15)
    stream.close()
    t.join(timeout=5)
    types = [e.type for e in got]
    assert "exec-started" in types and "exec-exited" in types, types
    assert all(e.sandbox_id == sb.id and e.time > 0 for e in got)


def test_health(daemon: Daemon) -> None:
    h = Client(daemon.socket).health()
    assert h["status"] == "ok"


def test_large_output_truncated_unless_streamed(sb: Sandbox) -> None:
    cmd = ["python3", "-c", "import sys\nfor i in range(3000): sys.stdout.write('%04d' % i + 'x' * 995 + '\\n')"]
    r = sb.process.run(cmd)
    assert r.truncated and r.exit_code == 0
    assert len(r.stdout) <= 1024 * 1024 and r.stdout.endswith("2999" + "x" * 995 + "\n")
    n = [0]

    def count(s: str) -> None:
        n[0] += len(s)

    r = sb.process.run(cmd, on_stdout=count)
    # The streamed result is exactly what the callbacks got. It is at
    # least the kept 1 MiB, but a reader lagging more than 1 MiB behind a
    # fast writer misses the oldest chunks: the daemon streams from the
    # same ring it keeps, and its exit event has no `truncated` flag.
    assert n[0] == len(r.stdout) >= 1024 * 1024
    assert r.stdout.endswith("2999" + "x" * 995 + "\n") and r.exit_code == 0


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )
    return out.stdout


def test_run_task_returns_the_agents_patch(daemon: Daemon, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    result = Sandbox.run_task(
        str(repo),
        'echo "$STOCKADE_TASK" >> a.txt; echo new > b.txt',
        task="two",
        timeout=120,
        socket=daemon.socket,
    )
    assert result.state == "done", result
    assert result.outcome == "exited" and result.exit_code == 0
    assert result.files_changed == 2
    assert result.base_commit == _git(repo, "rev-parse", "HEAD").strip()
    patch = result.patch.decode()
    assert "+two" in patch and "+new" in patch
    # The patch applies to the base commit.
    check = subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=result.patch)
    assert check.returncode == 0


def test_run_task_reports_a_missing_ref(daemon: Daemon, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "init")
    result = Sandbox.run_task(str(repo), "true", ref="no-such-ref", timeout=120, socket=daemon.socket)
    assert result.outcome == "error"
    assert result.error and "no-such-ref" in result.error


def test_binary_output_and_stdin_keep_every_byte_value(sb: Sandbox) -> None:
    every = bytes(range(256))
    # Output only.
    r = sb.process.run(["python3", "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"])
    assert r.stdout_bytes == every
    assert r.stdout == every.decode("utf-8", "replace")
    # Through stdin and back, on both streams, with and without streaming.
    script = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d); sys.stderr.buffer.write(d[::-1])"
    r = sb.process.run(["python3", "-c", script], stdin=every)
    assert (r.stdout_bytes, r.stderr_bytes) == (every, every[::-1])
    seen: List[str] = []
    r = sb.process.run(["python3", "-c", script], stdin=every, on_stdout=seen.append)
    assert (r.stdout_bytes, r.stderr_bytes) == (every, every[::-1])
    assert "".join(seen) == every.decode("utf-8", "replace")
    # A background process: stdin as bytes, output gathered by wait().
    p = sb.process.start(["python3", "-c", script], stdin=every)
    p.close_stdin()
    r = p.wait(timeout=30)
    assert (r.stdout_bytes, r.stderr_bytes) == (every, every[::-1])
