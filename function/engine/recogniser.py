"""`register` and `recognise`: the recogniser's public face, used by the CLI and the webhook."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from function.engine.decode import INTERNAL_RATE, pcm16_to_float
from function.engine.catalog import Catalog
from function.engine.config import CONFIG, EngineConfig
from function.engine.fingerprint import BLOCK_FRAMES, FRAME_SECONDS, QUERY_DENSITY, with_neighbours
from function.engine.matcher import MAX_QUERY_SECONDS, Vote, vote
from function.engine.register_run import RegisterResult, expand_paths, register_files
from function.engine.shards import Shards
from function.engine.songs import CatalogError
from function.engine.stream import StreamState, buffered, buffered_peaks, complete_frames, landmarks_of, peaks_of
from function.engine.tally import Tallies
from function.logs import log

DEFAULT_THRESHOLD = CONFIG.threshold
# A process serving recognitions looks for a new catalog generation at most this often: a stat of
# catalog.json locally, one metadata read of it (a Class B operation) on Cloud Storage, made by the
# first get_recogniser call after the interval, so an idle instance makes none. Songs registered
# while the function runs are named within this long. A constant, not a setting: the check costs
# almost nothing, and no deployment has needed another value.
RELOAD_CHECK_SECONDS = 30.0

# Each user's running vote in this process (function/engine/tally.py).
_TALLIES = Tallies()
# The webhook's attempts that also vote the speed variants: one in this many (chosen: the retry
# costs two more votes; 3 keeps an attempt's vote at about the cost of one).
SPEED_EVERY = 3

__all__ = ["Match", "RegisterResult", "Recogniser", "CatalogError", "get_recogniser", "get_sharded_recogniser"]


@dataclass(frozen=True)
class Match:
    song_id: str
    title: str
    artist: str
    album: str
    offset_seconds: float
    confidence: float
    score: int

    def to_dict(self) -> dict:
        return asdict(self)


class Recogniser:
    """Names songs from one catalog in memory, or from the shards of one (which only recognise:
    songs are registered into the full catalog, then split again)."""

    def __init__(self, catalog: Catalog | Shards, threshold: float = DEFAULT_THRESHOLD, config: EngineConfig = CONFIG) -> None:
        self.catalog = catalog
        self.threshold = threshold
        # How a query is voted (neighbours, the speed retry): the engine's own unless a tuning
        # run tries other values (bench.tune_naming --set), which never touch the hash space.
        self.config = config

    @classmethod
    def open(cls, catalog_uri: str, create: bool = False, threshold: float = DEFAULT_THRESHOLD) -> "Recogniser":
        return cls(Catalog(catalog_uri, create=create), threshold)

    @property
    def songs(self) -> list[dict]:
        """One entry per song, its other recordings under "versions" (id, duration, sources)."""
        group = self.catalog.group_index.tolist()
        entries: dict[int, dict] = {}
        for index, song in enumerate(self.catalog.songs):
            if group[index] == index:
                entries[index] = {**song.public(), "versions": []}
                del entries[index]["version_of"]
        for index, song in enumerate(self.catalog.songs):
            if group[index] != index:
                version = {"song_id": song.song_id, "duration_seconds": song.duration_seconds, "sources": song.sources}
                entries[group[index]]["versions"].append(version)
        return list(entries.values())

    def register(self, paths: list[str], workers: int | None = None, progress: bool = False) -> list[RegisterResult]:
        return register_files(self.catalog, expand_paths(paths), workers=workers, progress=progress)

    def remove(self, song_ids: list[str]) -> int:
        removed = self.catalog.remove(song_ids)
        if removed:
            self.catalog.save()
        return removed

    def compact(self) -> bool:
        """Merge every segment into as few as the caps allow, without removed songs' postings;
        whether anything was rewritten."""
        if not self.catalog.compact(everything=True):
            return False
        self.catalog.save()
        return True

    def best_guess(self, samples: np.ndarray, sample_rate: int) -> tuple[Match | None, float]:
        """The top-voted song whatever its confidence (None only if nothing voted), and that
        confidence: what a recogniser without rejection would answer. See `best_vote`."""
        best, shift = self.best_vote(samples, sample_rate)
        if best is None:
            return None, 0.0
        return self._match(best, shift), best.confidence

    def best_vote(self, samples: np.ndarray, sample_rate: int) -> tuple[Vote | None, float]:
        """The vote `best_guess` answers from, and the song seconds between the query's start
        and the start of what was voted (the speed retry votes only the newest seconds): the
        recording's peaks (its first MAX_QUERY_SECONDS) voted by `best_vote_peaks`."""
        samples = samples[: int(MAX_QUERY_SECONDS * sample_rate)]
        frames = complete_frames(len(samples) * INTERNAL_RATE // sample_rate)
        return self.best_vote_peaks(peaks_of(samples, sample_rate), frames)

    def best_vote_peaks(self, peaks: np.ndarray, frames: int) -> tuple[Vote | None, float]:
        """`best_vote` for a query's peaks (stream.PEAK records, frames counted from the query's
        start) over `frames` frames: how the webhook votes over a user's buffer, which keeps
        peaks and no audio.

        A plain vote that is sure (config.sure_without_neighbours) is the answer; otherwise the
        vote is taken again with every landmark's time-gap neighbours. When that is no match
        either, the peaks of the query's newest seconds are voted again as if played at each of
        config.speed_variants, and the surest vote wins. A catalog without songs is a CatalogError.
        """
        self.catalog.require_songs()
        fan_out = QUERY_DENSITY.fan_out
        hashes, anchors = landmarks_of(peaks, fan_out)
        best = vote(self.catalog, hashes, anchors)
        if best is None or best.confidence < self.config.sure_without_neighbours:
            best = self._vote_with_neighbours(hashes, anchors)
        shift = 0.0
        if best is None or best.confidence < self.threshold:
            start = max(0, frames - int(round(self.config.speed_window_seconds / FRAME_SECONDS)))
            newest = peaks[peaks["t"] >= start].copy()
            newest["t"] -= start
            for speed in self.config.speed_variants:
                v = self._vote_with_neighbours(*landmarks_of(newest, fan_out, speed))
                if v is not None and (best is None or v.confidence > best.confidence):
                    # The vote places the newest seconds; the song ran `speed` times as fast
                    # through the part of the query before them.
                    best, shift = v, start * FRAME_SECONDS * speed
        return best, shift

    def _vote_with_neighbours(self, hashes: np.ndarray, frames: np.ndarray) -> Vote | None:
        return vote(self.catalog, *with_neighbours(hashes, frames, self.config.neighbour_gap_frames))

    def _match(self, v: Vote, shift_seconds: float = 0.0) -> Match:
        """The song a vote names (a version's song, its first version, carries the name), with
        the song time at the query's start: the vote's offset less `shift_seconds`."""
        c = v.confidence
        song = v.head
        return Match(
            song_id=song.song_id,
            title=song.title,
            artist=song.artist,
            album=song.album,
            offset_seconds=round(v.offset_frames * FRAME_SECONDS - shift_seconds, 2),
            confidence=round(c, 4),
            score=v.score,
        )

    def recognise(self, samples: np.ndarray, sample_rate: int) -> Match | None:
        """The song playing in `samples` (int16 or float mono, 8..48 kHz), or None if it is
        not confidently one of the catalog's."""
        match, c = self.best_guess(samples, sample_rate)
        return match if match is not None and c >= self.threshold else None

    def catalog_state(self) -> dict:
        """What /health reports of the catalog: its songs, postings and generation, or each shard's."""
        return self.catalog.state()

    def recognise_pcm(self, pcm: bytes, sample_rate: int) -> Match | None:
        return self.recognise(_pcm_samples(pcm), sample_rate)

    def best_guess_buffer(self, uid: str, chunks: Sequence[bytes], stream: bytes | None) -> tuple[Match | None, float]:
        """`best_guess` on a webhook buffer, which holds peaks (function/engine/stream.py `step`)
        rather than audio: the webhook weighs the confidence itself (function/webhook/naming.py).

        Voted with the uid's tallies (function/engine/tally.py): what earlier attempts counted
        is kept, so an attempt costs about the same however long the buffer. Shards have no
        tallies (their piles are counted where the postings are): they vote the whole buffer.
        """
        state = StreamState.from_bytes(stream) if stream else None
        if not isinstance(self.catalog, Catalog) or state is None:
            best, shift = self.best_vote_peaks(*buffered_peaks(chunks, state, MAX_QUERY_SECONDS))
        else:
            self.catalog.require_songs()
            best, shift = self._tallied(uid, chunks, state)
        if best is None:
            return None, 0.0
        return self._match(best, shift), best.confidence

    def _tallied(self, uid: str, chunks: Sequence[bytes], state: StreamState) -> tuple[Vote | None, float]:
        """The vote `best_vote_peaks` takes of the buffer (with neighbours; the speed retry over
        the newest seconds when speed 1 is no match), from the uid's tallies, whose votes place
        the song at the buffer's start whatever the speed (no shift to undo)."""
        settled, peaks, start, end = buffered(chunks, state, MAX_QUERY_SECONDS)
        settled_end = state.settled // BLOCK_FRAMES * BLOCK_FRAMES
        recent = int(round(self.config.speed_window_seconds / FRAME_SECONDS))
        windows = ((1.0, int(MAX_QUERY_SECONDS / FRAME_SECONDS) + 2 * BLOCK_FRAMES),) + tuple(
            (speed, recent + 2 * BLOCK_FRAMES) for speed in self.config.speed_variants
        )
        tallies = _TALLIES.take(uid, self.catalog, windows, self.config.neighbour_gap_frames)
        if tallies is None:
            return self.best_vote_peaks(*buffered_peaks(chunks, state, MAX_QUERY_SECONDS))
        try:
            best: Vote | None = None
            # The speed retry runs every SPEED_EVERY attempts (its tallies catch up then): a song
            # played off speed is rare, and is named a stride or two later than it could be.
            retry = tallies[0].attempts % SPEED_EVERY == 0
            tallies[0].attempts += 1
            for tally in tallies:
                if tally.speed != 1.0 and (not retry or (best is not None and best.confidence >= self.threshold)):
                    continue
                lo = start if tally.speed == 1.0 else max(start, end - recent)
                tally.sync(settled[settled["t"] >= lo], lo, max(lo, settled_end))
                v = tally.vote(peaks[peaks["t"] >= lo], start)
                if v is not None and (best is None or v.confidence > best.confidence):
                    best = v
            return best, 0.0
        finally:
            _TALLIES.give_back(uid, self.catalog, tallies)


def _pcm_samples(pcm: bytes) -> np.ndarray:
    return pcm16_to_float(pcm[: len(pcm) // 2 * 2])


class _Held:
    """The recogniser get_recogniser hands out for one catalog URI, replaced by one on the
    catalog's new generation once the stored manifest changes. A replacement is a new object, so
    a recognition that already holds the old one finishes on it."""

    def __init__(self, recogniser: Recogniser) -> None:
        self.recogniser = recogniser
        self.checked_at = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> Recogniser:
        """The recogniser to use now; CatalogError if the catalog cannot answer (no songs, or its
        mapped postings were damaged and the stored catalog does not load either)."""
        held = self.recogniser
        try:
            held.catalog.check_mapped()
        except CatalogError:
            # Its postings were truncated or rewritten under this process: load what is stored
            # now (every caller waits for it, as none can use the old one), or fail with why.
            with self._lock:
                if self.recogniser is held:
                    self._replace()
        else:
            if time.monotonic() - self.checked_at >= RELOAD_CHECK_SECONDS and self._lock.acquire(blocking=False):
                try:
                    self._refresh()
                finally:
                    self._lock.release()
        recogniser = self.recogniser
        recogniser.catalog.require_songs()
        return recogniser

    def _refresh(self) -> None:
        """Swap in the stored catalog's new generation, if there is one. Requests arriving
        meanwhile use the old one instead of waiting, and if the new one does not load (a
        partial copy, Cloud Storage unreachable) the old one, which works, is kept and the
        check is made again an interval later."""
        self.checked_at = time.monotonic()
        catalog = self.recogniser.catalog
        try:
            if catalog.is_stale():
                self._replace()
                log("INFO", "catalog reloaded", catalog=catalog.uri, generation=self.recogniser.catalog.generation)
        except Exception as exc:  # whatever failed, the loaded catalog still names songs
            log(
                "WARNING",
                "catalog not reloaded: still serving the one loaded before",
                catalog=catalog.uri,
                generation=catalog.generation,
                reason=f"{type(exc).__name__}: {exc}",
            )

    def _replace(self) -> None:
        held = self.recogniser
        self.recogniser = Recogniser(held.catalog.reopened(), held.threshold, held.config)
        self.checked_at = time.monotonic()


_cache: dict[str, _Held] = {}
_cache_lock = threading.Lock()


def get_recogniser(catalog_uri: str) -> Recogniser:
    """One catalog per process, loaded on first use and shared by every request after it, and
    reloaded when it changes: a new generation within RELOAD_CHECK_SECONDS, at once if its
    mapped files were damaged. CatalogError if there is no usable catalog (none, corrupt, or
    without songs); a missing or corrupt one is tried again on the next call."""
    with _cache_lock:
        if catalog_uri not in _cache:
            _cache[catalog_uri] = _Held(Recogniser.open(catalog_uri))
        held = _cache[catalog_uri]
    return held.current()


_sharded: dict[tuple[str, ...], Recogniser] = {}


def get_sharded_recogniser(urls: tuple[str, ...], token: str) -> Recogniser:
    """One recogniser over these catalog shards per process (its connections to them are kept
    alive); CatalogError if a shard does not answer or none holds a song (checked at most every
    shards.INFO_SECONDS, and again at once after any failed shard request)."""
    with _cache_lock:
        if urls not in _sharded:
            _sharded[urls] = Recogniser(Shards(urls, token))
        recogniser = _sharded[urls]
    recogniser.catalog.require_songs()
    return recogniser
