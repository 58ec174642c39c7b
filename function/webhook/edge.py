"""The HTTP surface: routes, request validation, and the mapping of outcomes to status codes.

Status codes are chosen for how Omi reacts to them (see shared/omi/CONTRACT.md and the
README's status table): the developer setting retries timeouts, 5xx, 408 and 429 and drops the
rest of a batch on any other 4xx; the app path never retries; every failure counts toward a
circuit breaker shared by all users of the deployment, the webhook's disabling after 100 failed
batches and an app's after 72 hours. So whatever is ours to absorb is a 2xx: audio over the
per-uid rate is acknowledged and shed, any sample rate from 8 to 48 kHz is taken. Only what can
never succeed gets a 4xx (401 unsigned or wrong token, 413, malformed bodies), before anything
touches storage; a storage outage is 503 (the developer path brings the chunk back); a delivered
chunk is 2xx whatever happens to its recognition or notification afterwards. Every error body is
JSON with a `reason`; exception text never leaves the process.

Who may call what: a catalog shard's /shard/* endpoints need SHARD_TOKEN as a Bearer token,
and are closed (403) while it is unset; POST /audio needs the webhook's credentials (a valid `X-Omi-Signature` when
OMI_SIGNING_SECRET is set, `?token=` when WEBHOOK_TOKEN is set); a user's own pages need the key
of their link (function/webhook/user_links.py); the operator's endpoints need ADMIN_TOKEN, and
are closed altogether when audio is protected but ADMIN_TOKEN is not set (a webhook URL, which
Omi's logs and every user's app configuration hold, must never open anyone's history).

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

from function.config import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, UID_PATTERN, Settings
from function.dashboard.pages import dashboard_page, me_page, privacy_page, setup_page
from function.engine.decode import is_digital_silence
from function.engine import shards
from function.engine.catalog import Catalog
from function.engine.recogniser import CatalogError, get_recogniser
from function.logs import log
from function.metrics import metrics
from function.storage.base import Recognition, StoreUnavailable
from function.webhook import signing, user_links
from function.webhook.ingest import Service, ingest_chunk
from function.webhook.server import UNREADABLE_BODY, BodyDeadline, body_seconds

ACTIVE_WINDOW_SECONDS = 600.0
MAX_IDEMPOTENCY_KEY = 256
HISTORY_DEFAULT, HISTORY_MAX = 50, 200

Handler = Callable[[flask.Request, Service, str], flask.Response]
ShardHandler = Callable[[flask.Request, Settings], flask.Response]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadRequest(400, f"unsupported sample_rate {rate}: send {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz PCM16")
    return rate


def _content_type_ok(request: flask.Request) -> bool:
    mime = (request.mimetype or "").lower()
    return mime in ("", "application/octet-stream") or mime.startswith("audio/")


def _delivery_id(request: flask.Request) -> str | None:
    """The developer path's `Idempotency-Key`, else a signed delivery's `X-Omi-Delivery` (the
    app path sends no key), else none: such a delivery is never taken for a duplicate."""
    for header in ("Idempotency-Key", "X-Omi-Delivery"):
        key = request.headers.get(header, "").strip()
        if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
            raise BadRequest(400, f"{header} must be printable and at most {MAX_IDEMPOTENCY_KEY} characters")
        if key:
            return key
    return None


def _body(request: flask.Request, cap: int) -> bytes:
    """The body, refused before reading when its declared length is over the cap and refused
    after reading at most cap+1 bytes when no length was declared (chunked uploads).

    A body shorter than its Content-Length (a client that died mid-upload) or one that cannot
    be read (a malformed chunked encoding) is refused with 400 before anything is stored: kept,
    it would hold its Idempotency-Key and turn Omi's full retry into a "duplicate". One that
    has not arrived within `body_seconds` of its size (function/webhook/server.py) is refused
    the same way with 408, which Omi's developer path retries: a trickling client must not hold
    one of the server's few threads for as long as it likes.
    """
    declared = request.content_length
    if declared is not None and declared > cap:
        raise BadRequest(413, f"body of {declared} bytes is over the {cap}-byte limit")
    with BodyDeadline(request.environ, body_seconds(cap + 1 if declared is None else declared)) as deadline:
        try:
            body = request.stream.read(cap + 1)
        except UNREADABLE_BODY as exc:
            if deadline.expired:
                body = None
            else:
                raise BadRequest(400, f"the body could not be read ({type(exc).__name__}): send it again") from None
    if deadline.expired and (body is None or (declared is not None and len(body) != declared)):
        got = "" if body is None else f" ({len(body)} of {declared} bytes came)"
        raise BadRequest(408, f"the body did not arrive within {deadline.seconds:.1f} s{got}: send it again")
    if declared is not None and len(body) != declared:
        raise BadRequest(400, f"body ended after {len(body)} of its {declared} declared bytes: send it again")
    if len(body) > cap:
        raise BadRequest(413, f"body is over the {cap}-byte limit")
    if not body:
        raise BadRequest(400, "empty body: expected raw PCM16 mono audio")
    if len(body) % 2:
        raise BadRequest(400, f"odd body length {len(body)}: PCM16 samples are 2 bytes each")
    return body


def _check_signature(request: flask.Request, settings: Settings, uid: str, body: bytes) -> None:
    if not settings.signing_secrets:
        return
    try:
        signing.verify(request.headers.get("X-Omi-Signature", ""), uid, body, settings.signing_secrets, time.time())
    except signing.BadSignature as exc:
        raise BadRequest(401, str(exc)) from None


def base_url(request: flask.Request, settings: Settings) -> str:
    """Where links sent to users point: PUBLIC_URL, else the host this request reached. The
    request's Host is trusted only when audio is authenticated: otherwise anyone could post
    audio for a victim's uid with a Host of their own and have the victim sent a link (with
    its key) to it; then, without PUBLIC_URL, no link is sent at all."""
    if settings.public_url:
        return settings.public_url
    if not settings.audio_authenticated:
        return ""
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    return f"{proto if proto in ('http', 'https') else request.scheme}://{request.host}"


def post_audio(request: flask.Request, service: Service, _: str) -> flask.Response:
    params = query_params(request)
    uid = valid_uid(params.get("uid"))
    rate = _sample_rate(params.get("sample_rate"))
    if not _content_type_ok(request):
        raise BadRequest(415, f"unsupported Content-Type {request.mimetype!r}: send application/octet-stream")
    key = _delivery_id(request)
    pcm = _body(request, service.settings.max_chunk_bytes)
    _check_signature(request, service.settings, uid, pcm)
    seconds = len(pcm) / (2 * rate)
    if service.limiter.admit(uid, seconds, time.time()):
        # Acknowledged, not refused: Omi ignores Retry-After, so a 429 would only lose the
        # audio anyway and count a failure against every user of the deployment.
        limit = service.settings.rate_limit
        log("WARNING", "audio shed: over the per-uid rate", event="audio_shed", uid=uid, seconds=round(seconds, 3))
        return flask.jsonify(
            {"status": "shed", "reason": f"over {limit:g} s of audio per second for this uid", "received_bytes": len(pcm)}
        )
    if is_digital_silence(pcm):
        # A muted microphone: nothing to recognise, so nothing is stored or read (a quiet room
        # is not this: its noise floor is far above SILENCE_PEAK and is stored as any audio).
        log("DEBUG", "digital silence acknowledged, not stored", uid=uid, seconds=round(seconds, 3))
        return flask.jsonify({"status": "silent", "received_bytes": len(pcm)})
    result = ingest_chunk(service, uid, key, rate, pcm, time.time(), base_url(request, service.settings))
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
        body["catalog"] = service.recogniser().catalog_state()
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


def stats(request: flask.Request, service: Service, uid: str) -> flask.Response:
    valid_uid(uid)
    info = service.store.buffer_info(uid)
    songs = service.store.history(uid, 1)
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
    songs = service.store.history(uid, int(raw))
    return flask.jsonify({"uid": uid, "songs": [_song(r) for r in songs]})


def metrics_view(request: flask.Request, service: Service, _: str) -> flask.Response:
    return flask.jsonify(metrics(service.store, service.metrics, time.time()))


def _own_uid(request: flask.Request, service: Service, uid: str) -> str:
    """The uid of a user's own link, or 403/404 before anything is read."""
    valid_uid(uid)
    secret = service.settings.link_secret
    if not secret:
        raise BadRequest(404, "personal history links are not configured on this deployment (USER_LINK_SECRET)")
    if not user_links.key_matches(secret, uid, request.args.get("key", "")):
        raise BadRequest(403, "this link is not valid for this user: open the one Omi sent you")
    return uid


def dashboard(request: flask.Request, service: Service, _: str) -> flask.Response:
    return dashboard_page()


def setup(request: flask.Request, service: Service, _: str) -> flask.Response:
    return setup_page()


def privacy(request: flask.Request, service: Service, _: str) -> flask.Response:
    return privacy_page()


def my_page(request: flask.Request, service: Service, uid: str) -> flask.Response:
    """The page holds no data (its script fetches the history with the key), so it is served
    whatever the key: an old or mistyped link then says so in words, not in JSON."""
    valid_uid(uid)
    if not service.settings.link_secret:
        raise BadRequest(404, "personal history links are not configured on this deployment (USER_LINK_SECRET)")
    return me_page()


def my_history(request: flask.Request, service: Service, uid: str) -> flask.Response:
    _own_uid(request, service, uid)
    songs = [
        {
            "time": _iso(r.at),
            "at": r.at,
            "song_id": r.song_id,
            "title": r.title,
            "artist": r.artist,
            "album": r.album,
            "offset_seconds": r.offset_seconds,
            "search_url": user_links.search_url(r.title, r.artist),
        }
        for r in service.store.history(uid, HISTORY_MAX)
    ]
    return flask.jsonify({"uid": uid, "songs": songs, "retention_days": service.settings.history_retention_days})


def delete_my_history(request: flask.Request, service: Service, uid: str) -> flask.Response:
    """The user's songs and any audio still buffered for them: what they asked to forget."""
    _own_uid(request, service, uid)
    deleted = service.store.delete_history(uid)
    audio = service.store.clear(uid)
    log("INFO", "history deleted by its user", uid=uid, deleted=deleted)
    return flask.jsonify({"status": "deleted", "deleted": deleted, "audio_cleared": audio})


# --- a catalog shard (function/engine/shards.py) ----------------------------------------------------
# Largest shard request: a two-minute query's landmarks with their time-gap neighbours are about
# 150,000, 8 bytes each.
MAX_SHARD_BODY = 16 << 20


def _shard_body(request: flask.Request) -> bytes:
    declared = request.content_length
    if declared is not None and declared > MAX_SHARD_BODY:
        raise BadRequest(413, f"body of {declared} bytes is over the {MAX_SHARD_BODY}-byte limit")
    body = request.stream.read(MAX_SHARD_BODY + 1)
    if len(body) > MAX_SHARD_BODY:
        raise BadRequest(413, f"body is over the {MAX_SHARD_BODY}-byte limit")
    return body


def _shard_catalog(settings: Settings) -> Catalog:
    """This shard's catalog; 503 while it cannot be loaded (the webhook then fails the vote)."""
    try:
        return get_recogniser(settings.catalog_uri).catalog
    except CatalogError as exc:
        log("ERROR", "shard: catalog unavailable", reason=str(exc))
        raise BadRequest(503, f"catalog unavailable: {exc}") from None


def shard_counts(request: flask.Request, settings: Settings) -> flask.Response:
    try:
        hashes = shards.decode_hashes(_shard_body(request))
    except ValueError as exc:
        raise BadRequest(400, str(exc)) from None
    catalog = _shard_catalog(settings)
    counts, postings = catalog.posting_counts(hashes)
    response = flask.Response(counts.astype("<i8").tobytes(), mimetype="application/octet-stream")
    response.headers[shards.POSTINGS_HEADER] = str(postings)
    response.headers[shards.SPLIT_HEADER] = shards.split_label(catalog)
    return response


def shard_piles(request: flask.Request, settings: Settings) -> flask.Response:
    try:
        hashes, frames, keep = shards.decode_piles(_shard_body(request))
    except ValueError as exc:
        raise BadRequest(400, str(exc)) from None
    catalog = _shard_catalog(settings)
    return flask.jsonify(shards.vote_json(catalog.piles(hashes, frames, keep), shards.split_label(catalog)))


def shard_info(request: flask.Request, settings: Settings) -> flask.Response:
    catalog = _shard_catalog(settings)
    return flask.jsonify({**catalog.state(), "split": shards.split_label(catalog)})


ROUTES: list[tuple[re.Pattern[str], dict[str, Handler | ShardHandler]]] = [
    (re.compile(r"/audio"), {"POST": post_audio, "GET": setup_check}),
    (re.compile(r"/health"), {"GET": health}),
    (re.compile(r"/setup"), {"GET": setup}),
    (re.compile(r"/privacy"), {"GET": privacy}),
    (re.compile(r"/me/([^/]+)"), {"GET": my_page}),
    (re.compile(r"/me/([^/]+)/history"), {"GET": my_history, "DELETE": delete_my_history}),
    (re.compile(r"/stats/([^/]+)"), {"GET": stats}),
    (re.compile(r"/buffer/([^/]+)"), {"DELETE": clear_buffer}),
    (re.compile(r"/history/([^/]+)"), {"GET": history}),
    (re.compile(r"/metrics"), {"GET": metrics_view}),
    (re.compile(r"/dashboard"), {"GET": dashboard}),
    (re.compile(r"/shard/counts"), {"POST": shard_counts}),
    (re.compile(r"/shard/piles"), {"POST": shard_piles}),
    (re.compile(r"/shard/info"), {"GET": shard_info}),
]
# A shard answers from its catalog alone: these never open storage.
SHARD = {shard_counts, shard_piles, shard_info}


# Answers holding someone's songs or the service's figures: a shared browser or a proxy must
# not keep them, as it must not keep the pages that draw them.
NO_STORE = {stats, history, metrics_view, my_history, delete_my_history}


# Omi's setup check is called without our token (the app manifest holds a bare URL), an uptime
# check needs /health, the setup and privacy pages are for anyone considering the app, a user's
# history page holds no data, and their history checks the key of their link itself.
PUBLIC = {setup_check, health, setup, privacy, my_page, my_history, delete_my_history}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def check_access(request: flask.Request, handler: Handler | ShardHandler, settings: Settings) -> None:
    """Before anything touches storage: audio needs WEBHOOK_TOKEN as `?token=` when set and no
    signing secret is (a signature, checked once the body is read, is the stronger proof, and
    an app's deliveries carry no token); operator endpoints need ADMIN_TOKEN as a Bearer header
    or `?token=`. Every comparison is constant-time."""
    if handler in PUBLIC:
        return
    bearer = request.headers.get("Authorization", "")
    bearer = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
    if handler in SHARD:
        if not settings.shard_token:
            raise BadRequest(403, "shard endpoints are closed: set SHARD_TOKEN to serve as a catalog shard")
        if not _same(bearer, settings.shard_token):
            raise BadRequest(401, "missing or wrong shard token")
        return
    token = query_params(request).get("token", "")
    if handler is post_audio:
        if settings.webhook_token and not settings.signing_secrets and not _same(token, settings.webhook_token):
            raise BadRequest(401, "missing or wrong token")
        return
    if not settings.admin_token:
        if settings.audio_authenticated:
            raise BadRequest(403, "operator endpoints are closed: set ADMIN_TOKEN to use them")
        return
    given = bearer or token
    if not _same(given, settings.admin_token):
        raise BadRequest(401, "missing or wrong admin token")


def _route(request: flask.Request, get_service: Callable[[], Service], settings: Settings) -> flask.Response:
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
        check_access(request, handler, settings)
        if handler in SHARD:
            return handler(request, settings)
        response = handler(request, get_service(), found.group(1) if found.groups() else "")
        if handler in NO_STORE:
            response.headers["Cache-Control"] = "no-store"
        return response
    return error(404, f"no such endpoint: {path}")


def handle(request: flask.Request, get_service: Callable[[], Service], settings: Settings) -> flask.Response:
    """Answer one request; the only place exceptions become status codes. The service is
    fetched inside, so failing to open storage is a 503 like any other storage outage."""
    try:
        return _route(request, get_service, settings)
    except BadRequest as exc:
        log("WARNING", "request refused", status=exc.status, reason=exc.reason, path=request.path)
        return error(exc.status, exc.reason)
    except StoreUnavailable as exc:
        log("ERROR", "storage unavailable", exc=exc, path=request.path)
        return error(503, "storage unavailable, retry later")
    except Exception as exc:
        log("ERROR", "unhandled error", exc=exc, path=request.path, method=request.method)
        return error(500, "internal error")
