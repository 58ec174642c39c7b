"""Offset-histogram voting: which song, where in it, and how sure.

Every query landmark found in the index votes for (song, song frame - query frame). A true match
piles its votes on one offset; chance coincidences spread over all offsets of all songs. A pile
counts its offset and the two next to it, since peaks jitter by a frame.

How sure is a question of how improbable a pile is by chance, not of how tall it is. Each song
drew some number of hits from this query; spread evenly over its possible offsets they give a
Poisson rate per pile, and a song's *surprise* is -log10 of how many piles at least as tall as
its tallest chance alone would give it (its Poisson tail times its piles). A reverberant room
leaves only a few landmarks a second on the right offset, but a pile of 12 where chance expects
0.1 is already a surprise of ten orders of magnitude, which a ratio of piles (12 to a runner-up
of 8) could not say.

Chance on real music is not Poisson, though: drum loops, held notes and bursts of landmarks that
share a peak make some wrong song's pile far likelier than the model says, and by how much
depends on the query's texture. So the best song's surprise is compared with the best *other*
song's (a version of the same song, another encoding or master registered beside it, is not
another song: its pile is the same evidence, not a rival), which measures what this query's
texture reaches against this catalog. The gap between the two, in orders of magnitude, is the
evidence; the other songs stand in for the null. In a small catalog the rival is never taken
below CONFIG.rival_floor, what chance reaches against a catalog of real size.

A known cost of taking a song's rate from its own hits: a song whose material repeats (a loop, a
chorus) draws hits at every repeat of what is playing, which raises its rate and so lowers the
surprise of its true pile; a short, loop-heavy song is named later than its pile deserves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.stats import poisson

from function.engine.config import CONFIG
from function.engine.fingerprint import FRAME_SECONDS, N_HASHES
from function.engine.songs import Song

# A song is named from seconds of audio; longer queries (whole recordings given to the CLI)
# are cut to their first two minutes.
MAX_QUERY_SECONDS = 120


@dataclass(frozen=True)
class Vote:
    song_index: int  # in the whole catalog (Catalog.position: a shard's song keeps its index there)
    offset_frames: int
    score: int  # votes in the best song's tallest pile
    surprise: float  # the best song's: -log10 of the chance piles that tall it should have
    rival: float  # the highest surprise of any other song (versions of this one are not others)
    head: Song  # the song the best pile names: its first version

    @property
    def gap(self) -> float:
        """Orders of magnitude by which the best song is less likely by chance than its rival."""
        return self.surprise - max(self.rival, CONFIG.rival_floor)

    @property
    def confidence(self) -> float:
        """The gap mapped onto [0, 1): 0 at or below the rival, 0.5 at CONFIG.gap_at_half."""
        if self.score < CONFIG.min_score or self.gap <= 0:
            return 0.0
        return self.gap / (self.gap + CONFIG.gap_at_half)


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


class Postings(Protocol):
    """What `piles` reads of one catalog in memory (catalog.Catalog, which imports this module:
    hence a protocol here rather than an import of it)."""

    songs: list[Song]
    durations: np.ndarray  # seconds of each song: how many offsets its chance hits spread over
    group_index: np.ndarray  # the song each song is a version of (itself for a first version)

    def lookup(self, hashes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index into `hashes`, song index, song frame) of every alive posting of the hashes `keep` marks."""
        ...

    def position(self, index: int) -> int:
        """The song's index in the whole catalog (a shard's song keeps its index there)."""
        ...

    def head(self, index: int) -> Song:
        """The song that `index` is a version of (the song itself for a first version)."""
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
    catalog: Postings, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray, songs_below: int | None = None
) -> Vote | None:
    """The best pile of one catalog's postings for the hashes `keep` marks (see `vote`).

    `songs_below` limits the vote to the songs indexed before it: registration asks whether a
    new song is a version of one registered earlier, never of itself or of a later one.

    A pile is a key, song * span + offset + bias, so the whole vote is a sort of integer keys.
    `bias` is the query's length in frames, which keeps offsets positive; `span` is one more
    than the largest offset + bias of these postings, so songs never share or touch a key. The
    keys are uint32 when they fit (100,000 songs of up to 10 minutes do, for a two-minute query),
    else uint64, which sorts slower. Equal surprises go to the earliest song, and within the
    song equal piles to the earliest offset.
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
    return best_pile(catalog, keys[starts], np.diff(np.append(starts, len(keys))), span, bias, bias)


def best_pile(
    catalog: Postings, pile_keys: np.ndarray, counts: np.ndarray, span: int, bias: int, query_frames: int
) -> Vote | None:
    """The vote's answer from its piles: distinct keys song * span + offset + bias, sorted, and
    the votes in each; `query_frames` is the query's length, which adds to the offsets a song's
    chance hits spread over. Shared by `piles` and the running tally of a stream (tally.py)."""
    if len(pile_keys) == 0:
        return None
    key = pile_keys.dtype.type
    # Piles are sorted and distinct, so a pile's neighbouring offsets are its neighbours in
    # the array (when they exist at all): no search needed to add them in.
    smoothed = counts.copy()
    adjacent = pile_keys[1:] == pile_keys[:-1] + 1
    smoothed[:-1] += np.where(adjacent, counts[1:], 0)
    smoothed[1:] += np.where(adjacent, counts[:-1], 0)
    # Piles are sorted by song: each song's piles are one run of the arrays.
    pile_song = (pile_keys // key(span)).astype(np.int64)
    first = np.flatnonzero(np.concatenate(([True], pile_song[1:] != pile_song[:-1])))
    voted = pile_song[first]
    tallest = np.maximum.reduceat(smoothed, first)
    hits = np.add.reduceat(counts, first)
    offsets = catalog.durations[voted] / FRAME_SECONDS + query_frames
    surprise = chance_surprise(tallest, hits, offsets)
    best = int(np.argmax(surprise))  # equal surprises go to the earliest song
    best_song = int(voted[best])
    run_end = first[best + 1] if best + 1 < len(first) else len(pile_keys)
    at = first[best] + int(np.argmax(smoothed[first[best] : run_end]))
    group = catalog.group_index
    others = surprise[group[voted] != group[best_song]]
    return Vote(
        song_index=catalog.position(best_song),
        offset_frames=int(pile_keys[at]) - best_song * span - bias,
        score=int(tallest[best]),
        surprise=float(surprise[best]),
        rival=float(others.max()) if len(others) else 0.0,
        head=catalog.head(best_song),
    )


_LOG10 = math.log(10.0)


def chance_surprise(tallest: np.ndarray, hits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per song: -log10 of the number of piles at least `tallest` that chance would give it, its
    `hits` spread evenly over its `offsets` (three offsets to a pile, as piles are counted)."""
    rate = 3.0 * hits / offsets
    # P(X >= k) >= P(X = k): the pmf stands in where the tail underflows (a clean match's pile
    # of hundreds), so a sure match is very surprising rather than infinitely so.
    tail = np.maximum(poisson.logsf(tallest - 1, rate), poisson.logpmf(tallest, rate))
    return -(tail / _LOG10 + np.log10(offsets / 3.0))
