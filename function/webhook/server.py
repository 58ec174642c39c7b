"""Limits of the HTTP server: the request line and headers gunicorn accepts, and how long a
request body may take to arrive.

functions-framework (3.10) serves the function with gunicorn through its own subclass of
gunicorn's BaseApplication (functions_framework/_http/gunicorn.py): WORKERS workers (1), THREADS
threads (4 per CPU), CLOUD_RUN_TIMEOUT_SECONDS as gunicorn's timeout, and `limit_request_line=0`,
no limit at all. Those environment variables are all it reads: gunicorn's GUNICORN_CMD_ARGS and
gunicorn.conf.py are read only by gunicorn's own Application class, which functions-framework does
not use, and its maintainers declined to pass other options through. Cloud Run's buildpack runs
that same `functions-framework` command, so the one place a setting can be changed is this
module, which main.py imports in gunicorn's master process before functions-framework builds
gunicorn's configuration.

Without a limit, gunicorn's request-line parser copies its whole buffer on every read: a 16 MiB
request line cost 25 s of CPU (holding the GIL, so every other request waited too).

gunicorn's threaded worker waits at most 5 s for a new connection's first byte, but once a
request has started, reading it has no deadline: a client that trickles its body holds a thread
for as long as it likes, and THREADS such clients leave none for anyone else. `BodyDeadline`
bounds that from inside the request: when a body has not arrived in time the socket is shut for
reading, the blocked read returns short, and the request is refused without storing anything.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Mapping

import werkzeug.exceptions

from function.logs import log

# gunicorn's own defaults (functions-framework turns the first off). Omi's URLs, a user's link
# and an operator's token all fit in a few hundred bytes.
REQUEST_LIMITS = {"limit_request_line": 4094, "limit_request_fields": 100, "limit_request_field_size": 8190}

# A body must arrive at BODY_MIN_BYTES_PER_SECOND or faster after a BODY_GRACE_SECONDS allowance,
# and within BODY_MAX_SECONDS whatever its size: a 1-s chunk of 16 kHz audio (32 kB) has 1.5 s,
# an app's 5-s batch 3.4 s, the largest chunk accepted by default (2 MB) 10 s. Omi sends from
# its servers, far faster than that.
BODY_GRACE_SECONDS = 1.0
BODY_MIN_BYTES_PER_SECOND = 64 * 1024
BODY_MAX_SECONDS = 10.0


def _unreadable_body_errors() -> tuple[type[Exception], ...]:
    """What reading a request body raises when the client sent a broken one: a socket error, a
    short or malformed body from werkzeug, and gunicorn's own ParseException for a malformed
    chunked encoding (a chunk size that is not hex, a chunk without its CRLF), which is neither
    an OSError nor a ValueError and would otherwise be an internal error."""
    errors: tuple[type[Exception], ...] = (OSError, ValueError, werkzeug.exceptions.HTTPException)
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # no gunicorn (Windows): Flask's server reports these as ValueError
        return errors
    return (*errors, ParseException)


UNREADABLE_BODY = _unreadable_body_errors()


def body_seconds(expected_bytes: int) -> float:
    """How long a body of `expected_bytes` may take to arrive."""
    return min(BODY_MAX_SECONDS, BODY_GRACE_SECONDS + expected_bytes / BODY_MIN_BYTES_PER_SECOND)


def limit_gunicorn_requests() -> bool:
    """Make the gunicorn that functions-framework starts in this process enforce REQUEST_LIMITS.
    Must run before functions-framework builds its server, i.e. while main.py is imported.

    Relies on functions-framework's (private) GunicornApplication; if a later version moves it,
    this logs a warning and changes nothing, and tests/test_slow_clients.py fails. Returns
    whether the limits are in place; idempotent, since every `create_app` imports main.py anew.
    """
    try:
        from functions_framework._http import gunicorn as served
    except ImportError:  # no gunicorn (Windows): functions-framework falls back to Flask's server
        return False
    app_class = getattr(served, "GunicornApplication", None)
    original = getattr(app_class, "load_config", None)
    if original is None:
        log("WARNING", "gunicorn request limits not set: functions-framework has no GunicornApplication.load_config")
        return False
    if getattr(original, "sets_request_limits", False):
        return True

    def load_config(self: Any) -> None:
        original(self)
        for name, value in REQUEST_LIMITS.items():
            self.cfg.set(name, value)

    load_config.sets_request_limits = True  # type: ignore[attr-defined]
    app_class.load_config = load_config
    return True


class BodyDeadline:
    """`with BodyDeadline(environ, seconds) as deadline:` read the body; if it is still being
    read after `seconds`, the client's socket is shut for reading, so the read returns at once
    with what has arrived (short, or an error), and `deadline.expired` is true.

    Only gunicorn hands the application its socket (`gunicorn.socket`); under Flask's
    development server or a test client there is none, and the read has no deadline.
    """

    def __init__(self, environ: Mapping[str, Any], seconds: float) -> None:
        sock = environ.get("gunicorn.socket")
        self._sock = sock if callable(getattr(sock, "shutdown", None)) else None
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._reading = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "BodyDeadline":
        if self._sock is not None:
            self._reading = True
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _expire(self) -> None:
        with self._lock:  # never after __exit__: the connection may by then serve another request
            if not self._reading:
                return
            self.expired = True
            try:
                self._sock.shutdown(socket.SHUT_RD)  # type: ignore[union-attr]
            except OSError:
                pass  # already closed by the client

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._reading = False
        if self._timer is not None:
            self._timer.cancel()
