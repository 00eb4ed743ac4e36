"""``client.images`` and ``image=`` on sandboxes and tasks.

The first tests run against the fake daemon (no root); the last ones
against a real ``stockade serve`` with a local OCI layout as the source, so
no registry is needed: ``tests/images/build.sh`` makes the layouts under
``/var/cache/stockade-images`` (it is run here when the one used is
missing) and the test copies the small busybox one under the directory the
daemon lets clients name (``--allow-bind-root``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import REPO, Daemon
from fakedaemon import FakeDaemon, Reply, error_reply, json_reply

from stockade import Client, Sandbox, StockadeConnectionError, StockadeError

DIGEST = "sha256:" + "ab" * 32
LAYER = "sha256:" + "cd" * 32


def pull_events(*tail: Any) -> List[Any]:
    return [
        ("resolved", json.dumps({"digest": DIGEST, "layers": [{"digest": LAYER, "size": 10, "present": False}]}), 0),
        ("progress", json.dumps({"layer": LAYER, "done": 5, "total": 10}), 0),
        ("unpacking", json.dumps({"layer": LAYER}), 0),
        ("layer-done", json.dumps({"layer": LAYER}), 0),
        *tail,
    ]


def test_pull_streams_progress_and_returns_the_image(fake: FakeDaemon) -> None:
    done = {"digest": DIGEST, "names": ["docker.io/library/python:3.11"], "size": 123}
    fake.route("POST", "/v1/images/pull", Reply(sse=pull_events(("done", json.dumps(done), 0))))
    seen: List[Dict[str, Any]] = []
    image = Client(fake.socket).images.pull("python:3.11", progress=seen.append, creds=("u", "p"))
    assert image == done
    assert [e["event"] for e in seen] == ["resolved", "progress", "unpacking", "layer-done"]
    assert seen[1]["done"] == 5 and seen[1]["layer"] == LAYER
    req = fake.requests[-1]
    assert req.json() == {"image": "python:3.11", "creds": {"username": "u", "password": "p"}}
    assert req.headers["accept"] == "text/event-stream"


def test_a_failed_pull_raises_the_daemons_error(fake: FakeDaemon) -> None:
    err = {"error": "image docker.io/library/nope:1 not found", "code": "image_not_found", "status": 404}
    fake.route("POST", "/v1/images/pull", Reply(sse=pull_events(("error", json.dumps(err), 0))))
    with pytest.raises(StockadeError) as ei:
        Client(fake.socket).images.pull("nope:1")
    assert (ei.value.status, ei.value.code) == (404, "image_not_found")
    assert "nope" in ei.value.message


def test_a_refused_pull_request_raises_at_once(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/images/pull", error_reply(400, "invalid_request", '"A B" is not an image reference'))
    with pytest.raises(StockadeError) as ei:
        Client(fake.socket).images.pull("A B")
    assert (ei.value.status, ei.value.code) == (400, "invalid_request")


def test_a_pull_stream_cut_short_is_a_connection_error(fake: FakeDaemon) -> None:
    fake.route("POST", "/v1/images/pull", Reply(sse=pull_events()))
    with pytest.raises(StockadeConnectionError):
        Client(fake.socket).images.pull("python:3.11")


def test_list_inspect_remove_prune_use_their_routes(fake: FakeDaemon) -> None:
    summary = {"repository": "docker.io/library/python", "tag": "3.11", "digest": DIGEST, "size": 1, "created": None}
    fake.route("GET", "/v1/images", json_reply(200, {"images": [summary]}))
    removed = {"untagged": ["docker.io/library/python:3.11"], "images": [DIGEST], "layers": [], "blobs": [], "bytes": 9}
    # The whole reference is one percent-encoded path segment.
    path = "/v1/images/docker.io%2Flibrary%2Fpython%3A3.11"
    fake.route("GET", path, json_reply(200, {"digest": DIGEST, "config": {"config": {"Cmd": ["python3"]}}}))
    fake.route("DELETE", path, json_reply(200, removed))
    fake.route("POST", "/v1/images/prune", json_reply(200, {**removed, "untagged": []}))
    images = Client(fake.socket).images
    assert images.list() == [summary]
    assert images.inspect("docker.io/library/python:3.11")["config"]["config"]["Cmd"] == ["python3"]
    assert images.remove("docker.io/library/python:3.11", force=True) == removed
    assert fake.requests[-1].query == [("force", "true")]
    images.remove("docker.io/library/python:3.11")
    assert fake.requests[-1].query == [("force", "false")]
    assert images.prune()["bytes"] == 9


def test_in_use_is_a_conflict(fake: FakeDaemon) -> None:
    fake.route("DELETE", "/v1/images/busybox", error_reply(409, "conflict", "image busybox is in use by sandbox x"))
    with pytest.raises(StockadeError) as ei:
        Client(fake.socket).images.remove("busybox")
    assert ei.value.status == 409 and "in use" in ei.value.message


def test_sandbox_and_task_send_the_image(fake: FakeDaemon) -> None:
    sandbox: Dict[str, Any] = {
        "id": "0123456789ab",
        "name": None,
        "state": "running",
        "labels": {},
        "policy": {},
        "created_at": 1.0,
    }
    fake.route("POST", "/v1/sandboxes", json_reply(201, sandbox))
    Sandbox(image="python:3.11", pull="never", socket=fake.socket, destroy_on_exit=False)
    assert fake.requests[-1].json() == {"image": "python:3.11", "pull": "never"}
    Sandbox(socket=fake.socket, destroy_on_exit=False)
    assert "image" not in fake.requests[-1].json()
    fake.route("POST", "/v1/tasks", json_reply(201, {"id": "t1", "state": "failed"}))
    fake.route("GET", "/v1/tasks/t1", json_reply(200, {"id": "t1", "state": "failed"}))
    Sandbox.run_task("/repo", ["true"], image="busybox", socket=fake.socket)
    body = next(r for r in fake.requests if r.path == "/v1/tasks").json()
    assert body["image"] == "busybox" and body["cmd"] == ["true"]


# -- a real daemon -------------------------------------------------------

IMAGES = Path(os.environ.get("STOCKADE_IMAGES", "/var/cache/stockade-images"))


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox OCI layout, built if missing, copied under the daemon's
    allowed root."""
    src = IMAGES / "busybox"
    if not (src / "index.json").is_file():
        subprocess.run([str(REPO / "tests" / "images" / "build.sh")], check=True)
    dst = tmp_path_factory.mktemp("images") / "busybox"
    shutil.copytree(src, dst)
    return dst


def test_pull_list_inspect_remove_a_local_layout(daemon: Daemon, busybox_layout: Path) -> None:
    images = daemon.client().images
    seen: List[Dict[str, Any]] = []
    image = images.pull(f"oci:{busybox_layout}:latest", progress=seen.append)
    assert image["digest"].startswith("sha256:") and image["size"] > 0
    assert seen and seen[0]["event"] == "resolved"
    assert any(e["event"] == "layer-done" for e in seen)
    listed = [i for i in images.list() if i["digest"] == image["digest"]]
    assert listed, images.list()
    shown = images.inspect(image["digest"])
    assert shown["digest"] == image["digest"]
    assert shown["config"]["rootfs"]["type"] == "layers"
    # Pulled again: every layer is already there.
    again: List[Dict[str, Any]] = []
    assert images.pull(f"oci:{busybox_layout}:latest", progress=again.append)["digest"] == image["digest"]
    assert all(layer["present"] for layer in again[0]["layers"])
    gone = images.remove(image["digest"])
    assert image["digest"] in gone["images"]
    with pytest.raises(StockadeError) as ei:
        images.inspect(image["digest"])
    assert ei.value.status == 404


def test_a_local_source_outside_the_allowed_roots_is_refused(daemon: Daemon) -> None:
    with pytest.raises(StockadeError) as ei:
        daemon.client().images.pull("oci:/etc:latest")
    assert ei.value.status == 403 and ei.value.code == "host_path_not_allowed"


def test_an_unknown_image_is_a_404(daemon: Daemon) -> None:
    with pytest.raises(StockadeError) as ei:
        daemon.client().images.inspect("docker.io/library/never-pulled:1")
    assert ei.value.status == 404


def test_a_sandbox_runs_on_an_image(daemon: Daemon, busybox_layout: Path) -> None:
    ref = f"oci:{busybox_layout}:latest"
    daemon.client().images.pull(ref)
    with Sandbox(image=ref, memory="1G", net="none", ttl="5m", socket=daemon.socket) as sb:
        r = sb.process.run(["busybox", "--help"], timeout=30)
        assert r.exit_code in (0, 1) and "BusyBox" in (r.stdout + r.stderr), r
        # The image's root, not the host's /usr.
        assert not sb.files.exists("/usr/bin/python3")
