"""The official E2B JavaScript SDK (npm ``e2b``, pinned in
``sdk/e2b-compat/js/package.json``), unmodified, against the same daemon:
create, ``commands.run``, ``files.write/read``, list, kill. scripts/test
installs it (``npm ci``); Node.js >= 20.18 is what the SDK asks for."""

import json
import os
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent.parent / "js"


def test_the_javascript_sdk_creates_runs_writes_reads_and_kills(daemon) -> None:
    node = shutil.which("node")
    assert node, "node is needed for the JavaScript SDK test (Node.js >= 20.18)"
    assert (JS / "node_modules" / "e2b").is_dir(), "run `npm ci` in sdk/e2b-compat/js first (scripts/test does)"
    r = subprocess.run(
        [node, str(JS / "smoke.mjs")],
        cwd=JS,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stdout"] == "hello-42\n", out
    assert out["stderr"] == "oops\n", out
    assert out["exitCode"] == 0, out
    assert out["failure"] == "exit 3", out
    assert out["read"] == "written by js\n", out
    assert out["listed"] is True, out
    assert out["killed"] is True, out
    assert out["killedAgain"] is False, out
    # It was a real stockade sandbox, and it is gone.
    assert out["sandboxId"] not in daemon.ps(), daemon.ps()
