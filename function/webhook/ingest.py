"""What happens to one chunk of a user's audio: fingerprint and keep its peaks, maybe recognise,
maybe notify, record. The audio itself is kept nowhere (function/engine/stream.py).

No HTTP and no cloud SDK here: the edge (`function/webhook/edge.py`) turns requests into calls,
the `Store` keeps every piece of state, so any number of instances can run this at once.

Recognition cadence: a recognition is claimed once MIN_AUDIO_SECONDS are buffered. After a miss
the whole buffer is kept (the store drops what falls out of MAX_BUFFER_SECONDS) and the store
only grants the next claim after RECOGNITION_STRIDE_SECONDS of new audio, so every attempt votes
over all the audio since the buffer began and the evidence for a song accumulates; a user
playing no music costs one attempt per stride rather than one per 1-s chunk. Whether the best
guess is named is function/webhook/naming.py's rule. A match empties the buffer.

Plain chunks never wait behind a recognition: an instance runs at most RECOGNITION_SLOTS
recognitions at once (one per core: a vote is CPU-bound, more at once only slow each other and
every plain chunk sharing the cores), each slot held from the claim to the end of the vote. A
chunk that finds every slot taken is stored and answered at once without claiming; its user's
buffer stays claimable, so the next chunk tries again.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

from function.config import Settings
from function.logs import log
from function.metrics import MetricsCounter
from function.webhook.omi_client import Notifier, loggable, song_message
from function.webhook.user_links import history_link
from function.webhook.ratelimit import AudioRateLimiter
from function.engine.recogniser import CatalogError, Match
from function.webhook.naming import named
from function.storage._rules import granted
from function.storage.base import Claim, Lease, Notification, PendingNotification, Recognition, Reservation, Retry, Store, StoreUnavailable

RECOGNITION_SLOTS = os.cpu_count() or 1
# Omi waits 15 s for an answer (its read timeout; connect 2 s): the calls to Omi a request makes
# (a notification, a memory) get what is left of this, so that the answer leaves in time even
# when Omi is slow. Storage calls have deadlines of their own (5 s on Firestore, a busy timeout
# locally); a recognition takes tens of milliseconds.
REQUEST_BUDGET_SECONDS = 12.0
# Back-off between retries of a failed notification stops growing here.
MAX_RETRY_INTERVAL_SECONDS = 60.0


class Recognises(Protocol):
    def best_guess_buffer(self, uid: str, chunks: Sequence[bytes], stream: bytes | None) -> tuple[Match | None, float]: ...

    def catalog_state(self) -> dict: ...


@dataclass(frozen=True)
class Service:
    """Everything a request needs, built once per process by main.py."""

    settings: Settings
    store: Store
    notifier: Notifier
    recogniser: Callable[[], Recognises]  # loads lazily; raises CatalogError if there is no catalog
    limiter: AudioRateLimiter
    metrics: MetricsCounter = field(default_factory=MetricsCounter)
    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(RECOGNITION_SLOTS))


@dataclass(frozen=True)
class ChunkResult:
    duplicate: bool
    buffered_bytes: int
    sample_rate: int
    recognition: dict | None  # set when this request ran (or tried to run) a recognition

    @property
    def buffered_seconds(self) -> float:
        return round(self.buffered_bytes / (2 * self.sample_rate), 3)


def audio_bytes(seconds: float, sample_rate: int) -> int:
    """Whole 16-bit samples."""
    return int(round(seconds * sample_rate)) * 2


def ingest_chunk(
    service: Service, uid: str, key: str | None, sample_rate: int, pcm: bytes, now: float, base_url: str = ""
) -> ChunkResult:
    """`base_url`: where the links in this user's notifications point ("" sends none)."""
    deadline = time.monotonic() + REQUEST_BUDGET_SECONDS
    s = service.settings
    # The chunk's append also claims the buffer when the cadence allows and this instance has a
    # recognition slot free: the slot is taken first, so a busy instance claims nothing it
    # cannot vote on, and given back at once when there was nothing to claim.
    slot = _Slot(service.slots)
    claim = None
    if slot.taken:
        claim = Claim(
            min_bytes=audio_bytes(s.min_audio_seconds, sample_rate),
            stride_bytes=audio_bytes(s.stride_seconds, sample_rate),
            lease_seconds=s.lease_seconds,
        )
    try:
        max_bytes = audio_bytes(s.max_buffer_seconds, sample_rate)
        appended = service.store.append(uid, key, sample_rate, pcm, now, s.max_gap_seconds, max_bytes, claim)
        result = ChunkResult(appended.duplicate, appended.buffered_bytes, appended.sample_rate, None)
        log(
            "DEBUG" if result.duplicate else "INFO",
            "duplicate chunk acknowledged" if result.duplicate else "chunk stored",
            uid=uid,
            bytes=len(pcm),
            seconds=result.buffered_seconds,
            sample_rate=result.sample_rate,
        )
        if appended.lease is None:
            slot.give_back()
        if appended.notification_retry_at is not None and appended.notification_retry_at <= now:
            _retry_notification(service, uid, now, deadline)
        if appended.lease is None:
            return result
        return replace(result, recognition=_recognise(service, appended.lease, now, base_url, slot, deadline))
    finally:
        slot.give_back()


class _Slot:
    """One of the instance's recognition slots, taken without waiting and given back as soon as
    the vote is done: the claim before it holds the slot (so a busy instance does not claim what
    it cannot vote on), the release, notification and history after it do not (they only wait
    on storage and Omi, which need no core)."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots = slots
        self.taken = slots.acquire(blocking=False)

    def give_back(self) -> None:
        if self.taken:
            self.taken = False
            self._slots.release()


class _Skipped(Exception):
    """The claimed attempt produced no verdict; `status` and `reason` go back in the response."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _recognise(service: Service, lease: Lease, now: float, base_url: str, slot: _Slot, deadline: float) -> dict:
    try:
        recognition = _attempt(service, lease, now, slot)
    except _Skipped as skipped:
        return {"status": skipped.status, "reason": skipped.reason}
    retry = None
    if recognition.matched:
        notification, error, retry = _notify(service, recognition, now, base_url, deadline)
        recognition = replace(recognition, notification=notification, notification_error=error)
    _record(service, recognition)
    if retry is not None:
        # Only now: a retry updates the history entry, which must exist by then.
        _best_effort(lease.uid, service.store.release_notification, lease.uid, retry, now)
    return _public(recognition)


def _attempt(service: Service, lease: Lease, now: float, slot: _Slot) -> Recognition:
    """Recognise what the claim read. A match releases the lease, dropping what it read; a
    miss (or a vote that could not be taken) writes nothing: the claim already counted as the
    attempt, so the next one waits for a stride of new audio."""
    store, uid, rate = service.store, lease.uid, lease.sample_rate
    match: Match | None = None
    guess: Match | None = None
    confidence = 0.0
    try:
        started = time.perf_counter()
        try:
            guess, confidence = service.recogniser().best_guess_buffer(uid, lease.chunks, lease.stream)
        except CatalogError as exc:
            # No catalog (or a shard of it did not answer): the peaks are kept (the window
            # bounds them) for when it is back, a stride later, not every chunk.
            log("ERROR", "recognition skipped: catalog unavailable", uid=uid, reason=str(exc))
            raise _Skipped("unavailable", "the song catalog is not available") from exc
        except Exception as exc:  # the chunk is stored: a failed attempt must not make Omi resend it
            log("ERROR", "recognition failed", exc=exc, uid=uid, chunks=len(lease.chunks))
            raise _Skipped("error", "recognition failed") from exc
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        match = named(guess, confidence)
    finally:
        slot.give_back()
    if match is not None:
        _best_effort(uid, store.release, lease, now)
    seconds = round(lease.buffered_bytes / (2 * rate), 3)
    if match is None:
        log("INFO", "no match", uid=uid, seconds=seconds, latency_ms=latency_ms, confidence=round(confidence, 4))
        return Recognition(uid=uid, at=now, latency_ms=latency_ms, audio_seconds=seconds, matched=False)
    log(
        "INFO",
        "song recognised",
        uid=uid,
        seconds=seconds,
        latency_ms=latency_ms,
        song=song_message(match.title, match.artist),
        confidence=match.confidence,
    )
    return Recognition(
        uid=uid,
        at=now,
        latency_ms=latency_ms,
        audio_seconds=seconds,
        matched=True,
        **match.to_dict(),
    )


def _notify(
    service: Service, recognised: Recognition, now: float, base_url: str, deadline: float
) -> tuple[str, str | None, PendingNotification | None]:
    """Once per song while it plays, within Omi's hourly allowance; never raises, because the
    recognition stands whatever happens to its notification. A send worth retrying comes
    back as the pending notification to hand to the store once the history holds the entry.
    The day's first notification carries the user's link to their own history; with
    OMI_MEMORIES, a song that was notified also becomes an Omi memory linking there."""
    s, store, uid = service.settings, service.store, recognised.uid
    try:
        if store.notifications_deferred_until(uid) > now:
            return Notification.SKIPPED_DEFERRED, None, None
        song_id = recognised.song_id or ""
        decision = store.reserve_notification(uid, song_id, now, s.notify_cooldown_seconds, s.notify_hourly_limit)
        if not granted(decision):
            return Notification.SKIPPED_COOLDOWN if decision == Reservation.COOLDOWN else Notification.SKIPPED_LIMIT, None, None
        message = song_message(recognised.title or "", recognised.artist or "")
        link = history_link(base_url, s.link_secret, uid)
        if link and decision == Reservation.OK_LINK:
            message += f"\nYour songs: {link}"
        first = PendingNotification(song_id, message, recognised.at, 0, now, now + s.notify_cooldown_seconds)
        outcome = _send(service, uid, first, now, deadline)
        if outcome[0] == Notification.SENT and s.omi_memories:
            left = deadline - time.monotonic()
            service.notifier.create_memory(uid, recognised.title or "", recognised.artist or "", song_id, link, left)
        return outcome
    except StoreUnavailable as exc:
        log("ERROR", "notification skipped: storage unavailable", uid=uid, reason=str(exc))
        return Notification.FAILED, "storage unavailable", None


def _send(
    service: Service, uid: str, attempt: PendingNotification, now: float, deadline: float
) -> tuple[str, str | None, PendingNotification | None]:
    """One send; a failure worth retrying is rescheduled with exponential back-off (1, 2, 4 s
    ... at most a minute, or Omi's Retry-After) while the song's cooldown lasts."""
    result = service.notifier.send(uid, attempt.message, deadline - time.monotonic())
    if result.defer_seconds:
        # A 429, or a success that used Omi's last notification of the hour.
        service.store.defer_notifications(uid, now + result.defer_seconds)
    if not result.retryable:
        return result.status, result.reason, None
    attempts = attempt.attempts + 1
    at = now + max(min(2.0 ** (attempts - 1), MAX_RETRY_INTERVAL_SECONDS), result.retry_after_seconds or 0.0)
    if at >= attempt.expires_at:
        return Notification.FAILED, f"{result.reason} (gave up after {attempts} attempts)", None
    status = Notification.RATE_LIMITED if result.status == Notification.RATE_LIMITED else Notification.RETRYING
    return status, result.reason, replace(attempt, attempts=attempts, retry_at=at)


def _retry_notification(service: Service, uid: str, now: float, deadline: float) -> None:
    """Retry the uid's failed notification on the back of its audio. The store hands it to one
    caller only, so concurrent requests cannot send it twice."""
    try:
        verdict, pending = service.store.take_notification(uid, now, service.settings.notify_hourly_limit)
        if pending is None:
            return
        if verdict == Retry.EXPIRED:
            status, error, retry = Notification.FAILED, f"gave up after {pending.attempts} attempts", None
        else:
            status, error, retry = _send(service, uid, pending, now, deadline)
        log("INFO", "notification retried", uid=uid, notification=loggable(pending.message), status=status, attempts=pending.attempts)
        service.store.set_notification(uid, pending.recognised_at, status, error)
        if retry is not None:
            service.store.release_notification(uid, retry, now)
    except StoreUnavailable as exc:
        log("ERROR", "notification retry skipped: storage unavailable", uid=uid, reason=str(exc))


def _record(service: Service, recognition: Recognition) -> None:
    """Every attempt is counted (function/metrics.py); a song goes into the user's history once
    per play: a match of the song notified less than NOTIFY_COOLDOWN_SECONDS ago is the same
    song still playing. Best effort once the audio is safely stored: a storage hiccup here must
    not turn a delivered chunk into a 503 that Omi would resend."""
    service.metrics.count(recognition)
    if recognition.matched and recognition.notification != Notification.SKIPPED_COOLDOWN:
        _best_effort(recognition.uid, service.store.record, recognition)
    service.metrics.flush(service.store, recognition.at)


def _best_effort(uid: str, write: Callable[..., None], *args: object) -> None:
    try:
        write(*args)
    except StoreUnavailable as exc:
        log("ERROR", f"{write.__name__} skipped: storage unavailable", uid=uid, reason=str(exc))


def _public(r: Recognition) -> dict:
    out: dict = {"status": "match" if r.matched else "no_match", "latency_ms": r.latency_ms, "audio_seconds": r.audio_seconds}
    if r.matched:
        out.update(
            song_id=r.song_id,
            title=r.title,
            artist=r.artist,
            album=r.album,
            offset_seconds=r.offset_seconds,
            confidence=r.confidence,
            notification=r.notification,
        )
        if r.notification_error:
            out["notification_error"] = r.notification_error
    return out
