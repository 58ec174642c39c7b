"""Offset-histogram voting: which song, where in it, and how sure.

Every query landmark found in the index votes for (song, song frame - query frame). A true match
piles its votes on one offset; chance coincidences spread over all offsets of all songs. The
score is the tallest pile (counting the neighbouring offsets, since peaks jitter by a frame).
Confidence weighs that pile against what chance would pile up for the same song: the number of
that song's hits spread over its possible offsets gives a Poisson rate, and the pile's
improbability under it, corrected for how many (song, offset) piles were looked at, maps onto
[0, 1]. That is what lets silence, speech and unknown music come back as "no match" instead of
the least-bad song.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc, gammaln

from function.catalog import SONG_SHIFT, Catalog
from function.fingerprint import FRAME_SECONDS, MAX_FRAMES

OFFSET_BIAS = 1 << 17  # keeps (song frame - query frame) non-negative inside the packed key
MAX_POSTINGS_PER_HASH = 4000
MIN_SCORE = 5


@dataclass(frozen=True)
class Vote:
    song_index: int
    offset_frames: int
    score: int
    song_hits: int
    runner_up: int  # tallest pile of any other song: what chance reaches on this query
    significance: float  # -log10 of the chance of a pile this tall anywhere


def _log10_poisson_tail(k: int, lam: float) -> float:
    """log10 P(X >= k) for X ~ Poisson(lam), stable for tiny tails."""
    if k <= 0:
        return 0.0
    p = float(gammainc(k, lam)) if lam > 0 else 0.0
    if p > 1e-300:
        return float(np.log10(p))
    # First term of the tail dominates far out: log(e^-lam lam^k / k!).
    return float((-lam + k * np.log(max(lam, 1e-300)) - gammaln(k + 1)) / np.log(10))


def vote(catalog: Catalog, hashes: np.ndarray, frames: np.ndarray, query_frames: int) -> Vote | None:
    """The best (song, offset) pile for a query's landmarks, or None if nothing was found."""
    if len(hashes) == 0 or not catalog.songs:
        return None
    query_index, postings = catalog.lookup(hashes, MAX_POSTINGS_PER_HASH)
    if len(postings) == 0:
        return None
    song = (postings >> SONG_SHIFT).astype(np.int64)
    offset = (postings & (MAX_FRAMES - 1)).astype(np.int64) - frames[query_index].astype(np.int64)
    keys, counts = np.unique((song << 18) | (offset + OFFSET_BIAS), return_counts=True)
    smoothed = counts.copy()
    for step in (-1, 1):
        neighbour = np.searchsorted(keys, keys + step)
        neighbour = np.minimum(neighbour, len(keys) - 1)
        smoothed += np.where(keys[neighbour] == keys + step, counts[neighbour], 0)
    best = int(np.argmax(smoothed))
    best_song = int(keys[best] >> 18)
    score = int(smoothed[best])
    song_hits = int(np.count_nonzero(song == best_song))
    others = smoothed[(keys >> 18) != best_song]
    runner_up = int(others.max()) if len(others) else 0
    song_frames = catalog.song(best_song).duration_seconds / FRAME_SECONDS
    piles = song_frames + query_frames
    lam = 3.0 * max(song_hits - score, 1) / piles
    # Bonferroni over every pile of every song that got any hit at all.
    songs_hit = int(len(np.unique(keys >> 18)))
    trials = songs_hit * piles
    significance = -(_log10_poisson_tail(score, lam) + np.log10(trials))
    return Vote(
        best_song, int((keys[best] & ((1 << 18) - 1)) - OFFSET_BIAS), score, song_hits, runner_up, float(significance)
    )


def confidence(v: Vote) -> float:
    """Significance mapped to [0, 1): 0.5 at a 1e-6 false-alarm chance (significance 6)."""
    if v.score < MIN_SCORE or v.significance <= 0:
        return 0.0
    return float(v.significance / (v.significance + 6.0))
