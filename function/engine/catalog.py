"""The on-disk index: landmark hashes -> postings (song, anchor frame), in segments, plus song metadata.

Layout (a directory, or a gs:// prefix mirrored locally):
    catalog.json          format, frozen fingerprint parameters, songs, generation, and the
                          segments that make up the index, each with its tombstones
    s<N>/table.npz        postings per hash and the segment's part table, compressed
    s<N>/postings.npy     uint32: part << 16 | anchor frame within the part, grouped by hash

Segments: a segment is written once and never changed. `register` writes a new segment holding
only the songs it adds; `remove` lists a song as a tombstone of its segment in catalog.json
(the matcher skips its postings); a compaction merges segments into a new one without the
tombstoned postings (`python -m function catalog --compact` merges them all; a register run
merges its newest small segments once there are more than MAX_SEGMENTS). The matcher reads a
hash's postings from every segment. So adding one song to a 10,000-song catalog writes a
segment of that song and catalog.json, not the index again.

Parts: a posting keeps 4 bytes, 16 bits for a part and 16 for an anchor frame within it. A part
is one song's frames k * 65,536 .. (k + 1) * 65,536 - 1 (35 minutes from the song frame its
"base" names), so a song of any length up to 65,536 parts (4 years) is one part per 35 minutes;
a segment holds up to 65,536 parts and fewer than 2^32 postings (its CSR offsets are uint32), a
catalog any number of segments: no cap on songs, on a song's length or on postings, where a
posting used to pack the song itself (65,536 songs, anchors clamped past 35 minutes).

Hashes are dense (HASH_BITS bits), so a CSR offset table replaces storing a hash per posting, and
a lookup is two array reads instead of a binary search. The table is rebuilt at load from the
compressed counts (~0.6 MB on disk for a 100-song catalog); a segment with postings for fewer
than half of all hashes (a register run's few songs) keeps offsets for the hashes it has and
finds them by binary search, instead of an 8-MB table per small segment. Postings are
memory-mapped.

Catalogs change under running processes, so:
- each save writes its new segments as new files and then atomically replaces catalog.json; no
  file is ever rewritten in place, since a process may have it mapped;
- a segment a save drops (merged, or every song in it removed) is deleted by the next save, not
  by that one: a reader that read the manifest just before it was replaced still finds its
  segments, and a reader overtaken by two saves reads the manifest again (LOAD_ATTEMPTS);
- postings.npy is mapped only if its size is what its header and catalog.json say, and every
  lookup first checks (one fstat per segment) that no mapped file was truncated or rewritten
  since, so a catalog copied over a live one is refused with the reason instead of crashing the
  process with SIGBUS. That check cannot cover a truncation during the lookup itself: replace a
  catalog with `register`/`remove` (or by pointing CATALOG_URI at a new one), never by copying
  over it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import weakref
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from function.engine.catalog_location import GcsLocation, LocalLocation, Version, location_for
from function.engine.config import CONFIG
from function.engine.fingerprint import N_HASHES
from function.engine.matcher import Vote, piles
from function.engine.songs import CatalogError, Fingerprinted, ShardOf, Song

# 4: segments of postings that name a part of a song, not the song (3: one index, song << 16 | frame).
FORMAT = 4
PART_SHIFT = 16
PART_FRAMES = 1 << PART_SHIFT  # a part's frames: 35 minutes
FRAME_MASK = np.uint32(PART_FRAMES - 1)
MAX_PARTS = 1 << (32 - PART_SHIFT)  # per segment
MAX_SEGMENT_POSTINGS = (1 << 32) - 1  # uint32 offsets
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
# A reader that finds a segment its manifest names already deleted reads the manifest again, up
# to this many reads in all: only a reader overtaken by two saves between reading catalog.json
# and opening the segments gets there, since a save keeps what the previous one dropped. Saves
# can come in quick succession (`remove`, then `catalog --compact`), and a reader on a busy
# machine was overtaken three times in a row (3 attempts failed once in 500 loads while a writer
# saved 20 times a second); a missing file under an unchanged manifest still fails at once.
LOAD_ATTEMPTS = 10
REPLACE_ADVICE = (
    "replace a catalog with `python -m function register` / `remove` (or point CATALOG_URI at a new one),"
    " never by copying files over it"
)


@dataclass(frozen=True)
class _Mapped:
    """The open postings.npy a segment memory-mapped, with its size and mtime when mapped."""

    file: BinaryIO
    size: int
    mtime_ns: int


class Segment:
    """Some songs' postings, grouped by hash, written once. Which of its songs are alive, and
    their places in the catalog's song list, are the catalog's to say (`link`)."""

    def __init__(
        self,
        name: str,
        song_ids: list[str],
        song_postings: np.ndarray,
        part_song: np.ndarray,
        part_base: np.ndarray,
        counts: np.ndarray,
        postings: np.ndarray,
        mapped: _Mapped | None = None,
    ) -> None:
        self.name = name
        self.song_ids = song_ids  # its songs, in the order of their parts
        self.song_postings = song_postings  # postings of each song
        self.part_song = part_song  # uint32 per part: which of song_ids
        self.part_base = part_base  # uint32 per part: the song frame its frames count from
        self.postings = postings
        self._mapped = mapped
        self.written = mapped is not None
        self.dead: set[str] = set()  # tombstones: song ids whose postings here are skipped
        present = np.flatnonzero(counts)
        # Offsets for the hashes present when that is smaller than a table of every hash.
        self.keys = present.astype(np.uint32) if 2 * len(present) < N_HASHES else None
        kept = counts[present] if self.keys is not None else counts
        self.offsets = np.zeros(len(kept) + 1, dtype=np.uint32)
        np.cumsum(kept, dtype=np.uint32, out=self.offsets[1:])
        self.part_index = np.zeros(len(part_song), np.uint32)
        self.part_alive: np.ndarray | None = None
        self.first_song: int | None = None
        self.alive_postings = 0
        if mapped is not None:
            weakref.finalize(self, mapped.file.close)

    @classmethod
    def open(cls, directory: Path, entry: dict, uri: str) -> "Segment":
        """A written segment, as catalog.json's entry describes it; FileNotFoundError passes
        through (a reader overtaken by saves reads the manifest again)."""
        count = int(entry["postings"])
        with np.load(directory / "table.npz") as stored:
            counts, part_song, part_base = stored["counts"], stored["part_song"], stored["part_base"]
            song_ids, song_postings = stored["song_ids"].tolist(), stored["song_postings"]
        if counts.shape != (N_HASHES,) or int(counts.sum(dtype=np.int64)) != count or count == 0:
            raise CatalogError(f"{uri}: catalog is corrupt: {directory.name}: offsets and postings disagree")
        if len(part_song) != len(part_base) or len(song_postings) != len(song_ids) or int(part_song.max(initial=0)) >= len(song_ids):
            raise CatalogError(f"{uri}: catalog is corrupt: {directory.name}: its part table names songs it does not list")
        postings, mapped = _map(directory / "postings.npy", count, uri)
        segment = cls(directory.name, song_ids, song_postings, part_song, part_base, counts, postings, mapped)
        segment.dead = set(entry["dead"])
        return segment

    @property
    def sealed(self) -> bool:
        """At least half of a cap: never merged by a register run (it could not shrink the count,
        or the merge would hold more than MERGE_POSTINGS)."""
        return 2 * len(self.part_song) >= MAX_PARTS or 2 * len(self.postings) >= min(MAX_SEGMENT_POSTINGS, MERGE_POSTINGS)

    def link(self, index: np.ndarray, alive: np.ndarray) -> None:
        """Each song's index in the catalog's song list, and whether it is alive (listed there
        and not tombstoned here)."""
        self.part_index = np.where(alive, index, 0).astype(np.uint32)[self.part_song]
        self.part_alive = None if alive.all() else alive[self.part_song]
        self.alive_postings = int(self.song_postings[alive].sum())
        # The usual segment: one part per song (none past 35 minutes), alive and in catalog
        # order. Its part is then its song's index less the first's and its frame the song
        # frame, which `read` computes with an add instead of two gathers (14 of the 37 ms that
        # reading a 10-s query's 3.6 M postings from 10,000 songs took).
        n = len(self.part_index)
        consecutive = n > 0 and self.part_alive is None and np.array_equal(self.part_index, self.part_index[0] + np.arange(n))
        self.first_song = int(self.part_index[0]) if consecutive else None

    def check_mapped(self, uri: str) -> None:
        """See Catalog.check_mapped."""
        if self._mapped is None:
            return
        st = os.fstat(self._mapped.file.fileno())
        if (st.st_size, st.st_mtime_ns) != (self._mapped.size, self._mapped.mtime_ns):
            raise CatalogError(
                f"{uri}: catalog changed under this process: {self._mapped.file.name} was rewritten in place"
                f" ({self._mapped.size} bytes when loaded, {st.st_size} bytes now); {REPLACE_ADVICE}"
            )

    def ranges(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) of each hash's postings here."""
        if self.keys is None:
            starts = self.offsets[hashes].astype(np.int64)
            return starts, self.offsets[hashes + 1].astype(np.int64) - starts
        slot = np.searchsorted(self.keys, hashes)
        found = slot < len(self.keys)
        found[found] = self.keys[slot[found]] == hashes[found]
        starts = self.offsets[slot].astype(np.int64)
        return starts, np.where(found, self.offsets[np.minimum(slot + 1, len(self.keys))].astype(np.int64) - starts, 0)

    def read(self, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index into the query, song index, song frame) of the alive postings in these ranges."""
        query_index = np.repeat(np.arange(len(starts)), lengths)
        run_start = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        postings = self.postings[run_start + np.arange(int(lengths.sum()))]
        part = postings >> PART_SHIFT
        if self.first_song is not None:
            return query_index, part + np.uint32(self.first_song), postings & FRAME_MASK
        songs, frames = self.part_index[part], self.part_base[part] + (postings & FRAME_MASK)
        if self.part_alive is None:
            return query_index, songs, frames
        alive = self.part_alive[part]
        return query_index[alive], songs[alive], frames[alive]

    def landmarks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part, hash, song frame) of every alive posting: what a merge or a benchmark reads."""
        postings = np.asarray(self.postings)
        every = np.arange(N_HASHES, dtype=np.uint32) if self.keys is None else self.keys
        hashes = np.repeat(every, np.diff(self.offsets.astype(np.int64)))
        part = postings >> PART_SHIFT
        frames = postings & FRAME_MASK
        frames += self.part_base[part]
        if self.part_alive is None:
            return part, hashes, frames
        alive = self.part_alive[part]
        return part[alive], hashes[alive], frames[alive]

    def counts(self) -> np.ndarray:
        """Postings per hash, for every hash."""
        counts = np.diff(self.offsets.astype(np.int64))
        if self.keys is None:
            return counts
        every = np.zeros(N_HASHES, dtype=np.int64)
        every[self.keys] = counts
        return every

    def write(self, root: Path) -> list[str]:
        """Write the segment's files into `root`; their paths relative to it."""
        (root / self.name).mkdir(parents=True, exist_ok=True)
        counts = self.counts()
        narrow = np.uint16 if counts.max() <= np.iinfo(np.uint16).max else np.uint32
        table = {
            "counts": counts.astype(narrow),
            "part_song": self.part_song,
            "part_base": self.part_base,
            "song_ids": np.array(self.song_ids),
            "song_postings": self.song_postings,
        }
        _write_new(root / self.name / "table.npz", lambda f: np.savez_compressed(f, **table))
        _write_new(root / self.name / "postings.npy", lambda f: np.save(f, np.asarray(self.postings)))
        self.written = True
        return [f"{self.name}/table.npz", f"{self.name}/postings.npy"]

    def files(self, root: Path) -> list[Path]:
        return [root / self.name / "table.npz", root / self.name / "postings.npy"]


class Catalog:
    def __init__(
        self, uri: str, create: bool = False, location: LocalLocation | GcsLocation | None = None
    ) -> None:
        self.location = location or location_for(uri)
        self.uri = uri
        self.songs: list[Song] = []
        self.segments: list[Segment] = []
        self.generation = 0
        # The stored catalog.json's version when it was read (None: nothing stored yet).
        self.version: Version | None = None
        self._next_segment = 1
        # Segments the save that wrote the manifest read dropped: the next save deletes them.
        self._retired: list[str] = []
        # Written segments dropped since: the next save lists them as retired.
        self._dropped: list[str] = []
        # What a shard written by shards.split is of the catalog it was split from; None for
        # any other catalog, and once songs are added or removed.
        self.shard: ShardOf | None = None
        self.budget: int | None = CONFIG.postings_budget  # matcher.Votes.budget
        self._last_ranges = threading.local()
        if not self._load() and not create:
            raise CatalogError(f"no catalog at {uri} (register songs first: python -m function register PATH)")
        self._index_songs()

    def reopened(self) -> "Catalog":
        """The stored catalog as it is now, through this one's location (a gs:// catalog reuses
        its local mirror); this one stays usable for whoever still holds it."""
        return Catalog(self.uri, location=self.location)

    def is_stale(self) -> bool:
        """Whether catalog.json was replaced since this catalog read it: one stat locally, one
        metadata read (a Class B operation) on Cloud Storage."""
        return self.location.version() != self.version

    def require_songs(self) -> None:
        """A catalog without songs could only ever answer "no match", which reads as "this music
        is not registered": it is refused instead, like a missing one."""
        if not self.songs:
            raise CatalogError(f"{self.uri}: the catalog has no songs (register songs first: python -m function register PATH)")

    def check_mapped(self) -> None:
        """Refuse to read postings whose file was truncated or rewritten in place since it was
        mapped (a `cp` over a live catalog): reading it would crash the process with SIGBUS, or
        pair another catalog's postings with this one's offsets. One fstat of each mapped file
        itself, so it runs before every lookup. A file deleted, or replaced by a new one (what a
        save does), leaves the mapped one intact and passes."""
        for segment in self.segments:
            segment.check_mapped(self.uri)

    @property
    def postings_count(self) -> int:
        """Postings stored, tombstoned ones included (they are read until a merge drops them)."""
        return sum(len(s.postings) for s in self.segments)

    def _index_songs(self) -> None:
        self._by_id = {s.song_id: i for i, s in enumerate(self.songs)}
        # The song each song is a version of (itself for a first version): the matcher compares
        # songs, never two versions of one song.
        self.group_index = np.array(
            [self._by_id.get(s.version_of or s.song_id, i) for i, s in enumerate(self.songs)], dtype=np.int64
        )
        # Seconds of each song: how many offsets its chance hits spread over (matcher.piles).
        self.durations = np.array([s.duration_seconds for s in self.songs], dtype=np.float64)
        self._link()

    def _link(self) -> None:
        """Point every segment's parts at the songs' current indices; a song removed (a
        tombstone in its segment) or no longer listed is dead there."""
        self._home: dict[str, Segment] = {}
        for segment in self.segments:
            index = np.array([self._by_id.get(s, -1) for s in segment.song_ids], dtype=np.int64)
            alive = (index >= 0) & np.array([s not in segment.dead for s in segment.song_ids], dtype=bool)
            for song_id in np.asarray(segment.song_ids, dtype=object)[alive]:
                if song_id in self._home:
                    raise CatalogError(
                        f"{self.uri}: catalog is corrupt: song {song_id} is in segments {self._home[song_id].name} and {segment.name}"
                    )
                self._home[song_id] = segment
            segment.link(index, alive)

    def position(self, index: int) -> int:
        """The song's index in the whole catalog: its own index, but a shard's song's in the
        catalog it was split from."""
        return index if self.shard is None else self.shard.positions[index]

    def index_of(self, song_id: str) -> int:
        return self._by_id[song_id]

    def head(self, index: int) -> Song:
        """The song that `index` is a version of (the song itself for a first version)."""
        return self.songs[int(self.group_index[index])]

    def set_version(self, song_id: str, of: str) -> None:
        """Record `song_id` as another version of `of` (or of the song `of` is a version of)."""
        head = self.songs[self._by_id[of]]
        self.songs[self._by_id[song_id]].version_of = head.version_of or head.song_id
        self._index_songs()

    # --- reading --------------------------------------------------------------------------------
    def _load(self) -> bool:
        """Read the stored catalog; False if there is none."""
        attempt = 1
        while True:
            version = self.location.fetch()
            if version is None:
                return False
            try:
                self._read()
            except FileNotFoundError as exc:
                # Missing files under a manifest that has since been replaced: a save deleted a
                # segment this read was about to open. Read the new manifest.
                if attempt == LOAD_ATTEMPTS or self.location.version() == version:
                    raise CatalogError(f"{self.uri}: catalog is corrupt or unreadable: {exc}") from None
                attempt += 1
                continue
            self.version = version
            return True

    def _read(self) -> None:
        """catalog.json and the segments it names; FileNotFoundError passes through for `_load`."""
        root = self.location.local_dir
        try:
            manifest = self._manifest()
            songs = [Song(**s) for s in manifest["songs"]]
            entries = manifest["segments"]
            self.location.mirror([e["name"] for e in entries])
            segments = [Segment.open(root / e["name"], e, self.uri) for e in entries]
            generation, next_segment = int(manifest["generation"]), int(manifest["next_segment"])
            retired = [str(name) for name in manifest["retired"]]
            shard = None if manifest.get("shard") is None else ShardOf(**manifest["shard"])
            if shard is not None and (len(shard.positions) != len(songs) or not all(isinstance(i, int) for i in shard.positions)):
                raise CatalogError(f"{self.uri}: catalog is corrupt: its shard positions do not match its {len(songs)} songs")
        except (CatalogError, FileNotFoundError):
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise CatalogError(f"{self.uri}: catalog is corrupt or unreadable: {exc}") from None
        self.songs, self.segments, self.generation = songs, segments, generation
        self._next_segment, self._retired, self.shard = next_segment, retired, shard

    def _manifest(self) -> dict:
        """catalog.json, refused unless written in this format with these fingerprint parameters."""
        manifest = json.loads((self.location.local_dir / "catalog.json").read_text())
        if manifest.get("format") != FORMAT:
            raise CatalogError(
                f"{self.uri}: catalog format {manifest.get('format')}, expected {FORMAT}:"
                " register the songs again into a new catalog (`python -m function register FILES --catalog NEW`)"
            )
        if manifest.get("frozen") != CONFIG.frozen():
            raise CatalogError(
                f"{self.uri}: built with other fingerprint parameters ({manifest.get('frozen')}); re-register"
            )
        return manifest

    def __contains__(self, song_id: str) -> bool:
        return song_id in self._by_id

    def song(self, index: int) -> Song:
        return self.songs[index]

    def posting_counts(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """Postings of each query hash in all segments (tombstoned ones included, as `lookup`
        reads them), and the postings stored: what decides which hashes a vote reads
        (matcher.kept). Only offsets are read, so no check_mapped here: `lookup` makes it."""
        total = np.zeros(len(hashes), dtype=np.int64)
        for _, lengths in self._ranges(hashes):
            total += lengths
        return total, self.postings_count

    def _ranges(self, hashes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each segment's (start, length) of these hashes. The last ones this thread computed are
        used again for the same array: a vote asks for one query's counts and then its postings,
        and finding the ranges costs about as much as reading the postings (a binary search of
        a register run's segment, scattered reads of a full one's 8-MB table): 0.5 ms of a
        6-ms recognition in an 85-song catalog. Not once the segments changed (a register run)."""
        last = getattr(self._last_ranges, "last", None)
        if last is not None and last[0] is hashes and last[1] == self.segments:
            return last[2]
        ranges = [segment.ranges(hashes) for segment in self.segments]
        self._last_ranges.last = (hashes, list(self.segments), ranges)
        return ranges

    def piles(self, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray, songs_below: int | None = None) -> Vote | None:
        """See matcher.piles."""
        return piles(self, hashes, frames, keep, songs_below)

    def lookup(self, hashes: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index into `hashes`, song index, song frame) for every alive posting, in every
        segment, of the query hashes `keep` marks (matcher.kept chooses them)."""
        self.check_mapped()
        found = [segment.read(starts, np.where(keep, lengths, 0)) for segment, (starts, lengths) in zip(self.segments, self._ranges(hashes))]
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.uint32), np.zeros(0, np.uint32)
        query_index, songs, frames = (np.concatenate(column) for column in zip(*found))
        return query_index, songs, frames

    def landmarks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(song index, hash, song frame) of every alive posting, segment by segment."""
        found = []
        for segment in self.segments:
            part, hashes, frames = segment.landmarks()
            found.append((segment.part_index[part], hashes, frames))
        if not found:
            return np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint32)
        songs, hashes, frames = (np.concatenate(column) for column in zip(*found))
        return songs, hashes, frames

    # --- writing --------------------------------------------------------------------------------
    def add(self, items: list[Fingerprinted]) -> None:
        """Add new songs as new segments (callers batch their songs: one segment per run)."""
        items = [it for it in items if it.song.song_id not in self._by_id]
        if not items:
            return
        for item in items:
            item.song.hashes = len(item.hashes)
        song = np.repeat(np.arange(len(items), dtype=np.uint32), [len(it.hashes) for it in items])
        hashes = np.concatenate([it.hashes.astype(np.uint32) for it in items])
        frames = np.concatenate([it.frames.astype(np.uint32) for it in items])
        segments = self._build([it.song.song_id for it in items], song, hashes, frames)
        self.shard = None
        self.songs.extend(it.song for it in items)
        self.segments.extend(segments)
        self._index_songs()

    def _build(self, song_ids: list[str], song: np.ndarray, hashes: np.ndarray, frames: np.ndarray) -> list[Segment]:
        """New segments holding these landmarks (`song`: index into `song_ids` of each), songs in
        order, a song's parts in one segment, a new segment begun where one would pass a cap."""
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
                raise CatalogError(f"{self.uri}: {song_ids[a]} has {postings_of[a]} landmarks, more than a segment holds")
            if first_posting[b] > first_posting[a]:
                mine = slice(None) if (a, b) == (0, len(song_ids)) else (song >= a) & (song < b)
                segments.append(
                    self._segment(song_ids[a:b], song[mine] - a, hashes[mine], frames[mine], parts_of[a:b], postings_of[a:b])
                )
            a = b
        return segments

    def _segment(
        self,
        song_ids: list[str],
        song: np.ndarray,
        hashes: np.ndarray,
        frames: np.ndarray,
        parts_of: np.ndarray,
        postings_of: np.ndarray,
    ) -> Segment:
        """One new segment of these songs (see `_build`); those without landmarks are left out."""
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
        name = f"s{self._next_segment:06d}"
        self._next_segment += 1
        return Segment(
            name,
            [song_ids[i] for i in kept],
            postings_of[kept].astype(np.int64),
            part_song,
            part_base.astype(np.uint32),
            counts,
            keys.astype(np.uint32),  # the low 32 bits: the postings
        )

    def add_source(self, song_id: str, source: str) -> bool:
        """Record another path of a registered song; whether it was new."""
        song = self.songs[self._by_id[song_id]]
        if source in song.sources:
            return False
        song.sources.append(source)
        return True

    def remove(self, song_ids: list[str]) -> int:
        """Tombstone the songs in their segments (a segment left without songs is dropped)."""
        doomed = {self._by_id[s] for s in song_ids if s in self._by_id}
        if not doomed:
            return 0
        removed = {self.songs[i].song_id for i in doomed}
        self.shard = None
        for song_id in removed:
            if song_id in self._home:  # a song without landmarks has no postings anywhere
                self._home[song_id].dead.add(song_id)
        self.songs = [s for i, s in enumerate(self.songs) if i not in doomed]
        # A removed song's other versions stay: the earliest left becomes the one they name.
        for head in removed:
            members = [s for s in self.songs if s.version_of == head]
            for s in members:
                s.version_of = members[0].song_id if s is not members[0] else None
        self._index_songs()
        self._drop([s for s in self.segments if s.alive_postings == 0])
        return len(doomed)

    def compact(self, everything: bool = False) -> bool:
        """Merge segments, leaving out tombstoned postings; whether anything changed (the caller
        saves). `everything`: consecutive segments together up to MERGE_POSTINGS postings a
        merge, and any segment with removed songs' postings (`catalog --compact`); otherwise,
        while more than MAX_SEGMENTS are unsealed, the newest of them together with each older
        one no bigger than those newer than it together (a register run), up to MERGE_POSTINGS."""
        if everything:
            runs: list[list[Segment]] = []
            for segment in list(self.segments):
                if runs and sum(s.alive_postings for s in runs[-1]) + segment.alive_postings <= MERGE_POSTINGS:
                    runs[-1].append(segment)
                else:
                    runs.append([segment])
            runs = [run for run in runs if len(run) > 1 or run[0].alive_postings < len(run[0].postings)]
            for run in runs:
                self._merge(run)
            return bool(runs)
        changed = False
        while True:
            unsealed = [s for s in self.segments if not s.sealed]
            if len(unsealed) <= MAX_SEGMENTS:
                return changed
            run, size = unsealed[-2:], sum(s.alive_postings for s in unsealed[-2:])
            for older in reversed(unsealed[:-2]):
                if older.alive_postings > size or size + older.alive_postings > MERGE_POSTINGS:
                    break
                run.insert(0, older)
                size += older.alive_postings
            before = len(self.segments)
            self._merge(run)
            changed = True
            if len(self.segments) >= before:  # songs too big to pack tighter: nothing to gain
                return changed

    def _merge(self, run: list[Segment]) -> None:
        """Replace these segments with new ones holding their alive postings."""
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
        merged = self._build(song_ids, song, hashes, frames)
        self._drop(run)
        self.segments.extend(merged)
        self._link()

    def _drop(self, segments: list[Segment]) -> None:
        """Take segments out of the catalog; written ones are deleted by the save after next."""
        for segment in segments:
            self.segments.remove(segment)
            if segment.written:
                self._dropped.append(segment.name)

    def save(self) -> None:
        """Write the new segments, point catalog.json at the catalog's segments, and delete the
        segments the previous save dropped (see the module docstring for why not this one's)."""
        root = self.location.local_dir
        root.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        written = [path for s in self.segments if not s.written for path in s.write(root)]
        manifest = {
            "format": FORMAT,
            "frozen": CONFIG.frozen(),
            "density": asdict(CONFIG.catalog_density),
            "generation": self.generation,
            "next_segment": self._next_segment,
            "segments": [{"name": s.name, "postings": len(s.postings), "dead": sorted(s.dead)} for s in self.segments],
            "retired": self._dropped,
            "songs": [asdict(s) for s in self.songs],
            "shard": None if self.shard is None else asdict(self.shard),
        }
        _write_new(root / "catalog.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        self.location.push([*written, "catalog.json"], deleted=[name + "/" for name in self._retired])
        for name in self._retired:
            shutil.rmtree(root / name, ignore_errors=True)
        self._retired, self._dropped = self._dropped, []

    def state(self) -> dict:
        """Its songs, recordings, postings and generation: a shard's /shard/info, and what
        /health reports of a single catalog."""
        return {
            "songs": int(len(set(self.group_index.tolist()))),
            "recordings": len(self.songs),
            "postings": self.postings_count,
            "generation": self.generation,
        }

    def stats(self) -> dict:
        root = self.location.local_dir
        files = [p for s in self.segments if s.written for p in s.files(root)]
        index_bytes = sum(p.stat().st_size for p in [*files, root / "catalog.json"] if p.is_file())
        return {
            **self.state(),
            "duration_seconds": round(sum(s.duration_seconds for s in self.songs), 1),
            "hashes": self.postings_count,
            "segments": len(self.segments),
            "bytes": int(index_bytes),
        }


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _map(path: Path, count: int, uri: str) -> tuple[np.ndarray, _Mapped]:
    """Memory-map postings.npy, only if its size is exactly what its header and catalog.json
    say: reading a mapped page beyond the end of its file kills the process with SIGBUS, which
    no Python code can catch, so a partly written or truncated file (a copy over the catalog
    still running) is refused here rather than found out while naming a song."""
    file = open(path, "rb")
    try:
        size = os.fstat(file.fileno()).st_size
        try:
            major, _ = np.lib.format.read_magic(file)
            header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(file)
        except ValueError as exc:
            raise CatalogError(f"{uri}: catalog is corrupt: {path} ({size} bytes) has no array header: {exc}") from None
        start = file.tell()
        if dtype != np.dtype("<u4") or len(shape) != 1 or fortran:
            raise CatalogError(f"{uri}: catalog is corrupt: {path} holds {dtype} {shape}, not uint32 postings")
        by_header, by_manifest = start + 4 * shape[0], start + 4 * count
        if size != by_header or size != by_manifest:
            raise CatalogError(
                f"{uri}: catalog is corrupt: {path} is {size} bytes, its header says {by_header} and"
                f" catalog.json {by_manifest} ({count} postings): a copy still running or cut short? {REPLACE_ADVICE}"
            )
        postings = np.memmap(file, dtype=dtype, mode="r", offset=start, shape=shape)
    except BaseException:
        file.close()
        raise
    return postings, _Mapped(file, size, os.fstat(file.fileno()).st_mtime_ns)


def _write_new(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` as a new file renamed over the old one: a process may have the old one
    memory-mapped, and truncating a mapped file kills that process with SIGBUS."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
