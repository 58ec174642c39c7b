"""The embedded backend: all state in one SQLite database under DATA_DIR.

Several gunicorn workers (processes) with several threads each share DATA_DIR, so every change is
one `BEGIN IMMEDIATE` transaction (one writer at a time, readers never blocked thanks to WAL) on
a per-thread connection. A chunk is fingerprinted inside the transaction that stores it, with the
user's stream state read and written in the same transaction, so concurrent chunks of one user
advance the stream one at a time. What a row keeps of a chunk is its peaks (a few hundred bytes);
the audio is never written anywhere. Versions before this one kept audio files under
DATA_DIR/chunks: opening the store deletes them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from function.storage._rules import (
    KEY_MEMORY_SECONDS,
    BufferState,
    check_uid,
    decide_notification,
    granted,
    key_hash,
    may_claim,
    merge_counts,
    read_window,
    recognition_from_dict,
    release_reservation,
    retry_at,
    starts_new_buffer,
    take_pending,
    unavailable_on,
    utc_day,
)
from function.storage.base import Appended, BufferInfo, Claim, Fingerprint, Lease, PendingNotification, Recognition

# A writer waits this long for another to finish before the request is answered 503.
BUSY_TIMEOUT_SECONDS = 5.0
# Idle buffers and the total bound are checked at most this often per process, riding on an
# append: the bound can be overshot by what arrives meanwhile.
SWEEP_SECONDS = 10.0
# All users' buffers together stand for at most this much audio (32 users' full 60-s buffers at
# 16 kHz and more; what is kept of it is about 1/100 of that): past it the longest-idle buffers go
# first, so a client rotating uids cannot fill the disk.
MAX_TOTAL_BUFFERED_BYTES = 256 * 1024 * 1024

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        uid TEXT PRIMARY KEY,
        sample_rate INTEGER,
        new_bytes INTEGER NOT NULL DEFAULT 0,
        attempted INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT,
        lease_expires REAL,
        read_upto INTEGER,
        stream BLOB,
        last_audio_at REAL,
        deferred_until REAL NOT NULL DEFAULT 0,
        notify TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS users_by_audio ON users (last_audio_at)",
    # What is kept of each buffered chunk: its peaks, and the audio bytes it stood for.
    # AUTOINCREMENT: ids are never reused, so `read_upto` cannot come to cover a later chunk.
    "DROP TABLE IF EXISTS chunks",  # audio files of versions before peaks were kept instead
    """CREATE TABLE IF NOT EXISTS buffer (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uid TEXT NOT NULL,
        nbytes INTEGER NOT NULL,
        peaks BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS buffer_by_uid ON buffer (uid, id, nbytes)",
    # Idempotency keys outlive their chunks: a retry may arrive after a recognition consumed it.
    """CREATE TABLE IF NOT EXISTS receipts (
        uid TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (uid, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS receipts_by_age ON receipts (at)",
    """CREATE TABLE IF NOT EXISTS recognitions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, at REAL NOT NULL, body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS recognitions_by_uid ON recognitions (uid, at)",
    "CREATE INDEX IF NOT EXISTS recognitions_by_time ON recognitions (at)",
    # Metrics: one row per UTC hour (function/metrics.py), however many attempts it counts.
    "CREATE TABLE IF NOT EXISTS hourly_counts (hour INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS active_days (
        day TEXT NOT NULL, uid TEXT NOT NULL, PRIMARY KEY (day, uid)
    ) WITHOUT ROWID""",
)

_transient = unavailable_on(sqlite3.OperationalError, OSError)


class LocalStore:
    def __init__(self, data_dir: str, fingerprint: Fingerprint, history_retention_seconds: float = float("inf")) -> None:
        self._fingerprint = fingerprint
        self._retention = history_retention_seconds
        self._swept_at = 0.0
        self._root = Path(data_dir)
        self._root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._root / "chunks", ignore_errors=True)
        self._db_path = str(self._root / "state.sqlite3")
        self._local = threading.local()
        self._use_wal()
        with self._transaction() as db:
            for statement in _SCHEMA:
                db.execute(statement)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(users)")}
            if "stream" not in columns:
                db.execute("ALTER TABLE users ADD COLUMN stream BLOB")

    # --- plumbing -----------------------------------------------------------------------------
    def _use_wal(self) -> None:
        """Switch the database to WAL. Two processes opening a new database at once can both
        try, and SQLite answers the loser "database is locked" at once, without waiting out the
        busy timeout: so that one waits here and tries again."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                self._connection().execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread, and a fresh one after a fork: SQLite connections must not
        cross either."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self._db_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
            conn.row_factory = sqlite3.Row
            # WAL survives a process crash; NORMAL only risks the last commits on power loss.
            conn.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows and replaced stream states are overwritten with zeros, not left in
            # free pages; the journal's old page images go at each `_scrub`.
            conn.execute("PRAGMA secure_delete=ON")
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @staticmethod
    def _user(db: sqlite3.Connection, uid: str) -> sqlite3.Row | None:
        return db.execute("SELECT * FROM users WHERE uid = ?", (uid,)).fetchone()

    @staticmethod
    def _buffered(db: sqlite3.Connection, uid: str) -> tuple[int, int]:
        total, count = db.execute(
            "SELECT COALESCE(SUM(nbytes), 0), COUNT(*) FROM buffer WHERE uid = ?", (uid,)
        ).fetchone()
        return total, count

    @staticmethod
    def _drop_upto(db: sqlite3.Connection, uid: str, last_id: int) -> None:
        db.execute("DELETE FROM buffer WHERE uid = ? AND id <= ?", (uid, last_id))

    @staticmethod
    def _drop_buffer(db: sqlite3.Connection, uid: str) -> int:
        dropped = db.execute("DELETE FROM buffer WHERE uid = ?", (uid,)).rowcount
        db.execute(
            "UPDATE users SET sample_rate = NULL, new_bytes = 0, attempted = 0, lease_token = NULL,"
            " lease_expires = NULL, read_upto = NULL, stream = NULL WHERE uid = ?",
            (uid,),
        )
        return dropped

    @staticmethod
    def _notify_state(user: sqlite3.Row | None) -> dict | None:
        return json.loads(user["notify"]) if user is not None and user["notify"] else None

    @staticmethod
    def _set_notify_state(db: sqlite3.Connection, uid: str, state: dict) -> None:
        db.execute(
            "INSERT INTO users (uid, notify) VALUES (?, ?) ON CONFLICT (uid) DO UPDATE SET notify = excluded.notify",
            (uid, json.dumps(state)),
        )

    @staticmethod
    def _holder(db: sqlite3.Connection, lease: Lease) -> sqlite3.Row | None:
        user = LocalStore._user(db, lease.uid)
        return user if user is not None and user["lease_token"] == lease.token else None

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
        appended = self._commit_chunk(uid, key_hash(key), sample_rate, pcm, now, max_gap_seconds, max_bytes, claim)
        if not appended.duplicate and now - self._swept_at >= SWEEP_SECONDS:
            self._swept_at = now
            self._sweep(uid, now, max_gap_seconds)
            self._scrub()
        return appended

    def _scrub(self) -> None:
        """Empty the write-ahead log into the database and truncate it: the log keeps an image of
        every page each transaction wrote (every stream state the users' chunks replaced) until
        a checkpoint, so without this it would hold minutes of them. Best effort: a checkpoint
        that readers hold up is done by a later one."""
        self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _sweep(self, current: str, now: float, max_gap: float) -> None:
        """Delete the buffers nobody will read: idle longer than `max_gap` (their next chunk would
        start a new buffer anyway) or a day, then the longest-idle ones while all buffers
        together stand for more than MAX_TOTAL_BUFFERED_BYTES. `current`'s buffer, just
        appended to, is never swept."""
        idle_since = now - min(max_gap, 86400.0)
        with self._transaction() as db:
            idle = db.execute(
                "SELECT uid FROM users WHERE last_audio_at < ? AND sample_rate IS NOT NULL AND uid != ?",
                (idle_since, current),
            ).fetchall()
            for row in idle:
                self._drop_buffer(db, row["uid"])
            total = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM buffer").fetchone()[0]
            if total <= MAX_TOTAL_BUFFERED_BYTES:
                return
            oldest = db.execute(
                "SELECT u.uid, SUM(c.nbytes) AS held FROM users u JOIN buffer c ON c.uid = u.uid"
                " WHERE u.uid != ? GROUP BY u.uid ORDER BY u.last_audio_at",
                (current,),
            ).fetchall()
            for row in oldest:
                if total <= MAX_TOTAL_BUFFERED_BYTES:
                    break
                self._drop_buffer(db, row["uid"])
                total -= row["held"]

    def _commit_chunk(
        self,
        uid: str,
        digest: str,
        sample_rate: int,
        pcm: bytes,
        now: float,
        max_gap: float,
        max_bytes: int | None,
        claim: Claim | None,
    ) -> Appended:
        with self._transaction() as db:
            db.execute("DELETE FROM receipts WHERE at < ?", (now - KEY_MEMORY_SECONDS,))
            fresh = db.execute(
                "INSERT OR IGNORE INTO receipts (uid, key, at) VALUES (?, ?, ?)", (uid, digest, now)
            ).rowcount
            user = self._user(db, uid)
            retry = retry_at(self._notify_state(user))
            if not fresh:
                rate = user["sample_rate"] if user is not None and user["sample_rate"] else sample_rate
                return Appended(True, self._buffered(db, uid)[0], rate, retry)
            stream = user["stream"] if user is not None else None
            if user is not None and starts_new_buffer(user["sample_rate"], user["last_audio_at"], sample_rate, now, max_gap):
                self._drop_buffer(db, uid)
                stream = None
            peaks, stream = self._fingerprint(stream, sample_rate, pcm)
            db.execute("INSERT INTO buffer (uid, nbytes, peaks) VALUES (?, ?, ?)", (uid, len(pcm), peaks))
            db.execute(
                "INSERT INTO users (uid, sample_rate, new_bytes, stream, last_audio_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET sample_rate = excluded.sample_rate,"
                " new_bytes = new_bytes + excluded.new_bytes, stream = excluded.stream,"
                " last_audio_at = MAX(COALESCE(last_audio_at, excluded.last_audio_at),"
                " excluded.last_audio_at)",
                (uid, sample_rate, len(pcm), stream, now),
            )
            db.execute("INSERT OR IGNORE INTO active_days (day, uid) VALUES (?, ?)", (utc_day(now), uid))
            if max_bytes is not None:
                self._bound(db, uid, max_bytes)
            lease = self._claim(db, uid, claim, now) if claim is not None else None
            after = self._user(db, uid)
            return Appended(
                False, self._buffered(db, uid)[0], sample_rate, retry, after["new_bytes"], bool(after["attempted"]), lease
            )

    def _bound(self, db: sqlite3.Connection, uid: str, max_bytes: int) -> list[sqlite3.Row]:
        """Drop the chunks older than the newest `max_bytes`; the rest, oldest first."""
        chunks = db.execute("SELECT id, nbytes, peaks FROM buffer WHERE uid = ? ORDER BY id", (uid,)).fetchall()
        first = read_window([c["nbytes"] for c in chunks], max_bytes)
        if first:
            self._drop_upto(db, uid, chunks[first - 1]["id"])
        return chunks[first:]

    def _claim(self, db: sqlite3.Connection, uid: str, claim: Claim, now: float, max_bytes: int | None = None) -> Lease | None:
        user = self._user(db, uid)
        if user is None or user["sample_rate"] is None:
            return None
        state = BufferState(
            buffered_bytes=self._buffered(db, uid)[0],
            new_bytes=user["new_bytes"],
            attempted=bool(user["attempted"]),
            lease_token=user["lease_token"],
            lease_expires=user["lease_expires"],
        )
        if not may_claim(state, claim.min_bytes, claim.stride_bytes, now):
            return None
        if max_bytes is not None:
            window = self._bound(db, uid, max_bytes)
        else:
            window = db.execute("SELECT id, nbytes, peaks FROM buffer WHERE uid = ? ORDER BY id", (uid,)).fetchall()
        token = uuid.uuid4().hex
        db.execute(
            "UPDATE users SET lease_token = ?, lease_expires = ?, read_upto = ?, new_bytes = 0, attempted = 1 WHERE uid = ?",
            (token, now + claim.lease_seconds, window[-1]["id"] if window else None, uid),
        )
        return Lease(
            uid,
            token,
            user["sample_rate"],
            now + claim.lease_seconds,
            chunks=tuple(bytes(c["peaks"]) for c in window),
            stream=user["stream"],
            buffered_bytes=sum(c["nbytes"] for c in window),
        )

    @_transient
    def claim(
        self, uid: str, min_bytes: int, stride_bytes: int, lease_seconds: float, now: float, max_bytes: int
    ) -> Lease | None:
        with self._transaction() as db:
            return self._claim(db, uid, Claim(min_bytes, stride_bytes, lease_seconds), now, max_bytes)

    @_transient
    def release(self, lease: Lease, now: float) -> None:
        with self._transaction() as db:
            user = self._holder(db, lease)
            if user is None:
                return
            if user["read_upto"] is not None:
                self._drop_upto(db, lease.uid, user["read_upto"])
            db.execute(
                "UPDATE users SET lease_token = NULL, lease_expires = NULL, read_upto = NULL, attempted = 0 WHERE uid = ?",
                (lease.uid,),
            )

    @_transient
    def clear(self, uid: str) -> bool:
        with self._transaction() as db:
            cleared = self._user(db, uid) is not None and self._drop_buffer(db, uid) > 0
        self._scrub()
        return cleared

    @_transient
    def buffer_info(self, uid: str) -> BufferInfo:
        with self._transaction(write=False) as db:
            user = self._user(db, uid)
            buffered, count = self._buffered(db, uid)
        return BufferInfo(
            uid=uid,
            buffered_bytes=buffered,
            sample_rate=user["sample_rate"] if user is not None else None,
            chunks=count,
            last_audio_at=user["last_audio_at"] if user is not None else None,
        )

    # --- notifications ------------------------------------------------------------------------
    @_transient
    def reserve_notification(
        self, uid: str, song_id: str, now: float, cooldown_seconds: float, hourly_limit: int
    ) -> str:
        with self._transaction() as db:
            user = self._user(db, uid)
            verdict, state = decide_notification(
                self._notify_state(user),
                song_id,
                now,
                cooldown_seconds,
                hourly_limit,
                deferred_until=user["deferred_until"] if user is not None else 0.0,
            )
            if granted(verdict):
                self._set_notify_state(db, uid, state)
            return verdict

    @_transient
    def release_notification(self, uid: str, pending: PendingNotification, now: float) -> None:
        with self._transaction() as db:
            state = release_reservation(self._notify_state(self._user(db, uid)), pending, now)
            self._set_notify_state(db, uid, state)

    @_transient
    def take_notification(self, uid: str, now: float, hourly_limit: int) -> tuple[str, PendingNotification | None]:
        with self._transaction() as db:
            user = self._user(db, uid)
            deferred_until = user["deferred_until"] if user is not None else 0.0
            verdict, pending, state = take_pending(self._notify_state(user), now, hourly_limit, deferred_until)
            if state is not None:
                self._set_notify_state(db, uid, state)
            return verdict, pending

    @_transient
    def set_notification(self, uid: str, recognised_at: float, notification: str, error: str | None) -> None:
        with self._transaction() as db:
            rows = db.execute("SELECT id, body FROM recognitions WHERE uid = ? AND at = ?", (uid, recognised_at)).fetchall()
            for row in rows:
                body = {**json.loads(row["body"]), "notification": notification, "notification_error": error}
                db.execute("UPDATE recognitions SET body = ? WHERE id = ?", (json.dumps(body), row["id"]))

    @_transient
    def defer_notifications(self, uid: str, until: float) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO users (uid, deferred_until) VALUES (?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET"
                " deferred_until = MAX(deferred_until, excluded.deferred_until)",
                (uid, until),
            )

    @_transient
    def notifications_deferred_until(self, uid: str) -> float:
        row = self._connection().execute("SELECT deferred_until FROM users WHERE uid = ?", (uid,)).fetchone()
        return row["deferred_until"] if row is not None else 0.0

    # --- history and metrics ------------------------------------------------------------------
    @_transient
    def record(self, recognition: Recognition) -> None:
        with self._transaction() as db:
            # The sweep rides on the write: the index on `at` makes it a range delete, and a
            # deployment that records nothing has nothing new to expire either.
            db.execute("DELETE FROM recognitions WHERE at < ?", (recognition.at - self._retention,))
            db.execute(
                "INSERT INTO recognitions (uid, at, body) VALUES (?, ?, ?)",
                (recognition.uid, recognition.at, json.dumps(asdict(recognition))),
            )

    @_transient
    def delete_history(self, uid: str) -> int:
        with self._transaction() as db:
            return db.execute("DELETE FROM recognitions WHERE uid = ?", (uid,)).rowcount

    @_transient
    def history(self, uid: str, limit: int = 50) -> list[Recognition]:
        # Rows past the retention are swept only as new ones are written: until then, not shown.
        rows = self._connection().execute(
            "SELECT body FROM recognitions WHERE uid = ? AND at >= ? ORDER BY at DESC, id DESC LIMIT ?",
            (uid, time.time() - self._retention, limit),
        )
        return [recognition_from_dict(json.loads(row["body"])) for row in rows]

    @_transient
    def add_counts(self, hour: int, counts: dict) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT body FROM hourly_counts WHERE hour = ?", (hour,)).fetchone()
            merged = merge_counts(json.loads(row["body"]) if row else None, counts)
            db.execute(
                "INSERT INTO hourly_counts (hour, body) VALUES (?, ?) ON CONFLICT (hour) DO UPDATE SET body = excluded.body",
                (hour, json.dumps(merged)),
            )

    @_transient
    def counts_since(self, hour: int) -> dict[int, dict]:
        rows = self._connection().execute("SELECT hour, body FROM hourly_counts WHERE hour >= ?", (hour,))
        return {row["hour"]: json.loads(row["body"]) for row in rows}

    @_transient
    def active_users(self, since: float) -> int:
        return self._connection().execute(
            "SELECT COUNT(*) FROM users WHERE last_audio_at >= ?", (since,)
        ).fetchone()[0]

    @_transient
    def daily_active_users(self, since: float) -> dict[str, int]:
        rows = self._connection().execute(
            "SELECT day, COUNT(*) FROM active_days WHERE day >= ? GROUP BY day ORDER BY day",
            (utc_day(since),),
        )
        return {day: count for day, count in rows}

    @_transient
    def ping(self) -> None:
        self._connection().execute("SELECT 1").fetchone()
