"""Cloud Run function entry point: Omi audio in, song notifications out.

    request -> function/webhook/edge (routes, validation, status codes)
            -> function/webhook/ingest (store chunk, claim, recognise, notify, record)
            -> Store (function/storage: SQLite, or Firestore; peaks kept, never audio)
               Recogniser (function/engine/recogniser: the catalog, loaded at boot, retried on use)
               Notifier (function/webhook/omi_client: Omi's notification API)

Settings are read at import, so a bad deployment fails at boot; the catalog is loaded then too,
but a missing one is only logged. The rest is built on the first request and then shared by
every request this process serves: opening storage can touch the network, and a storage outage
should be a retryable 503, not a worker that never boots.
Each `functions_framework.create_app` loads this file as a fresh module, so every app (and
every test) starts with state built from the environment of that moment.
"""

from __future__ import annotations

import re
import threading
from typing import NoReturn

import flask
import functions_framework
from werkzeug.exceptions import HTTPException

from function import logs
from function.config import MIN_SAMPLE_RATE, ConfigError, Settings
from function.webhook.edge import error, handle
from function.webhook.ingest import Service
from function.webhook.omi_client import Notifier
from function.webhook.ratelimit import AudioRateLimiter
from function.webhook.server import limit_gunicorn_requests
from function.engine.recogniser import CatalogError, Recogniser, get_recogniser, get_sharded_recogniser
from function.storage import open_store


def _refuse_to_start(exc: ConfigError) -> NoReturn:
    """A bad setting stops the function at boot with one structured log line naming the variable
    (Cloud Logging shows it as one CRITICAL entry), instead of functions-framework's traceback
    through click and importlib with the reason at the bottom. SystemExit is not an Exception,
    so functions-framework lets it through and the process exits 1 before gunicorn starts."""
    setting = re.match(r"[A-Z][A-Z0-9_]*", str(exc))
    logs.log("CRITICAL", f"configuration error, not starting: {exc}", setting=setting.group(0) if setting else None)
    raise SystemExit(1)


try:
    SETTINGS = Settings.from_env()
except ConfigError as exc:
    _refuse_to_start(exc)
logs.configure(SETTINGS.log_level)
# functions-framework configures gunicorn only after importing this file: its request-line limit
# is off, and this is the one place to put it back (function/webhook/server.py).
limit_gunicorn_requests()


def _recogniser() -> Recogniser:
    """The catalog in CATALOG_URI, or, with CATALOG_SHARDS, every shard of one asked at once."""
    if SETTINGS.catalog_shards:
        return get_sharded_recogniser(SETTINGS.catalog_shards, SETTINGS.shard_token)
    return get_recogniser(SETTINGS.catalog_uri)


def _load_catalog() -> None:
    """Load the catalog while the instance boots: the first recognition then does not pay for
    it, and a missing or corrupt catalog is an error line at start-up rather than a surprise on
    the first song. Not fatal: audio is still buffered, /health reports the reason, and each
    recognition tries to load it again."""
    try:
        _recogniser()
    except (CatalogError, OSError) as exc:
        logs.log("ERROR", "catalog unavailable at start-up: no song will be named until it loads", reason=str(exc))


_load_catalog()

_service: Service | None = None
_service_lock = threading.Lock()


def _get_service() -> Service:
    global _service
    with _service_lock:
        if _service is None:
            _service = Service(
                settings=SETTINGS,
                store=open_store(SETTINGS),
                notifier=Notifier(SETTINGS),
                recogniser=_recogniser,
                # The slowest rate we accept, so the longest acceptable chunk always fits.
                limiter=AudioRateLimiter(SETTINGS.rate_limit, SETTINGS.max_chunk_bytes / (2 * MIN_SAMPLE_RATE)),
            )
        return _service


def _json_http_error(exc: HTTPException) -> flask.Response:
    """Requests functions-framework answers itself, before `omi_webhook` (a path its router
    cannot match, such as one holding a newline), get JSON like every other answer, not HTML."""
    return error(exc.code or 500, f"{exc.name}: {exc.description}")


# main.py runs inside the app context that functions-framework creates for it.
flask.current_app.register_error_handler(HTTPException, _json_http_error)


@functions_framework.http
def omi_webhook(request: flask.Request) -> flask.Response:
    return handle(request, _get_service, SETTINGS)
