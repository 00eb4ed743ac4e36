"""The SDK's HTTP, JSON and SSE plumbing, against a fake daemon (no root)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from typing import Any, Dict, List, Tuple, Union

import pytest
from fakedaemon import FakeDaemon, Reply, Request, error_reply, json_reply

from stockade import (
    Client,
    FileEntry,
    OutputChunk,
    Sandbox,
    StockadeConnectionError,
    StockadeError,
    build_policy,
)

SID = "0123456789ab"


def sandbox_doc(**over: Any) -> Dict[str, Any]:
    doc: Dict[str, Any] = {
        "id": SID,
        "name": None,
        "state": "running",
        "labels": {},
        "policy": {},
        "created_at": 1.5,
        "expires_at": None,
        "ended_at": None,
    }
    doc.update(over)
    return doc


REPORT = {"id": SID, "outcome": "destroyed", "usage": {"wall_seconds": 1.0}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def with_sandbox(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/sandboxes", json_reply(201, sandbox_doc()))
    fake.route("GET", f"/v1/sandboxes/{SID}", json_reply(200, sandbox_doc(usage={"cpu_seconds": 0.1}, current={"memory_bytes": 4096, "pids": 2})))
    fake.route(
        "DELETE",
        f"/v1/sandboxes/{SID}",
        json_reply(200, sandbox_doc(state="destroyed", ended_at=3.0, report=REPORT)),
    )


def test_build_policy_merges_shortcuts_into_the_policy() -> None:
    assert build_policy() is None
    assert build_policy({}) == {}
    assert build_policy(memory="2G", cpus=1, timeout="10m", net="none") == {
        "limits": {"memory": "2G", "cpus": 1, "timeout": "10m"},
        "network": {"mode": "none"},
    }
    base = {"limits": {"pids": 64, "memory": "1G"}, "process": {"cwd": "/tmp"}}
    merged = build_policy(base, memory="2G", net="allowlist")
    assert merged == {
        "limits": {"pids": 64, "memory": "2G"},
        "process": {"cwd": "/tmp"},
        "network": {"mode": "allowlist"},
    }
    assert base["limits"] == {"pids": 64, "memory": "1G"}  # not modified


def test_create_sends_the_policy_and_destroys_on_exit(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    with Sandbox(
        memory="2G", cpus=1, timeout="10m", net="none", ttl="30m", name="web", labels={"team": "a"}, socket=fake.socket
    ) as sb:
        assert sb.id == SID
        assert sb.info.state == "running"
    create, delete = fake.requests
    assert (create.method, create.path) == ("POST", "/v1/sandboxes")
    assert create.headers["content-type"] == "application/json"
    assert create.json() == {
        "policy": {"limits": {"memory": "2G", "cpus": 1, "timeout": "10m"}, "network": {"mode": "none"}},
        "name": "web",
        "labels": {"team": "a"},
        "ttl": "30m",
    }
    assert (delete.method, delete.path) == ("DELETE", f"/v1/sandboxes/{SID}")
    assert sb.info.state == "destroyed"


def test_no_options_sends_an_empty_body(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    Sandbox(socket=fake.socket)
    assert fake.requests[0].json() == {}


def test_kill_returns_the_report_and_status_fetches(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    sb = Sandbox(socket=fake.socket)
    st = sb.status()
    assert st.usage == {"cpu_seconds": 0.1} and st.current == {"memory_bytes": 4096, "pids": 2}
    assert sb.kill() == REPORT
    assert sb.info.report == REPORT and sb.info.ended_at == 3.0


def test_api_errors_raise_stockade_error(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/sandboxes", error_reply(409, "conflict", "a running sandbox is named web"))
    with pytest.raises(StockadeError) as ei:
        Sandbox(name="web", socket=fake.socket)
    e = ei.value
    assert (e.status, e.code, e.message) == (409, "conflict", "a running sandbox is named web")
    assert "409" in str(e) and "conflict" in str(e)


def test_non_json_errors_still_raise(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/sandboxes/x", Reply(502, b"bad gateway"))
    with pytest.raises(StockadeError) as ei:
        Client(fake.socket).get("x")
    assert ei.value.status == 502 and ei.value.code == "unknown" and "bad gateway" in ei.value.message


def test_unreachable_socket(tmp_path: Any) -> None:
    with pytest.raises(StockadeConnectionError) as ei:
        Client(str(tmp_path / "nothing.sock")).health()
    assert ei.value.status == 0 and ei.value.code == "unreachable"
    assert "stockade serve" in ei.value.message


def test_socket_from_environment(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.route("GET", "/healthz", json_reply(200, {"status": "ok"}))
    monkeypatch.setenv("STOCKADE_SOCKET", fake.socket)
    assert Client().health() == {"status": "ok"}


def test_list_and_connect(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    fake.route("GET", "/v1/sandboxes", json_reply(200, {"sandboxes": [sandbox_doc(labels={"team": "a b"})]}))
    got = Sandbox.list(labels={"team": "a b", "x": "1"}, state="running", socket=fake.socket)
    assert [s.id for s in got] == [SID] and got[0].labels == {"team": "a b"}
    assert fake.requests[0].query == [("label", "team=a b"), ("label", "x=1"), ("state", "running")]
    with Sandbox.connect(SID, socket=fake.socket) as sb:
        assert sb.id == SID
    assert [r.method for r in fake.requests] == ["GET", "GET"]  # no DELETE


def test_exec_json(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    answer = {
        "pid": 2,
        "exit_code": 3,
        "signal": None,
        "outcome": "exited",
        "error": None,
        "duration_seconds": 0.25,
        "stdout": b64(b"hi\n\xff"),
        "stderr": b64(b"err\n"),
        "truncated": False,
    }
    fake.route("POST", f"/v1/sandboxes/{SID}/exec", json_reply(200, answer))
    sb = Sandbox(socket=fake.socket)
    r = sb.process.run("echo hi; exit 3", timeout=30, env={"A": "1"}, cwd="/tmp", stdin=b"in\x80")
    assert (r.exit_code, r.signal, r.outcome, r.stdout, r.stderr, r.truncated) == (
        3,
        None,
        "exited",
        "hi\n\ufffd",
        "err\n",
        False,
    )
    assert (r.stdout_bytes, r.stderr_bytes) == (b"hi\n\xff", b"err\n")
    assert r.pid == 2 and r.duration_seconds == 0.25 and not r.ok
    req = fake.requests[-1]
    assert "text/event-stream" not in req.headers.get("accept", "")
    assert req.json() == {
        "cmd": ["sh", "-c", "echo hi; exit 3"],
        "env": {"A": "1"},
        "cwd": "/tmp",
        "timeout": 30,
        "stdin": b64(b"in\x80"),
        "encoding": "base64",
    }


def test_exec_stream_calls_back_as_chunks_arrive(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    events: List[Union[Tuple[str, str, float], str]] = [
        ("start", json.dumps({"pid": 7}), 0.0),
        ("stdout", json.dumps({"data": b64(b"one\n")}), 0.0),
        ":\n\n",  # keep-alive comment
        ("stderr", json.dumps({"data": b64(b"warn\n")}), 0.0),
        'event: stdout\r\ndata: {"data": "%s"}\r\n\r\n' % b64(b"two\n"),  # CRLF lines
        ("stdout", json.dumps({"data": b64("three é\n".encode())}), 0.4),
        ("exit", json.dumps({"exit_code": None, "signal": 9, "outcome": "timeout", "duration_seconds": 0.5}), 0.0),
    ]
    fake.route("POST", f"/v1/sandboxes/{SID}/exec", Reply(200, sse=events))
    sb = Sandbox(socket=fake.socket)
    seen: List[Tuple[str, str, float]] = []
    t0 = time.monotonic()
    r = sb.process.run(
        ["prog"],
        on_stdout=lambda s: seen.append(("out", s, time.monotonic() - t0)),
        on_stderr=lambda s: seen.append(("err", s, time.monotonic() - t0)),
    )
    assert fake.requests[-1].headers["accept"] == "text/event-stream"
    assert fake.requests[-1].json()["encoding"] == "base64"
    assert [(k, s) for k, s, _ in seen] == [("out", "one\n"), ("err", "warn\n"), ("out", "two\n"), ("out", "three é\n")]
    # The first chunks were handed over before the stream ended.
    assert seen[0][2] < 0.3 < seen[-1][2]
    assert (r.pid, r.outcome, r.signal, r.exit_code) == (7, "timeout", 9, None)
    assert r.stdout == "one\ntwo\nthree é\n" and r.stderr == "warn\n"


def test_exec_stream_cut_short_raises(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    fake.route("POST", f"/v1/sandboxes/{SID}/exec", Reply(200, sse=[("start", '{"pid": 1}', 0.0)]))
    sb = Sandbox(socket=fake.socket)
    with pytest.raises(StockadeConnectionError):
        sb.process.run(["x"], on_stdout=lambda s: None)


def test_multiline_data_and_unnamed_events(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/events", Reply(200, sse=["data: a\ndata: b\n\n", "event: x\ndata:c\n\n"]))
    stream = Client(fake.socket).transport.sse("GET", "/v1/events")
    evs = list(stream)
    assert [(e.event, e.data) for e in evs] == [("message", "a\nb"), ("x", "c")]
    assert stream.closed


def test_background_process(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    base = f"/v1/sandboxes/{SID}/processes/9"
    fake.route("POST", f"/v1/sandboxes/{SID}/exec", json_reply(202, {"pid": 9}))
    fake.route("POST", base + "/stdin", json_reply(200, {"pid": 9, "written": 3, "stdin_open": True}))
    fake.route("POST", base + "/signal", json_reply(200, {"pid": 9, "signal": 15}))
    out = [
        ("start", '{"pid": 9}', 0.0),
        ("stdout", json.dumps({"data": b64(b"a")}), 0.0),
        ("stderr", json.dumps({"data": b64(b"b")}), 0.0),
        ("stdout", json.dumps({"data": b64(b"c\xfe")}), 0.0),
        ("exit", '{"exit_code": null, "signal": 15, "outcome": "signaled", "duration_seconds": 1}', 0.0),
    ]
    fake.route("GET", base + "/output", Reply(200, sse=out))
    fake.route(
        "GET",
        f"/v1/sandboxes/{SID}/processes",
        json_reply(
            200,
            {
                "processes": [
                    {
                        "pid": 9,
                        "cmd": ["cat"],
                        "running": True,
                        "exit_code": None,
                        "signal": None,
                        "background": True,
                        "via_api": True,
                    }
                ]
            },
        ),
    )
    sb = Sandbox(socket=fake.socket)
    p = sb.process.start(["cat"], stdin="x")
    assert p.pid == 9
    assert fake.requests[-1].json() == {"cmd": ["cat"], "stdin": "x", "background": True}
    p.send_stdin("hé")
    req = fake.requests[-1]
    assert (req.query, req.body, req.headers["content-type"]) == ([], "hé".encode(), "application/octet-stream")
    p.send_stdin(b"\x00\xff", eof=True)
    assert fake.requests[-1].query == [("eof", "true")] and fake.requests[-1].body == b"\x00\xff"
    p.signal("TERM")
    assert fake.requests[-1].json() == {"signal": "TERM"}
    p.signal(15)
    assert fake.requests[-1].json() == {"signal": 15}
    procs = sb.process.list()
    assert procs[0].pid == 9 and procs[0].background and procs[0].via_api and procs[0].cmd == ["cat"]
    assert list(p.output()) == [
        OutputChunk("stdout", "a"),
        OutputChunk("stderr", "b"),
        OutputChunk("stdout", "c\ufffd"),
    ]
    assert fake.requests[-1].query == [("encoding", "base64")]
    assert p.result is not None and p.result.outcome == "signaled"
    r = p.wait()
    assert (r.stdout, r.stderr, r.signal, r.pid) == ("ac\ufffd", "b", 15, 9)
    assert r.stdout_bytes == b"ac\xfe"


def test_top_reads_the_top_route(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    row = {
        "pid": 7,
        "host_pid": 4242,
        "ppid": 1,
        "uid": 1000,
        "user": "agent",
        "state": "S",
        "cpu_seconds": 0.5,
        "cpu_percent": 1.25,
        "rss_bytes": 4096,
        "elapsed_seconds": 40.0,
        "cmd": ["sleep", "100"],
        "later": True,
    }
    fake.route("GET", f"/v1/sandboxes/{SID}/top", json_reply(200, {"processes": [row]}))
    sb = Sandbox(socket=fake.socket)
    (p,) = sb.process.top()
    assert fake.requests[-1].path == f"/v1/sandboxes/{SID}/top"
    assert (p.pid, p.host_pid, p.ppid, p.uid, p.user, p.state) == (7, 4242, 1, 1000, "agent", "S")
    assert (p.cpu_seconds, p.cpu_percent, p.rss_bytes, p.cmd) == (0.5, 1.25, 4096, ["sleep", "100"])
    assert p.raw["later"] is True


def test_wait_timeout(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    slow = [("start", '{"pid": 4}', 0.0), ("stdout", json.dumps({"data": b64(b"x")}), 3.0)]
    fake.route("GET", f"/v1/sandboxes/{SID}/processes/4/output", Reply(200, sse=slow))
    sb = Sandbox(socket=fake.socket)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        sb.process.get(4).wait(timeout=0.5)
    assert time.monotonic() - t0 < 2.5


def test_files(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    path = f"/v1/sandboxes/{SID}/files"
    store: Dict[str, bytes] = {}

    def files(req: Request) -> Reply:
        q = dict(req.query)
        if req.method == "PUT":
            new = q["path"] not in store
            store[q["path"]] = req.body
            return json_reply(201 if new else 200, {"path": q["path"], "size": len(req.body), "created": new})
        if req.method == "DELETE":
            store.pop(q["path"])
            return json_reply(200, {"path": q["path"], "deleted": True})
        if q.get("list") == "true":
            entries = [
                {"name": "a b.txt", "type": "file", "size": 3, "mode": "0644", "mtime": 5},
                {"name": "d", "type": "dir", "size": 0, "mode": "0755", "mtime": 6},
            ]
            return json_reply(200, {"path": q["path"], "entries": entries})
        if q["path"] not in store:
            return error_reply(404, "not_found", "no such file")
        return Reply(200, store[q["path"]], {"Content-Type": "application/octet-stream"})

    for m in ("GET", "PUT", "DELETE"):
        fake.route(m, path, files)
    sb = Sandbox(socket=fake.socket)
    name = "/workspace/a b&c=d/é?.txt"
    assert sb.files.write(name, "héllo") is True
    assert fake.requests[-1].query == [("path", name)]
    assert sb.files.write(name, b"\x00\x01") is False
    assert sb.files.read(name) == b"\x00\x01"
    big = os.urandom(3 * 1024 * 1024)
    sb.files.write("/workspace/big", big)
    assert sb.files.read("/workspace/big") == big
    entries = sb.files.list("/workspace")
    assert entries[0] == FileEntry("a b.txt", "file", 3, "0644", 5)
    assert entries[1].is_dir
    assert fake.requests[-1].query == [("path", "/workspace"), ("list", "true")]
    sb.files.remove(name)
    with pytest.raises(StockadeError) as ei:
        sb.files.read(name)
    assert ei.value.status == 404


def test_events(fake: FakeDaemon) -> None:
    with_sandbox(fake)
    evs = [
        ("created", json.dumps({"sandbox_id": SID, "type": "created", "time": 1.0, "name": None}), 0.0),
        (
            "exec-started",
            json.dumps({"sandbox_id": SID, "type": "exec-started", "time": 2.0, "pid": 3, "cmd": ["x"]}),
            0.0,
        ),
    ]
    fake.route("GET", f"/v1/sandboxes/{SID}/events", Reply(200, sse=evs))
    sb = Sandbox(socket=fake.socket)
    with sb.events() as stream:
        got = list(stream)
    assert [(e.type, e.sandbox_id, e.time) for e in got] == [("created", SID, 1.0), ("exec-started", SID, 2.0)]
    assert got[1].data["pid"] == 3


def test_closing_an_endless_stream_from_another_thread(fake: FakeDaemon) -> None:
    fake.route("GET", "/v1/events", Reply(200, sse=[":\n\n", ("x", "{}", 5.0)]))
    stream = Client(fake.socket).events()
    threading.Timer(0.3, stream.close).start()
    t0 = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - t0 < 3


def test_the_default_socket_is_the_users_own_unless_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from stockade._http import DEFAULT_SOCKET, default_socket, socket_for

    assert socket_for(0, "/run/user/0") == DEFAULT_SOCKET
    assert socket_for(1001, "/run/user/1001") == "/run/user/1001/stockade/stockade.sock"
    assert socket_for(1001, None) == "/tmp/stockade-1001/stockade.sock"
    # A relative XDG_RUNTIME_DIR is ignored, as the CLI does.
    assert socket_for(1001, "rel") == "/tmp/stockade-1001/stockade.sock"
    monkeypatch.setenv("STOCKADE_SOCKET", "/x.sock")
    assert default_socket() == "/x.sock"
