"""The Google Cloud backend: all state in Firestore, and no audio in it.

Layout
- `users/<uid>`: everything about one user's stream, in one document: the buffer (`buffer`, a
  list of {seq, nbytes, peaks}: each delivery's spectral peaks, 6 bytes a peak, compressed, under
  240 bytes a second, never more than MAX_BUFFER_SECONDS of them), the stream state (`stream`, about 9 kB:
  the spectrum magnitude of the newest frames and the peaks not yet settled,
  function/engine/stream.py; never samples), the receipts of the deliveries of the last
  KEY_MEMORY_SECONDS (`receipts`: 8 bytes of each delivery id's hash and its arrival second),
  the cadence counters, the lease, and the notification state. Peaks a recognition used or that
  fell out of the window leave the document in the write that drops them: nothing waits for a
  TTL. About 40 kB at most.
- `users/<uid>/recognitions/<id>`: the uid's songs (matches only), with `expires_at` for the TTL
  policy on the `recognitions` collection group. `metrics_hours/<hour>`: one UTC hour's counters
  (function/metrics.py), written by merges of increments; those keyed by song in
  `metrics_songs/<hour>-<song id>`, one document per song heard that hour. `active_days/<YYYY-MM-DD>-<shard>`:
  counters of the users seen that day, each counted once a day (the user document remembers
  the day). Every query runs on Firestore's automatic single-field indexes: no composite index
  to deploy.

Hot path: a delivery is one read and one write of the user document. `append` reads it,
fingerprints the chunk with the stream state it holds, and writes it back on the condition that
nobody wrote it since (a compare-and-set, `_mutate`): the chunk's peaks, the new stream state,
its receipt, and, when the append was asked to claim and the cadence allows, the lease, whose
peaks the recognition then votes without another read. A miss writes nothing more; a match
`release`s (one more read and write, once a song). Omi sends one chunk per second per uid, so a
user document takes about one write a second, Firestore's sustained rate for a document.

Every change is a compare-and-set rather than a client transaction: the library's
transactions begin and commit with fixed 60-second retry deadlines, while every call here
carries a deadline of a few seconds, so an outage answers 503 quickly; only a compare-and-set
that concurrent writers keep beating falls back to a transaction (`_mutate`).
Versions before this one kept a document per chunk under `users/<uid>/chunks`: nothing reads
those any more, and their TTL policy deletes them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import numpy as np
from google.api_core import exceptions as api
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth
from google.cloud import firestore
from google.cloud.firestore_v1 import DELETE_FIELD, FieldFilter, Increment, Maximum

from function.storage._rules import (
    KEY_MEMORY_SECONDS,
    BufferState,
    check_uid,
    decide_notification,
    granted,
    key_hash,
    may_claim,
    read_window,
    recognition_from_dict,
    release_reservation,
    retry_at,
    starts_new_buffer,
    take_pending,
    unavailable_on,
    utc_day,
)
from function.logs import log
from function.storage.base import Appended, BufferInfo, Claim, Fingerprint, Lease, PendingNotification, Recognition, StoreUnavailable

DEADLINE_SECONDS = 5.0  # one call, retries included
PING_DEADLINE_SECONDS = 2.0
# Compare-and-set tries, a jittered back-off apart (CAS_BACKOFF_SECONDS doubling up to 0.2 s),
# before falling back to a transaction: concurrent POSTs for one uid write its document back to
# back, and an immediate retry would collide with the next one just the same.
CAS_ATTEMPTS = 4
CAS_BACKOFF_SECONDS = 0.01
# Counter documents per day of active users (see `_count_active`).
ACTIVE_SHARDS = 16
# Metrics counters keyed by song (function/metrics.py), kept in a document per song and hour.
PER_SONG = ("songs", "names", "played")
# User documents an instance remembers as it last wrote them (about 40 kB each at most).
MAX_KNOWN_DOCUMENTS = 1024

_FIRESTORE_RETRY = Retry(
    initial=0.1,
    maximum=1.0,
    multiplier=2.0,
    predicate=if_exception_type(
        api.ServiceUnavailable, api.DeadlineExceeded, api.InternalServerError, api.ResourceExhausted
    ),
    timeout=DEADLINE_SECONDS,
)
_FS = {"retry": _FIRESTORE_RETRY, "timeout": DEADLINE_SECONDS}

_transient = unavailable_on(
    api.ServiceUnavailable,
    api.DeadlineExceeded,
    api.InternalServerError,
    api.TooManyRequests,
    api.BadGateway,
    api.GatewayTimeout,
    api.Aborted,
    api.RetryError,
    auth.TransportError,
    ConnectionError,
    TimeoutError,
)

T = TypeVar("T")


def _buffer(data: dict | None) -> list[dict]:
    """The buffer's chunks ({seq, nbytes, peaks}), oldest first."""
    return list((data or {}).get("buffer") or [])


def _state(data: dict, buffer: list[dict]) -> BufferState:
    return BufferState(
        buffered_bytes=sum(c["nbytes"] for c in buffer),
        new_bytes=data.get("new_bytes", 0),
        attempted=data.get("attempted", False),
        lease_token=data.get("lease_token"),
        lease_expires=data.get("lease_expires"),
    )


_RECEIPT = np.dtype([("key", "V8"), ("at", "<u4")])


def _receipts(blob: bytes | None, now: float) -> np.ndarray:
    """The receipts still remembered at `now` (see KEY_MEMORY_SECONDS)."""
    receipts = np.frombuffer(blob or b"", _RECEIPT)
    return receipts[receipts["at"] >= now - KEY_MEMORY_SECONDS]


def _receipt(digest: str) -> np.void:
    return np.frombuffer(bytes.fromhex(digest[:16]), "V8")[0]


def _lease(uid: str, data: dict, buffer: list[dict], lease_seconds: float, now: float) -> tuple[Lease, dict]:
    """A lease on the whole buffer and the user-document fields that grant it."""
    lease = Lease(
        uid,
        uuid.uuid4().hex,
        data["sample_rate"],
        now + lease_seconds,
        chunks=tuple(c["peaks"] for c in buffer),
        stream=data.get("stream"),
        buffered_bytes=sum(c["nbytes"] for c in buffer),
    )
    changes = {
        "lease_token": lease.token,
        "lease_expires": lease.expires_at,
        "read_upto": buffer[-1]["seq"] if buffer else 0,
        "new_bytes": 0,
        "attempted": True,
    }
    return lease, changes


def _increments(counts: dict) -> dict:
    """Metrics counters as Firestore transforms (see `merge_counts`): sums become Increment,
    the largest latency Maximum, song names plain values."""
    out: dict[str, Any] = {}
    for key, value in counts.items():
        if key == "names":
            out[key] = value
        elif key == "latency_max_ms":
            out[key] = Maximum(value)
        elif isinstance(value, dict):
            out[key] = _increments(value)
        else:
            out[key] = Increment(value)
    return out


def _applied(data: dict | None, changes: dict) -> dict:
    """The document after an update of these top-level fields (DELETE_FIELD removes one)."""
    out = dict(data or {})
    for key, value in changes.items():
        if value is DELETE_FIELD:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _holds(data: dict | None, lease: Lease) -> bool:
    return data is not None and data.get("lease_token") == lease.token


class GcpStore:
    def __init__(self, project: str, database: str, fingerprint: Fingerprint, history_retention_seconds: float = 0.0) -> None:
        """`history_retention_seconds` > 0 stamps each recognition with `expires_at`, which a
        Firestore TTL policy on the `recognitions` collection group (infra/) acts on."""
        self._fingerprint = fingerprint
        self._retention = history_retention_seconds
        self._db = firestore.Client(project=project or None, database=database)
        # User documents as this instance last wrote or read them (see `_mutate`).
        self._known: OrderedDict[str, tuple[Any, dict]] = OrderedDict()
        self._known_lock = threading.Lock()

    # --- plumbing -----------------------------------------------------------------------------
    def _user(self, uid: str) -> firestore.DocumentReference:
        return self._db.collection("users").document(uid)

    @staticmethod
    def _get(ref: firestore.DocumentReference) -> dict | None:
        return ref.get(**_FS).to_dict()

    def _mutate(
        self, ref: firestore.DocumentReference, plan: Callable[[dict | None], tuple[T, dict | None]]
    ) -> T:
        """Compare-and-set on one document: `plan` sees its data and returns (result, changes or
        None); the changes are written only if nobody wrote the document in between, else the
        plan runs again on fresh data.

        The first try plans on the document as this instance last wrote or read it, when it
        knows it, and writes on the condition that it is still that version: a user's deliveries
        usually reach the instance that took the last one, so a delivery costs one write and no
        read. Another writer in between makes the condition fail, and the plan runs again on
        the document as read; a plan that would write nothing is checked on a fresh read, so no
        answer rests on a version that may be old. Appends write the user document every chunk, so a uid flooded
        with concurrent POSTs can keep a compare-and-set from ever landing: after CAS_ATTEMPTS
        the plan runs in a transaction instead, whose lock on the document makes those appends
        wait for it (a server-side lock, so it cannot starve; it is the fallback only because
        the library's transactions retry with fixed deadlines of their own)."""
        known = self._recall(ref.path)
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0.5, 1.0) * min(0.2, CAS_BACKOFF_SECONDS * 2**attempt))
            if known is not None:
                (version, data), known = known, None
                result, changes = plan(data)
                if not changes:  # a decision to write nothing is taken on the document as it is
                    snapshot = ref.get(**_FS)
                    version, data = (snapshot.update_time, snapshot.to_dict()) if snapshot.exists else (None, None)
                    result, changes = plan(data)
            else:
                snapshot = ref.get(**_FS)
                version, data = (snapshot.update_time, snapshot.to_dict()) if snapshot.exists else (None, None)
                result, changes = plan(data)
            if not changes:
                if version is not None:
                    self._remember(ref.path, version, data)
                return result
            try:
                if version is not None:
                    written = ref.update(changes, option=self._db.write_option(last_update_time=version), **_FS)
                else:
                    written = ref.create(changes, **_FS)
            except (api.FailedPrecondition, api.AlreadyExists, api.NotFound):
                continue
            self._remember(ref.path, written.update_time, _applied(data, changes))
            return result
        self._forget(ref.path)
        return self._locked(ref, plan)

    def _recall(self, path: str) -> tuple[Any, dict] | None:
        with self._known_lock:
            known = self._known.get(path)
            if known is not None:
                self._known.move_to_end(path)
            return known

    def _remember(self, path: str, version: Any, data: dict | None) -> None:
        with self._known_lock:
            self._known[path] = (version, data or {})
            self._known.move_to_end(path)
            while len(self._known) > MAX_KNOWN_DOCUMENTS:
                self._known.popitem(last=False)

    def _forget(self, path: str) -> None:
        with self._known_lock:
            self._known.pop(path, None)

    def _locked(self, ref: firestore.DocumentReference, plan: Callable[[dict | None], tuple[T, dict | None]]) -> T:
        @firestore.transactional
        def run(transaction: firestore.Transaction) -> T:
            snapshot = ref.get(transaction=transaction, **_FS)
            result, changes = plan(snapshot.to_dict())
            if changes:
                if snapshot.exists:
                    transaction.update(ref, changes)
                else:
                    transaction.create(ref, changes)
            return result

        try:
            return run(self._db.transaction(max_attempts=CAS_ATTEMPTS))
        except ValueError as exc:  # the library's "failed after N attempts"
            raise StoreUnavailable(f"{ref.path} kept changing, even under a transaction") from exc

    # --- audio buffer -------------------------------------------------------------------------
    @_transient
    def append(
        self,
        uid: str,
        key: str | None,
        sample_rate: int,
        pcm: bytes,
        now: float,
        max_gap_seconds: float = float("inf"),
        max_bytes: int | None = None,
        claim: Claim | None = None,
    ) -> Appended:
        check_uid(uid)
        receipt = _receipt(key_hash(key))
        day = utc_day(now)
        first_today = [False]  # set by the plan that lands

        def plan(data: dict | None) -> tuple[Appended, dict | None]:
            user = data or {}
            first_today[0] = False
            retry = retry_at(user.get("notify"))
            receipts = _receipts(user.get("receipts"), now)
            buffer = _buffer(data)
            if receipt in receipts["key"]:
                return Appended(True, sum(c["nbytes"] for c in buffer), user.get("sample_rate") or sample_rate, retry), None
            restart = starts_new_buffer(user.get("sample_rate"), user.get("last_audio_at"), sample_rate, now, max_gap_seconds)
            held = {} if restart else user
            seq = user.get("last_seq", 0) + 1
            peaks, stream = self._fingerprint(held.get("stream"), sample_rate, pcm)
            buffer = ([] if restart else buffer) + [{"seq": seq, "nbytes": len(pcm), "peaks": peaks}]
            if max_bytes is not None:
                buffer = buffer[read_window([c["nbytes"] for c in buffer], max_bytes) :]
            entry = np.zeros(1, _RECEIPT)
            entry["key"], entry["at"] = receipt, int(now)
            changes: dict[str, Any] = {
                "buffer": buffer,
                "stream": stream,
                "receipts": np.concatenate([receipts, entry]).tobytes(),
                "sample_rate": sample_rate,
                "new_bytes": held.get("new_bytes", 0) + len(pcm),
                "attempted": bool(held.get("attempted", False)),
                "last_seq": seq,
                "last_audio_at": max(now, user.get("last_audio_at") or now),
            }
            if restart:
                changes.update(lease_token=DELETE_FIELD, lease_expires=DELETE_FIELD, read_upto=DELETE_FIELD)
            if user.get("active_day") != day:
                changes["active_day"] = day
                first_today[0] = True
            lease = None
            if claim is not None:
                after = {**held, **changes, "lease_token": held.get("lease_token"), "lease_expires": held.get("lease_expires")}
                if may_claim(_state(after, buffer), claim.min_bytes, claim.stride_bytes, now):
                    lease, granted = _lease(uid, after, buffer, claim.lease_seconds, now)
                    changes.update(granted)
            if data is None:
                changes = {k: v for k, v in changes.items() if v is not DELETE_FIELD}
            buffered = sum(c["nbytes"] for c in buffer)
            return Appended(False, buffered, sample_rate, retry, changes["new_bytes"], changes["attempted"], lease), changes

        appended = self._mutate(self._user(uid), plan)
        if first_today[0] and not appended.duplicate:
            self._count_active(uid, day)
        return appended

    def _count_active(self, uid: str, day: str) -> None:
        """Count the uid once for `day` (the first append of its day just wrote `active_day`):
        one of ACTIVE_SHARDS counter documents per day, so no document grows with the users and
        none takes more than a few writes a second however many users start their day at once.
        Best effort: a lost increment only undercounts a day's users by one."""
        shard = int(key_hash(uid)[:8], 16) % ACTIVE_SHARDS
        ref = self._db.collection("active_days").document(f"{day}-{shard:02d}")
        try:
            ref.set({"day": day, "users": Increment(1)}, merge=True, **_FS)
        except (api.GoogleAPICallError, api.RetryError, auth.TransportError) as exc:
            log("WARNING", "active user not counted", reason=type(exc).__name__)

    @_transient
    def claim(
        self, uid: str, min_bytes: int, stride_bytes: int, lease_seconds: float, now: float, max_bytes: int
    ) -> Lease | None:
        def plan(data: dict | None) -> tuple[Lease | None, dict | None]:
            if data is None or data.get("sample_rate") is None:
                return None, None
            buffer = _buffer(data)
            if not may_claim(_state(data, buffer), min_bytes, stride_bytes, now):
                return None, None
            buffer = buffer[read_window([c["nbytes"] for c in buffer], max_bytes) :]
            lease, changes = _lease(uid, data, buffer, lease_seconds, now)
            return lease, {**changes, "buffer": buffer}

        return self._mutate(self._user(uid), plan)

    @_transient
    def release(self, lease: Lease, now: float) -> None:
        def plan(data: dict | None) -> tuple[None, dict | None]:
            if not _holds(data, lease):
                return None, None
            upto = data.get("read_upto", 0)
            return None, {
                "buffer": [c for c in _buffer(data) if c["seq"] > upto],
                "lease_token": DELETE_FIELD,
                "lease_expires": DELETE_FIELD,
                "read_upto": DELETE_FIELD,
                "attempted": False,
            }

        self._mutate(self._user(lease.uid), plan)

    @_transient
    def clear(self, uid: str) -> bool:
        """The peaks and the stream state go at once, in one write."""

        def plan(data: dict | None) -> tuple[bool, dict | None]:
            if data is None:
                return False, None
            changes = {
                "buffer": [],
                "stream": DELETE_FIELD,
                "sample_rate": DELETE_FIELD,
                "new_bytes": 0,
                "attempted": False,
                "lease_token": DELETE_FIELD,
                "lease_expires": DELETE_FIELD,
                "read_upto": DELETE_FIELD,
            }
            return bool(_buffer(data)), changes

        return self._mutate(self._user(uid), plan)

    @_transient
    def buffer_info(self, uid: str) -> BufferInfo:
        data = self._get(self._user(uid)) or {}
        buffer = _buffer(data)
        return BufferInfo(
            uid=uid,
            buffered_bytes=sum(c["nbytes"] for c in buffer),
            sample_rate=data.get("sample_rate"),
            chunks=len(buffer),
            last_audio_at=data.get("last_audio_at"),
        )

    # --- notifications ------------------------------------------------------------------------
    @_transient
    def reserve_notification(
        self, uid: str, song_id: str, now: float, cooldown_seconds: float, hourly_limit: int
    ) -> str:
        def plan(data: dict | None) -> tuple[str, dict | None]:
            data = data or {}
            deferred_until = data.get("deferred_until", 0.0)
            verdict, state = decide_notification(
                data.get("notify"), song_id, now, cooldown_seconds, hourly_limit, deferred_until
            )
            return verdict, {"notify": state} if granted(verdict) else None

        return self._mutate(self._user(uid), plan)

    @_transient
    def release_notification(self, uid: str, pending: PendingNotification, now: float) -> None:
        def plan(data: dict | None) -> tuple[None, dict]:
            return None, {"notify": release_reservation((data or {}).get("notify"), pending, now)}

        self._mutate(self._user(uid), plan)

    @_transient
    def take_notification(self, uid: str, now: float, hourly_limit: int) -> tuple[str, PendingNotification | None]:
        def plan(data: dict | None) -> tuple[tuple[str, PendingNotification | None], dict | None]:
            data = data or {}
            deferred_until = data.get("deferred_until", 0.0)
            verdict, pending, state = take_pending(data.get("notify"), now, hourly_limit, deferred_until)
            return (verdict, pending), None if state is None else {"notify": state}

        return self._mutate(self._user(uid), plan)

    @_transient
    def set_notification(self, uid: str, recognised_at: float, notification: str, error: str | None) -> None:
        mine = self._user(uid).collection("recognitions").where(filter=FieldFilter("at", "==", recognised_at))
        changes = {"notification": notification, "notification_error": error}
        batch = self._db.batch()
        for doc in mine.stream(**_FS):
            batch.update(doc.reference, changes)
        batch.commit(**_FS)

    @_transient
    def defer_notifications(self, uid: str, until: float) -> None:
        self._user(uid).set({"deferred_until": Maximum(until)}, merge=True, **_FS)

    @_transient
    def notifications_deferred_until(self, uid: str) -> float:
        return float((self._get(self._user(uid)) or {}).get("deferred_until", 0.0))

    # --- history and metrics ------------------------------------------------------------------
    def _history(self, uid: str) -> firestore.CollectionReference:
        return self._user(uid).collection("recognitions")

    @_transient
    def record(self, recognition: Recognition) -> None:
        data = asdict(recognition)
        if self._retention > 0:
            data["expires_at"] = datetime.fromtimestamp(recognition.at + self._retention, timezone.utc)
        self._history(recognition.uid).document(uuid.uuid4().hex).set(data, **_FS)

    @_transient
    def history(self, uid: str, limit: int = 50) -> list[Recognition]:
        query = self._history(uid).order_by("at", direction=firestore.Query.DESCENDING)
        # Firestore's TTL deletes expired rows up to a day late: until then they are not shown.
        now = datetime.now(timezone.utc)
        rows = [d.to_dict() for d in query.limit(limit).stream(**_FS)]
        return [recognition_from_dict(r) for r in rows if r.get("expires_at") is None or r["expires_at"] > now]

    @_transient
    def delete_history(self, uid: str) -> int:
        """In batches within Firestore's 500 writes."""
        mine = [doc.reference for doc in self._history(uid).select([]).stream(**_FS)]
        for start in range(0, len(mine), 500):
            batch = self._db.batch()
            for ref in mine[start : start + 500]:
                batch.delete(ref)
            batch.commit(**_FS)
        return len(mine)

    @_transient
    def add_counts(self, hour: int, counts: dict) -> None:
        """Merge writes of increments: concurrent instances add up without a transaction. The
        per-song counters (PER_SONG) go to one document per song and hour, so that no document
        grows with the songs heard: an hour's document keeps only counters of bounded keys."""
        counts = dict(counts)
        per_song = {key: counts.pop(key) for key in PER_SONG if key in counts}
        writes: list[tuple[firestore.DocumentReference, dict]] = [
            (self._db.collection("metrics_hours").document(str(hour)), {"hour": hour, **_increments(counts)})
        ]
        for song in sorted({song for values in per_song.values() for song in values}):
            data: dict[str, Any] = {"hour": hour, "song_id": song}
            for key, values in per_song.items():
                if song in values:
                    data[key] = values[song] if key == "names" else Increment(values[song])
            writes.append((self._db.collection("metrics_songs").document(f"{hour}-{song}"), data))
        for start in range(0, len(writes), 500):  # Firestore's writes per batch
            batch = self._db.batch()
            for ref, data in writes[start : start + 500]:
                batch.set(ref, data, merge=True)
            batch.commit(**_FS)

    @_transient
    def counts_since(self, hour: int) -> dict[int, dict]:
        out: dict[int, dict] = {}
        query = self._db.collection("metrics_hours").where(filter=FieldFilter("hour", ">=", hour))
        for doc in query.stream(**_FS):
            data = doc.to_dict()
            out[data.pop("hour")] = data
        songs = self._db.collection("metrics_songs").where(filter=FieldFilter("hour", ">=", hour))
        for doc in songs.stream(**_FS):
            data = doc.to_dict()
            counts = out.setdefault(data["hour"], {})
            for key in PER_SONG:
                if key in data:
                    counts.setdefault(key, {})[data["song_id"]] = data[key]
        return out

    @_transient
    def active_users(self, since: float) -> int:
        query = self._db.collection("users").where(filter=FieldFilter("last_audio_at", ">=", since))
        return int(query.count().get(**_FS)[0][0].value)

    @_transient
    def daily_active_users(self, since: float) -> dict[str, int]:
        query = self._db.collection("active_days").where(filter=FieldFilter("day", ">=", utc_day(since)))
        days: dict[str, int] = {}
        for doc in query.stream(**_FS):
            data = doc.to_dict()
            # Counter shards; a day written by an earlier version is one document listing its uids.
            days[data["day"]] = days.get(data["day"], 0) + int(data.get("users") or len(data.get("uids") or []))
        return dict(sorted(days.items()))

    @_transient
    def ping(self) -> None:
        retry = _FIRESTORE_RETRY.with_timeout(PING_DEADLINE_SECONDS)
        self._db.collection("health").document("ping").get(retry=retry, timeout=PING_DEADLINE_SECONDS)
