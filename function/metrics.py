"""/metrics: a week of recognition figures, read from per-hour counters in O(hours).

A recognition attempt is not a stored row: each instance adds its attempts into counters in
process memory (`MetricsCounter`) and adds those into the store's per-UTC-hour counters at most
every FLUSH_SECONDS, inside a request (Cloud Run throttles the CPU between requests). So an
attempt costs no storage write of its own, one hour's counters take a handful of writes a minute
however many users stream (a Firestore document sustains about one write per second), and
/metrics reads at most 169 small documents whatever the traffic. The price: an instance that
is shut down loses at most its last FLUSH_SECONDS of counts, and another instance's counts
appear up to FLUSH_SECONDS late. Every instance's /metrics call flushes its own first.

Attempts, matches and plays are three different counts. An attempt is one vote over a user's
buffer; a match is an attempt that named a song, and a song that keeps playing is matched again
every few seconds; a play is a match that went into the user's history, i.e. not a repeat within
NOTIFY_COOLDOWN_SECONDS of the same song (the rule of `_record` in function/webhook/ingest.py).
"Songs heard" is plays: two songs played once each are 2, however many attempts named them.

The hourly series, today's figures and the latency histogram are what /dashboard draws, so the
page shows exactly the numbers anyone can fetch here. Latency percentiles come from the
histogram: the upper bound of the bucket holding the percentile (the largest latency seen, for
the open last bucket), so they never understate, and are bounds, not values: the dashboard shows
them as "≤ 10 ms", since a mean of 3 ms lies in that same bucket.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from datetime import datetime, timezone

from function.logs import log
from function.storage._rules import merge_counts
from function.storage.base import Recognition, Store, StoreUnavailable

WINDOW_SECONDS = 7 * 86400.0
HOUR_SECONDS = 3600
TOP_SONGS = 10
# Upper bounds (ms) of the latency histogram's buckets; a last, open bucket holds the rest.
# Fixed rather than derived from the data so that two readings of the histogram compare.
LATENCY_BUCKETS_MS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# How often an instance adds its counts to the store: bounds the counts lost with an instance
# and the writes per hour document (instances / FLUSH_SECONDS per second).
FLUSH_SECONDS = 10.0


def hour_of(t: float) -> int:
    return int(t // HOUR_SECONDS)


def is_play(r: Recognition) -> bool:
    """A match that goes into the user's history: not the same song still playing within its
    cooldown (as `_record` in function/webhook/ingest.py decides)."""
    return r.matched and bool(r.song_id) and r.notification != "skipped_cooldown"


def counts_of(r: Recognition) -> dict:
    """One attempt as counters (see `function.storage._rules.merge_counts` for the shape)."""
    bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, r.latency_ms)
    counts: dict = {
        "attempts": 1,
        "matches": int(r.matched),
        "plays": int(is_play(r)),
        "latency_sum_ms": r.latency_ms,
        "latency_max_ms": r.latency_ms,
        "latency": {f"b{bucket}": 1},
    }
    if r.matched and r.song_id:
        counts["songs"] = {r.song_id: 1}
        counts["names"] = {r.song_id: {"title": r.title, "artist": r.artist}}
        counts["notifications"] = {r.notification: 1}
    if is_play(r):
        counts["played"] = {r.song_id: 1}
    return counts


class MetricsCounter:
    """This instance's counts not yet in the store, by UTC hour; thread-safe."""

    def __init__(self) -> None:
        self._pending: dict[int, dict] = {}
        self._lock = threading.Lock()
        self._last_flush = 0.0

    def count(self, r: Recognition) -> None:
        with self._lock:
            hour = hour_of(r.at)
            self._pending[hour] = merge_counts(self._pending.get(hour), counts_of(r))

    def flush(self, store: Store, now: float, force: bool = False) -> None:
        """Add the pending counts to the store if FLUSH_SECONDS have passed (or `force`). Never
        raises: counts that could not be written stay pending for the next flush."""
        with self._lock:
            if not self._pending or (not force and now - self._last_flush < FLUSH_SECONDS):
                return
            pending, self._pending, self._last_flush = self._pending, {}, now
        for hour, counts in sorted(pending.items()):
            try:
                store.add_counts(hour, counts)
            except StoreUnavailable as exc:
                log("WARNING", "metrics kept for the next flush: storage unavailable", reason=str(exc))
                with self._lock:
                    self._pending[hour] = merge_counts(self._pending.get(hour), counts)


def _percentile(histogram: list[int], largest: float, fraction: float) -> float | None:
    """Nearest rank over the histogram: the upper bound of the bucket holding it."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for index, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return float(LATENCY_BUCKETS_MS[index]) if index < len(LATENCY_BUCKETS_MS) else largest
    return largest


def _utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def summarise(hours: dict[int, dict], daily_active_users: dict[str, int], now: float) -> dict:
    """The /metrics body from per-hour counters: every hour the window touches (the first and
    the current one are partial), so the series adds up to the window's totals."""
    first = hour_of(now - WINDOW_SECONDS)
    span = hour_of(now) - first + 1
    # Clamped: another instance's clock may run slightly ahead of this one's.
    window: dict[int, dict] = {}
    for hour, counts in hours.items():
        slot = min(max(hour, first), first + span - 1)
        window[slot] = merge_counts(window.get(slot), counts)
    total: dict = {}
    for counts in window.values():
        total = merge_counts(total, counts)
    attempts, matches = total.get("attempts", 0), total.get("matches", 0)
    histogram = [int(total.get("latency", {}).get(f"b{i}", 0)) for i in range(len(LATENCY_BUCKETS_MS) + 1)]
    largest = float(total.get("latency_max_ms", 0.0))
    matched, played = Counter(total.get("songs", {})), Counter(total.get("played", {}))
    top = sorted(matched, key=lambda song_id: (-played[song_id], -matched[song_id], song_id))[:TOP_SONGS]
    names = total.get("names", {})
    today = _utc_day(now)
    today_hours = [c for h, c in window.items() if _utc_day(h * HOUR_SECONDS) == today]
    uppers: list[int | None] = [*LATENCY_BUCKETS_MS, None]
    return {
        "window_seconds": WINDOW_SECONDS,
        "recognition_attempts": attempts,
        "matches": matches,
        "plays": total.get("plays", 0),
        "success_rate": round(matches / attempts, 4) if attempts else None,
        "latency_ms": {
            "mean": round(total.get("latency_sum_ms", 0.0) / attempts, 1) if attempts else None,
            "p50": _percentile(histogram, largest, 0.50),
            "p95": _percentile(histogram, largest, 0.95),
        },
        "top_songs": [
            {
                "song_id": song_id,
                **names.get(song_id, {"title": None, "artist": None}),
                "plays": played[song_id],
                "matches": matched[song_id],
            }
            for song_id in top
        ],
        "notifications": dict(total.get("notifications", {})),
        "daily_active_users": dict(sorted(daily_active_users.items())),
        "today": {
            "date": today,
            "recognition_attempts": sum(c.get("attempts", 0) for c in today_hours),
            "matches": sum(c.get("matches", 0) for c in today_hours),
            "plays": sum(c.get("plays", 0) for c in today_hours),
            "active_users": daily_active_users.get(today, 0),
        },
        "hourly": {
            "start": first * HOUR_SECONDS,
            "hour_seconds": HOUR_SECONDS,
            "attempts": [window.get(first + i, {}).get("attempts", 0) for i in range(span)],
            "matches": [window.get(first + i, {}).get("matches", 0) for i in range(span)],
            "plays": [window.get(first + i, {}).get("plays", 0) for i in range(span)],
        },
        "latency_histogram": [{"upper_ms": upper, "count": n} for upper, n in zip(uppers, histogram)],
    }


def metrics(store: Store, counter: MetricsCounter, now: float) -> dict:
    counter.flush(store, now, force=True)
    since = now - WINDOW_SECONDS
    return summarise(store.counts_since(hour_of(since)), store.daily_active_users(since), now)
