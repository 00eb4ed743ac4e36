"""The high-level interface: a ``Sandbox`` with ``.process`` and ``.files``."""

from __future__ import annotations

import base64
import copy
import time
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

from ._http import PathLike
from .client import Client, Command, Duration, EventStream, Signal, _cmd
from .errors import StockadeConnectionError, StockadeError
from .models import FileEntry, OutputChunk, ProcessInfo, ProcessResult, SandboxInfo, TaskResult, TopProcess

__all__ = ["Sandbox", "Processes", "Process", "Files", "OutputCallback", "build_policy"]

OutputCallback = Callable[[str], None]
"""Called with each chunk of output text as the daemon streams it."""


def build_policy(
    policy: Optional[Mapping[str, Any]] = None,
    *,
    memory: Optional[Union[str, int]] = None,
    cpus: Optional[Union[int, float, str]] = None,
    timeout: Optional[Duration] = None,
    net: Optional[str] = None,
) -> Optional[Dict[str, Any]]:
    """The policy JSON for a full ``policy`` dict plus keyword shortcuts.

    Shortcuts win over the same keys of ``policy``: ``memory`` →
    ``limits.memory``, ``cpus`` → ``limits.cpus``, ``timeout`` →
    ``limits.timeout``, ``net`` → ``network.mode``. ``None`` when nothing
    was given (the daemon's defaults then apply).
    """
    out: Dict[str, Any] = copy.deepcopy(dict(policy)) if policy is not None else {}
    limits = {k: v for k, v in (("memory", memory), ("cpus", cpus), ("timeout", timeout)) if v is not None}
    if limits:
        section = out.get("limits")
        out["limits"] = {**(section if isinstance(section, dict) else {}), **limits}
    if net is not None:
        section = out.get("network")
        out["network"] = {**(section if isinstance(section, dict) else {}), "mode": net}
    if policy is None and not out:
        return None
    return out


class Process:
    """A process started with ``sandbox.process.start()`` (or found by pid)."""

    def __init__(self, client: Client, sandbox_id: str, pid: int) -> None:
        self._client = client
        self.sandbox_id = sandbox_id
        self.pid = pid
        self.result: Optional[ProcessResult] = None
        """How it ended, once ``output()`` reached its end or ``wait()`` returned."""

    def __repr__(self) -> str:
        return f"Process(sandbox={self.sandbox_id!r}, pid={self.pid})"

    def send_stdin(self, data: Union[str, bytes], eof: bool = False) -> None:
        """Writes to its stdin; ``eof=True`` closes stdin afterwards."""
        self._client.send_stdin(self.sandbox_id, self.pid, data, eof=eof)

    def close_stdin(self) -> None:
        """Closes its stdin (the process reads end-of-file)."""
        self._client.send_stdin(self.sandbox_id, self.pid, b"", eof=True)

    def signal(self, signal: Signal = "TERM") -> None:
        """Sends a signal: a number or a name (``"TERM"``, ``"SIGKILL"``, ``"int"``)."""
        self._client.signal(self.sandbox_id, self.pid, signal)

    def kill(self) -> None:
        """Sends SIGKILL."""
        self.signal("KILL")

    def output(self, timeout: Optional[float] = None) -> Iterator[OutputChunk]:
        """Yields ``(stream, text)`` pairs: what it printed since it started
        (the most recent 1 MiB of each stream), then live output, until it
        exits; ``self.result`` is then set (output not included). Raises
        TimeoutError if it has not ended after ``timeout`` seconds."""
        for item in self._follow(timeout):
            if isinstance(item, tuple):
                yield OutputChunk(item[0], item[1].decode("utf-8", "replace"))

    def _follow(self, timeout: Optional[float]) -> Iterator[Union[Tuple[str, bytes], Dict[str, Any]]]:
        stream = self._client.output(self.sandbox_id, self.pid, timeout=timeout, encoding="base64")
        if timeout is not None:
            stream.deadline = time.monotonic() + timeout
        with stream:
            for ev in stream:
                if ev.event in ("stdout", "stderr"):
                    data = _chunk(ev.json())
                    if data is not None:
                        yield (ev.event, data)
                elif ev.event == "exit":
                    doc = ev.json()
                    exit_doc = doc if isinstance(doc, dict) else {}
                    self.result = ProcessResult.from_json(exit_doc, stdout=b"", stderr=b"", pid=self.pid)
                    yield exit_doc
                    return
        raise StockadeConnectionError(
            "connection_lost", f"the output stream of process {self.pid} ended before the process did"
        )

    def wait(self, timeout: Optional[float] = None) -> ProcessResult:
        """Waits for it to end; returns how it ended with its output (as
        the daemon kept it: the most recent 1 MiB of each stream), as text
        and as bytes. Raises TimeoutError if it has not ended after
        ``timeout`` seconds (the process keeps running)."""
        out: List[bytes] = []
        err: List[bytes] = []
        exit_doc: Dict[str, Any] = {}
        for item in self._follow(timeout):
            if isinstance(item, tuple):
                (out if item[0] == "stdout" else err).append(item[1])
            else:
                exit_doc = item
        self.result = ProcessResult.from_json(exit_doc, stdout=b"".join(out), stderr=b"".join(err), pid=self.pid)
        return self.result


def _chunk(doc: Any) -> Optional[bytes]:
    """The bytes of a base64 output chunk."""
    data = doc.get("data") if isinstance(doc, dict) else None
    return base64.b64decode(data) if isinstance(data, str) else None


class Processes:
    """``sandbox.process``: run commands in the sandbox."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def run(
        self,
        cmd: Command,
        *,
        timeout: Optional[Duration] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[Union[str, bytes]] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
    ) -> ProcessResult:
        """Runs a command and waits for it.

        ``cmd`` is a list (no shell) or a string (run with ``sh -c``).
        ``timeout`` (seconds or ``"10m"``) kills it with SIGKILL; the
        result's outcome is then ``timeout``. ``stdin`` (text or any
        bytes) is given, then closed. The result holds the output as text
        (``stdout``) and as bytes (``stdout_bytes``). With
        ``on_stdout``/``on_stderr`` the output is streamed and each chunk
        handed to the callback as text as it comes; the result then holds
        what the callbacks got. Either way the daemon keeps the most
        recent 1 MiB of each stream: without callbacks ``truncated`` says
        when it dropped some; a stream that lags more than 1 MiB behind a
        fast writer misses the oldest chunks, and the daemon does not say.
        """
        client, sid = self._sb.client, self._sb.id
        if on_stdout is None and on_stderr is None:
            return client.exec(sid, cmd, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
        out: List[bytes] = []
        err: List[bytes] = []
        pid: Optional[int] = None
        with client.exec_stream(sid, cmd, env=env, cwd=cwd, timeout=timeout, stdin=stdin, encoding="base64") as stream:
            for ev in stream:
                doc = ev.json()
                if not isinstance(doc, dict):
                    continue
                if ev.event == "start":
                    p = doc.get("pid")
                    pid = p if isinstance(p, int) else None
                elif ev.event in ("stdout", "stderr"):
                    data = _chunk(doc)
                    if data is None:
                        continue
                    # The daemon never splits a UTF-8 sequence across
                    # chunks, so each chunk decodes on its own.
                    if ev.event == "stdout":
                        out.append(data)
                        if on_stdout is not None:
                            on_stdout(data.decode("utf-8", "replace"))
                    else:
                        err.append(data)
                        if on_stderr is not None:
                            on_stderr(data.decode("utf-8", "replace"))
                elif ev.event == "exit":
                    return ProcessResult.from_json(doc, stdout=b"".join(out), stderr=b"".join(err), pid=pid)
        raise StockadeConnectionError("connection_lost", "the exec stream ended before the process did")

    def start(
        self,
        cmd: Command,
        *,
        timeout: Optional[Duration] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[Union[str, bytes]] = None,
    ) -> Process:
        """Starts a command in the background; its stdin stays open (see
        ``Process.send_stdin``)."""
        client = self._sb.client
        pid = client.exec_background(self._sb.id, cmd, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
        return Process(client, self._sb.id, pid)

    def get(self, pid: int) -> Process:
        """A handle on a process started through the API, by pid."""
        return Process(self._sb.client, self._sb.id, pid)

    def list(self) -> List[ProcessInfo]:
        """The sandbox's processes, running and ended."""
        return self._sb.client.processes(self._sb.id)

    def top(self) -> List[TopProcess]:
        """Every process running in the sandbox now, as ``stockade top``
        shows them (not only those started through the API)."""
        return self._sb.client.top(self._sb.id)


class Files:
    """``sandbox.files``: files as the sandbox sees them (paths are absolute
    and resolved inside the sandbox's root)."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sb = sandbox

    def read(self, path: str) -> bytes:
        """A regular file's bytes."""
        return self._sb.client.read_file(self._sb.id, path)

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A regular file's text."""
        return self.read(path).decode(encoding)

    def write(self, path: str, data: Union[str, bytes]) -> bool:
        """Writes a file (``str`` as UTF-8), creating missing parent
        directories; returns True if the file is new."""
        return self._sb.client.write_file(self._sb.id, path, data)

    def list(self, path: str = "/workspace") -> List[FileEntry]:
        """A directory's entries, sorted by name."""
        return self._sb.client.list_dir(self._sb.id, path)

    def remove(self, path: str) -> None:
        """Deletes a file, a symlink (not its target) or an empty directory."""
        self._sb.client.remove_file(self._sb.id, path)

    def exists(self, path: str) -> bool:
        """Whether ``path`` names something (a file, directory, ...)."""
        parent, _, name = path.rstrip("/").rpartition("/")
        if not name:
            return True
        try:
            return any(e.name == name for e in self.list(parent or "/"))
        except StockadeError as e:
            if e.status in (400, 404):
                return False
            raise


class Sandbox:
    """A sandbox of the stockade daemon.

    ``Sandbox(...)`` creates one; as a context manager it is destroyed on
    exit. Shortcuts ``memory``, ``cpus``, ``timeout`` (the sandbox's whole
    life) and ``net`` (``network.mode``: ``none``, ``allowlist``, ...)
    are merged into ``policy``, a full policy dict (the policy file's keys
    in JSON). ``ttl`` bounds its life too; ``labels`` tag it for
    ``Sandbox.list``. ``socket`` is the daemon's unix socket
    (``$STOCKADE_SOCKET``, else ``/run/stockade/stockade.sock`` for root and
    ``$XDG_RUNTIME_DIR/stockade/stockade.sock`` for anyone else, by default).
    ``image`` (``"python:3.11"``, ``"oci:/srv/images/app"``) makes the
    image's files the sandbox's root instead of the host's ``/usr``;
    ``pull`` says when the daemon fetches it: ``missing`` (default),
    ``always`` or ``never``.
    """

    def __init__(
        self,
        *,
        memory: Optional[Union[str, int]] = None,
        cpus: Optional[Union[int, float, str]] = None,
        timeout: Optional[Duration] = None,
        net: Optional[str] = None,
        ttl: Optional[Duration] = None,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        policy: Optional[Mapping[str, Any]] = None,
        socket: Optional[PathLike] = None,
        destroy_on_exit: bool = True,
        image: Optional[str] = None,
        pull: Optional[str] = None,
    ) -> None:
        client = Client(socket)
        info = client.create(
            policy=build_policy(policy, memory=memory, cpus=cpus, timeout=timeout, net=net),
            name=name,
            labels=labels,
            ttl=ttl,
            image=image,
            pull=pull,
        )
        self._init(client, info, destroy_on_exit)

    def _init(self, client: Client, info: SandboxInfo, destroy_on_exit: bool) -> None:
        self.client = client
        self.id = info.id
        self.info = info
        """The sandbox as last fetched (by create, ``status()`` or ``kill()``)."""
        self.destroy_on_exit = destroy_on_exit
        self.process = Processes(self)
        self.files = Files(self)

    @classmethod
    def connect(cls, id: str, *, socket: Optional[PathLike] = None, destroy_on_exit: bool = False) -> "Sandbox":
        """Attaches to an existing sandbox by id or name (StockadeError 404
        if there is none). It is not destroyed on exit unless
        ``destroy_on_exit``."""
        client = Client(socket)
        info = client.get(id)
        sb = cls.__new__(cls)
        sb._init(client, info, destroy_on_exit)
        return sb

    @classmethod
    def list(
        cls,
        labels: Optional[Mapping[str, str]] = None,
        state: Optional[str] = None,
        *,
        socket: Optional[PathLike] = None,
    ) -> List[SandboxInfo]:
        """The daemon's sandboxes, newest first, filtered by labels (all
        must match) and state (``running``, ``destroyed``, ``dead``,
        ``expired``)."""
        return Client(socket).list(labels=labels, state=state)

    @classmethod
    def run_task(
        cls,
        repo: str,
        cmd: Command,
        *,
        task: Optional[str] = None,
        ref: Optional[str] = None,
        collect: Optional[Sequence[str]] = None,
        policy: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        poll: float = 0.2,
        socket: Optional[PathLike] = None,
        image: Optional[str] = None,
    ) -> TaskResult:
        """Runs an agent task through the daemon: the repository (a path on
        the daemon's host, or an http(s)/git URL) is cloned into a fresh
        sandbox, ``cmd`` runs in ``/workspace`` with the task text in
        ``$STOCKADE_TASK``, and the changes come back as a patch (``image``:
        the three sandboxes' root filesystem image, as in ``Sandbox``). Waits
        until the task ends (``timeout`` seconds at most, else
        ``TimeoutError``)."""
        client = Client(socket)
        body: Dict[str, Any] = {"repo": str(repo), "cmd": _cmd(cmd)}
        if task is not None:
            body["task"] = task
        if ref is not None:
            body["ref"] = ref
        if collect:
            body["collect"] = list(collect)
        if policy is not None:
            body["policy"] = dict(policy)
        if image is not None:
            body["image"] = image
        started = client.create_task(body)
        task_id = str(started.get("id", ""))
        deadline = None if timeout is None else time.monotonic() + timeout
        doc = started
        while doc.get("state") == "running":
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} still running after {timeout} s")
            time.sleep(poll)
            doc = client.get_task(task_id)
        patch = client.task_patch(task_id) if doc.get("state") == "done" else b""
        return TaskResult.from_json(doc, patch)

    @property
    def name(self) -> Optional[str]:
        return self.info.name

    @property
    def labels(self) -> Dict[str, str]:
        return self.info.labels

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, name={self.info.name!r}, state={self.info.state!r})"

    def status(self) -> SandboxInfo:
        """The sandbox now: state, usage, violations and processes while
        running; the report once ended."""
        self.info = self.client.get(self.id)
        return self.info

    def events(self) -> EventStream:
        """The sandbox's events from now on (an endless iterator of
        ``Event``; close it, or use ``with``, to stop)."""
        return self.client.events(self.id)

    def kill(self) -> Dict[str, Any]:
        """Destroys the sandbox (idempotent); returns its final report
        (``{}`` if the daemon has none). ``self.info`` gets the whole answer."""
        self.info = self.client.destroy(self.id)
        return dict(self.info.report or {})

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if not self.destroy_on_exit:
            return
        try:
            self.kill()
        except StockadeError:
            # Do not hide the error that ended the block.
            if exc_type is None:
                raise
