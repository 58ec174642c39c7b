"""Offset-histogram voting: which song, where in it, and how sure.

Every query landmark found in the index votes for (song, song frame - query frame). A true match
piles its votes on one offset; chance coincidences spread over all offsets of all songs. The
score is the tallest pile (counting the neighbouring offsets, since peaks jitter by a frame).

Confidence compares that pile with the tallest pile of any *other* song for the same query (a
version of the same song, another encoding or master registered beside it, is not another song:
its pile is the same evidence, not a rival): the
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

from function.engine.catalog import N_HASHES, Catalog
from function.engine.config import CONFIG
from function.engine.fingerprint import FRAME_SECONDS


@dataclass(frozen=True)
class Vote:
    song_index: int
    offset_frames: int
    score: int
    runner_up: int  # tallest pile of any other song (versions of this one are not others)
    chance_pile: float  # tallest pile chance alone would give the best song

    @property
    def confidence(self) -> float:
        """Best/runner-up ratio r mapped onto [0, 1): 0 at r <= 1, 0.5 at CONFIG.ratio_at_half."""
        if self.score < CONFIG.min_score:
            return 0.0
        rival = max(self.runner_up, CONFIG.chance_margin * self.chance_pile, CONFIG.runner_up_floor)
        excess = self.score / rival - 1.0
        return max(0.0, excess / (excess + CONFIG.ratio_at_half - 1.0))


def postings_cap(catalog: Catalog) -> int:
    """Longest posting list worth reading: CONFIG.popular_hash_factor times the mean."""
    mean = catalog.postings_count / N_HASHES
    return max(CONFIG.min_postings_cap, int(CONFIG.popular_hash_factor * mean))


def vote(catalog: Catalog, hashes: np.ndarray, frames: np.ndarray, songs_below: int | None = None) -> Vote | None:
    """The best (song, offset) pile for a query's landmarks, or None if nothing was found.

    `songs_below` limits the vote to the songs indexed before it: registration asks whether a
    new song is a version of one registered earlier, never of itself or of a later one.

    A pile is a key, song * span + offset + bias, so the whole vote is a sort of integer keys.
    `bias` is the query's length in frames, which keeps offsets positive; `span` is one more
    than the largest offset + bias of these postings, so songs never share or touch a key. The
    keys are uint32 when they fit (100,000 songs of up to 10 minutes do, for a two-minute query),
    else uint64, which sorts slower.
    """
    if len(hashes) == 0 or not catalog.songs:
        return None
    query_index, songs, song_frames = catalog.lookup(hashes, postings_cap(catalog), CONFIG.postings_budget)
    if songs_below is not None:
        earlier = songs < songs_below
        query_index, songs, song_frames = query_index[earlier], songs[earlier], song_frames[earlier]
    if len(songs) == 0:
        return None
    bias = int(frames.max()) + 1
    span = int(song_frames.max()) + bias + 1
    key = np.uint32 if (int(songs.max()) + 1) * span <= 1 << 32 else np.uint64
    keys = songs.astype(key) * key(span)
    keys += song_frames
    keys += (np.uint32(bias) - frames.astype(np.uint32))[query_index]
    keys.sort()
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    piles, counts = keys[starts], np.diff(np.append(starts, len(keys)))
    # Piles are sorted and distinct, so a pile's neighbouring offsets are its neighbours in
    # the array (when they exist at all): no search needed to add them in.
    smoothed = counts.copy()
    adjacent = piles[1:] == piles[:-1] + 1
    smoothed[:-1] += np.where(adjacent, counts[1:], 0)
    smoothed[1:] += np.where(adjacent, counts[:-1], 0)
    best = int(np.argmax(smoothed))
    best_song, best_offset = divmod(int(piles[best]), span)
    group = catalog.group_index
    others = smoothed[group[piles // key(span)] != group[best_song]]
    first, last = np.searchsorted(keys, np.array([best_song * span, (best_song + 1) * span], dtype=key))
    offsets = catalog.song(best_song).duration_seconds / FRAME_SECONDS + bias
    rate = 3.0 * (last - first) / offsets  # three offsets per smoothed pile
    return Vote(
        song_index=best_song,
        offset_frames=best_offset - bias,
        score=int(smoothed[best]),
        runner_up=int(others.max()) if len(others) else 0,
        chance_pile=float(poisson.isf(1.0 / offsets, rate)),
    )
