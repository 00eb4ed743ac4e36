"""Typed views of the API's answers.

Every class keeps the answer it was built from in ``raw``, so fields the
daemon adds later are never out of reach.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union

__all__ = [
    "ProcessResult",
    "ProcessInfo",
    "TopProcess",
    "FileEntry",
    "SandboxInfo",
    "Event",
    "OutputChunk",
]

JsonDict = Dict[str, Any]


def _opt_int(v: Any) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_float(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> Optional[str]:
    return v if isinstance(v, str) else None


def _dict(v: Any) -> JsonDict:
    return dict(v) if isinstance(v, Mapping) else {}


def _output(v: Any, encoding: str) -> bytes:
    """Output bytes from bytes, or a string in ``encoding``."""
    if isinstance(v, bytes):
        return v
    if not isinstance(v, str):
        return b""
    if encoding == "base64":
        return base64.b64decode(v)
    return v.encode("utf-8")


@dataclass(frozen=True)
class ProcessResult:
    """How a process ended and what it printed.

    ``outcome`` is ``exited`` (see ``exit_code``), ``signaled`` (see
    ``signal``), ``timeout`` (killed with SIGKILL at its timeout),
    ``error`` (the sandbox went away meanwhile; ``error`` says why), or
    ``memory-limit``/``disk-limit`` (the sandbox hit that limit and was
    killed, and the process with it).
    ``stdout``/``stderr`` are UTF-8 text (invalid bytes become U+FFFD);
    ``stdout_bytes``/``stderr_bytes`` are the bytes as printed (binary
    output: images, archives, any encoding). ``truncated`` says the daemon
    kept only the most recent 1 MiB of one.
    """

    exit_code: Optional[int]
    signal: Optional[int]
    outcome: str
    stdout: str
    stderr: str
    truncated: bool
    pid: Optional[int] = None
    duration_seconds: float = 0.0
    error: Optional[str] = None
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    raw: JsonDict = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """The process exited with status 0."""
        return self.outcome == "exited" and self.exit_code == 0

    @classmethod
    def from_json(
        cls,
        d: Mapping[str, Any],
        *,
        stdout: Optional[Union[str, bytes]] = None,
        stderr: Optional[Union[str, bytes]] = None,
        pid: Optional[int] = None,
        encoding: str = "text",
    ) -> "ProcessResult":
        """Builds a result from an exec answer (its ``stdout``/``stderr``
        in ``encoding``) or an ``exit`` event (with the output gathered
        from the stream: bytes, or text)."""
        out = _output(stdout if stdout is not None else d.get("stdout"), encoding)
        err = _output(stderr if stderr is not None else d.get("stderr"), encoding)
        return cls(
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_int(d.get("signal")),
            outcome=str(d.get("outcome", "")),
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            stdout_bytes=out,
            stderr_bytes=err,
            truncated=bool(d.get("truncated", False)),
            pid=_opt_int(d.get("pid")) if pid is None else pid,
            duration_seconds=_opt_float(d.get("duration_seconds")) or 0.0,
            error=_opt_str(d.get("error")),
            raw=dict(d),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process of a sandbox, as the process list shows it."""

    pid: int
    cmd: List[str]
    running: bool
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    background: bool = False
    via_api: bool = False
    raw: JsonDict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ProcessInfo":
        cmd = d.get("cmd")
        return cls(
            pid=int(d.get("pid", 0)),
            cmd=[str(a) for a in cmd] if isinstance(cmd, list) else [],
            running=bool(d.get("running", False)),
            exit_code=_opt_int(d.get("exit_code")),
            signal=_opt_int(d.get("signal")),
            background=bool(d.get("background", False)),
            via_api=bool(d.get("via_api", False)),
            raw=dict(d),
        )


@dataclass(frozen=True)
class TopProcess:
    """A process running in a sandbox, as ``top`` shows it: every process,
    not only those started through the API, read by the daemon from the
    host's ``/proc``."""

    pid: int
    """Pid inside the sandbox."""
    host_pid: int
    ppid: int
    """Parent's pid inside the sandbox (0 for the sandbox's init)."""
    uid: int
    """Effective uid inside the sandbox."""
    user: str
    """Its name in the sandbox's ``/etc/passwd``, else the uid."""
    state: str
    cpu_seconds: float
    cpu_percent: float
    """CPU time over the time it has run, in percent of one CPU."""
    rss_bytes: int
    elapsed_seconds: float
    cmd: List[str]
    raw: JsonDict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TopProcess":
        cmd = d.get("cmd")
        return cls(
            pid=int(d.get("pid", 0)),
            host_pid=int(d.get("host_pid", 0)),
            ppid=int(d.get("ppid", 0)),
            uid=int(d.get("uid", 0)),
            user=str(d.get("user", "")),
            state=str(d.get("state", "")),
            cpu_seconds=_opt_float(d.get("cpu_seconds")) or 0.0,
            cpu_percent=_opt_float(d.get("cpu_percent")) or 0.0,
            rss_bytes=int(d.get("rss_bytes", 0)),
            elapsed_seconds=_opt_float(d.get("elapsed_seconds")) or 0.0,
            cmd=[str(a) for a in cmd] if isinstance(cmd, list) else [],
            raw=dict(d),
        )


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing (symlinks are not followed).

    ``type`` is ``file``, ``dir``, ``symlink`` or ``other``; ``mode`` the
    permission bits in octal (``"0644"``); ``mtime`` unix seconds.
    """

    name: str
    type: str
    size: int
    mode: str
    mtime: int
    raw: JsonDict = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileEntry":
        return cls(
            name=str(d.get("name", "")),
            type=str(d.get("type", "other")),
            size=_opt_int(d.get("size")) or 0,
            mode=str(d.get("mode", "")),
            mtime=_opt_int(d.get("mtime")) or 0,
            raw=dict(d),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the daemon describes it; times are unix seconds.

    ``state`` is ``running``, ``destroyed``, ``dead`` or ``expired``.
    ``usage`` (totals and peaks), ``current`` (``memory_bytes`` and
    ``pids`` held now), ``violations`` and ``processes`` are filled for a
    running sandbox fetched by id (``Sandbox.status()``); ``report`` once
    it ended.
    """

    id: str
    state: str
    name: Optional[str] = None
    reason: Optional[str] = None
    labels: Dict[str, str] = field(default_factory=dict)
    policy: JsonDict = field(default_factory=dict, repr=False)
    created_at: float = 0.0
    expires_at: Optional[float] = None
    ended_at: Optional[float] = None
    usage: Optional[JsonDict] = None
    current: Optional[JsonDict] = None
    violations: Optional[List[JsonDict]] = None
    processes: Optional[List[ProcessInfo]] = None
    report: Optional[JsonDict] = field(default=None, repr=False)
    raw: JsonDict = field(default_factory=dict, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "SandboxInfo":
        labels = d.get("labels")
        usage = d.get("usage")
        current = d.get("current")
        violations = d.get("violations")
        procs = d.get("processes")
        report = d.get("report")
        return cls(
            id=str(d.get("id", "")),
            state=str(d.get("state", "")),
            name=_opt_str(d.get("name")),
            reason=_opt_str(d.get("reason")),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
            policy=_dict(d.get("policy")),
            created_at=_opt_float(d.get("created_at")) or 0.0,
            expires_at=_opt_float(d.get("expires_at")),
            ended_at=_opt_float(d.get("ended_at")),
            usage=dict(usage) if isinstance(usage, Mapping) else None,
            current=dict(current) if isinstance(current, Mapping) else None,
            violations=[_dict(v) for v in violations] if isinstance(violations, list) else None,
            processes=[ProcessInfo.from_json(p) for p in procs if isinstance(p, Mapping)]
            if isinstance(procs, list)
            else None,
            report=dict(report) if isinstance(report, Mapping) else None,
            raw=dict(d),
        )


@dataclass(frozen=True)
class Event:
    """A daemon event: ``type`` (``created``, ``exec-started``,
    ``exec-exited``, ``violation``, ``network-denied``, ``expired``,
    ``destroyed``, ``lagged``), the sandbox, the time (unix seconds), and
    the whole event in ``data``."""

    type: str
    sandbox_id: str
    time: float
    data: JsonDict = field(default_factory=dict)

    @classmethod
    def from_json(cls, name: str, d: Any) -> "Event":
        doc = _dict(d)
        return cls(
            type=str(doc.get("type", name)),
            sandbox_id=str(doc.get("sandbox_id", "")),
            time=_opt_float(doc.get("time")) or 0.0,
            data=doc,
        )


class OutputChunk(NamedTuple):
    """Some output of a process: ``stream`` is ``stdout`` or ``stderr``."""

    stream: str
    text: str


@dataclass
class TaskResult:
    """The end of a task run through the daemon (``Sandbox.run_task``)."""

    id: str
    #: ``done`` or ``failed`` (ended without a report).
    state: str
    #: The agent's outcome: ``exited``, ``signaled``, ``timeout``,
    #: ``memory-limit``, ``disk-limit`` or ``error``.
    outcome: Optional[str]
    exit_code: Optional[int]
    base_commit: Optional[str]
    files_changed: int
    patch: bytes
    #: The whole ``report.json``.
    report: Dict[str, Any]
    error: Optional[str]

    @classmethod
    def from_json(cls, doc: Dict[str, Any], patch: bytes) -> "TaskResult":
        report = doc.get("report") if isinstance(doc.get("report"), dict) else {}
        assert isinstance(report, dict)
        return cls(
            id=str(doc.get("id", "")),
            state=str(doc.get("state", "")),
            outcome=report.get("outcome"),
            exit_code=report.get("exit_code"),
            base_commit=report.get("base_commit"),
            files_changed=int(report.get("files_changed") or 0),
            patch=patch,
            report=report,
            error=doc.get("error") or report.get("error"),
        )
