"""Files through the official SDK (envd's filesystem.Filesystem and
/files), and file URLs."""

from __future__ import annotations

import io
import os
import uuid

import httpx
import pytest
from e2b import FileType, NotEnoughSpaceException, Sandbox
from e2b.exceptions import NotFoundException, SandboxException

from conftest import wait_for


def test_write_and_read_text_and_bytes(sandbox):
    info = sandbox.files.write("/tmp/t.txt", "héllo\n")
    assert info.path == "/tmp/t.txt" and info.name == "t.txt"
    assert sandbox.files.read("/tmp/t.txt") == "héllo\n"
    data = bytes(range(256)) * 100
    sandbox.files.write("/tmp/b.bin", data)
    assert bytes(sandbox.files.read("/tmp/b.bin", format="bytes")) == data
    # The octet-stream path (a file-like object) too.
    sandbox.files.write("/tmp/s.bin", io.BytesIO(data))
    assert bytes(sandbox.files.read("/tmp/s.bin", format="bytes")) == data
    # The sandbox sees what was written.
    assert sandbox.commands.run("cat /tmp/t.txt").stdout == "héllo\n"


def test_relative_paths_are_in_the_users_home(sandbox):
    sandbox.files.write("rel.txt", "x")
    home = sandbox.commands.run("echo $HOME").stdout.strip()
    assert sandbox.commands.run(f"cat {home}/rel.txt").stdout == "x"


def test_many_files_at_once(sandbox):
    files = [{"path": f"/tmp/many/f{i}.txt", "data": f"file {i}"} for i in range(20)]
    infos = sandbox.files.write_files(files)
    assert sorted(i.path for i in infos) == sorted(f["path"] for f in files)
    for f in files:
        assert sandbox.files.read(f["path"]) == f["data"]


def test_list_make_dir_exists_info_rename_remove(sandbox):
    assert sandbox.files.make_dir("/tmp/d/sub") is True
    assert sandbox.files.make_dir("/tmp/d/sub") is False
    sandbox.files.write("/tmp/d/a.txt", "aaa")
    names = {e.name: e for e in sandbox.files.list("/tmp/d")}
    assert set(names) == {"sub", "a.txt"}
    assert names["sub"].type == FileType.DIR and names["a.txt"].type == FileType.FILE
    assert names["a.txt"].size == 3
    sandbox.files.write("/tmp/d/sub/deep.txt", "d")
    deep = {e.path for e in sandbox.files.list("/tmp/d", depth=2)}
    assert "/tmp/d/sub/deep.txt" in deep
    assert "/tmp/d/sub/deep.txt" not in {e.path for e in sandbox.files.list("/tmp/d")}
    assert sandbox.files.exists("/tmp/d/a.txt")
    assert not sandbox.files.exists("/tmp/d/nope")
    info = sandbox.files.get_info("/tmp/d/a.txt")
    assert info.type == FileType.FILE and info.size == 3 and info.permissions.startswith("-rw")
    moved = sandbox.files.rename("/tmp/d/a.txt", "/tmp/d/b.txt")
    assert moved.path == "/tmp/d/b.txt"
    assert not sandbox.files.exists("/tmp/d/a.txt")
    sandbox.files.remove("/tmp/d")
    assert not sandbox.files.exists("/tmp/d")
    with pytest.raises(NotFoundException):
        sandbox.files.read("/tmp/d/b.txt")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/tmp/d")


def test_watch_dir_reports_changes(sandbox):
    sandbox.files.make_dir("/tmp/w")
    h = sandbox.files.watch_dir("/tmp/w")
    events = []

    def seen(kind: str, name: str) -> bool:
        events.extend(h.get_new_events())
        return any(e.name == name and e.type.name == kind for e in events)

    try:
        sandbox.files.write("/tmp/w/new.txt", "1")
        wait_for(lambda: seen("CREATE", "new.txt"), "a create event")
        sandbox.files.remove("/tmp/w/new.txt")
        wait_for(lambda: seen("REMOVE", "new.txt"), "a remove event")
    finally:
        h.stop()


def test_signed_download_and_upload_urls(sandbox):
    sandbox.files.write("/tmp/url.txt", "via url")
    url = sandbox.download_url("/tmp/url.txt")
    assert "signature=v1_" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.text == "via url"
    up = sandbox.upload_url("/tmp/up.txt")
    r = httpx.post(up, files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sandbox.files.read("/tmp/up.txt") == "uploaded"
    # A signature for another path is refused.
    forged = url.replace("url.txt", "other.txt")
    assert httpx.get(forged).status_code == 401
    # An expired signature is refused.
    expired = sandbox.download_url("/tmp/url.txt", use_signature_expiration=-10)
    assert httpx.get(expired).status_code == 401


def test_a_full_disk_answers_not_enough_space(daemon):
    sb = Sandbox.create(template="tiny-disk", timeout=120)
    try:
        with pytest.raises(NotEnoughSpaceException):
            # Not zeros: runs of zeros may be stored as holes, which take no space.
            sb.files.write("big.bin", io.BytesIO(b"\x01" * (40 << 20)))
        sb.files.remove("big.bin")
        # The sandbox still works.
        sb.files.write("small.txt", "fine")
        assert sb.files.read("small.txt") == "fine"
    finally:
        sb.kill()


def test_a_planted_symlink_does_not_reach_the_host(sandbox):
    # A canary on the host, where a symlink in the sandbox points.
    canary = f"/tmp/e2b-canary-{uuid.uuid4().hex}"
    with open(canary, "w") as f:
        f.write("host secret")
    victim = f"/tmp/e2b-victim-{uuid.uuid4().hex}"
    try:
        sandbox.commands.run(f"ln -s {canary} /tmp/link-read; ln -s {victim} /tmp/link-write")
        # Reading follows the link *inside* the sandbox, whose /tmp is its own.
        with pytest.raises(NotFoundException):
            sandbox.files.read("/tmp/link-read")
        # Writing through a link lands inside the sandbox, not on the host.
        sandbox.files.write("/tmp/link-write", "planted")
        assert not os.path.exists(victim)
        assert sandbox.commands.run(f"cat {victim}").stdout == "planted"
        # The file URL route is held to the same rule.
        assert httpx.get(sandbox.download_url("/tmp/link-read")).status_code == 404
    finally:
        os.unlink(canary)
        if os.path.exists(victim):
            os.unlink(victim)


def test_reading_a_directory_or_missing_file(sandbox):
    with pytest.raises(SandboxException):
        sandbox.files.read("/tmp")
    with pytest.raises(NotFoundException):
        sandbox.files.read("/no/such/file")
