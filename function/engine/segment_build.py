"""New segments: from the songs a register run adds, and from merging segments without their
tombstoned postings; which segments a register run merges, and which `catalog --compact` does.

A merge holds every posting of the segments it merges in memory, so building works in place
where it can and merges are capped (MERGE_POSTINGS); the caps of one segment are segment.py's.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from function.engine.fingerprint import N_HASHES
from function.engine.segment import FRAME_MASK, MAX_PARTS, MAX_SEGMENT_POSTINGS, PART_SHIFT, Segment
from function.engine.songs import CatalogError

# A register run merges its newest segments while more than this many are below half of either
# cap: each segment costs every lookup one more table read, and a merge rewrites only segments
# about as big as those newer than them together, so adding songs never rewrites the big ones.
MAX_SEGMENTS = 8
# Postings one merge may hold: a merge keeps every posting of the segments it merges in memory
# at once (about 32 bytes each at its peak: 5.6 GB for the 175 M postings of 10,000 songs), so
# neither a register run nor `catalog --compact` merges past this, and a segment of at least half
# of it is never merged by a register run. 2^27 postings (~7,500 songs, ~4.3 GB at the peak)
# keeps a merge within a laptop's memory; a 100,000-song catalog then stays about 20 segments,
# each read by every lookup, rather than one merge of 2.5 G postings (~80 GB).
MERGE_POSTINGS = 1 << 27


def build(
    song_ids: list[str], song: np.ndarray, hashes: np.ndarray, frames: np.ndarray, name: Callable[[], str], uri: str
) -> list[Segment]:
    """New segments holding these landmarks (`song`: index into `song_ids` of each), songs in
    order, a song's parts in one segment, a new segment begun where one would pass a cap; each
    named by a call of `name`."""
    postings_of = np.bincount(song, minlength=len(song_ids))
    last_part = np.zeros(len(song_ids), dtype=np.int64)
    np.maximum.at(last_part, song, frames >> PART_SHIFT)
    parts_of = np.where(postings_of > 0, last_part + 1, 0)
    first_part = np.concatenate(([0], np.cumsum(parts_of)))
    first_posting = np.concatenate(([0], np.cumsum(postings_of)))
    segments, a = [], 0
    while a < len(song_ids):
        b = int(min(
            np.searchsorted(first_part, first_part[a] + MAX_PARTS, "right"),
            np.searchsorted(first_posting, first_posting[a] + MAX_SEGMENT_POSTINGS, "right"),
        )) - 1
        if b == a:  # only a song of more than 2^32 postings: frames are uint32, so parts fit
            raise CatalogError(f"{uri}: {song_ids[a]} has {postings_of[a]} landmarks, more than a segment holds")
        if first_posting[b] > first_posting[a]:
            mine = slice(None) if (a, b) == (0, len(song_ids)) else (song >= a) & (song < b)
            segments.append(
                _segment(song_ids[a:b], song[mine] - a, hashes[mine], frames[mine], parts_of[a:b], postings_of[a:b], name)
            )
        a = b
    return segments


def _segment(
    song_ids: list[str],
    song: np.ndarray,
    hashes: np.ndarray,
    frames: np.ndarray,
    parts_of: np.ndarray,
    postings_of: np.ndarray,
    name: Callable[[], str],
) -> Segment:
    """One new segment of these songs (see `build`); those without landmarks are left out."""
    counts = np.bincount(hashes, minlength=N_HASHES)
    first_part = (np.cumsum(parts_of) - parts_of).astype(np.uint32)
    # In place, here and below: a merge of a whole catalog holds every posting at once.
    local = first_part[song]
    local += frames >> PART_SHIFT
    local <<= PART_SHIFT
    local |= frames & FRAME_MASK
    # Sorted by (hash, posting) in one uint64 sort: grouped by hash without an index array.
    keys = hashes.astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= local
    del local
    keys.sort()
    kept = np.flatnonzero(parts_of)
    part_song = np.repeat(np.arange(len(kept), dtype=np.uint32), parts_of[kept])
    part_base = (np.arange(len(part_song)) - np.repeat(first_part[kept], parts_of[kept])) << PART_SHIFT
    return Segment(
        name(),
        [song_ids[i] for i in kept],
        postings_of[kept].astype(np.int64),
        part_song,
        part_base.astype(np.uint32),
        counts,
        keys.astype(np.uint32),  # the low 32 bits: the postings
    )


def merge(run: list[Segment], name: Callable[[], str], uri: str) -> list[Segment]:
    """New segments holding the alive postings of these (see `build`)."""
    song_ids: list[str] = []
    columns: list[list[np.ndarray]] = [[], [], []]
    for segment in run:
        part, hashes, frames = segment.landmarks()
        columns[0].append(segment.part_song[part] + np.uint32(len(song_ids)))
        columns[1].append(hashes)
        columns[2].append(frames)
        song_ids += segment.song_ids
        del part, hashes, frames
    # One column at a time, each segment's copy let go once joined: a merge of a whole
    # catalog holds every posting in memory.
    song, hashes, frames = (_joined(columns.pop(0)) for _ in range(3))
    return build(song_ids, song, hashes, frames, name, uri)


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def sealed(segment: Segment) -> bool:
    """At least half of a cap: never merged by a register run (it could not shrink the count,
    or the merge would hold more than MERGE_POSTINGS)."""
    return 2 * len(segment.part_song) >= MAX_PARTS or 2 * len(segment.postings) >= min(MAX_SEGMENT_POSTINGS, MERGE_POSTINGS)


def compaction_runs(segments: list[Segment]) -> list[list[Segment]]:
    """The merges of `catalog --compact`: consecutive segments together up to MERGE_POSTINGS
    postings a merge, and any segment with removed songs' postings."""
    runs: list[list[Segment]] = []
    for segment in segments:
        if runs and sum(s.alive_postings for s in runs[-1]) + segment.alive_postings <= MERGE_POSTINGS:
            runs[-1].append(segment)
        else:
            runs.append([segment])
    return [run for run in runs if len(run) > 1 or run[0].alive_postings < len(run[0].postings)]


def register_run_merge(segments: list[Segment]) -> list[Segment] | None:
    """The next merge of a register run: none while at most MAX_SEGMENTS are unsealed; otherwise
    the newest of them together with each older one no bigger than those newer than it together,
    up to MERGE_POSTINGS."""
    unsealed = [s for s in segments if not sealed(s)]
    if len(unsealed) <= MAX_SEGMENTS:
        return None
    run, size = unsealed[-2:], sum(s.alive_postings for s in unsealed[-2:])
    for older in reversed(unsealed[:-2]):
        if older.alive_postings > size or size + older.alive_postings > MERGE_POSTINGS:
            break
        run.insert(0, older)
        size += older.alive_postings
    return run
