"""/metrics: figures over the last week of recognitions, computed from the store on request.

Nothing is aggregated in process memory: with several instances each would see only its own
share, whereas every instance reads the same recorded attempts. The hourly series, today's
figures and the latency histogram are what /dashboard draws, so the page shows exactly the
numbers anyone can fetch here.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from datetime import datetime, timezone

from function.storage.base import Recognition, Store

WINDOW_SECONDS = 7 * 86400.0
HOUR_SECONDS = 3600
TOP_SONGS = 10
# Upper bounds (ms) of the latency histogram's buckets; a last, open bucket holds the rest.
# Fixed rather than derived from the data so that two readings of the histogram compare.
LATENCY_BUCKETS_MS = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def _percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: an observed latency, never an interpolated one."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def _hourly(recognitions: list[Recognition], now: float) -> dict:
    """Attempts and matches per UTC hour, for every hour the window touches (the first and the
    current one are partial), so that the series adds up to the window's totals."""
    first = int((now - WINDOW_SECONDS) // HOUR_SECONDS)
    hours = int(now // HOUR_SECONDS) - first + 1
    attempts, matches = [0] * hours, [0] * hours
    for r in recognitions:
        # Clamped: another instance's clock may run slightly ahead of this one's.
        slot = min(max(int(r.at // HOUR_SECONDS) - first, 0), hours - 1)
        attempts[slot] += 1
        matches[slot] += r.matched
    return {"start": first * HOUR_SECONDS, "hour_seconds": HOUR_SECONDS, "attempts": attempts, "matches": matches}


def _latency_histogram(latencies: list[float]) -> list[dict]:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for latency in latencies:
        counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
    uppers: list[int | None] = [*LATENCY_BUCKETS_MS, None]
    return [{"upper_ms": upper, "count": n} for upper, n in zip(uppers, counts)]


def summarise(recognitions: list[Recognition], daily_active_users: dict[str, int], now: float) -> dict:
    latencies = [r.latency_ms for r in recognitions]
    matches = [r for r in recognitions if r.matched]
    songs = Counter((r.song_id, r.title, r.artist) for r in matches)
    today = _utc_day(now)
    today_attempts = [r for r in recognitions if _utc_day(r.at) == today]
    return {
        "window_seconds": WINDOW_SECONDS,
        "recognition_attempts": len(recognitions),
        "matches": len(matches),
        "success_rate": round(len(matches) / len(recognitions), 4) if recognitions else None,
        "latency_ms": {
            "mean": round(sum(latencies) / len(latencies), 1) if latencies else None,
            "p50": _percentile(latencies, 0.50),
            "p95": _percentile(latencies, 0.95),
        },
        "top_songs": [
            {"song_id": song_id, "title": title, "artist": artist, "matches": n}
            for (song_id, title, artist), n in songs.most_common(TOP_SONGS)
        ],
        "notifications": dict(Counter(r.notification for r in matches)),
        "daily_active_users": dict(sorted(daily_active_users.items())),
        "today": {
            "date": today,
            "recognition_attempts": len(today_attempts),
            "matches": sum(r.matched for r in today_attempts),
            "active_users": daily_active_users.get(today, 0),
        },
        "hourly": _hourly(recognitions, now),
        "latency_histogram": _latency_histogram(latencies),
    }


def metrics(store: Store, now: float) -> dict:
    since = now - WINDOW_SECONDS
    return summarise(store.recognitions_since(since), store.daily_active_users(since), now)
