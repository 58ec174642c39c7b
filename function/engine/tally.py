"""A user's vote kept between attempts, so that an attempt costs the same at 5 s and at 60 s.

The webhook votes over everything buffered (function/webhook/naming.py), every stride of new
audio. Voting the whole buffer again each time costs in proportion to the buffer; a `Tally`
instead keeps the pile counts (song, offset -> votes) of the landmarks it already counted and,
at each attempt, only adds the landmarks that became final since, subtracts those whose peaks
left the buffer, and votes the newest landmarks, which can still change, on top.

A landmark is final once both its peaks are settled (stream.py; see `Tally`). The tally keeps
its own copy of the settled peaks it counted, so it can take them out again after the buffer dropped them, and
compares that copy with the buffer it is given: a buffer that is not the continuation of what
it counted (another stream, a restart, another worker's chunks it never saw) makes it count
again from scratch, never answer from a mix. The answer is the same vote `matcher.piles` takes
of the whole buffer with every landmark's time-gap neighbours (tests/test_tally.py holds it
to that); the webhook skips the plain vote that `Recogniser.best_vote_peaks` tries first,
which only ever saved time.

A tally lives in the memory of the process that counted it (`Tallies`, bounded by the counters
all of them hold, MAX_CELLS); a user whose requests reach another instance is counted again there
once, from the stored peaks. One tally per speed tried: at speed 1 over the whole buffer, at
each of `speed_variants` over its newest `speed_window_seconds`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

import numpy as np

from function.engine.fingerprint import FRAME_SECONDS, MAX_DT, QUERY_DENSITY, with_neighbours
from function.engine.matcher import Postings, Vote, chance_surprise, kept
from function.engine.stream import PEAK, landmarks_of

# Frames a window of peaks reaches past the landmarks it is read for: a pair's target lies at
# most MAX_DT frames after its anchor (MAX_DT / 0.98 at the slowest speed tried), and a frame
# more either side keeps rounding at a changed speed from moving a peak out of the window.
REACH = MAX_DT + 4
# Vote counters all tallies of a process hold together (2 bytes each: a user's three tallies
# take about 7 MB against 120 songs, 55 MB against 1,000); past it the least recently used
# users' tallies are dropped, and counted again from their stored peaks if they come back.
MAX_CELLS = 256 * 1024 * 1024
# A catalog whose tally would take more than this is voted whole at every attempt instead.
MAX_CELLS_PER_TALLY = 64 * 1024 * 1024


class Catalog(Postings, Protocol):
    """What a tally reads: one catalog in memory (catalog.Catalog; shards vote whole buffers)."""

    budget: int | None

    def posting_counts(self, hashes: np.ndarray) -> tuple[np.ndarray, int]: ...


class Tally:
    """The votes of one user's landmarks at one speed whose anchor lies at or after `lo` and
    whose target lies before `hi` (frames of the stream, before the speed change), and per song
    what the vote reads of them: its hits, exactly, and its tallest pile (a pile with its two
    neighbouring offsets, as `matcher.best_pile` counts it), exactly or, for a song some of
    whose votes were taken away since, as a bound from above that the vote makes exact when the
    song could be the answer or its rival. So an attempt touches only the piles that changed.

    A pair of settled peaks is final: later peaks come after both, so they can only add pairs,
    never change one (peaks pair with the next ones in time). So what is counted is every pair
    of settled peaks, and an attempt adds only the pairs that newly settled peaks close.

    Each song has a ring of counters, one per offset a window of up to `window` frames can
    vote for (its length plus the window's): offsets that leave the window have had their
    votes taken away by then, so a counter is reused only once it is back at zero."""

    def __init__(self, catalog: Catalog, speed: float, gap_frames: int, window: int) -> None:
        self.catalog, self.speed, self.gap_frames, self.window = catalog, speed, gap_frames, window
        self.ring = (np.ceil(catalog.durations / FRAME_SECONDS).astype(np.int64) + 2) + int(np.ceil(window * speed)) + 2 * REACH
        self.base = np.concatenate(([0], np.cumsum(self.ring)[:-1]))
        self.cells = np.empty(int(self.ring.sum()), np.uint16)  # votes (wrapping: removals add 2**16 - n)
        n = len(catalog.songs)
        self.hits = np.empty(n, np.int64)
        self.tallest = np.empty(n, np.int64)
        self.stale = np.empty(n, bool)  # tallest is only a bound from above
        self.attempts = 0  # votes taken of this user's buffer (the recogniser's cadence)
        self._reset(0)

    @property
    def size(self) -> int:
        return len(self.cells)

    def _reset(self, lo: int) -> None:
        """Nothing counted, from `lo` on."""
        self.cells[:] = 0
        self.hits[:] = 0
        self.tallest[:] = 0
        self.stale[:] = False
        self.lo = self.hi = lo
        self.newest = -1  # the newest anchor counted (at this speed)
        self.peaks = np.zeros(0, PEAK)  # settled peaks from lo on: what counted them

    def sync(self, settled: np.ndarray, lo: int, hi: int) -> None:
        """Count the pairs of `settled` (PEAK records, sorted; every peak before `hi` settled)
        anchored at or after `lo`, adding and subtracting only what changed since the last call."""
        if not self._continues(settled, lo, hi):
            self._reset(lo)
        known = self.peaks["t"][-1] if len(self.peaks) else -1
        self.peaks = np.concatenate([self.peaks, settled[settled["t"] > known]])
        if hi > self.hi:
            songs, offsets, newest = self._votes(self.peaks, (self.lo, None), (self.hi, hi))
            self._add(songs, offsets, +1)
            self.newest = max(self.newest, newest)
            self.hi = hi
        if lo > self.lo:
            songs, offsets, _ = self._votes(self.peaks, (self.lo, lo), (None, self.hi))
            self._add(songs, offsets, -1)
            self.lo = lo
        self.peaks = self.peaks[self.peaks["t"] >= self.lo - REACH]

    def vote(self, peaks: np.ndarray, query_start: int) -> Vote | None:
        """The vote of what is counted plus the pairs of `peaks` (settled and not) that reach
        `hi` or past it, as `matcher.piles` takes it of the landmarks of a query that starts at
        `lo` (its length: to the newest anchor), placing the song at frame `query_start`."""
        songs, offsets, newest = self._votes(peaks, (self.lo, None), (self.hi, None))
        query_frames = max(newest, self.newest) - self._at_speed(self.lo) + 1
        cells = self._cells(songs, offsets)
        np.add.at(self.cells, cells, np.uint16(1))  # taken away again below
        try:
            hits = self.hits + np.bincount(songs, minlength=len(self.hits))
            tallest, stale = self.tallest.copy(), self.stale.copy()
            around = self._around(songs, cells)
            np.maximum.at(tallest, around[0], self._smoothed(*around))
            voted = np.flatnonzero(hits)
            if len(voted) == 0:
                return None
            spread = self.catalog.durations[voted] / FRAME_SECONDS + query_frames
            surprise = chance_surprise(tallest[voted], hits[voted], spread)
            group = self.catalog.group_index[voted]

            def surest(among: np.ndarray) -> int:
                """The index (into `voted`) of the surest song `among` marks, made exact first:
                a bound from above that comes out on top is read again until an exact one does."""
                while True:
                    i = int(np.argmax(np.where(among, surprise, -np.inf)))
                    song = int(voted[i])
                    if not stale[song]:
                        return i
                    tallest[song], stale[song] = self._row(song, query_start)[0], False
                    # Still a bound for the counted votes alone (the tail only adds), a tighter one.
                    self.tallest[song] = min(self.tallest[song], tallest[song])
                    surprise[i] = chance_surprise(tallest[song : song + 1], hits[song : song + 1], spread[i : i + 1])[0]

            best = surest(np.ones(len(voted), bool))  # equal surprises go to the earliest song, as best_pile
            song = int(voted[best])
            others = group != group[best]
            rival = float(surprise[surest(others)]) if others.any() else 0.0
            return Vote(
                song_index=self.catalog.position(song),
                offset_frames=self._row(song, query_start)[1],
                score=int(tallest[song]),
                surprise=float(surprise[best]),
                rival=rival,
                head=self.catalog.head(song),
            )
        finally:
            np.add.at(self.cells, cells, np.uint16(0xFFFF))

    def _row(self, song: int, query_start: int) -> tuple[int, int]:
        """The song's tallest pile, read counter by counter, and its offset as the song frame
        at the query's start (the earliest of equal piles)."""
        ring = int(self.ring[song])
        row = self.cells[self.base[song] : self.base[song] + ring].astype(np.int64)
        smoothed = np.where(row > 0, row + np.roll(row, 1) + np.roll(row, -1), 0)
        top = int(smoothed.max())
        # A counter stands for the one offset (song frame - anchor frame, at this speed) of its
        # residue that a pair of this window can have: the window's ring ends at the song's
        # last frame less the window's first anchor.
        highest = ring - 2 * REACH - int(np.ceil(self.window * self.speed)) - self._at_speed(self.lo)
        lowest = highest - ring + 1
        offsets = lowest + (np.flatnonzero(smoothed == top) - lowest) % ring
        return top, int(offsets.min()) + int(round(query_start * self.speed))

    def _at_speed(self, frame: int) -> int:
        """A frame boundary at this speed, rounded as `stream.landmarks_of` rounds peaks: a peak
        at or after `frame` is at or after it at this speed too, so a range that ends where the
        settled peaks end never holds a pair whose peak had not settled yet."""
        return int(np.round(frame * self.speed))

    def _cells(self, songs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        return self.base[songs] + offsets % self.ring[songs]

    def _around(self, songs: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cells` and the counters next to them (the piles whose smoothed count they change),
        with their songs; some more than once, which neither a maximum nor a mark minds."""
        after, before = self._neighbours(songs, cells)
        return np.concatenate([songs, songs, songs]), np.concatenate([cells, after, before])

    def _neighbours(self, songs: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The counters of the next and the previous offset, around each song's ring."""
        base, ring = self.base[songs], self.ring[songs]
        after = cells + 1
        after[after == base + ring] -= ring[after == base + ring]
        before = cells - 1
        before[before < base] += ring[before < base]
        return after, before

    def _smoothed(self, songs: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Each pile with its neighbours' votes; 0 for an empty offset, which is no pile (a gap
        between two piles is not a pile of both, as `matcher.best_pile` counts them)."""
        after, before = self._neighbours(songs, cells)
        c = self.cells
        own = c[cells].astype(np.int64)
        return np.where(own > 0, own + c[after] + c[before], 0)

    def _continues(self, settled: np.ndarray, lo: int, hi: int) -> bool:
        """Whether `settled` is what this tally counted, carried on: a window that only moved
        forward and still overlaps what was counted, with the same peaks where both have them."""
        if self.hi == self.lo or lo < self.lo or hi < self.hi or lo >= self.hi:
            return False
        start = int(settled["t"][0]) if len(settled) else hi
        end = int(self.peaks["t"][-1]) if len(self.peaks) else -1
        mine = self.peaks[(self.peaks["t"] >= start) & (self.peaks["t"] >= lo)]
        theirs = settled[(settled["t"] <= end) & (settled["t"] >= lo)]
        return bool(np.array_equal(mine, theirs))

    def _votes(
        self, peaks: np.ndarray, anchors: tuple[int | None, int | None], targets: tuple[int | None, int | None]
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(song, offset) of every vote of the landmarks (with their time-gap neighbours) whose
        anchor and target frames lie in these ranges [from, to) (None: open). Ranges apply to
        the frames at this speed (`_at_speed`), so pairs counted in ranges apart add up to the
        same votes. And the newest anchor among those landmarks (-1: none)."""
        lows = [x for x in (anchors[0], None if targets[0] is None else targets[0] - REACH) if x is not None]
        highs = [x for x in (targets[1], None if anchors[1] is None else anchors[1] + REACH) if x is not None]
        t = peaks["t"].astype(np.int64)
        inside = t >= max(lows, default=0) - 2
        if highs:
            inside &= t < min(highs) + 2
        hashes, anchor = landmarks_of(peaks[inside], QUERY_DENSITY.fan_out, self.speed)
        start = anchor.astype(np.int64)
        end = start + (hashes & np.uint32(MAX_DT)).astype(np.int64)
        keep = np.ones(len(hashes), bool)
        for frames, (a, b) in ((start, anchors), (end, targets)):
            if a is not None:
                keep &= frames >= self._at_speed(a)
            if b is not None:
                keep &= frames < self._at_speed(b)
        hashes, anchor = with_neighbours(hashes[keep], anchor[keep], self.gap_frames)
        if len(hashes) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), -1
        counts, total = self.catalog.posting_counts(hashes)
        index, songs, song_frames = self.catalog.lookup(hashes, kept(counts, total, self.catalog.budget))
        return songs.astype(np.int64), song_frames.astype(np.int64) - anchor[index].astype(np.int64), int(anchor.max())

    def _add(self, songs: np.ndarray, offsets: np.ndarray, sign: int) -> None:
        if len(songs) == 0:
            return
        cells = self._cells(songs, offsets)
        np.add.at(self.cells, cells, np.uint16(1 if sign > 0 else 0xFFFF))
        touched = np.bincount(songs, minlength=len(self.hits))
        self.hits += sign * touched
        if sign > 0:
            around = self._around(songs, cells)
            np.maximum.at(self.tallest, around[0], self._smoothed(*around))
        else:
            # A song that lost votes may have lost them from its tallest pile: its tallest is only
            # a bound until read again, which the vote does for the few songs that could win.
            self.stale |= touched > 0


class Tallies:
    """Each user's tallies in this process, least recently used first out past MAX_CELLS."""

    def __init__(self) -> None:
        self._tallies: OrderedDict[str, tuple[object, list[Tally]]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, uid: str, catalog: Catalog, speeds: tuple[tuple[float, int], ...], gap_frames: int) -> list[Tally] | None:
        """The uid's tallies for this catalog, one per (speed, window in frames) (new ones if
        it has none, or had them for another catalog), out of the cache while a recognition
        uses them: a concurrent attempt for the same uid counts from scratch rather than share
        them. None if the catalog is too big for tallies (see MAX_CELLS_PER_TALLY)."""
        with self._lock:
            held = self._tallies.pop(uid, None)
        if held is not None and held[0] is catalog:
            return held[1]
        longest = max(w for _, w in speeds)
        if (np.ceil(catalog.durations / FRAME_SECONDS).sum() + len(catalog.songs) * (longest + 3 * REACH)) > MAX_CELLS_PER_TALLY:
            return None
        return [Tally(catalog, speed, gap_frames, window) for speed, window in speeds]

    def give_back(self, uid: str, catalog: Catalog, tallies: list[Tally]) -> None:
        with self._lock:
            self._tallies[uid] = (catalog, tallies)
            total = sum(t.size for _, ts in self._tallies.values() for t in ts)
            while total > MAX_CELLS and len(self._tallies) > 1:
                _, (_, dropped) = self._tallies.popitem(last=False)
                total -= sum(t.size for t in dropped)
