"""The one narrow interface between the webhook's core and where its state lives.

Two backends implement it: `local` (SQLite, the embedded default) and `gcp` (Firestore
documents). The core (`function/webhook/ingest.py`) only ever talks to a `Store`, so the same
behavioural test suite runs against both.

No audio is kept: a store is given a `Fingerprint` when it is opened and keeps, of each chunk,
only what that returns, inside the same transaction that takes the chunk (so a user's stream
state advances once per chunk, in arrival order). Sizes and the buffer's bounds are still
counted in the audio bytes each chunk stood for: that is what the recognition cadence is set in.

Invariants every backend keeps:
- `append` is atomic and idempotent per (uid, key): a chunk is either stored once and counted
  once, or not at all (and then the call raises `StoreUnavailable`, so the edge answers 503 and
  Omi retries). A key seen before for that uid returns `duplicate=True` and changes nothing.
- A chunk at a sample rate different from the uid's buffer, or arriving more than
  `max_gap_seconds` after the buffer's last chunk, drops the old buffer first.
- A recognition claims the buffer with a `Lease`: once MIN_AUDIO_SECONDS are buffered, then once
  per stride of new audio (`_rules.may_claim`), across processes and instances; a lease blocks
  other claims until a stride of audio arrived after it or it expired. A claim is usually made
  by the `append` that stores the chunk completing the stride, in the same write. A miss writes
  nothing afterwards; a match `release`s the lease and drops what it read. Clearing the buffer or
  restarting it at another sample rate also ends the lease.
- The buffer never holds more than the newest `max_bytes` of audio (whole chunks; the newest
  always) that `append` is given.
- All times are Unix seconds (float) passed in by the caller, so tests control the clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Callable, Protocol

# (the stream's state before a chunk, None for a new buffer; the chunk's sample rate; its PCM16)
# -> (what the buffer keeps of it, the stream's state after it). The webhook passes the engine's
# (function/engine/stream.py `step`: the chunk's spectral peaks); the store never sees audio again.
Fingerprint = Callable[[bytes | None, int, bytes], tuple[bytes, bytes]]


class Reservation(StrEnum):
    """`Store.reserve_notification`'s verdict."""

    OK = "ok"  # reserved and counted in this UTC hour
    OK_LINK = "ok_link"  # the same, and the user's first of the UTC day: it carries their history link
    COOLDOWN = "cooldown"  # the same song was notified less than the cooldown ago
    LIMIT = "limit"  # the hourly limit is reached, or notifications are deferred


class Retry(StrEnum):
    """`Store.take_notification`'s verdict on the uid's pending notification."""

    OK = "ok"  # reserved, counted and no longer pending: this caller sends it
    EXPIRED = "expired"  # past its song's cooldown, dropped
    WAIT = "wait"  # not due yet, deferred, or over the hourly limit
    NONE = "none"  # nothing pending


class Notification(StrEnum):
    """What became of a recognition's notification (`Recognition.notification`); strings in
    stored history, /metrics and the pages."""

    NONE = "none"  # no match, or nothing to notify
    SENT = "sent"
    LOGGED = "logged"  # no Omi app configured: only logged
    FAILED = "failed"
    RETRYING = "retrying"  # failed in a way worth retrying; retried on later chunks
    RATE_LIMITED = "rate_limited"  # Omi answered 429; retried after its Retry-After
    SKIPPED_COOLDOWN = "skipped_cooldown"  # the same song still playing
    SKIPPED_LIMIT = "skipped_limit"  # the user's hourly allowance is used
    SKIPPED_DEFERRED = "skipped_deferred"  # Omi said to wait before the next one


class StoreUnavailable(RuntimeError):
    """The backing storage did not answer; the request must be retried (HTTP 503)."""


@dataclass(frozen=True)
class Claim:
    """What a recognition asks of a buffer (see `_rules.may_claim`), in audio bytes."""

    min_bytes: int
    stride_bytes: int
    lease_seconds: float


@dataclass(frozen=True)
class Appended:
    duplicate: bool
    buffered_bytes: int  # audio bytes now buffered for the uid (after this chunk)
    sample_rate: int  # the buffer's sample rate
    # When a failed notification may be retried; read with the state `append` reads anyway, so
    # the core learns of it without another storage call.
    notification_retry_at: float | None = None
    # Audio since the last claim (this chunk included) and whether the last attempt missed, as
    # the state read for this chunk saw them: the core skips a claim the store would refuse
    # (fewer than a stride of new audio after a miss) without a transaction to learn it. A
    # concurrent chunk can make them stale; that only delays the next attempt by one chunk.
    new_bytes: int = 0
    attempted: bool = False
    lease: "Lease | None" = None  # the claim the append was asked to make, if it was granted


@dataclass(frozen=True)
class PendingNotification:
    """A notification whose send failed in a way worth retrying (Omi down, 5xx, 429). It keeps
    its song's cooldown reservation, so only its retry can notify that song meanwhile."""

    song_id: str
    message: str
    recognised_at: float  # the history entry to update (`Recognition.at`)
    attempts: int
    retry_at: float
    expires_at: float  # end of the song's cooldown: past it, the song has likely stopped


@dataclass(frozen=True)
class BufferInfo:
    uid: str
    buffered_bytes: int
    sample_rate: int | None  # None when nothing was ever buffered
    chunks: int
    last_audio_at: float | None


@dataclass(frozen=True)
class Lease:
    """A claim on one uid's buffer for one recognition, with what it read of the buffer."""

    uid: str
    token: str
    sample_rate: int
    expires_at: float
    chunks: tuple[bytes, ...] = ()  # what the Fingerprint kept of each buffered chunk, oldest first
    stream: bytes | None = None  # the stream's state after the newest chunk
    buffered_bytes: int = 0  # the audio those chunks stood for


@dataclass(frozen=True)
class Recognition:
    """One recognition attempt, match or miss: counted for /metrics, kept for /history if matched."""

    uid: str
    at: float  # when the attempt finished
    latency_ms: float
    audio_seconds: float
    matched: bool
    song_id: str | None = None
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    offset_seconds: float | None = None
    confidence: float | None = None
    score: int | None = None
    notification: str = Notification.NONE  # a Notification
    notification_error: str | None = None
    extra: dict = field(default_factory=dict)


class Store(Protocol):
    # --- audio buffer -------------------------------------------------------------------------
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
        """Keep what the store's Fingerprint makes of one chunk, in arrival order (see the
        invariants above); the PCM itself is not kept. With `claim`, also claim the buffer in
        the same step if `may_claim` allows (the lease comes back in `Appended.lease`, read as
        `claim` reads it): a recognition costs no storage operation of its own."""

    def claim(
        self, uid: str, min_bytes: int, stride_bytes: int, lease_seconds: float, now: float, max_bytes: int
    ) -> Lease | None:
        """Claim the uid's buffer for a recognition and read it, in one step, or None (what
        `append` does with a `Claim` after storing its chunk).

        Granted when `_rules.may_claim` allows; the claim counts as an attempt (the next one
        waits for a stride of new audio). The lease's `chunks` are the buffer's newest chunks
        that together stood for at most `max_bytes` of audio (the newest one whatever its
        size), oldest first; older chunks are dropped.
        """

    def release(self, lease: Lease, now: float) -> None:
        """The lease named a song: drop what it read (chunks that arrived since stay) and end
        it, so the next claim is the next song's. A release after the lease was taken over by
        a later claim changes nothing."""

    def clear(self, uid: str) -> bool:
        """Drop the uid's buffer and stream state at once. True if anything was buffered."""

    def buffer_info(self, uid: str) -> BufferInfo: ...

    # --- notifications ------------------------------------------------------------------------
    def reserve_notification(
        self, uid: str, song_id: str, now: float, cooldown_seconds: float, hourly_limit: int
    ) -> Reservation:
        """Atomically decide whether to notify (see `Reservation`)."""

    def release_notification(self, uid: str, pending: PendingNotification, now: float) -> None:
        """The send of a reserved notification failed: give its slot in the hourly count back
        and keep `pending` (replacing any other) for `take_notification` to retry."""

    def take_notification(self, uid: str, now: float, hourly_limit: int) -> tuple[Retry, PendingNotification | None]:
        """Atomically claim the uid's pending notification for one retry (see `Retry`): with
        OK and EXPIRED, the notification; so no other caller can send it."""

    def set_notification(self, uid: str, recognised_at: float, notification: str, error: str | None) -> None:
        """Update the notification status of the uid's history entry recorded `recognised_at`."""

    def defer_notifications(self, uid: str, until: float) -> None:
        """Omi answered 429: no notification for this uid before `until`."""

    def notifications_deferred_until(self, uid: str) -> float: ...

    # --- history and metrics ------------------------------------------------------------------
    def record(self, recognition: Recognition) -> None:
        """Keep a named song in the uid's history (misses are only counted, see `add_counts`)."""

    def history(self, uid: str, limit: int = 50) -> list[Recognition]:
        """The uid's songs, newest first. Entries older than the store's history retention are
        gone (local: swept as new ones are recorded; cloud: a Firestore TTL on `expires_at`)."""

    def delete_history(self, uid: str) -> int:
        """Forget every song of the uid (the user asked); how many there were."""

    def add_counts(self, hour: int, counts: dict) -> None:
        """Add metrics counters (function/metrics.py) to those of UTC hour `hour` (Unix time // 3600)."""

    def counts_since(self, hour: int) -> dict[int, dict]:
        """Every UTC hour's counters from `hour` on, for /metrics."""

    def active_users(self, since: float) -> int:
        """Users whose audio arrived at or after `since`."""

    def daily_active_users(self, since: float) -> dict[str, int]:
        """UTC date (YYYY-MM-DD) -> distinct uids that sent audio that day, from `since`."""

    def ping(self) -> None:
        """Raise StoreUnavailable if the backend does not answer."""
