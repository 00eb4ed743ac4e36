"""The control API through the official SDK: create, connect, list,
timeouts, info, pause, kill."""

from __future__ import annotations

import re
import uuid

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import AuthenticationException, NotFoundException, SandboxException

from conftest import wait_for


def test_create_shows_in_stockade_ps_and_kill_removes_it(daemon):
    sb = Sandbox.create(timeout=60)
    assert re.fullmatch(r"[a-z0-9]+", sb.sandbox_id)
    assert sb.sandbox_id in daemon.ps()
    assert sb.is_running()
    assert sb.kill() is None or True
    assert not Sandbox.kill(sb.sandbox_id)  # already gone: False, not an error
    assert sb.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]
    with pytest.raises(Exception):
        sb.commands.run("true")


def test_get_info_and_set_timeout(daemon):
    sb = Sandbox.create(timeout=60, metadata={"purpose": "info"})
    try:
        info = sb.get_info()
        assert info.sandbox_id == sb.sandbox_id
        assert info.template_id == "base"
        assert info.metadata == {"purpose": "info"}
        assert info.state == SandboxState.RUNNING
        first_end = info.end_at
        sb.set_timeout(3600)
        assert sb.get_info().end_at > first_end
        with pytest.raises(SandboxException):
            sb.set_timeout(10**9)
    finally:
        sb.kill()


def test_list_filters_by_metadata_and_pages(daemon):
    tag = uuid.uuid4().hex
    made = [Sandbox.create(timeout=120, metadata={"run": tag, "n": str(i)}) for i in range(3)]
    other = Sandbox.create(timeout=120, metadata={"run": "someone-else"})
    try:
        q = SandboxQuery(metadata={"run": tag})
        assert {s.sandbox_id for s in Sandbox.list(query=q).next_items()} == {m.sandbox_id for m in made}
        q1 = SandboxQuery(metadata={"run": tag, "n": "1"})
        assert [s.sandbox_id for s in Sandbox.list(query=q1).next_items()] == [made[1].sandbox_id]
        # Pages of two: x-next-token carries the listing on.
        pager = Sandbox.list(query=q, limit=2)
        seen = pager.next_items()
        assert len(seen) == 2 and pager.has_next
        seen += pager.next_items()
        assert not pager.has_next
        assert sorted(s.sandbox_id for s in seen) == sorted(m.sandbox_id for m in made)
        paused = SandboxQuery(metadata={"run": tag}, state=[SandboxState.PAUSED])
        assert Sandbox.list(query=paused).next_items() == []
    finally:
        for s in made + [other]:
            s.kill()


def test_connect_reuses_a_running_sandbox(daemon):
    sb = Sandbox.create(timeout=60)
    try:
        sb.files.write("/tmp/mark", "same box")
        again = Sandbox.connect(sb.sandbox_id)
        assert again.sandbox_id == sb.sandbox_id
        assert again.files.read("/tmp/mark") == "same box"
    finally:
        sb.kill()


def test_pause_freezes_and_connect_resumes(daemon):
    sb = Sandbox.create(timeout=120)
    try:
        h = sb.commands.run("i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done", background=True, timeout=0)
        wait_for(lambda: sb.files.exists("/tmp/count"), "the counter to start")
        sb.pause()
        assert Sandbox.get_info(sb.sandbox_id).state == SandboxState.PAUSED
        # A second pause says it already was.
        assert Sandbox.pause(sb.sandbox_id) is False
        # While paused, envd refuses (the sandbox is not reachable).
        with pytest.raises(Exception):
            sb.files.read("/tmp/count")
        resumed = Sandbox.connect(sb.sandbox_id)
        assert Sandbox.get_info(sb.sandbox_id).state == SandboxState.RUNNING
        before = int(resumed.files.read("/tmp/count"))
        wait_for(lambda: int(resumed.files.read("/tmp/count") or 0) > before, "the counter to go on after resume")
        h.kill()
    finally:
        sb.kill()


def test_a_sandbox_ends_at_its_timeout(daemon):
    sb = Sandbox.create(timeout=1)
    wait_for(lambda: not sb.is_running(), "the sandbox to end at its timeout")
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sb.sandbox_id)
    wait_for(lambda: sb.sandbox_id not in daemon.ps(), "stockade ps to drop it")


def test_timeout_above_the_templates_limit_is_refused(daemon):
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template="short", timeout=3600)
    assert "120" in str(e.value)
    sb = Sandbox.create(template="short", timeout=60)
    assert sb.get_info().template_id == "short"
    sb.kill()


def test_unknown_template_and_sandbox(daemon):
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template="no-such-template")
    assert "not found" in str(e.value)
    with pytest.raises(NotFoundException):
        Sandbox.get_info("doesnotexist0")
    with pytest.raises(NotFoundException):
        Sandbox.connect("doesnotexist0")
    assert Sandbox.kill("doesnotexist0") is False


def test_wrong_api_key_is_refused(daemon):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 64)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 64).next_items()


@pytest.mark.parametrize("version", ["1.1", "2"])
def test_both_http_versions(daemon, version):
    # "2" is the SDK's default: HTTP/2 with prior knowledge (h2c) on http://.
    sb = Sandbox.create(timeout=60, http_version=version)
    try:
        assert sb.commands.run("echo $((6*7))").stdout == "42\n"
        sb.files.write("/tmp/v", version)
        assert sb.files.read("/tmp/v") == version
    finally:
        sb.kill()
