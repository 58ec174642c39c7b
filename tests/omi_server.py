"""A real HTTP server on loopback that plays Omi's notification API for the tests.

It records every request (method, path, query, headers) and answers as told: 200
`{"status": "Ok"}`, 401, 429 with Retry-After, 500, or no answer until after the client's
timeout. Import the `omi_api` fixture into a test module to use it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=lambda: {"status": "Ok"})
    hang_seconds: float = 0.0  # wait this long before answering


class OmiApi:
    def __init__(self, port: int = 0) -> None:
        """`port`: 0 for any free one; a fixed one to bring the API "back up" where a client
        already points."""
        self.received: list[Received] = []
        self._reply = Reply()
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, status: int = 200, headers: dict[str, str] | None = None, body: dict | None = None) -> None:
        with self._lock:
            self._reply = Reply(status, headers or {}, body if body is not None else ({"status": "Ok"} if status == 200 else {"detail": "error"}))

    def hang(self, seconds: float) -> None:
        """Answer 200 only after `seconds` (or when the server stops), to outlast a client timeout."""
        with self._lock:
            self._reply = Reply(hang_seconds=seconds)

    def notifications(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.endswith("/notification")]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with api._lock:
                    api.received.append(
                        Received(
                            self.command,
                            parts.path,
                            {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                            dict(self.headers.items()),
                        )
                    )
                    reply = api._reply
                if reply.hang_seconds:
                    api._release.wait(reply.hang_seconds)
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, which is what a hang test wants

            do_POST = do_GET = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def omi_api() -> Iterator[OmiApi]:
    api = OmiApi()
    api.start()
    yield api
    api.stop()
