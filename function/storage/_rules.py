"""Decisions both backends take identically, kept here so they cannot drift apart.

Each backend only stores and fetches; what to keep, whom to grant a lease and whether to notify is
decided by these pure functions, which the shared behavioural suite therefore covers twice.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Callable, Sequence, TypeVar

from function.config import UID_PATTERN
from function.storage.base import PendingNotification, Recognition, Reservation, Retry, StoreUnavailable

# How long an Idempotency-Key is remembered after its chunk arrived. Omi gives up on a chunk after
# 4 attempts spread over about 3 minutes (1 s, 5 s, 30 s back-off, 15-30 s timeouts), so a
# quarter of an hour covers every retry, also after the chunk itself was consumed by a
# recognition, and keeps the receipts a user's cloud document carries small (900 of them).
KEY_MEMORY_SECONDS = 900.0

F = TypeVar("F", bound=Callable[..., Any])


def unavailable_on(*errors: type[BaseException]) -> Callable[[F], F]:
    """Turn a backend's transient failures into StoreUnavailable, so the edge answers 503 and
    Omi retries instead of losing the chunk to a 500."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except errors as exc:
                raise StoreUnavailable(f"{method.__name__}: {type(exc).__name__}") from exc

        return wrapper  # type: ignore[return-value]

    return decorate


def check_uid(uid: str) -> str:
    """The uid becomes part of file paths, object names and document ids: refuse anything else."""
    if not UID_PATTERN.match(uid):
        raise ValueError("uid must match " + UID_PATTERN.pattern)
    return uid


def key_hash(key: str | None) -> str:
    """A name-safe, fixed-length stand-in for an Idempotency-Key; without a key, a fresh one, so
    such chunks are never taken for duplicates."""
    raw = key if key is not None else uuid.uuid4().hex
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def utc_day(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class BufferState:
    buffered_bytes: int
    new_bytes: int  # arrived since the last claim
    attempted: bool  # the last recognition on this buffer missed
    lease_token: str | None
    lease_expires: float | None


def starts_new_buffer(buffered_rate: int | None, last_audio_at: float | None, sample_rate: int, now: float, max_gap: float) -> bool:
    """Whether a chunk must not be joined to the buffer before it: recorded at another rate, or
    after a silence longer than `max_gap` (a batch Omi dropped, or another recording session):
    voting across the splice would match two stretches of music as if they were one."""
    if buffered_rate is None:
        return False
    return buffered_rate != sample_rate or (last_audio_at is not None and now - last_audio_at > max_gap)


def may_claim(state: BufferState, min_bytes: int, stride_bytes: int, now: float) -> bool:
    """Whether a recognition may claim the buffer: enough audio, and after an attempt a stride
    of new audio. A lease blocks only until a stride of audio arrived after it was granted: an
    attempt takes a small part of a stride, so by then its holder is done (after a miss it
    writes nothing at all, which is what lets a miss cost no storage operation); a holder that
    died mid-attempt blocks the uid only until it expires (RECOGNITION_LEASE_SECONDS)."""
    held = state.lease_token is not None and (state.lease_expires or 0.0) > now
    if held and state.new_bytes < max(stride_bytes, 1):
        return False
    if state.buffered_bytes < max(min_bytes, 1):  # never a recognition of nothing
        return False
    return not state.attempted or state.new_bytes >= stride_bytes


def read_window(sizes: Sequence[int], max_bytes: int) -> int:
    """For chunks oldest first: the index of the oldest chunk of the newest ones that together
    stood for at most `max_bytes` (the newest chunk is always kept, whatever its size)."""
    total, first = 0, len(sizes)
    while first > 0 and (total + sizes[first - 1] <= max_bytes or first == len(sizes)):
        first -= 1
        total += sizes[first]
    return first


def decide_notification(
    state: dict | None,
    song_id: str,
    now: float,
    cooldown_seconds: float,
    hourly_limit: int,
    deferred_until: float,
) -> tuple[Reservation, dict]:
    """The verdict and the uid's notification state after it: OK, or OK_LINK when this is the
    user's first notification of the UTC day (it carries the link to their own history, so the
    link reaches them daily through Omi without a notification of its own), COOLDOWN or LIMIT.

    The state is a JSON-able dict {"hour": UTC hour number, "count": notifications reserved in
    it, "recent": {song_id: last notified at}, "link_day": UTC day the link was last sent, and
    "pending" (see `release_reservation`)}; only songs still within their cooldown are kept, so
    it stays small.
    """
    hour = int(now // 3600)
    state = state or {}
    count = _count(state, now)
    recent = {song: at for song, at in (state.get("recent") or {}).items() if now - at < cooldown_seconds}
    if song_id in recent:
        verdict = Reservation.COOLDOWN
    elif now < deferred_until or count >= hourly_limit:
        verdict = Reservation.LIMIT
    else:
        count += 1
        recent[song_id] = now
        day = utc_day(now)
        if state.get("link_day") != day:
            state = {**state, "link_day": day}
            verdict = Reservation.OK_LINK
        else:
            verdict = Reservation.OK
    return verdict, {**state, "hour": hour, "count": count, "recent": recent}


def granted(verdict: Reservation) -> bool:
    return verdict in (Reservation.OK, Reservation.OK_LINK)


def _count(state: dict, now: float) -> int:
    return state.get("count", 0) if state.get("hour") == int(now // 3600) else 0


def release_reservation(state: dict | None, pending: PendingNotification, now: float) -> dict:
    """The state after a failed send: one fewer counted this hour (Omi did not count it
    either), the song's cooldown entry kept, and `pending` remembered (the "pending" key)."""
    state = state or {}
    return {**state, "hour": int(now // 3600), "count": max(0, _count(state, now) - 1), "pending": asdict(pending)}


def take_pending(
    state: dict | None, now: float, hourly_limit: int, deferred_until: float
) -> tuple[Retry, PendingNotification | None, dict | None]:
    """The verdict of `Store.take_notification`, the pending notification and the state to
    write (None: unchanged)."""
    state = state or {}
    if not state.get("pending"):
        return Retry.NONE, None, None
    pending = PendingNotification(**state["pending"])
    rest = {k: v for k, v in state.items() if k != "pending"}
    if now >= pending.expires_at:
        return Retry.EXPIRED, pending, rest
    count = _count(state, now)
    if now < pending.retry_at or now < deferred_until or count >= hourly_limit:
        return Retry.WAIT, None, None
    return Retry.OK, pending, {**rest, "hour": int(now // 3600), "count": count + 1}


def retry_at(state: dict | None) -> float | None:
    pending = (state or {}).get("pending")
    return pending["retry_at"] if pending else None


def merge_counts(into: dict | None, add: dict) -> dict:
    """Metrics counters added together (function/metrics.py makes them): numbers summed, maps
    merged key by key, except `latency_max_ms`, a maximum, and `names` (song id -> title and
    artist), the latest value. Pure, so an instance's pending counts, the local backend's rows
    and a summary over hours all add up the same way."""
    out = dict(into or {})
    for key, value in add.items():
        if key == "names":
            out[key] = {**out.get(key, {}), **value}
        elif key == "latency_max_ms":
            out[key] = max(out.get(key, value), value)
        elif isinstance(value, dict):
            out[key] = merge_counts(out.get(key), value)
        else:
            out[key] = out.get(key, 0) + value
    return out


_RECOGNITION_FIELDS = {f.name for f in fields(Recognition)}


def recognition_from_dict(data: dict) -> Recognition:
    """Fields a newer version added are ignored, so old code can read new history."""
    return Recognition(**{k: v for k, v in data.items() if k in _RECOGNITION_FIELDS})
