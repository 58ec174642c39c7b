"""The HTTP surface: routes, request validation, and the mapping of outcomes to status codes.

Status codes are chosen for how Omi reacts to them (see shared/omi/CONTRACT.md): it retries
timeouts, 5xx, 408 and 429 and drops the rest of a batch on any other 4xx. So input that can
never succeed gets a 4xx before anything touches storage, a storage outage gets 503 (the chunk
comes back later), and a delivered chunk gets 2xx whatever happens to its recognition or
notification afterwards. Every error body is JSON with a `reason`; exception text never leaves
the process.

Accepted request bodies for POST /audio: raw PCM16LE mono, sent as
`application/octet-stream` (what Omi sends), any `audio/*` type (e.g. `audio/L16`), or with no
Content-Type at all (curl --data-binary, scripts). Anything else (JSON, forms, text) is 415,
because such a body is certainly not the audio we expect.
"""

from __future__ import annotations

import hmac
import re
import time
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import parse_qsl

import flask
import werkzeug.exceptions

from function.config import SUPPORTED_SAMPLE_RATES, UID_PATTERN
from function.dashboard_view import dashboard
from function.webhook.ingest import Service, ingest_chunk
from function.logs import log
from function.metrics import metrics
from function.engine.recogniser import CatalogError
from function.storage.base import Recognition, StoreUnavailable

ACTIVE_WINDOW_SECONDS = 600.0
MAX_IDEMPOTENCY_KEY = 256
HISTORY_DEFAULT, HISTORY_MAX = 50, 200
# /history and /stats list songs, but the store's history interleaves misses: look this far back.
HISTORY_SCAN = 250

Handler = Callable[[flask.Request, Service, str], flask.Response]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


def error(status: int, reason: str) -> flask.Response:
    response = flask.jsonify({"status": "error", "reason": reason})
    response.status_code = status
    return response


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def query_params(request: flask.Request) -> dict[str, str]:
    """The query, tolerant of old Omi backends that appended `?sample_rate=...&uid=...` to a
    URL that already had a query (`/audio?token=x?sample_rate=16000&uid=a`). A literal `?` can
    only come from that, since a real one inside a value is percent-encoded. Later values win:
    the parameters Omi appends come last."""
    raw = request.query_string.decode("latin-1").replace("?", "&")
    return dict(parse_qsl(raw, keep_blank_values=True))


def valid_uid(uid: str | None) -> str:
    if not uid:
        raise BadRequest(400, "missing uid")
    if not UID_PATTERN.fullmatch(uid):
        raise BadRequest(400, "uid must match ^[A-Za-z0-9_-]{1,128}$")
    return uid


def _sample_rate(raw: str | None) -> int:
    if raw is None or not raw.strip():
        raise BadRequest(400, "missing sample_rate")
    try:
        rate = int(raw.strip())
    except ValueError:
        raise BadRequest(400, f"sample_rate must be an integer, got {raw[:32]!r}") from None
    if rate not in SUPPORTED_SAMPLE_RATES:
        supported = " or ".join(str(r) for r in SUPPORTED_SAMPLE_RATES)
        raise BadRequest(400, f"unsupported sample_rate {rate}: send {supported} Hz PCM16")
    return rate


def _content_type_ok(request: flask.Request) -> bool:
    mime = (request.mimetype or "").lower()
    return mime in ("", "application/octet-stream") or mime.startswith("audio/")


def _idempotency_key(request: flask.Request) -> str | None:
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise BadRequest(400, f"Idempotency-Key must be printable and at most {MAX_IDEMPOTENCY_KEY} characters")
    return key or None


def _body(request: flask.Request, cap: int) -> bytes:
    """The body, refused before reading when its declared length is over the cap and refused
    after reading at most cap+1 bytes when no length was declared (chunked uploads).

    A body shorter than its Content-Length (a client that died mid-upload) or one that cannot
    be read (a malformed chunked encoding) is refused with 400 before anything is stored: kept,
    it would hold its Idempotency-Key and turn Omi's full retry into a "duplicate".
    """
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BadRequest(413, f"body of {declared} bytes is over the {cap}-byte limit")
    try:
        body = request.stream.read(cap + 1)
    except (OSError, ValueError, werkzeug.exceptions.HTTPException) as exc:
        raise BadRequest(400, f"the body could not be read ({type(exc).__name__}): send it again") from None
    if declared is not None and len(body) != declared:
        raise BadRequest(400, f"body ended after {len(body)} of its {declared} declared bytes: send it again")
    if len(body) > cap:
        raise BadRequest(413, f"body is over the {cap}-byte limit")
    if not body:
        raise BadRequest(400, "empty body: expected raw PCM16 mono audio")
    if len(body) % 2:
        raise BadRequest(400, f"odd body length {len(body)}: PCM16 samples are 2 bytes each")
    return body


def post_audio(request: flask.Request, service: Service, _: str) -> flask.Response:
    params = query_params(request)
    uid = valid_uid(params.get("uid"))
    rate = _sample_rate(params.get("sample_rate"))
    if not _content_type_ok(request):
        raise BadRequest(415, f"unsupported Content-Type {request.mimetype!r}: send application/octet-stream")
    key = _idempotency_key(request)
    pcm = _body(request, service.settings.max_chunk_bytes)
    wait = service.limiter.admit(uid, len(pcm) / (2 * rate), time.time())
    if wait:
        limit = service.settings.rate_limit
        raise BadRequest(429, f"over {limit:g} s of audio per second for this uid", retry_after=int(wait))
    result = ingest_chunk(service, uid, key, rate, pcm, time.time())
    payload: dict = {
        "status": "ok",
        "received_bytes": len(pcm),
        "buffered_seconds": result.buffered_seconds,
        "duplicate": result.duplicate,
    }
    if result.recognition is not None:
        payload["recognition"] = result.recognition
    return flask.jsonify(payload)


def setup_check(request: flask.Request, service: Service, _: str) -> flask.Response:
    valid_uid(query_params(request).get("uid"))
    return flask.jsonify({"is_setup_completed": True})


def health(request: flask.Request, service: Service, _: str) -> flask.Response:
    """Healthy only if storage answers and the catalog loads: either missing means no song will
    ever be named, which a deployment check should see (audio is still buffered meanwhile)."""
    body = {"service": service.settings.service_name, "storage": service.settings.storage_backend}
    try:
        service.store.ping()
        body["active_users"] = service.store.active_users(time.time() - ACTIVE_WINDOW_SECONDS)
        service.recogniser()
    except StoreUnavailable as exc:
        log("ERROR", "health check: storage unavailable", reason=str(exc))
        return _unhealthy(body, "storage unavailable")
    except CatalogError as exc:
        log("ERROR", "health check: catalog unavailable", reason=str(exc))
        return _unhealthy(body, f"catalog unavailable: {exc}")
    body.update(status="healthy", notifications="omi" if service.settings.notifications_enabled else "log_only")
    return flask.jsonify(body)


def _unhealthy(body: dict, reason: str) -> flask.Response:
    response = flask.jsonify({"status": "unhealthy", "reason": reason, **body})
    response.status_code = 503
    return response


def _song(r: Recognition) -> dict:
    return {
        "at": r.at,
        "time": _iso(r.at),
        "song_id": r.song_id,
        "title": r.title,
        "artist": r.artist,
        "album": r.album,
        "offset_seconds": r.offset_seconds,
        "confidence": r.confidence,
        "notified": r.notification == "sent",
        "notification": r.notification,
        "notification_error": r.notification_error,
    }


def _songs(service: Service, uid: str) -> list[Recognition]:
    return [r for r in service.store.history(uid, HISTORY_SCAN) if r.matched]


def stats(request: flask.Request, service: Service, uid: str) -> flask.Response:
    valid_uid(uid)
    info = service.store.buffer_info(uid)
    songs = _songs(service, uid)
    seconds = round(info.buffered_bytes / (2 * info.sample_rate), 3) if info.sample_rate else 0.0
    return flask.jsonify(
        {
            "uid": uid,
            "buffer_size_bytes": info.buffered_bytes,
            "buffer_duration_seconds": seconds,
            "sample_rate": info.sample_rate,
            "chunks": info.chunks,
            "last_audio_at": _iso(info.last_audio_at),
            "last_recognition": _song(songs[0]) if songs else None,
        }
    )


def clear_buffer(request: flask.Request, service: Service, uid: str) -> flask.Response:
    valid_uid(uid)
    cleared = service.store.clear(uid)
    log("INFO", "buffer cleared on request", uid=uid, cleared=cleared)
    return flask.jsonify({"status": "cleared" if cleared else "empty", "uid": uid})


def history(request: flask.Request, service: Service, uid: str) -> flask.Response:
    valid_uid(uid)
    raw = request.args.get("limit", str(HISTORY_DEFAULT))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= HISTORY_MAX:
        raise BadRequest(400, f"limit must be an integer from 1 to {HISTORY_MAX}")
    songs = _songs(service, uid)[: int(raw)]
    return flask.jsonify({"uid": uid, "songs": [_song(r) for r in songs]})


def metrics_view(request: flask.Request, service: Service, _: str) -> flask.Response:
    return flask.jsonify(metrics(service.store, time.time()))


ROUTES: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
    (re.compile(r"/audio"), {"POST": post_audio, "GET": setup_check}),
    (re.compile(r"/health"), {"GET": health}),
    (re.compile(r"/stats/([^/]+)"), {"GET": stats}),
    (re.compile(r"/buffer/([^/]+)"), {"DELETE": clear_buffer}),
    (re.compile(r"/history/([^/]+)"), {"GET": history}),
    (re.compile(r"/metrics"), {"GET": metrics_view}),
    (re.compile(r"/dashboard"), {"GET": dashboard}),
]


# Omi's setup check is called without our token (the app manifest holds a bare URL), and an
# uptime check needs /health; everything else carries audio or personal data.
PUBLIC = {(setup_check, "GET"), (health, "GET")}


def check_token(request: flask.Request, handler: Handler, token: str) -> None:
    """With WEBHOOK_TOKEN set, every non-public request must carry it as `?token=`, compared in
    constant time, before anything touches storage."""
    if not token or (handler, request.method) in PUBLIC:
        return
    given = query_params(request).get("token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise BadRequest(401, "missing or wrong token")


def _route(request: flask.Request, get_service: Callable[[], Service], token: str) -> flask.Response:
    path = request.path.rstrip("/") or "/"
    for pattern, methods in ROUTES:
        found = pattern.fullmatch(path)
        if found is None:
            continue
        handler = methods.get(request.method)
        if handler is None:
            response = error(405, f"{request.method} is not allowed on {path}; use {', '.join(methods)}")
            response.headers["Allow"] = ", ".join(methods)
            return response
        check_token(request, handler, token)
        return handler(request, get_service(), found.group(1) if found.groups() else "")
    return error(404, f"no such endpoint: {path}")


def handle(request: flask.Request, get_service: Callable[[], Service], token: str = "") -> flask.Response:
    """Answer one request; the only place exceptions become status codes. The service is
    fetched inside, so failing to open storage is a 503 like any other storage outage."""
    try:
        return _route(request, get_service, token)
    except BadRequest as exc:
        log("WARNING", "request refused", status=exc.status, reason=exc.reason, path=request.path)
        response = error(exc.status, exc.reason)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except StoreUnavailable as exc:
        log("ERROR", "storage unavailable", exc=exc, path=request.path)
        return error(503, "storage unavailable, retry later")
    except Exception as exc:
        log("ERROR", "unhandled error", exc=exc, path=request.path, method=request.method)
        return error(500, "internal error")
