"""A thin, typed client of the daemon's API: one method per route.

``Sandbox`` is the friendlier interface; ``Client`` is for the routes it
does not wrap (health, events of every sandbox) and for code that handles
sandbox ids itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ._http import PathLike, Query, SseStream, Transport, read_all, seg
from .errors import StockadeConnectionError
from .images import Images
from .models import Event, FileEntry, ProcessInfo, ProcessResult, SandboxInfo, TopProcess

__all__ = ["Client", "EventStream", "Duration", "Signal", "Command"]

Duration = Union[str, int, float]
"""``"30s"``, ``"10m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds."""

Signal = Union[int, str]
"""A signal number, or a name such as ``"TERM"``, ``"SIGKILL"``, ``"int"``."""

Command = Union[str, Sequence[str]]
"""A program and its arguments; a plain string is run with ``sh -c``."""


def _cmd(cmd: Command) -> List[str]:
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    out = [str(a) for a in cmd]
    if not out:
        raise ValueError("cmd must name a program, e.g. ['ls', '-l']")
    return out


def _text(data: Union[str, bytes]) -> str:
    return data.decode("utf-8") if isinstance(data, bytes) else data


def _bytes(data: Union[str, bytes, bytearray, memoryview]) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


Encoding = str
"""How the daemon carries stdin and output in JSON: ``"text"`` (UTF-8,
invalid output bytes become U+FFFD) or ``"base64"`` (any bytes)."""


def _check_encoding(encoding: Encoding) -> None:
    if encoding not in ("text", "base64"):
        raise ValueError(f'encoding must be "text" or "base64", got {encoding!r}')


class EventStream:
    """Iterator over daemon events (``Event``), from the moment it was
    opened; it never ends on its own while the daemon runs. Close it (or
    use ``with``) to stop following."""

    def __init__(self, sse: SseStream) -> None:
        self._sse = sse

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        ev = next(self._sse)
        return Event.from_json(ev.event, ev.json())

    def close(self) -> None:
        self._sse.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A client of one daemon, over its unix socket.

    ``socket`` defaults to ``$STOCKADE_SOCKET``, else to where this
    user's ``stockade serve`` listens (``/run/stockade/stockade.sock`` for
    root, ``$XDG_RUNTIME_DIR/stockade/stockade.sock`` for anyone else; see
    :func:`stockade._http.default_socket`). ``timeout`` bounds each socket read
    (none by default: commands and event streams may take long).
    """

    def __init__(self, socket: Optional[PathLike] = None, *, timeout: Optional[float] = None) -> None:
        self.transport = Transport(socket, timeout)
        self.images = Images(self)
        """The daemon's image store: ``pull``, ``list``, ``inspect``, ``remove``, ``prune``."""

    @property
    def socket(self) -> str:
        return self.transport.socket_path

    def __repr__(self) -> str:
        return f"Client(socket={self.socket!r})"

    # -- daemon ---------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "live_sandboxes": n, ...}``."""
        return dict(self.transport.call("GET", "/healthz") or {})

    def events(self, sandbox: Optional[str] = None) -> EventStream:
        """Events of one sandbox, or of all with ``None``, from now on."""
        path = f"/v1/sandboxes/{seg(sandbox)}/events" if sandbox is not None else "/v1/events"
        return EventStream(self.transport.sse("GET", path))

    # -- sandboxes ------------------------------------------------------

    def create(
        self,
        *,
        policy: Optional[Mapping[str, Any]] = None,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        ttl: Optional[Duration] = None,
        image: Optional[str] = None,
        pull: Optional[str] = None,
    ) -> SandboxInfo:
        """``POST /v1/sandboxes``. ``image`` is the root filesystem's image
        (a name as ``images.pull`` takes it); ``pull`` is ``missing`` (the
        daemon's default), ``always`` or ``never``."""
        body: Dict[str, Any] = {}
        if policy is not None:
            body["policy"] = dict(policy)
        if image is not None:
            body["image"] = image
        if pull is not None:
            body["pull"] = pull
        if name is not None:
            body["name"] = name
        if labels:
            body["labels"] = {str(k): str(v) for k, v in labels.items()}
        if ttl is not None:
            body["ttl"] = ttl
        return SandboxInfo.from_json(self.transport.call("POST", "/v1/sandboxes", json_body=body))

    def list(self, *, labels: Optional[Mapping[str, str]] = None, state: Optional[str] = None) -> List[SandboxInfo]:
        """``GET /v1/sandboxes``, newest first; every label must match."""
        query: List[Tuple[str, str]] = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        if state is not None:
            query.append(("state", state))
        doc = self.transport.call("GET", "/v1/sandboxes", query=query)
        items = doc.get("sandboxes", []) if isinstance(doc, dict) else []
        return [SandboxInfo.from_json(s) for s in items if isinstance(s, dict)]

    def get(self, sandbox: str) -> SandboxInfo:
        """``GET /v1/sandboxes/{id}`` (id or name of a running sandbox)."""
        return SandboxInfo.from_json(self.transport.call("GET", f"/v1/sandboxes/{seg(sandbox)}"))

    def destroy(self, sandbox: str) -> SandboxInfo:
        """``DELETE /v1/sandboxes/{id}`` (idempotent); ``report`` holds the final report."""
        return SandboxInfo.from_json(self.transport.call("DELETE", f"/v1/sandboxes/{seg(sandbox)}"))

    # -- processes ------------------------------------------------------

    @staticmethod
    def _exec_body(
        cmd: Command,
        env: Optional[Mapping[str, str]],
        cwd: Optional[str],
        timeout: Optional[Duration],
        stdin: Optional[Union[str, bytes]],
        background: bool,
        encoding: Encoding = "text",
    ) -> Dict[str, Any]:
        _check_encoding(encoding)
        body: Dict[str, Any] = {"cmd": _cmd(cmd)}
        if env:
            body["env"] = {str(k): str(v) for k, v in env.items()}
        if cwd is not None:
            body["cwd"] = cwd
        if timeout is not None:
            body["timeout"] = timeout
        if stdin is not None:
            if encoding == "base64":
                body["stdin"] = base64.b64encode(_bytes(stdin)).decode("ascii")
            else:
                body["stdin"] = _text(stdin)
        if background:
            body["background"] = True
        if encoding != "text":
            body["encoding"] = encoding
        return body

    def exec(
        self,
        sandbox: str,
        cmd: Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[Duration] = None,
        stdin: Optional[Union[str, bytes]] = None,
    ) -> ProcessResult:
        """Runs a command and waits for it (JSON answer). The output comes
        as bytes (``stdout_bytes``) and as text (``stdout``); ``stdin`` may
        be any bytes."""
        body = self._exec_body(cmd, env, cwd, timeout, stdin, False, "base64")
        doc = self.transport.call("POST", f"/v1/sandboxes/{seg(sandbox)}/exec", json_body=body)
        return ProcessResult.from_json(doc if isinstance(doc, dict) else {}, encoding="base64")

    def exec_stream(
        self,
        sandbox: str,
        cmd: Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[Duration] = None,
        stdin: Optional[Union[str, bytes]] = None,
        encoding: Encoding = "text",
    ) -> SseStream:
        """Runs a command, streaming ``start``, ``stdout``, ``stderr`` and
        ``exit`` events; with ``encoding="base64"`` each chunk's ``data``
        (and ``stdin``) is base64, for output that is not text."""
        body = self._exec_body(cmd, env, cwd, timeout, stdin, False, encoding)
        return self.transport.sse("POST", f"/v1/sandboxes/{seg(sandbox)}/exec", json_body=body)

    def exec_background(
        self,
        sandbox: str,
        cmd: Command,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[Duration] = None,
        stdin: Optional[Union[str, bytes]] = None,
    ) -> int:
        """Starts a command in the background (stdin stays open); returns its pid."""
        body = self._exec_body(cmd, env, cwd, timeout, stdin, True, "base64" if isinstance(stdin, bytes) else "text")
        doc = self.transport.call("POST", f"/v1/sandboxes/{seg(sandbox)}/exec", json_body=body)
        pid = doc.get("pid") if isinstance(doc, dict) else None
        if not isinstance(pid, int):
            raise StockadeConnectionError("protocol", f"the daemon's answer has no pid: {doc!r}")
        return pid

    def processes(self, sandbox: str) -> List[ProcessInfo]:
        """The sandbox's processes, running and ended."""
        doc = self.transport.call("GET", f"/v1/sandboxes/{seg(sandbox)}/processes")
        items = doc.get("processes", []) if isinstance(doc, dict) else []
        return [ProcessInfo.from_json(p) for p in items if isinstance(p, dict)]

    def top(self, sandbox: str) -> List[TopProcess]:
        """Every process running in the sandbox (``GET .../top``), by pid
        inside: pids inside and on the host, user, CPU, memory, command."""
        doc = self.transport.call("GET", f"/v1/sandboxes/{seg(sandbox)}/top")
        items = doc.get("processes", []) if isinstance(doc, dict) else []
        return [TopProcess.from_json(p) for p in items if isinstance(p, dict)]

    def send_stdin(
        self, sandbox: str, pid: int, data: Union[str, bytes, bytearray, memoryview], *, eof: bool = False
    ) -> Dict[str, Any]:
        """Writes to a background process's stdin; ``eof`` closes it after."""
        query: Query = [("eof", "true")] if eof else []
        doc = self.transport.call(
            "POST",
            f"/v1/sandboxes/{seg(sandbox)}/processes/{seg(pid)}/stdin",
            query=query,
            body=_bytes(data),
            content_type="application/octet-stream",
        )
        return dict(doc) if isinstance(doc, dict) else {}

    def signal(self, sandbox: str, pid: int, signal: Signal) -> None:
        """Sends a signal (number or name) to a process."""
        sig: Signal = int(signal) if isinstance(signal, str) and signal.isdigit() else signal
        self.transport.call(
            "POST", f"/v1/sandboxes/{seg(sandbox)}/processes/{seg(pid)}/signal", json_body={"signal": sig}
        )

    def output(
        self, sandbox: str, pid: int, *, timeout: Optional[float] = None, encoding: Encoding = "text"
    ) -> SseStream:
        """A process's output since it started (as kept), then live, then
        ``exit``; with ``encoding="base64"`` each chunk's ``data`` is base64."""
        _check_encoding(encoding)
        query: Query = [("encoding", encoding)] if encoding != "text" else []
        return self.transport.sse(
            "GET", f"/v1/sandboxes/{seg(sandbox)}/processes/{seg(pid)}/output", query=query, timeout=timeout
        )

    # -- tasks ----------------------------------------------------------

    def create_task(self, body: Mapping[str, Any]) -> Dict[str, Any]:
        """``POST /v1/tasks``: starts a task; returns it (``id``, ``state``, ``phase``)."""
        doc = self.transport.call("POST", "/v1/tasks", json_body=dict(body))
        return dict(doc) if isinstance(doc, dict) else {}

    def get_task(self, task: str) -> Dict[str, Any]:
        """``GET /v1/tasks/{id}``: state, phase, and the report once done."""
        doc = self.transport.call("GET", f"/v1/tasks/{seg(task)}")
        return dict(doc) if isinstance(doc, dict) else {}

    def task_patch(self, task: str) -> bytes:
        """``GET /v1/tasks/{id}/patch``: the task's ``changes.patch``."""
        return self.transport.read_bytes(f"/v1/tasks/{seg(task)}/patch")

    # -- files ----------------------------------------------------------

    def read_file(self, sandbox: str, path: str) -> bytes:
        """The bytes of a regular file (a path as the sandbox sees it)."""
        return self.transport.read_bytes(f"/v1/sandboxes/{seg(sandbox)}/files", query=[("path", path)])

    def write_file(self, sandbox: str, path: str, data: Union[str, bytes, bytearray, memoryview]) -> bool:
        """Writes a file, creating missing parent directories; True if it was new."""
        resp = self.transport.open(
            "PUT",
            f"/v1/sandboxes/{seg(sandbox)}/files",
            query=[("path", path)],
            body=_bytes(data),
            content_type="application/octet-stream",
        )
        status = resp.status
        raw = read_all(resp)
        try:
            doc = json.loads(raw) if raw.strip() else {}
        except ValueError:
            doc = {}
        created = doc.get("created") if isinstance(doc, dict) else None
        return bool(created) if isinstance(created, bool) else status == 201

    def list_dir(self, sandbox: str, path: str) -> List[FileEntry]:
        """A directory's entries, sorted by name (symlinks not followed)."""
        doc = self.transport.call(
            "GET", f"/v1/sandboxes/{seg(sandbox)}/files", query=[("path", path), ("list", "true")]
        )
        items = doc.get("entries", []) if isinstance(doc, dict) else []
        return [FileEntry.from_json(e) for e in items if isinstance(e, dict)]

    def remove_file(self, sandbox: str, path: str) -> None:
        """Deletes a file, a symlink (not its target) or an empty directory."""
        self.transport.call("DELETE", f"/v1/sandboxes/{seg(sandbox)}/files", query=[("path", path)])
