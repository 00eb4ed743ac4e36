"""HTTP/1.1 over the daemon's unix socket, and server-sent events.

One connection per request (``Connection: close``), as the daemon's own
Rust client does: requests are independent, so a ``Transport`` may be
shared between threads.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple, Type, Union
from urllib.parse import quote

from .errors import StockadeConnectionError, StockadeError

DEFAULT_SOCKET = "/run/stockade/stockade.sock"
"""Where ``stockade serve`` run by root listens unless told otherwise."""

USER_AGENT = "stockade-python/0.1.0"

# Largest error body read to build a StockadeError.
_MAX_ERROR_BODY = 1024 * 1024

Query = Sequence[Tuple[str, str]]
PathLike = Union[str, "os.PathLike[str]"]


def default_socket() -> str:
    """``$STOCKADE_SOCKET`` if set, else where ``stockade serve`` run by
    this user listens by default, as the CLI finds it: root's
    :data:`DEFAULT_SOCKET`, or an ordinary user's
    ``$XDG_RUNTIME_DIR/stockade/stockade.sock`` (``/tmp/stockade-<uid>/``
    without ``XDG_RUNTIME_DIR``)."""
    explicit = os.environ.get("STOCKADE_SOCKET")
    if explicit:
        return explicit
    return socket_for(os.geteuid(), os.environ.get("XDG_RUNTIME_DIR"))


def socket_for(euid: int, xdg_runtime_dir: Optional[str]) -> str:
    """The default socket of user ``euid`` (see :func:`default_socket`)."""
    if euid == 0:
        return DEFAULT_SOCKET
    if xdg_runtime_dir and os.path.isabs(xdg_runtime_dir):
        return os.path.join(xdg_runtime_dir, "stockade", "stockade.sock")
    return f"/tmp/stockade-{euid}/stockade.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection whose transport is a unix socket."""

    def __init__(self, socket_path: str, timeout: Optional[float] = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def seg(value: Union[str, int]) -> str:
    """Percent-encodes one path segment."""
    return quote(str(value), safe="")


def _target(path: str, query: Optional[Query]) -> str:
    if not query:
        return path
    return path + "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in query)


def _error_from(resp: http.client.HTTPResponse) -> StockadeError:
    status = resp.status
    try:
        raw = resp.read(_MAX_ERROR_BODY)
    except (OSError, http.client.HTTPException):
        raw = b""
    finally:
        resp.close()
    code = "unknown"
    message = ""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        if isinstance(err.get("code"), str):
            code = err["code"]
        if isinstance(err.get("message"), str):
            message = err["message"]
    if not message:
        text = raw.decode("utf-8", "replace").strip()
        message = f"the daemon answered HTTP {status} {resp.reason}" + (f": {text}" if text else "")
    return StockadeError(status, code, message)


class Transport:
    """Sends requests to one daemon socket."""

    def __init__(self, socket_path: Optional[PathLike] = None, timeout: Optional[float] = None) -> None:
        self.socket_path = os.fspath(socket_path) if socket_path is not None else default_socket()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Transport({self.socket_path!r})"

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Query] = None,
        body: Optional[bytes] = None,
        content_type: str = "application/json",
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> http.client.HTTPResponse:
        """Sends a request; returns the open answer (status < 400).

        An answer with status >= 400 is read and raised as StockadeError.
        ``timeout`` (else the transport's) bounds every socket operation.
        """
        return self._open(method, path, query, body, content_type, headers, timeout)[0]

    def _open(
        self,
        method: str,
        path: str,
        query: Optional[Query],
        body: Optional[bytes],
        content_type: str,
        headers: Optional[Mapping[str, str]],
        timeout: Optional[float],
    ) -> Tuple[http.client.HTTPResponse, socket.socket]:
        conn = UnixHTTPConnection(self.socket_path, timeout if timeout is not None else self.timeout)
        hdrs = {"Connection": "close", "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if headers:
            hdrs.update(headers)
        if body is not None:
            hdrs["Content-Type"] = content_type
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise StockadeConnectionError(
                "unreachable",
                f"cannot reach the stockade daemon at {self.socket_path}: {e}; "
                "is `stockade serve` running, and may you use its socket?",
            ) from e
        sock = conn.sock
        assert sock is not None
        try:
            try:
                conn.request(method, _target(path, query), body=body, headers=hdrs)
            except (BrokenPipeError, ConnectionResetError):
                # The daemon may answer (e.g. 413) and close before reading
                # the whole body; its answer is still there to read.
                pass
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if isinstance(e, (socket.timeout, TimeoutError)):
                raise
            raise StockadeConnectionError(
                "connection_lost", f"the connection to the stockade daemon at {self.socket_path} failed: {e}"
            ) from e
        # With `Connection: close` http.client hands the socket over to the
        # answer: closing the answer closes the connection.
        if resp.status >= 400:
            raise _error_from(resp)
        return resp, sock

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Query] = None,
        json_body: Any = None,
        body: Optional[bytes] = None,
        content_type: str = "application/json",
        timeout: Optional[float] = None,
    ) -> Any:
        """Sends a request and parses the JSON answer (``None`` if empty)."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        resp = self.open(method, path, query=query, body=body, content_type=content_type, timeout=timeout)
        raw = read_all(resp)
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise StockadeConnectionError(
                "protocol", f"the stockade daemon sent an answer that is not JSON: {raw[:200]!r}"
            ) from e

    def read_bytes(self, path: str, *, query: Optional[Query] = None) -> bytes:
        """Sends a GET and returns the raw answer body."""
        return read_all(self.open("GET", path, query=query))

    def sse(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        query: Optional[Query] = None,
        timeout: Optional[float] = None,
    ) -> "SseStream":
        """Opens a server-sent event stream."""
        body = json.dumps(json_body).encode() if json_body is not None else None
        resp, sock = self._open(method, path, query, body, "application/json", {"Accept": "text/event-stream"}, timeout)
        return SseStream(resp, sock)


def read_all(resp: http.client.HTTPResponse) -> bytes:
    """The whole body of an answer, then closes it."""
    try:
        return resp.read()
    except (socket.timeout, TimeoutError):
        raise
    except (OSError, http.client.HTTPException) as e:
        raise StockadeConnectionError(
            "connection_lost", f"the connection to the stockade daemon broke while reading its answer: {e}"
        ) from e
    finally:
        resp.close()


@dataclass(frozen=True)
class SseEvent:
    """One server-sent event: its name (``message`` if unnamed) and data."""

    event: str
    data: str

    def json(self) -> Any:
        """The data parsed as JSON (``None`` if it is not JSON)."""
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SseStream:
    """Iterator over the events of an answer; ends when the daemon closes it.

    ``:`` comment lines (keep-alives) are skipped. Close it (or use it as a
    context manager) to stop following early.
    """

    def __init__(self, resp: http.client.HTTPResponse, sock: Optional[socket.socket] = None) -> None:
        self._resp = resp
        self._sock = sock
        self._closed = False
        self.deadline: Optional[float] = None
        """A ``time.monotonic()`` value after which iteration raises TimeoutError."""

    def __iter__(self) -> Iterator[SseEvent]:
        return self

    def __enter__(self) -> "SseStream":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stops following the stream and closes its connection (also
        from another thread: a read blocked on it then ends)."""
        if not self._closed:
            self._closed = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                self._resp.close()
            except (OSError, ValueError):
                pass

    def _readline(self) -> bytes:
        try:
            return self._resp.readline()
        except Exception as e:
            if self._closed:
                # Closed meanwhile (by another thread): the stream just ends.
                return b""
            if isinstance(e, (socket.timeout, TimeoutError)):
                self.close()
                raise TimeoutError("no event from the stockade daemon in time") from None
            if not isinstance(e, (OSError, ValueError, http.client.HTTPException)):
                raise
            self.close()
            raise StockadeConnectionError(
                "connection_lost", f"the event stream from the stockade daemon broke: {e}"
            ) from e

    def __next__(self) -> SseEvent:
        event = ""
        data: Optional[list[str]] = None
        while True:
            if self._closed:
                raise StopIteration
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.close()
                raise TimeoutError("the event stream did not finish in time")
            raw = self._readline()
            if not raw:
                # End of stream; an event without its blank line is dropped.
                self.close()
                raise StopIteration
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data is not None:
                    return SseEvent(event or "message", "\n".join(data))
                event = ""
                continue
            if line.startswith(":"):
                continue
            field, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            # id and retry carry nothing this API uses.
