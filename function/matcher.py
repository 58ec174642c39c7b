"""Offset-histogram voting: which song, where in it, and how sure.

Every query landmark found in the index votes for (song, song frame - query frame). A true match
piles its votes on one offset; chance coincidences spread over all offsets of all songs. The
score is the tallest pile (counting the neighbouring offsets, since peaks jitter by a frame).

Confidence compares that pile with the tallest pile of any *other* song for the same query: the
runner-up measures what chance (and this query's own texture: sustained notes, drum loops)
reaches against this catalog, so it adapts to catalog size and query content where a fixed score
threshold cannot. Out-of-catalog music, speech and noise leave every pile about as tall as the
next; a real match stands out. In a small catalog there may be no other song to compare with,
so the runner-up is never taken below what chance alone would pile up for the best song: its
hits spread evenly over its possible offsets give a Poisson rate, whose once-per-song maximum,
with a margin for music's own repetitiveness (chance piles on real music reached twice that
maximum), is the floor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import poisson

from function.catalog import SONG_SHIFT, Catalog
from function.fingerprint import FRAME_SECONDS, MAX_FRAMES

OFFSET_BIAS = 1 << 17  # keeps (song frame - query frame) non-negative inside the packed key
OFFSET_BITS = 18
MAX_POSTINGS_PER_HASH = 4000
MIN_SCORE = 5
RUNNER_UP_FLOOR = 6
CHANCE_MARGIN = 1.5
# Tuned on held-out corpus music: a best/runner-up ratio of 1.75 (confidence 0.5) accepted
# no out-of-catalog query while keeping 90 % of 0 dB queries (see BENCHMARKS.md).
RATIO_AT_HALF = 1.75


@dataclass(frozen=True)
class Vote:
    song_index: int
    offset_frames: int
    score: int
    runner_up: int  # tallest pile of any other song
    chance_pile: float  # tallest pile chance alone would give the best song

    @property
    def confidence(self) -> float:
        """Best/runner-up ratio r mapped onto [0, 1): 0 at r <= 1, 0.5 at RATIO_AT_HALF."""
        if self.score < MIN_SCORE:
            return 0.0
        rival = max(self.runner_up, CHANCE_MARGIN * self.chance_pile, RUNNER_UP_FLOOR)
        excess = self.score / rival - 1.0
        return max(0.0, excess / (excess + RATIO_AT_HALF - 1.0))


def vote(catalog: Catalog, hashes: np.ndarray, frames: np.ndarray) -> Vote | None:
    """The best (song, offset) pile for a query's landmarks, or None if nothing was found."""
    if len(hashes) == 0 or not catalog.songs:
        return None
    query_index, postings = catalog.lookup(hashes, MAX_POSTINGS_PER_HASH)
    if len(postings) == 0:
        return None
    song = (postings >> SONG_SHIFT).astype(np.int64)
    offset = (postings & (MAX_FRAMES - 1)).astype(np.int64) - frames[query_index].astype(np.int64)
    keys, counts = np.unique((song << OFFSET_BITS) | (offset + OFFSET_BIAS), return_counts=True)
    smoothed = counts.copy()
    for step in (-1, 1):
        neighbour = np.minimum(np.searchsorted(keys, keys + step), len(keys) - 1)
        smoothed += np.where(keys[neighbour] == keys + step, counts[neighbour], 0)
    best = int(np.argmax(smoothed))
    best_song = int(keys[best] >> OFFSET_BITS)
    others = smoothed[(keys >> OFFSET_BITS) != best_song]
    piles = catalog.song(best_song).duration_seconds / FRAME_SECONDS + int(frames.max()) + 1
    rate = 3.0 * np.count_nonzero(song == best_song) / piles  # three offsets per smoothed pile
    return Vote(
        song_index=best_song,
        offset_frames=int((keys[best] & ((1 << OFFSET_BITS) - 1)) - OFFSET_BIAS),
        score=int(smoothed[best]),
        runner_up=int(others.max()) if len(others) else 0,
        chance_pile=float(poisson.isf(1.0 / piles, rate)),
    )
