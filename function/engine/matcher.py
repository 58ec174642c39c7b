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
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy.stats import poisson

from function.engine.config import CONFIG
from function.engine.fingerprint import FRAME_SECONDS, N_HASHES

if TYPE_CHECKING:  # catalog.py imports this module: its Catalog is only a type here
    from function.engine.catalog import Catalog, Song


@dataclass(frozen=True)
class Vote:
    song_index: int  # in the whole catalog (Catalog.position: a shard's song keeps its index there)
    offset_frames: int
    score: int
    runner_up: int  # tallest pile of any other song (versions of this one are not others)
    chance_pile: float  # tallest pile chance alone would give the best song
    head: Song  # the song the best pile names: its first version

    @property
    def confidence(self) -> float:
        """Best/runner-up ratio r mapped onto [0, 1): 0 at r <= 1, 0.5 at CONFIG.ratio_at_half."""
        if self.score < CONFIG.min_score:
            return 0.0
        rival = max(self.runner_up, CONFIG.chance_margin * self.chance_pile, CONFIG.runner_up_floor)
        excess = self.score / rival - 1.0
        return max(0.0, excess / (excess + CONFIG.ratio_at_half - 1.0))


class Votes(Protocol):
    """What a vote reads: one catalog in memory (catalog.Catalog), or every shard of one
    (function/engine/shards.py), which must answer exactly as that one catalog would. Hence two
    steps: which hashes are read depends on the whole catalog's posting counts, and the piles
    are then counted with only those hashes."""

    # Postings a vote may read, rarest hashes first (None: no limit): CONFIG.postings_budget
    # for each instance that reads them, so N shards read about one instance's worth each.
    budget: int | None

    def posting_counts(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """Postings of each query hash (int64), and the postings stored in all."""
        ...

    def piles(self, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray) -> Vote | None:
        """The best pile voted by the hashes `keep` marks, or None if none was found."""
        ...


def postings_cap(postings_count: int) -> int:
    """Longest posting list worth reading: CONFIG.popular_hash_factor times the mean."""
    mean = postings_count / N_HASHES
    return max(CONFIG.min_postings_cap, int(CONFIG.popular_hash_factor * mean))


def kept(counts: np.ndarray, postings_count: int, budget: int | None) -> np.ndarray:
    """Which query hashes to read, from their posting counts in the whole catalog.

    Hashes with more than `postings_cap` postings are skipped: they occur in so many songs that
    they carry no evidence, and they would dominate the lookup time in a big catalog. With a
    `budget`, the most common of the remaining hashes are skipped too until at most that many
    postings are read: the rarest hashes say the most about which song it is.
    """
    total = np.where(counts > postings_cap(postings_count), 0, counts)
    if budget is not None and total.sum() > budget:
        order = np.argsort(total, kind="stable")
        total[order[np.cumsum(total[order]) > budget]] = 0
    return total > 0


def vote(catalog: Votes, hashes: np.ndarray, frames: np.ndarray) -> Vote | None:
    """The best (song, offset) pile for a query's landmarks, or None if nothing was found."""
    if len(hashes) == 0:
        return None
    counts, postings_count = catalog.posting_counts(hashes)
    return catalog.piles(hashes, frames, kept(counts, postings_count, catalog.budget))


def piles(
    catalog: Catalog, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray, songs_below: int | None = None
) -> Vote | None:
    """The best pile of one catalog's postings for the hashes `keep` marks (see `vote`).

    `songs_below` limits the vote to the songs indexed before it: registration asks whether a
    new song is a version of one registered earlier, never of itself or of a later one.

    A pile is a key, song * span + offset + bias, so the whole vote is a sort of integer keys.
    `bias` is the query's length in frames, which keeps offsets positive; `span` is one more
    than the largest offset + bias of these postings, so songs never share or touch a key. The
    keys are uint32 when they fit (100,000 songs of up to 10 minutes do, for a two-minute query),
    else uint64, which sorts slower. Equal piles go to the lowest key: the earliest song.
    """
    if len(hashes) == 0 or not catalog.songs:
        return None
    query_index, songs, song_frames = catalog.lookup(hashes, keep)
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
    pile_keys, counts = keys[starts], np.diff(np.append(starts, len(keys)))
    # Piles are sorted and distinct, so a pile's neighbouring offsets are its neighbours in
    # the array (when they exist at all): no search needed to add them in.
    smoothed = counts.copy()
    adjacent = pile_keys[1:] == pile_keys[:-1] + 1
    smoothed[:-1] += np.where(adjacent, counts[1:], 0)
    smoothed[1:] += np.where(adjacent, counts[:-1], 0)
    best = int(np.argmax(smoothed))
    best_song, best_offset = divmod(int(pile_keys[best]), span)
    group = catalog.group_index
    others = smoothed[group[pile_keys // key(span)] != group[best_song]]
    first, last = np.searchsorted(keys, np.array([best_song * span, (best_song + 1) * span], dtype=key))
    offsets = catalog.song(best_song).duration_seconds / FRAME_SECONDS + bias
    rate = 3.0 * (last - first) / offsets  # three offsets per smoothed pile
    return Vote(
        song_index=catalog.position(best_song),
        offset_frames=best_offset - bias,
        score=int(smoothed[best]),
        runner_up=int(others.max()) if len(others) else 0,
        chance_pile=float(poisson.isf(1.0 / offsets, rate)),
        head=catalog.head(best_song),
    )
