"""The Google Cloud backend: all state in Firestore, and no audio in it.

Layout
- `users/<uid>`: the buffer's counters, sample rate, cursor, lease, notification state, and the
  user's stream state (`stream`, about 9 kB: the spectrum magnitude of the newest frames and the
  spectral peaks not yet settled, function/engine/stream.py; never samples).
- `users/<uid>/chunks/<keyhash>`: one document per delivery holding what the buffer keeps of it,
  its spectral peaks (`peaks`, 6 bytes a peak, about 240 bytes a second), its arrival `seq` and
  the audio bytes it stood for, created create-only, so it is also the delivery id's receipt.
  The buffer is the chunks with `seq > after_seq`: a recognition that used chunks, or chunks
  dropped out of MAX_BUFFER_SECONDS, only moves the cursor, so the documents stay receipts for
  Omi's retries (up to about 3 minutes) and are deleted by the Firestore TTL policy on
  `chunks.expires_at` (KEY_MEMORY_SECONDS after arrival; Firestore acts on it typically within a
  day). Clearing a buffer (the user or the operator asked) deletes its documents at once.
- `users/<uid>/recognitions/<id>`: the uid's songs (matches only), with `expires_at` for the TTL
  policy on the `recognitions` collection group. `metrics_hours/<hour>`: one UTC hour's counters
  (function/metrics.py), written by merges of increments. `active_days/<YYYY-MM-DD>-<shard>`:
  counters of the users seen that day, each counted once a day (the user document remembers
  the day). Every query runs on Firestore's automatic single-field indexes: no composite index
  to deploy.

Hot path: `append` reads the user document, fingerprints the chunk with the stream state it
holds, then commits ONE batch (create the chunk document, update the user document on the
condition that nobody wrote it since the read): the batch is the commit point, nothing is
written outside it, and a concurrent chunk of the same user makes it read and fingerprint again
(after CAS_ATTEMPTS, under a transaction), so the stream advances one chunk at a time.

Claims (which read the peaks), releases, clears and notification reservations change the user
document with a compare-and-set (read, then update with an update_time precondition, retried
with a jittered back-off on conflict) rather than a client transaction: the library's
transactions begin and commit with fixed 60-second retry deadlines, while every call here
carries a deadline of a few seconds, so an outage answers 503 quickly; only a compare-and-set
that concurrent appends keep beating falls back to a transaction (`_mutate`). A claim lists the
buffer's chunk documents inside its compare-and-set and sets the counters from what it found,
so chunks the TTL deleted under a long-idle buffer are simply gone from it, never an error.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

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
    keep_newest,
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
from function.storage.base import Appended, BufferInfo, Fingerprint, Lease, PendingNotification, Recognition, StoreUnavailable

DEADLINE_SECONDS = 5.0  # one call, retries included
PING_DEADLINE_SECONDS = 2.0
# Compare-and-set tries, a jittered back-off apart (CAS_BACKOFF_SECONDS doubling up to 0.2 s),
# before falling back to a transaction: concurrent POSTs for one uid write its document back to
# back, and an immediate retry would collide with the next one just the same.
CAS_ATTEMPTS = 4
CAS_BACKOFF_SECONDS = 0.01
# Counter documents per day of active users (see `_count_active`).
ACTIVE_SHARDS = 16

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


@dataclass(frozen=True)
class _Chunk:
    seq: int
    nbytes: int
    peaks: bytes = b""


# A buffer's fields when it starts again (a clear, another sample rate, a long silence).
_RESET: dict[str, Any] = {
    "sample_rate": DELETE_FIELD,
    "buffered_bytes": 0,
    "chunk_count": 0,
    "new_bytes": 0,
    "attempted": False,
    "lease_token": DELETE_FIELD,
    "lease_expires": DELETE_FIELD,
    "read_upto": DELETE_FIELD,
    "stream": DELETE_FIELD,
}
_EMPTY_BUFFER = {k: v for k, v in _RESET.items() if v is not DELETE_FIELD}


def _state(data: dict) -> BufferState:
    return BufferState(
        buffered_bytes=data.get("buffered_bytes", 0),
        new_bytes=data.get("new_bytes", 0),
        attempted=data.get("attempted", False),
        lease_token=data.get("lease_token"),
        lease_expires=data.get("lease_expires"),
    )


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


def _holds(data: dict | None, lease: Lease) -> bool:
    return data is not None and data.get("lease_token") == lease.token


def _consume(dropped: list[_Chunk]) -> dict:
    """User-document changes that take the oldest chunks of the buffer out of it."""
    if not dropped:
        return {}
    return {
        "after_seq": dropped[-1].seq,
        "buffered_bytes": Increment(-sum(c.nbytes for c in dropped)),
        "chunk_count": Increment(-len(dropped)),
    }


class GcpStore:
    def __init__(self, project: str, database: str, fingerprint: Fingerprint, history_retention_seconds: float = 0.0) -> None:
        """`history_retention_seconds` > 0 stamps each recognition with `expires_at`, which a
        Firestore TTL policy on the `recognitions` collection group (infra/) acts on."""
        self._fingerprint = fingerprint
        self._retention = history_retention_seconds
        self._db = firestore.Client(project=project or None, database=database)

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
        plan runs again on fresh data. Appends write the user document every chunk, so a uid
        flooded with concurrent POSTs can keep a compare-and-set from ever landing: after
        CAS_ATTEMPTS the plan runs in a transaction instead, whose lock on the document makes
        those appends wait for it (a server-side lock, so it cannot starve; it is the fallback
        only because the library's transactions retry with fixed deadlines of their own)."""
        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0.5, 1.0) * min(0.2, CAS_BACKOFF_SECONDS * 2**attempt))
            snapshot = ref.get(**_FS)
            result, changes = plan(snapshot.to_dict())
            if not changes:
                return result
            try:
                if snapshot.exists:
                    unchanged = self._db.write_option(last_update_time=snapshot.update_time)
                    ref.update(changes, option=unchanged, **_FS)
                else:
                    ref.create(changes, **_FS)
            except (api.FailedPrecondition, api.AlreadyExists, api.NotFound):
                continue
            return result
        return self._locked(ref, plan)

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

    def _chunks(self, uid: str, after: int, upto: int | None = None, peaks: bool = False) -> list[_Chunk]:
        """The buffer's chunks after the cursor, oldest first; their peaks only when asked (a
        document read costs the same either way, the bytes do not travel otherwise)."""
        query = self._user(uid).collection("chunks").where(filter=FieldFilter("seq", ">", after))
        if upto is not None:
            query = query.where(filter=FieldFilter("seq", "<=", upto))
        if not peaks:
            query = query.select(["seq", "nbytes"])
        return [
            _Chunk(d.get("seq"), d.get("nbytes"), d.get("peaks") if peaks else b"")
            for d in query.order_by("seq").stream(**_FS)
        ]

    def _drop_buffer(self, uid: str) -> int:
        """Forget the uid's buffer and stream state (a clear); chunks dropped."""

        def plan(data: dict | None) -> tuple[int | None, dict | None]:
            if data is None:
                return None, None
            return data.get("chunk_count", 0), {**_RESET, "after_seq": data.get("last_seq", 0)}

        dropped = self._mutate(self._user(uid), plan)
        return 0 if dropped is None else dropped

    # --- audio buffer -------------------------------------------------------------------------
    @_transient
    def append(
        self, uid: str, key: str | None, sample_rate: int, pcm: bytes, now: float, max_gap_seconds: float = float("inf")
    ) -> Appended:
        check_uid(uid)
        user_ref = self._user(uid)
        chunk_ref = user_ref.collection("chunks").document(key_hash(key))
        expires = datetime.now(timezone.utc) + timedelta(seconds=KEY_MEMORY_SECONDS)

        def plan(data: dict | None) -> tuple[Appended, dict, dict]:
            """The answer, the user document's new fields and the chunk document, from the user
            document as read: the chunk is fingerprinted with the stream state it holds."""
            user = data or {}
            retry = retry_at(user.get("notify"))
            new_buffer = starts_new_buffer(user.get("sample_rate"), user.get("last_audio_at"), sample_rate, now, max_gap_seconds)
            if new_buffer:
                user = {**_EMPTY_BUFFER, "after_seq": user.get("last_seq", 0), "notify": user.get("notify")}
            peaks, stream = self._fingerprint(user.get("stream"), sample_rate, pcm)
            seq = max(time.time_ns(), user.get("last_seq", 0) + 1)
            buffered = user.get("buffered_bytes", 0) + len(pcm)
            new_bytes = user.get("new_bytes", 0) + len(pcm)
            changes: dict[str, Any] = {
                **(_RESET if new_buffer else {}),
                "after_seq": user.get("after_seq", 0),
                "buffered_bytes": buffered,
                "chunk_count": user.get("chunk_count", 0) + 1,
                "last_audio_at": max(now, user.get("last_audio_at") or now),
                "last_seq": seq,
                "new_bytes": new_bytes,
                "sample_rate": sample_rate,
                "stream": stream,
            }
            day = utc_day(now)
            if (data or {}).get("active_day") != day:
                changes["active_day"] = day
            chunk = {"seq": seq, "nbytes": len(pcm), "peaks": peaks, "sample_rate": sample_rate, "expires_at": expires}
            attempted = bool(user.get("attempted", False))
            return Appended(False, buffered, sample_rate, retry, new_bytes, attempted), changes, chunk

        for attempt in range(CAS_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0.5, 1.0) * min(0.2, CAS_BACKOFF_SECONDS * 2**attempt))
            snapshot = user_ref.get(**_FS)
            data = snapshot.to_dict()
            appended, changes, chunk = plan(data)
            batch = self._db.batch()
            batch.create(chunk_ref, chunk)
            if snapshot.exists:
                batch.update(user_ref, changes, option=self._db.write_option(last_update_time=snapshot.update_time))
            else:
                batch.create(user_ref, changes)
            if changes.get("active_day"):
                self._count_active(batch, uid, changes["active_day"])
            try:
                batch.commit(**_FS)
                return appended
            except (api.FailedPrecondition, api.NotFound):
                continue
            except api.AlreadyExists:
                theirs = self._get(chunk_ref)
                if theirs is None:
                    continue  # the user document was created meanwhile: try again on it
                current = self._get(user_ref) or {}
                rate = current.get("sample_rate") or sample_rate
                retry = retry_at(current.get("notify"))
                # Our own batch, retried by the library after its first answer was lost, or a
                # delivery seen before.
                return Appended(theirs.get("seq") != chunk["seq"], current.get("buffered_bytes", 0), rate, retry)
        return self._append_locked(user_ref, chunk_ref, plan)

    def _append_locked(
        self,
        user_ref: firestore.DocumentReference,
        chunk_ref: firestore.DocumentReference,
        plan: Callable[[dict | None], tuple[Appended, dict, dict]],
    ) -> Appended:
        """`append` under a transaction, when concurrent appends kept beating its compare-and-set
        (see `_mutate`)."""

        @firestore.transactional
        def run(transaction: firestore.Transaction) -> Appended:
            if chunk_ref.get(transaction=transaction, **_FS).exists:
                current = user_ref.get(transaction=transaction, **_FS).to_dict() or {}
                return Appended(True, current.get("buffered_bytes", 0), current.get("sample_rate") or 0, retry_at(current.get("notify")))
            snapshot = user_ref.get(transaction=transaction, **_FS)
            appended, changes, chunk = plan(snapshot.to_dict())
            transaction.create(chunk_ref, chunk)
            if snapshot.exists:
                transaction.update(user_ref, changes)
            else:
                transaction.create(user_ref, changes)
            if changes.get("active_day"):
                self._count_active(transaction, user_ref.id, changes["active_day"])
            return appended

        try:
            return run(self._db.transaction(max_attempts=CAS_ATTEMPTS))
        except ValueError as exc:  # the library's "failed after N attempts"
            raise StoreUnavailable(f"{user_ref.path} kept changing, even under a transaction") from exc

    def _count_active(self, writes: Any, uid: str, day: str) -> None:
        """Count the uid once for `day`, in a batch or transaction: one of ACTIVE_SHARDS counter
        documents per day, so no document grows with the users and none takes more than a few
        writes a second however many users start their day at once."""
        shard = int(key_hash(uid)[:8], 16) % ACTIVE_SHARDS
        ref = self._db.collection("active_days").document(f"{day}-{shard:02d}")
        writes.set(ref, {"day": day, "users": Increment(1)}, merge=True)

    @_transient
    def claim(
        self, uid: str, min_bytes: int, stride_bytes: int, lease_seconds: float, now: float, max_bytes: int
    ) -> Lease | None:
        def plan(data: dict | None) -> tuple[Lease | None, dict | None]:
            if data is None or data.get("sample_rate") is None:
                return None, None
            if not may_claim(_state(data), min_bytes, stride_bytes, now):
                return None, None
            chunks = self._chunks(uid, data.get("after_seq", 0), peaks=True)
            first = read_window([c.nbytes for c in chunks], max_bytes)
            window = chunks[first:]
            lease = Lease(
                uid,
                uuid.uuid4().hex,
                data["sample_rate"],
                now + lease_seconds,
                chunks=tuple(c.peaks for c in window),
                stream=data.get("stream"),
                buffered_bytes=sum(c.nbytes for c in window),
            )
            # Counters from what is really there (the update lands only if nothing was appended
            # since the snapshot, so the listing is exact): documents the TTL deleted drop out.
            return lease, {
                "lease_token": lease.token,
                "lease_expires": lease.expires_at,
                "new_bytes": 0,
                "read_upto": window[-1].seq if window else DELETE_FIELD,
                "after_seq": chunks[first - 1].seq if first else data.get("after_seq", 0),
                "buffered_bytes": lease.buffered_bytes,
                "chunk_count": len(window),
            }

        return self._mutate(self._user(uid), plan)

    @_transient
    def release(self, lease: Lease, matched: bool, keep_bytes: int, now: float) -> None:
        def plan(data: dict | None) -> tuple[None, dict | None]:
            if not _holds(data, lease):
                return None, None
            dropped: list[_Chunk] = []
            # A miss that keeps the whole buffer drops nothing: no need to list its chunks (the
            # webhook keeps it all and votes again over it, so this is every miss).
            keeps_all = not matched and data.get("buffered_bytes", 0) <= keep_bytes
            if data.get("read_upto") is not None and not keeps_all:
                read = self._chunks(lease.uid, data.get("after_seq", 0), data["read_upto"])
                first = len(read) if matched else keep_newest([c.nbytes for c in read], keep_bytes)
                dropped = read[:first]
            return None, {
                "lease_token": DELETE_FIELD,
                "lease_expires": DELETE_FIELD,
                "read_upto": DELETE_FIELD,
                "attempted": not matched,
                **_consume(dropped),
            }

        self._mutate(self._user(lease.uid), plan)

    @_transient
    def clear(self, uid: str) -> bool:
        """The documents go at once, receipts included: someone asked for the audio to go."""
        dropped = self._drop_buffer(uid)
        chunks = [d.reference for d in self._user(uid).collection("chunks").select([]).stream(**_FS)]
        for start in range(0, len(chunks), 500):
            batch = self._db.batch()
            for ref in chunks[start : start + 500]:
                batch.delete(ref)
            batch.commit(**_FS)
        return dropped > 0

    @_transient
    def buffer_info(self, uid: str) -> BufferInfo:
        data = self._get(self._user(uid)) or {}
        return BufferInfo(
            uid=uid,
            buffered_bytes=data.get("buffered_bytes", 0),
            sample_rate=data.get("sample_rate"),
            chunks=data.get("chunk_count", 0),
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
        """One merge write of increments: concurrent instances add up without a transaction."""
        ref = self._db.collection("metrics_hours").document(str(hour))
        ref.set({"hour": hour, **_increments(counts)}, merge=True, **_FS)

    @_transient
    def counts_since(self, hour: int) -> dict[int, dict]:
        query = self._db.collection("metrics_hours").where(filter=FieldFilter("hour", ">=", hour))
        out = {}
        for doc in query.stream(**_FS):
            data = doc.to_dict()
            out[data.pop("hour")] = data
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
