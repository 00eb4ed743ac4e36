"""A tiny fake of the daemon on a unix socket, to test the SDK's HTTP and
SSE plumbing without sandboxes (and without root).

Each test registers answers per (method, path); every request is recorded.
"""

from __future__ import annotations

import json
import socketserver
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: List[Tuple[str, str]]
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)
    # Server-sent events: (name, data, seconds to wait before it), or a
    # raw string sent as is (comments, odd line endings).
    sse: Optional[Sequence[Union[Tuple[str, str, float], str]]] = None


def json_reply(status: int, doc: Any) -> Reply:
    return Reply(status, json.dumps(doc).encode(), {"Content-Type": "application/json"})


def error_reply(status: int, code: str, message: str) -> Reply:
    return json_reply(status, {"error": {"code": code, "message": message}})


Handler = Callable[[Request], Reply]


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: "FakeDaemon"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _serve(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            self.command,
            url.path,
            parse_qsl(url.query, keep_blank_values=True),
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        fake.requests.append(req)
        handler = fake.routes.get((self.command, url.path))
        reply = handler(req) if handler else error_reply(404, "route_not_found", f"no route {url.path}")
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        if reply.sse is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for item in reply.sse:
            if isinstance(item, str):
                self._chunk(item.encode())
                continue
            name, data, delay = item
            if delay:
                time.sleep(delay)
            lines = "".join(f"data: {line}\n" for line in data.split("\n"))
            self._chunk(f"event: {name}\n{lines}\n".encode())
        self._chunk(b"")

    def _chunk(self, b: bytes) -> None:
        self.wfile.write(f"{len(b):x}\r\n".encode() + b + b"\r\n")
        self.wfile.flush()

    do_GET = _serve
    do_POST = _serve
    do_PUT = _serve
    do_DELETE = _serve


class FakeDaemon:
    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path
        self.requests: List[Request] = []
        self.routes: Dict[Tuple[str, str], Handler] = {}
        self._server = _Server(socket_path, _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def route(self, method: str, path: str, reply: Union[Reply, Handler]) -> None:
        if isinstance(reply, Reply):
            fixed = reply

            def handler(_req: Request) -> Reply:
                return fixed

            self.routes[(method, path)] = handler
        else:
            self.routes[(method, path)] = reply

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
