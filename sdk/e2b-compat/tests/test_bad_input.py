"""Hostile or broken requests, sent raw (the SDK would not send them)."""

from __future__ import annotations

import json
import struct

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import AuthenticationException, SandboxException


def _envd(daemon, sb, path: str, body: bytes, ctype: str, **headers) -> httpx.Response:
    h = {
        "E2b-Sandbox-Id": sb.sandbox_id,
        "X-Access-Token": sb._envd_access_token,
        "Content-Type": ctype,
        **headers,
    }
    return httpx.post(daemon.url + path, content=body, headers=h)


def _frames(body: bytes):
    out = []
    while body:
        flags, n = struct.unpack(">BI", body[:5])
        out.append((flags, json.loads(body[5 : 5 + n])))
        body = body[5 + n :]
    return out


def test_wrong_access_token_is_refused(daemon, sandbox):
    r = _envd(
        daemon,
        sandbox,
        "/filesystem.Filesystem/Stat",
        b'{"path": "/tmp"}',
        "application/json",
        **{"X-Access-Token": "0" * 64},
    )
    assert r.status_code == 401
    # Through the SDK: connecting with a token that is not the sandbox's.
    bad = Sandbox(
        sandbox_id=sandbox.sandbox_id,
        sandbox_domain=None,
        envd_version=sandbox._envd_version,
        envd_access_token="0" * 64,
        traffic_access_token=None,
        connection_config=type(sandbox.connection_config)(
            extra_sandbox_headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "X-Access-Token": "0" * 64}
        ),
    )
    with pytest.raises(AuthenticationException):
        bad.files.read("/tmp/x")
    with pytest.raises(AuthenticationException):
        bad.commands.run("true")
    # No token at all.
    r = httpx.post(
        daemon.url + "/filesystem.Filesystem/Stat",
        content=b'{"path": "/tmp"}',
        headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "Content-Type": "application/json"},
    )
    assert r.status_code == 401


def test_unknown_sandbox_id_on_envd(daemon, sandbox):
    r = httpx.post(
        daemon.url + "/filesystem.Filesystem/Stat",
        content=b'{"path": "/tmp"}',
        headers={
            "E2b-Sandbox-Id": "nosuchsandbox",
            "X-Access-Token": sandbox._envd_access_token,
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 502
    assert "was not found" in r.json()["message"]


def test_malformed_connect_envelopes(daemon, sandbox):
    start = json.dumps({"process": {"cmd": "/bin/true"}}).encode()
    # A length that runs past the body.
    r = _envd(daemon, sandbox, "/process.Process/Start", struct.pack(">BI", 0, 999) + start, "application/connect+json")
    assert r.status_code == 200
    (flags, end), = _frames(r.content)
    assert flags == 2 and end["error"]["code"] == "invalid_argument"
    # A compressed flag nobody negotiated.
    r = _envd(daemon, sandbox, "/process.Process/Start", struct.pack(">BI", 1, len(start)) + start, "application/connect+json")
    (flags, end), = _frames(r.content)
    assert end["error"]["code"] == "unimplemented"
    # Not JSON inside a valid envelope.
    junk = b"\xff\xfe not json"
    r = _envd(daemon, sandbox, "/process.Process/Start", struct.pack(">BI", 0, len(junk)) + junk, "application/connect+json")
    (flags, end), = _frames(r.content)
    assert end["error"]["code"] == "invalid_argument"
    # The wrong codec for a unary call.
    r = _envd(daemon, sandbox, "/filesystem.Filesystem/Stat", b"\x0a\x04/tmp", "application/proto")
    assert r.status_code == 415
    # An unknown method.
    r = _envd(daemon, sandbox, "/process.Process/Fork", b"{}", "application/json")
    assert r.status_code == 501 and r.json()["code"] == "unimplemented"
    # The sandbox still works after all that.
    assert sandbox.commands.run("echo ok").stdout == "ok\n"


def test_a_well_formed_stream_by_hand(daemon, sandbox):
    start = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "echo hi"]}}).encode()
    r = _envd(daemon, sandbox, "/process.Process/Start", struct.pack(">BI", 0, len(start)) + start, "application/connect+json")
    frames = _frames(r.content)
    assert frames[0][1]["event"]["start"]["pid"] > 0
    assert frames[-1] == (2, {})
    end = frames[-2][1]["event"]["end"]
    assert end["exitCode"] == 0 and end["exited"] is True


def test_control_api_needs_the_key(daemon):
    r = httpx.get(daemon.url + "/v2/sandboxes")
    assert r.status_code == 401 and r.json()["code"] == 401
    r = httpx.get(daemon.url + "/v2/sandboxes", headers={"X-API-KEY": daemon.api_key})
    assert r.status_code == 200
    r = httpx.post(
        daemon.url + "/sandboxes",
        content=b"{not json",
        headers={"X-API-KEY": daemon.api_key, "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not valid" in r.json()["message"]
    with pytest.raises(SandboxException):
        Sandbox.create(network={"deny_out": ["0.0.0.0/0"]})
