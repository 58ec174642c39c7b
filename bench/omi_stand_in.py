"""A real HTTP server on loopback that plays Omi's integration API, for the tests and for
bench/load.py (which counts the notifications its simulated users receive).

By default it behaves as Omi does (shared/omi/CONTRACT.md, section 2; checked against Omi's
`backend/routers/integration.py`), in Omi's order of checks:

- `POST /v2/integrations/{app_id}/notification?uid=&message=`: 422 without uid or message;
  401 `{"detail": ...}` without `Authorization: Bearer <key>`; 403 for a wrong key (only when the
  server was given `app_secret`; without one any key is accepted); 404 for another app id (only
  when given `app_id`); 403 when the uid has not enabled the app (`disable(uid)`); then Omi's
  hourly count per (app, uid, UTC hour), whose counter starts at 2 of 10, so calls 1-9 are
  200 `{"status": "Ok"}` and the 10th and later 429. Every answer past the 403s carries
  `X-RateLimit-Limit: 10`, `X-RateLimit-Remaining` (9 - k after the k-th success: 8 after the
  first, 0 after the 9th; 0 on a 429) and `X-RateLimit-Reset`, which, as in Omi, is the number
  of SECONDS until the top of the UTC hour (1..3600), not an epoch time; a 429 adds
  `Retry-After` with the same number.
- `POST /v2/integrations/{app_id}/user/memories?uid=` with a JSON body
  (`{"text", "text_source", "text_source_spec", "source_id", "source_url",
  "memories": [{"content", "tags", "source_id", "source_url"}]}`): 401 / 403 wrong key as above,
  then 60 per (app, uid, UTC hour), beyond which 429 with `X-RateLimit-Limit: 60`,
  `X-RateLimit-Remaining: 0`, `X-RateLimit-Reset` and `Retry-After` (seconds to the hour), then
  404 / 403 not enabled, then 422 when it has neither `text` nor `memories`; else 200 `{}` (no
  rate-limit headers on a success, as in Omi). A body that is not JSON or does not fit the model
  is 422 before anything else, as FastAPI validates it before Omi's handler runs.
- anything else: 404 `{"detail": "Not Found"}`.

The clock is `api.now` (a function returning epoch seconds, default `time.time`): a test sets
`api.now = lambda: t` to let an hour pass without waiting.

`answer(status, headers, body)` and `hang(seconds)` override all of that (the request is still
recorded, and counts for nothing) until `realistic()` restores it. Every request is recorded in
`received` (method, path, query, headers, raw body, the status it got); `notifications()` and
`memories()` filter them. Tests get one from the `omi_api` fixture (tests/omi_server.py).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

NOTIFICATION_LIMIT = 10  # Omi's MAX_NOTIFICATIONS_PER_HOUR; its counter starts at 2, so 9 get through
MEMORY_LIMIT = 60  # Omi's integration:memories policy, per app and user per hour
# What stands in for the memory Omi's LLM extractor writes from a non-empty `text`.
EXTRACTED_PREFIX = "The user mentioned: "
HOUR = 3600

_NOTIFICATION = re.compile(r"^/v2/integrations/([^/]+)/notification$")
_MEMORIES = re.compile(r"^/v2/integrations/([^/]+)/user/memories$")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    status: int | None = None  # what the server answered

    @property
    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: dict = field(default_factory=lambda: {"status": "Ok"})
    hang_seconds: float = 0.0  # wait this long before answering


class OmiApi:
    def __init__(self, port: int = 0, app_secret: str | None = None, app_id: str | None = None) -> None:
        """`port`: 0 for any free one; a fixed one to bring the API "back up" where a client
        already points. `app_secret`: the only Bearer key accepted (None: any). `app_id`: the only
        app that exists (None: any)."""
        self.received: list[Received] = []
        self.app_secret = app_secret
        self.app_id = app_id
        self.now: Callable[[], float] = time.time
        self._override: Reply | None = None
        self._disabled: set[str] = set()
        self._stored: list[tuple[str, str]] = []
        self._counts: dict[tuple[str, str, str, int], int] = {}
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

    # --- overrides -------------------------------------------------------------------------
    def answer(self, status: int = 200, headers: dict[str, str] | None = None, body: dict | None = None) -> None:
        """Answer every request with this, whatever Omi would say, until `realistic()`."""
        default = {"status": "Ok"} if status == 200 else {"detail": "error"}
        with self._lock:
            self._override = Reply(status, headers or {}, body if body is not None else default)

    def hang(self, seconds: float) -> None:
        """Answer 200 only after `seconds` (or when the server stops), to outlast a client timeout."""
        with self._lock:
            self._override = Reply(hang_seconds=seconds)

    def realistic(self) -> None:
        """Back to behaving as Omi does (the default)."""
        with self._lock:
            self._override = None

    # --- the users' side -------------------------------------------------------------------
    def disable(self, uid: str) -> None:
        """This user has not enabled (or has removed) the app: 403 for them."""
        with self._lock:
            self._disabled.add(uid)

    def enable(self, uid: str) -> None:
        with self._lock:
            self._disabled.discard(uid)

    # --- what arrived ----------------------------------------------------------------------
    def notifications(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path.endswith("/notification")]

    def memories(self) -> list[Received]:
        """Memory requests as received (`.json` is the parsed body), whatever was answered."""
        with self._lock:
            return [r for r in self.received if r.path.endswith("/user/memories")]

    def stored_memories(self, uid: str) -> list[str]:
        """The memories Omi would now hold for `uid`, oldest first: explicit ones as sent, and
        the extractor's paraphrase of each non-empty `text`."""
        with self._lock:
            return [content for owner, content in self._stored if owner == uid]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # --- Omi's behaviour -------------------------------------------------------------------
    def _respond(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> Reply:
        """What Omi answers; called with the lock held."""
        notification, memories = _NOTIFICATION.match(path), _MEMORIES.match(path)
        if method != "POST" or not (notification or memories):
            return Reply(404, body={"detail": "Not Found"})
        app_id = (notification or memories).group(1)
        uid = query.get("uid", "")
        # FastAPI validates the query and the body before Omi's handler runs: 422 comes first.
        if not uid or (notification and "message" not in query):
            return Reply(422, body={"detail": "uid and message are required" if notification else "uid is required"})
        payload = None
        if memories:
            payload, problem = _memory_request(body)
            if problem:
                return Reply(422, body={"detail": problem})
        authorization = headers.get("authorization", "")
        if not authorization.startswith("Bearer "):
            return Reply(401, body={"detail": "Missing or invalid Authorization header. Must be 'Bearer API_KEY'"})
        if self.app_secret is not None and authorization.removeprefix("Bearer ") != self.app_secret:
            return Reply(403, body={"detail": "Invalid API key"})
        now = self.now()
        if notification:
            return self._notification(app_id, uid, now)
        return self._memories(app_id, uid, payload, now)

    def _notification(self, app_id: str, uid: str, now: float) -> Reply:
        if self.app_id is not None and app_id != self.app_id:
            return Reply(404, body={"detail": "App not found"})
        if uid in self._disabled:
            return Reply(403, body={"detail": "User does not have this app installed"})
        key = ("notification", app_id, uid, int(now // HOUR))
        count = self._counts.setdefault(key, 1)  # Omi sets the new hour's counter to 1, then adds 1
        reset = _seconds_to_hour(now)
        headers = {"X-RateLimit-Limit": str(NOTIFICATION_LIMIT), "X-RateLimit-Reset": str(reset)}
        if count >= NOTIFICATION_LIMIT:
            headers.update({"X-RateLimit-Remaining": "0", "Retry-After": str(reset)})
            detail = f"Rate limit exceeded. Maximum {NOTIFICATION_LIMIT} notifications per hour."
            return Reply(429, headers, {"detail": detail})
        self._counts[key] = count + 1
        headers["X-RateLimit-Remaining"] = str(NOTIFICATION_LIMIT - count - 1)
        return Reply(200, headers, {"status": "Ok"})

    def _memories(self, app_id: str, uid: str, payload: dict, now: float) -> Reply:
        key = ("memories", app_id, uid, int(now // HOUR))
        count = self._counts.get(key, 0)
        if count >= MEMORY_LIMIT:
            reset = str(_seconds_to_hour(now))
            headers = {"X-RateLimit-Limit": str(MEMORY_LIMIT), "X-RateLimit-Remaining": "0"}
            headers.update({"X-RateLimit-Reset": reset, "Retry-After": reset})
            return Reply(429, headers, {"detail": f"Rate limit exceeded. Maximum {MEMORY_LIMIT} requests per {HOUR}s."})
        self._counts[key] = count + 1
        if self.app_id is not None and app_id != self.app_id:
            return Reply(404, body={"detail": "App not found"})
        if uid in self._disabled:
            return Reply(403, body={"detail": "App is not enabled for this user"})
        text, items = payload["text"], payload.get("memories")
        if not text.strip() and not items:
            return Reply(422, body={"detail": "Either text or explicit memories(facts) are required and cannot be empty"})
        self._stored.extend((uid, item["content"]) for item in items or [])
        if text.strip():
            self._stored.append((uid, EXTRACTED_PREFIX + text))
        return Reply(200, body={})

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = dict(self.headers.items())
                with api._lock:
                    reply = api._override
                    if reply is None:
                        lowered = {k.lower(): v for k, v in headers.items()}
                        reply = api._respond(self.command, parts.path, query, lowered, body)
                    api.received.append(Received(self.command, parts.path, query, headers, body, reply.status))
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

            do_POST = do_GET = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def _memory_request(body: bytes) -> tuple[dict, str | None]:
    """The memories body as Omi's model takes it, or why not: `text` (a required str),
    `text_source` and `text_source_spec` (str), `source_id` / `source_url` (str or null), and
    `memories`, a list of `{"content": str, "tags": [str], "source_id", "source_url"}`."""
    try:
        payload = json.loads(body)
    except ValueError:
        return {}, "the body must be JSON"
    if not isinstance(payload, dict):
        return {}, "the body must be a JSON object"
    if not isinstance(payload.get("text"), str):
        return {}, "text is required and must be a string"
    for name in ("text_source", "text_source_spec", "source_id", "source_url"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            return {}, f"{name} must be a string"
    items = payload.get("memories")
    if items is None:
        return payload, None
    if not isinstance(items, list):
        return {}, "memories must be a list"
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            return {}, "each memory needs a string content"
        tags = item.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return {}, "tags must be a list of strings"
        for name in ("source_id", "source_url"):
            if item.get(name) is not None and not isinstance(item[name], str):
                return {}, f"{name} must be a string"
    return payload, None


def _seconds_to_hour(now: float) -> int:
    """Omi's `3600 - (int(now) % 3600)`: 1..3600 whole seconds to the top of the UTC hour."""
    return HOUR - (math.floor(now) % HOUR)
