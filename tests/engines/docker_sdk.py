"""The docker-py code agent platforms start from (issue 16), run against
the dockerd a test started (DOCKER_HOST). Prints one JSON object with what
it saw; the Rust test (crates/stockade-cli/tests/oci_engines.rs) checks it.

    docker_sdk.py sandbox IMAGE WORKSPACE_DIR
        containers.run(image=..., detach=True, ...) with the platform's
        options verbatim, exec_run(cmd, demux=True), stop(timeout=10),
        remove(force=True)
    docker_sdk.py python IMAGE
        containers.run("python:3.11", command=..., working_dir="/workspace",
        mem_limit="4g") + wait + logs
"""
import json
import sys

import docker


def sandbox(image, ws):
    client = docker.from_env()
    # As agent platforms write it (the options are the point of the test).
    container = client.containers.run(
        image=image,
        detach=True,
        cpu_period=100000,
        cpu_quota=400000,
        mem_limit="16g",
        network_mode="bridge",
        security_opt=["no-new-privileges"],
        cap_drop=["ALL"],
        cap_add=["NET_BIND_SERVICE"],
        read_only=False,
        tmpfs={"/tmp": "size=1G"},
        volumes={ws: {"bind": "/workspace", "mode": "rw"}},
    )
    seen = {"runtime": client.api.inspect_container(container.id)["HostConfig"]["Runtime"]}
    cmd = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    result = container.exec_run(cmd, demux=True)
    stdout, stderr = result.output
    seen["exec"] = {
        "exit_code": result.exit_code,
        "stdout": (stdout or b"").decode(),
        "stderr": (stderr or b"").decode(),
    }
    probe = (
        "echo written > /workspace/from-container && "
        "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status && "
        "grep ' /tmp ' /proc/mounts"
    )
    result = container.exec_run(["sh", "-c", probe], demux=True)
    stdout, stderr = result.output
    seen["probe"] = {
        "exit_code": result.exit_code,
        "stdout": (stdout or b"").decode(),
        "stderr": (stderr or b"").decode(),
    }
    container.stop(timeout=10)
    container.reload()
    seen["status_after_stop"] = container.status
    container.remove(force=True)
    seen["left"] = [c.id for c in client.containers.list(all=True)]
    return seen


def python(image):
    client = docker.from_env()
    container = client.containers.run(
        image,
        command=["python3", "-c", "import os, sys; print(os.getcwd(), sys.version_info[0])"],
        working_dir="/workspace",
        mem_limit="4g",
        detach=True,
    )
    status = container.wait()
    logs = container.logs().decode()
    runtime = client.api.inspect_container(container.id)["HostConfig"]["Runtime"]
    container.remove(force=True)
    return {"status": status["StatusCode"], "logs": logs, "runtime": runtime}


def main():
    what = sys.argv[1]
    if what == "sandbox":
        out = sandbox(sys.argv[2], sys.argv[3])
    elif what == "python":
        out = python(sys.argv[2])
    else:
        sys.exit(f"unknown scenario {what!r}: use sandbox or python")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
