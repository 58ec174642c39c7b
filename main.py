"""Cloud Run function entry point: Omi audio in, song notifications out.

    request -> function/http_edge (routes, validation, status codes)
            -> function/ingest (store chunk, claim, recognise, notify, record)
            -> Store (function/storage: local files + SQLite, or Cloud Storage + Firestore)
               Recogniser (function/recogniser: the catalog, loaded on first use)
               Notifier (function/notifier: Omi's notification API)

Settings are read at import, so a bad deployment fails at boot. The rest is built on the first
request and then shared by every request this process serves: opening storage can touch the
network, and a storage outage should be a retryable 503, not a worker that never boots.
Each `functions_framework.create_app` loads this file as a fresh module, so every app (and
every test) starts with state built from the environment of that moment.
"""

from __future__ import annotations

import threading

import flask
import functions_framework

from function import logs
from function.config import Settings
from function.http_edge import handle
from function.ingest import Service
from function.notifier import Notifier
from function.recogniser import get_recogniser
from function.storage import open_store

SETTINGS = Settings.from_env()
logs.configure(SETTINGS.log_level)

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
                recogniser=lambda: get_recogniser(SETTINGS.catalog_uri),
            )
        return _service


@functions_framework.http
def omi_webhook(request: flask.Request) -> flask.Response:
    return handle(request, _get_service, SETTINGS.webhook_token)
