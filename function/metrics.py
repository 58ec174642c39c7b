"""/metrics: figures over the last week of recognitions, computed from the store on request.

Nothing is aggregated in process memory: with several instances each would see only its own
share, whereas every instance reads the same recorded attempts.
"""

from __future__ import annotations

import math
from collections import Counter

from function.storage.base import Recognition, Store

WINDOW_SECONDS = 7 * 86400.0
TOP_SONGS = 10


def _p95(values: list[float]) -> float | None:
    """Nearest-rank percentile: an observed latency, never an interpolated one."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarise(recognitions: list[Recognition], daily_active_users: dict[str, int]) -> dict:
    latencies = [r.latency_ms for r in recognitions]
    matches = [r for r in recognitions if r.matched]
    songs = Counter((r.song_id, r.title, r.artist) for r in matches)
    return {
        "window_seconds": WINDOW_SECONDS,
        "recognition_attempts": len(recognitions),
        "matches": len(matches),
        "success_rate": round(len(matches) / len(recognitions), 4) if recognitions else None,
        "latency_ms": {
            "mean": round(sum(latencies) / len(latencies), 1) if latencies else None,
            "p95": _p95(latencies),
        },
        "top_songs": [
            {"song_id": song_id, "title": title, "artist": artist, "matches": n}
            for (song_id, title, artist), n in songs.most_common(TOP_SONGS)
        ],
        "notifications": dict(Counter(r.notification for r in matches)),
        "daily_active_users": dict(sorted(daily_active_users.items())),
    }


def metrics(store: Store, now: float) -> dict:
    since = now - WINDOW_SECONDS
    return summarise(store.recognitions_since(since), store.daily_active_users(since))
