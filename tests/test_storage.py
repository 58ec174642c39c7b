"""One behavioural suite for every storage backend: the core may rely on exactly this."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from function.config import Settings
from function.storage import open_store
from function.storage._rules import KEY_MEMORY_SECONDS
from function.storage.base import Claim, PendingNotification, Recognition, Reservation, Retry, Store, StoreUnavailable

RATE = 16000
CHUNK = 3200  # 0.1 s of PCM16 at 16 kHz: small, so the suite stays fast
HOUR = 3600.0
DAY = 86400.0
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC, a whole hour


def pcm(fill: int, size: int = CHUNK) -> bytes:
    return bytes([fill % 256]) * size


def label(state: bytes | None, sample_rate: int, chunk: bytes) -> tuple[bytes, bytes]:
    """A stand-in for the engine's fingerprint (tests/test_at_rest.py runs the real one): each
    chunk kept as a short label of its content and the state counting the chunks since the
    buffer began, so that order, trimming and restarts can be read back."""
    count = int(state or b"0") + 1
    return hashlib.sha256(chunk).digest()[:8], str(count).encode()


def kept(chunks: list[bytes]) -> tuple[bytes, ...]:
    return tuple(label(None, RATE, c)[0] for c in chunks)


@pytest.fixture
def store(backend_env: dict[str, str]) -> Store:
    return open_store(Settings.from_env(), fingerprint=label)


def fill(store: Store, uid: str, count: int, now: float = T0, first: int = 0) -> list[bytes]:
    chunks = [pcm(first + i) for i in range(count)]
    for i, chunk in enumerate(chunks):
        store.append(uid, f"key-{first + i}", RATE, chunk, now + i)
    return chunks


def stored_chunk_objects(backend_env: dict[str, str], uid: str) -> int:
    """Chunks the uid's buffer holds, as stored: rows (local); entries of the user document's
    buffer (gcp)."""
    if backend_env["STORAGE_BACKEND"] == "local":
        import sqlite3

        with sqlite3.connect(Path(backend_env["DATA_DIR"]) / "state.sqlite3") as db:
            return db.execute("SELECT COUNT(*) FROM buffer WHERE uid = ?", (uid,)).fetchone()[0]
    from google.cloud import firestore

    user = firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"]).collection("users").document(uid)
    return len((user.get().to_dict() or {}).get("buffer") or [])


# --- appending --------------------------------------------------------------------------------
def test_append_counts_bytes_and_chunks(store: Store) -> None:
    first = store.append("u1", "k1", RATE, pcm(1), T0)
    second = store.append("u1", "k2", RATE, pcm(2, 1000), T0 + 1)

    info = store.buffer_info("u1")

    assert (first.duplicate, first.buffered_bytes, first.sample_rate) == (False, CHUNK, RATE)
    assert (second.duplicate, second.buffered_bytes) == (False, CHUNK + 1000)
    assert (info.buffered_bytes, info.chunks) == (CHUNK + 1000, 2)
    assert (info.sample_rate, info.last_audio_at) == (RATE, T0 + 1)


def test_unknown_uid_has_an_empty_buffer(store: Store) -> None:
    info = store.buffer_info("nobody")

    assert (info.buffered_bytes, info.chunks, info.sample_rate, info.last_audio_at) == (0, 0, None, None)


def test_duplicate_key_is_stored_once(store: Store, backend_env: dict[str, str]) -> None:
    store.append("u1", "k1", RATE, pcm(1), T0)

    again = store.append("u1", "k1", RATE, pcm(1), T0 + 1)

    info = store.buffer_info("u1")
    assert (again.duplicate, again.buffered_bytes, again.sample_rate) == (True, CHUNK, RATE)
    assert (info.buffered_bytes, info.chunks) == (CHUNK, 1)
    assert stored_chunk_objects(backend_env, "u1") == 1


def test_same_key_for_another_uid_is_not_a_duplicate(store: Store) -> None:
    store.append("u1", "k1", RATE, pcm(1), T0)

    other = store.append("u2", "k1", RATE, pcm(1), T0)

    assert other.duplicate is False
    assert store.buffer_info("u2").chunks == 1


def test_chunks_without_key_are_always_appended(store: Store) -> None:
    store.append("u1", None, RATE, pcm(1), T0)

    again = store.append("u1", None, RATE, pcm(1), T0)

    assert again.duplicate is False
    assert (store.buffer_info("u1").buffered_bytes, store.buffer_info("u1").chunks) == (2 * CHUNK, 2)


def test_key_is_remembered_after_its_chunk_was_consumed(store: Store) -> None:
    fill(store, "u1", 3)
    lease = store.claim("u1", CHUNK, 0, 30, T0 + 5, 10 * CHUNK)
    store.release(lease, now=T0 + 6)

    retry = store.append("u1", "key-0", RATE, pcm(0), T0 + 7)

    assert retry.duplicate is True
    assert store.buffer_info("u1").buffered_bytes == 0


@pytest.mark.parametrize("gap,kept", [(30.0, 2), (41.0, 1), (3 * HOUR, 1)], ids=["within", "just-over", "three-hours"])
def test_audio_after_a_long_gap_starts_a_new_buffer(store: Store, backend_env: dict[str, str], gap: float, kept: int) -> None:
    """A batch Omi dropped, or a new recording session, must not be spliced onto the old audio."""
    store.append("u1", "k1", RATE, pcm(1), T0, max_gap_seconds=40)
    assert store.claim("u1", CHUNK, 0, 4 * HOUR, T0 + 0.5, 10 * CHUNK) is not None

    appended = store.append("u1", "k2", RATE, pcm(2), T0 + gap, max_gap_seconds=40)

    info = store.buffer_info("u1")
    assert (appended.buffered_bytes, info.chunks) == (kept * CHUNK, kept)
    assert (info.sample_rate, info.last_audio_at) == (RATE, T0 + gap)
    if kept == 1:
        assert appended.attempted is False
        assert store.claim("u1", CHUNK, 2 * CHUNK, 30, T0 + gap + 1, 10 * CHUNK) is not None, "the old attempt went with the old buffer"
    else:
        assert store.claim("u1", CHUNK, 2 * CHUNK, 30, T0 + gap + 1, 10 * CHUNK) is None, "a stride after the last attempt"
    assert stored_chunk_objects(backend_env, "u1") == kept


def test_sample_rate_change_starts_a_new_buffer(store: Store, backend_env: dict[str, str]) -> None:
    fill(store, "u1", 2)

    switched = store.append("u1", "k8", 8000, pcm(9, 1600), T0 + 5)

    info = store.buffer_info("u1")
    assert (switched.duplicate, switched.buffered_bytes, switched.sample_rate) == (False, 1600, 8000)
    assert (info.buffered_bytes, info.chunks, info.sample_rate) == (1600, 1, 8000)
    assert stored_chunk_objects(backend_env, "u1") == 1


# --- leases -----------------------------------------------------------------------------------
def test_claim_below_min_bytes_is_refused(store: Store) -> None:
    fill(store, "u1", 2)

    assert store.claim("u1", 3 * CHUNK, 0, 30, T0 + 5, 10 * CHUNK) is None


def test_claim_on_unknown_uid_is_refused(store: Store) -> None:
    assert store.claim("nobody", 1, 0, 30, T0, 10 * CHUNK) is None


def test_one_lease_at_a_time(store: Store) -> None:
    fill(store, "u1", 3)

    first = store.claim("u1", 3 * CHUNK, 0, 30, T0 + 5, 10 * CHUNK)
    second = store.claim("u1", 3 * CHUNK, 0, 30, T0 + 6, 10 * CHUNK)

    assert first is not None
    assert (first.uid, first.sample_rate, first.expires_at) == ("u1", RATE, T0 + 35)
    assert second is None


def test_expired_lease_is_taken_over_and_the_old_holder_changes_nothing(store: Store) -> None:
    fill(store, "u1", 3)
    stale = store.claim("u1", CHUNK, 0, 30, T0 + 5, 10 * CHUNK)

    fresh = store.claim("u1", CHUNK, 0, 30, T0 + 36, 10 * CHUNK)
    store.release(stale, now=T0 + 37)

    assert fresh is not None and fresh.token != stale.token
    assert store.buffer_info("u1").buffered_bytes == 3 * CHUNK
    assert store.claim("u1", CHUNK, 0, 30, T0 + 38, 10 * CHUNK) is None


# --- reading and releasing --------------------------------------------------------------------
def test_a_claim_reads_the_newest_chunks_in_arrival_order(store: Store, backend_env: dict[str, str]) -> None:
    chunks = fill(store, "u1", 5)
    lease = store.claim("u1", CHUNK, 0, 30, T0 + 10, 3 * CHUNK)

    read = lease.chunks

    info = store.buffer_info("u1")
    assert read == kept(chunks[2:])
    assert (lease.stream, lease.buffered_bytes) == (b"5", 3 * CHUNK)
    assert (info.buffered_bytes, info.chunks) == (3 * CHUNK, 3)
    assert stored_chunk_objects(backend_env, "u1") == 3


def test_a_read_cap_inside_a_chunk_keeps_the_whole_chunks_within_it(store: Store) -> None:
    chunks = fill(store, "u1", 4)
    lease = store.claim("u1", CHUNK, 0, 30, T0 + 10, 2 * CHUNK + 1001)

    read = lease.chunks

    assert read == kept(chunks[2:])
    assert store.buffer_info("u1").chunks == 2


def test_a_claim_of_many_chunks_reads_them_in_order(store: Store) -> None:
    chunks = fill(store, "u1", 70)
    lease = store.claim("u1", CHUNK, 0, 30, T0 + 100, 100 * CHUNK)

    read = lease.chunks

    assert read == kept(chunks)


def test_release_after_a_match_drops_what_was_read_and_keeps_later_audio(store: Store) -> None:
    fill(store, "u1", 3)
    lease = store.claim("u1", CHUNK, 0, 30, T0 + 5, 10 * CHUNK)
    late = store.append("u1", "late", RATE, pcm(77), T0 + 6)

    store.release(lease, now=T0 + 7)

    info = store.buffer_info("u1")
    assert late.duplicate is False
    assert (info.buffered_bytes, info.chunks) == (CHUNK, 1)
    again = store.claim("u1", CHUNK, 5 * CHUNK, 30, T0 + 8, 10 * CHUNK)
    assert again.chunks == kept([pcm(77)])
    assert again.stream == b"4", "a match empties the buffer; the stream goes on"


def test_a_miss_writes_nothing_and_the_next_claim_waits_for_a_stride(store: Store) -> None:
    chunks = fill(store, "u1", 4)
    store.claim("u1", 2 * CHUNK, 2 * CHUNK, 30, T0 + 5, 10 * CHUNK)

    refused = [store.claim("u1", 2 * CHUNK, 2 * CHUNK, 30, T0 + 7, 10 * CHUNK)]
    more = fill(store, "u1", 1, now=T0 + 8, first=10)
    refused.append(store.claim("u1", 2 * CHUNK, 2 * CHUNK, 30, T0 + 9, 10 * CHUNK))
    more += fill(store, "u1", 1, now=T0 + 10, first=11)
    again = store.claim("u1", 2 * CHUNK, 2 * CHUNK, 30, T0 + 11, 10 * CHUNK)

    assert refused == [None, None]
    assert again is not None, "a stride arrived: the first lease, though unexpired, no longer blocks"
    assert again.chunks == kept(chunks + more)


def test_an_append_claims_in_the_same_step_when_the_cadence_allows(store: Store) -> None:
    claim = Claim(min_bytes=3 * CHUNK, stride_bytes=2 * CHUNK, lease_seconds=30)
    chunks = [pcm(i) for i in range(6)]

    answers = [store.append("u1", f"k{i}", RATE, c, T0 + i, claim=claim) for i, c in enumerate(chunks)]

    granted = [i for i, a in enumerate(answers) if a.lease is not None]
    assert granted == [2, 4], "at 3 chunks, then every 2"
    assert answers[4].lease.chunks == kept(chunks[:5])
    assert store.claim("u1", 3 * CHUNK, 2 * CHUNK, 30, T0 + 7, 10 * CHUNK) is None


def test_an_append_keeps_the_buffer_within_max_bytes(store: Store, backend_env: dict[str, str]) -> None:
    for i in range(5):
        store.append("u1", f"k{i}", RATE, pcm(i), T0 + i, max_bytes=2 * CHUNK + 100)

    info = store.buffer_info("u1")
    assert (info.buffered_bytes, info.chunks) == (2 * CHUNK, 2)
    assert stored_chunk_objects(backend_env, "u1") == 2


def test_clear_drops_the_buffer(store: Store, backend_env: dict[str, str]) -> None:
    fill(store, "u1", 3)
    store.claim("u1", CHUNK, 0, 30, T0 + 5, 10 * CHUNK)

    cleared = store.clear("u1")

    info = store.buffer_info("u1")
    assert cleared is True
    assert (info.buffered_bytes, info.chunks, info.sample_rate) == (0, 0, None)
    assert stored_chunk_objects(backend_env, "u1") == 0
    assert store.clear("u1") is False
    assert store.claim("u1", 1, 0, 30, T0 + 6, 10 * CHUNK) is None
    assert store.append("u1", "after", RATE, pcm(5), T0 + 7).buffered_bytes == CHUNK
    assert store.claim("u1", 1, 0, 30, T0 + 8, 10 * CHUNK).stream == b"1", "the stream starts again"


# --- notifications ----------------------------------------------------------------------------
def test_reserve_notification_cooldown_and_hourly_limit(store: Store) -> None:
    end_of_hour = T0 + HOUR - 10

    verdicts = [
        store.reserve_notification("u1", "song-a", end_of_hour, 600, 2),
        store.reserve_notification("u1", "song-a", end_of_hour + 1, 600, 2),
        store.reserve_notification("u1", "song-b", end_of_hour + 2, 600, 2),
        store.reserve_notification("u1", "song-c", end_of_hour + 3, 600, 2),
        store.reserve_notification("u1", "song-c", T0 + HOUR + 1, 600, 2),
        store.reserve_notification("u1", "song-a", T0 + HOUR + 2, 600, 2),
        store.reserve_notification("u1", "song-a", T0 + HOUR + 600, 600, 2),
    ]

    # The day's first notification carries the user's history link.
    assert verdicts == ["ok_link", "cooldown", "ok", "limit", "ok", "cooldown", "ok"]
    assert all(isinstance(v, Reservation) for v in verdicts)


def test_the_history_link_goes_out_once_a_day(store: Store) -> None:
    verdicts = [
        store.reserve_notification("u1", "song-a", T0, 600, 9),
        store.reserve_notification("u1", "song-b", T0 + 700, 600, 9),
        store.reserve_notification("u1", "song-c", T0 + 86400, 600, 9),
    ]

    assert verdicts == ["ok_link", "ok", "ok_link"]


def test_notification_limits_are_per_uid(store: Store) -> None:
    store.reserve_notification("u1", "song-a", T0, 600, 1)

    assert store.reserve_notification("u2", "song-a", T0, 600, 1) == "ok_link"


def test_deferred_notifications(store: Store) -> None:
    before = store.notifications_deferred_until("u1")

    store.defer_notifications("u1", T0 + 100)
    store.defer_notifications("u1", T0 + 50)

    assert before == 0.0
    assert store.notifications_deferred_until("u1") == T0 + 100
    assert store.reserve_notification("u1", "song-a", T0 + 99, 600, 10) == "limit"
    assert store.reserve_notification("u1", "song-a", T0 + 100, 600, 10) == "ok_link"


def failed_send(store: Store, uid: str = "u1", song: str = "song-a", limit: int = 1) -> PendingNotification:
    """Reserve a notification at T0 whose send failed, and hand it back for a retry at T0 + 5."""
    assert store.reserve_notification(uid, song, T0, 600, limit) == "ok_link"
    pending = PendingNotification(song, f"🎵 {song}", T0, attempts=1, retry_at=T0 + 5, expires_at=T0 + 600)
    store.release_notification(uid, pending, T0 + 1)
    return pending


def test_a_released_notification_is_taken_once_when_due(store: Store) -> None:
    pending = failed_send(store)

    early = store.take_notification("u1", T0 + 4, 10)
    taken = [store.take_notification("u1", T0 + 5, 10), store.take_notification("u1", T0 + 5, 10)]

    assert early == (Retry.WAIT, None)
    assert taken == [(Retry.OK, pending), (Retry.NONE, None)]
    assert all(isinstance(verdict, Retry) for verdict, _ in taken)


def test_appending_reports_when_a_pending_notification_is_due(store: Store) -> None:
    before = store.append("u1", "k1", RATE, pcm(1), T0)
    failed_send(store)

    after = store.append("u1", "k2", RATE, pcm(2), T0 + 2)
    duplicate = store.append("u1", "k2", RATE, pcm(2), T0 + 3)

    assert before.notification_retry_at is None
    assert after.notification_retry_at == duplicate.notification_retry_at == T0 + 5


def test_a_released_notification_keeps_its_cooldown_and_frees_its_hourly_slot(store: Store) -> None:
    failed_send(store, limit=1)

    same_song = store.reserve_notification("u1", "song-a", T0 + 2, 600, 1)
    other_song = store.reserve_notification("u1", "song-b", T0 + 3, 600, 1)
    retry = store.take_notification("u1", T0 + 5, 1)

    assert (same_song, other_song) == ("cooldown", "ok")
    assert retry == ("wait", None)  # song-b took the hour's only slot
    assert store.take_notification("u1", T0 + HOUR, 1)[0] == "expired"


def test_a_pending_notification_waits_out_a_deferral(store: Store) -> None:
    pending = failed_send(store)
    store.defer_notifications("u1", T0 + 60)

    assert store.take_notification("u1", T0 + 59, 10) == ("wait", None)
    assert store.take_notification("u1", T0 + 60, 10) == ("ok", pending)


def test_an_expired_pending_notification_is_dropped(store: Store) -> None:
    pending = failed_send(store)

    assert store.take_notification("u1", T0 + 600, 10) == ("expired", pending)
    assert store.take_notification("u1", T0 + 601, 10) == ("none", None)
    assert store.append("u1", "k1", RATE, pcm(1), T0 + 602).notification_retry_at is None


# --- history and metrics ----------------------------------------------------------------------
def recognition(uid: str, at: float, **fields: object) -> Recognition:
    defaults = {"latency_ms": 12.5, "audio_seconds": 10.0, "matched": False}
    return Recognition(**{"uid": uid, "at": at, **defaults, **fields})


def song(uid: str, at: float, song_id: str) -> Recognition:
    return recognition(uid, at, matched=True, song_id=song_id, title=f"title {song_id}", artist="artist")


def test_history_is_newest_first(store: Store) -> None:
    hit = recognition(
        "u1",
        T0 + 3,
        matched=True,
        song_id="s1",
        title="Title",
        artist="Artist",
        offset_seconds=12.0,
        confidence=0.9,
        score=42,
        notification="sent",
        extra={"why": ["a", 1]},
    )
    for r in (song("u1", T0 + 1, "s0"), hit, song("u1", T0 + 2, "s2"), song("u2", T0 + 4, "s3")):
        store.record(r)

    history = store.history("u1")

    assert [r.at for r in history] == [T0 + 3, T0 + 2, T0 + 1]
    assert history[0] == hit
    assert [r.at for r in store.history("u1", limit=2)] == [T0 + 3, T0 + 2]
    assert store.history("nobody") == []


def test_a_user_deletes_their_history_and_nobody_elses(store: Store) -> None:
    for r in (song("u1", T0 + 1, "s1"), song("u1", T0 + 2, "s2"), song("u2", T0 + 3, "s3")):
        store.record(r)

    deleted = store.delete_history("u1")

    assert deleted == 2
    assert store.history("u1") == []
    assert [r.song_id for r in store.history("u2")] == ["s3"]
    assert store.delete_history("u1") == 0


def test_history_expires_after_the_retention(backend_env) -> None:
    """Locally a sweep on each write; in the cloud an `expires_at` for Firestore's TTL policy."""
    store = open_store(Settings.from_env({**os.environ, "HISTORY_RETENTION_DAYS": "1"}))
    store.record(recognition("u1", T0, matched=True, song_id="s1"))

    store.record(recognition("u2", T0 + DAY + 1, matched=True, song_id="s2"))

    if backend_env["STORAGE_BACKEND"] == "local":
        assert store.history("u1") == []
    else:
        from google.cloud import firestore

        db = firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"])
        stamps = [d.get("expires_at").timestamp() for d in db.collection_group("recognitions").stream()]
        assert sorted(stamps) == [T0 + DAY, T0 + 2 * DAY + 1]
    assert [r.song_id for r in store.history("u2")] == ["s2"]


def test_history_hides_rows_past_their_retention_before_they_are_swept(backend_env) -> None:
    """Firestore's TTL acts up to a day late and the local sweep only on a later write: a row
    past its retention must not be shown meanwhile."""
    store = open_store(Settings.from_env({**os.environ, "HISTORY_RETENTION_DAYS": "1"}))
    now = time.time()

    store.record(recognition("u1", now - 60, matched=True, song_id="new"))
    store.record(recognition("u1", now - 2 * DAY, matched=True, song_id="old"))  # its own sweep keeps it

    assert [r.song_id for r in store.history("u1")] == ["new"]


def test_an_hour_of_five_thousand_distinct_songs_is_counted(store: Store, backend_env: dict[str, str]) -> None:
    """No document may grow with the songs heard (Firestore: 1 MiB and 40,000 index entries)."""
    hour = int(T0 // HOUR)
    for flush in range(10):
        songs = {f"s{flush:02d}{i:04d}": 1 for i in range(500)}
        names = {song: {"title": f"Title {song}", "artist": "Someone"} for song in songs}
        store.add_counts(hour, {"attempts": 500, "matches": 500, "songs": songs, "played": songs, "names": names})

    [counts] = store.counts_since(hour).values()

    assert (counts["attempts"], len(counts["songs"]), len(counts["played"]), len(counts["names"])) == (5000, 5000, 5000, 5000)
    assert counts["names"]["s090499"] == {"title": "Title s090499", "artist": "Someone"}
    if backend_env["STORAGE_BACKEND"] == "gcp":
        from google.cloud import firestore

        db = firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"])
        hour_document = db.collection("metrics_hours").document(str(hour)).get().to_dict()
        assert not {"songs", "played", "names"} & set(hour_document), "the hour's document holds no per-song map"


def test_set_notification_updates_that_history_entry_only(store: Store) -> None:
    store.record(recognition("u1", T0 + 1, matched=True, song_id="s1", notification="retrying", notification_error="HTTP 500"))
    store.record(recognition("u1", T0 + 2, matched=True, song_id="s2", notification="skipped_cooldown"))

    store.set_notification("u1", T0 + 1, "sent", None)

    assert [(r.notification, r.notification_error) for r in store.history("u1")] == [("skipped_cooldown", None), ("sent", None)]
    assert store.history("u1")[1].song_id == "s1"


def test_counts_add_up_per_hour_across_writers(store: Store) -> None:
    hour = int(T0 // HOUR)
    store.add_counts(hour, {"attempts": 2, "matches": 1, "latency_max_ms": 30.0, "latency": {"b1": 2}, "songs": {"s1": 1},
                            "names": {"s1": {"title": "T", "artist": "A"}}, "notifications": {"sent": 1}})
    store.add_counts(hour, {"attempts": 1, "matches": 0, "latency_max_ms": 12.0, "latency": {"b1": 1}})
    store.add_counts(hour + 1, {"attempts": 5, "matches": 0})
    store.add_counts(hour - 5, {"attempts": 7})

    counts = store.counts_since(hour)

    assert counts == {
        hour: {"attempts": 3, "matches": 1, "latency_max_ms": 30.0, "latency": {"b1": 3}, "songs": {"s1": 1},
               "names": {"s1": {"title": "T", "artist": "A"}}, "notifications": {"sent": 1}},
        hour + 1: {"attempts": 5, "matches": 0},
    }


def test_active_users(store: Store) -> None:
    store.append("u1", "k", RATE, pcm(1), T0)
    store.append("u2", "k", RATE, pcm(1), T0 + 100)
    store.append("u2", "k2", RATE, pcm(1), T0 + 200)

    assert store.active_users(T0 + 50) == 1
    assert store.active_users(T0) == 2
    assert store.active_users(T0 + 201) == 0


def test_daily_active_users(store: Store) -> None:
    day = 86400.0
    store.append("u1", "a", RATE, pcm(1), T0)
    store.append("u1", "b", RATE, pcm(1), T0 + day)
    store.append("u2", "c", RATE, pcm(1), T0 + day + 5)
    store.append("u2", "d", RATE, pcm(1), T0 + day + 6)

    everything = store.daily_active_users(T0)
    last_day = store.daily_active_users(T0 + day + 3600)

    assert everything == {"2027-01-15": 1, "2027-01-16": 2}
    assert last_day == {"2027-01-16": 2}


def test_ping_answers(store: Store) -> None:
    store.ping()


# --- concurrency ------------------------------------------------------------------------------
def test_concurrent_threads_lose_no_chunk(store: Store) -> None:
    def worker(name: str) -> None:
        for i in range(20):
            store.append("u1", f"{name}-{i}", RATE, pcm(i), T0 + i)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    info = store.buffer_info("u1")
    assert (info.buffered_bytes, info.chunks) == (40 * CHUNK, 40)


def _append_from_process(data_dir: str, name: str) -> None:
    from function.storage.local import LocalStore

    store = LocalStore(data_dir, label)
    for i in range(20):
        store.append("u1", f"{name}-{i}", RATE, pcm(i), T0 + i)


def test_local_concurrent_processes_lose_no_chunk(tmp_path: Path) -> None:
    from function.storage.local import LocalStore

    data_dir = str(tmp_path / "data")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_from_process, args=(data_dir, name)) for name in ("a", "b")]

    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)

    info = LocalStore(data_dir, label).buffer_info("u1")
    assert [w.exitcode for w in workers] == [0, 0]
    assert (info.buffered_bytes, info.chunks) == (40 * CHUNK, 40)


# --- outages ----------------------------------------------------------------------------------
def test_gcp_ping_fails_fast_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    from function.storage.gcp import GcpStore

    dead = free_port()
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{dead}")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{dead}")
    store = GcpStore("dead-project", "(default)", label)
    started = time.monotonic()

    with pytest.raises(StoreUnavailable):
        store.ping()

    assert time.monotonic() - started < 10


# --- the cloud backend's own guarantees ---------------------------------------------------------
@pytest.fixture
def gcp_store(backend_env: dict[str, str], store: Store) -> Store:
    if backend_env["STORAGE_BACKEND"] != "gcp":
        pytest.skip("the gcp backend's document layout")  # the local half is covered above
    return store


def user_document(backend_env: dict[str, str], uid: str) -> dict:
    from google.cloud import firestore

    return firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"]).collection("users").document(uid).get().to_dict() or {}


@pytest.mark.parametrize("backend_env", ["gcp"], indirect=True)
def test_the_user_document_holds_what_the_fingerprint_kept_and_recent_receipts(gcp_store: Store, backend_env: dict[str, str]) -> None:
    gcp_store.append("u1", "k1", RATE, pcm(1), T0)
    gcp_store.append("u1", "k2", RATE, pcm(2), T0 + KEY_MEMORY_SECONDS + 1)

    doc = user_document(backend_env, "u1")

    assert [c["peaks"] for c in doc["buffer"]] == list(kept([pcm(1), pcm(2)]))
    assert doc["stream"] == b"2"
    assert len(doc["receipts"]) == 12, "the first delivery's receipt was forgotten"
    assert gcp_store.append("u1", "k2", RATE, pcm(2), T0 + KEY_MEMORY_SECONDS + 2).duplicate is True
    assert not any(isinstance(v, bytes) and v == pcm(1) for v in doc.values())


@pytest.mark.parametrize("backend_env", ["gcp"], indirect=True)
def test_clearing_takes_the_peaks_and_the_stream_at_once(gcp_store: Store, backend_env: dict[str, str]) -> None:
    for i in range(3):
        gcp_store.append("u1", f"k{i}", RATE, pcm(i), T0 + i)

    gcp_store.clear("u1")

    doc = user_document(backend_env, "u1")
    assert doc["buffer"] == [] and "stream" not in doc


@pytest.mark.parametrize("backend_env", ["gcp"], indirect=True)
def test_concurrent_posts_for_one_uid_never_stall_a_recognition(gcp_store: Store) -> None:
    """Four threads append 16 chunks a second between them (twice what the per-uid rate limit
    lets through an instance) while a recogniser claims and reads: every compare-and-set gets
    through and every read keeps to the cap."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def flood(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                gcp_store.append("u1", f"t{n}-{i}", RATE, pcm(i % 200), time.time(), max_gap_seconds=3600)
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)
            i += 1
            stop.wait(0.25)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    reads = []
    try:
        deadline = time.time() + 6
        while time.time() < deadline:
            lease = gcp_store.claim("u1", CHUNK, 0, 30, time.time(), 10 * CHUNK)
            if lease is None:
                continue
            reads.append(lease.buffered_bytes)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert errors == []
    assert len(reads) >= 5 and max(reads) <= 10 * CHUNK


@pytest.mark.parametrize("backend_env", ["local"], indirect=True)
def test_idle_buffers_are_deleted_and_all_buffered_audio_is_bounded(store: Store, backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A client rotating uids leaves sub-threshold audio behind; it must not stay, nor pile up."""
    from function.storage import local

    monkeypatch.setattr(local, "SWEEP_SECONDS", 0.0)
    store.append("idle", "k", RATE, pcm(1), T0, max_gap_seconds=40)
    store.append("busy1", "k", RATE, pcm(2), T0 + 30, max_gap_seconds=40)
    store.append("busy2", "k", RATE, pcm(3), T0 + 45, max_gap_seconds=40)
    monkeypatch.setattr(local, "MAX_TOTAL_BUFFERED_BYTES", 2 * CHUNK)

    store.append("new", "k", RATE, pcm(4), T0 + 50, max_gap_seconds=40)

    held = {uid: store.buffer_info(uid).chunks for uid in ("idle", "busy1", "busy2", "new")}
    assert held == {"idle": 0, "busy1": 0, "busy2": 1, "new": 1}, "idle first, then the longest idle over the bound"
    assert stored_chunk_objects(backend_env, "idle") == stored_chunk_objects(backend_env, "busy1") == 0
