"""Per-uid audio rate limit, so that one leaked webhook URL cannot run up the storage and CPU bill.

A wearer produces one second of audio per wall-clock second. The limit
(RATE_LIMIT_AUDIO_SECONDS_PER_SECOND, default 8) sheds the audio of a uid that sustains more than
that many seconds of audio per second: the edge acknowledges it with 200 and drops it, with a
logged reason (`event: audio_shed`, a log-based metric in infra/). Not 429: Omi ignores
Retry-After, so a refusal would lose the audio just the same and count as a failure toward the
circuit breaker every user of the deployment shares, and toward disabling the webhook or app.

Why in process memory, per instance, and not in the store: the check sits on the hot path of
every chunk, and any shared counter would cost a storage write per chunk on top of the chunk's
own (Firestore takes about one sustained write per second per document, and the user document
already takes the chunk's counters), or a read-modify-write that serialises appends. Kept per
instance it costs nothing, and it still bounds the abuse: across the deployment a uid gets at
most the limit times the number of instances (`--max-instances`, 10 by default), which is what
the README documents. Shed audio never reaches storage, so it changes nothing there.

The algorithm is GCRA (a token bucket kept as one number per uid, its "theoretical arrival
time"): each chunk advances the uid's clock by its audio duration divided by the rate, and a
chunk is refused when that clock would run more than the burst allowance ahead of real time.
"""

from __future__ import annotations

import math
import threading

# Audio a uid may send at once on top of the sustained rate. Omi queues up to 20 batches while
# the endpoint is slow and then drains them back to back, and the app-trigger path sends a whole
# batch in one POST: two minutes of audio let a recovering device catch up without shedding.
BURST_AUDIO_SECONDS = 120.0
# Forget uids whose clock is in the past (they would start from an empty bucket anyway) once
# this many are tracked, so the table stays as small as the set of currently active users.
PRUNE_AT = 10_000


class AudioRateLimiter:
    def __init__(self, audio_seconds_per_second: float, largest_chunk_seconds: float = 0.0) -> None:
        """`largest_chunk_seconds`: the longest chunk the edge accepts; the burst is at least
        that, or such a chunk could never pass even an idle limiter."""
        self._rate = audio_seconds_per_second
        self._burst = max(BURST_AUDIO_SECONDS, largest_chunk_seconds)
        self._clock: dict[str, float] = {}
        self._lock = threading.Lock()

    def admit(self, uid: str, audio_seconds: float, now: float) -> float:
        """0 if the chunk is admitted (and counted), else the whole seconds before it would be;
        a shed chunk is not counted, so a flood cannot extend its own lock-out."""
        if self._rate <= 0:
            return 0.0
        with self._lock:
            start = max(self._clock.get(uid, now), now)
            ahead = start + audio_seconds / self._rate - now
            allowed = self._burst / self._rate
            if ahead > allowed:
                return float(max(1, math.ceil(ahead - allowed)))
            if len(self._clock) >= PRUNE_AT:
                self._clock = {u: t for u, t in self._clock.items() if t > now}
            self._clock[uid] = start + audio_seconds / self._rate
            return 0.0
