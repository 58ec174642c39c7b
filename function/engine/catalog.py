"""The on-disk index: landmark hashes -> postings (song, anchor frame), in segments, plus song metadata.

Layout (a directory, or a gs:// prefix mirrored locally):
    catalog.json          format, frozen fingerprint parameters, songs, generation, and the
                          segments that make up the index, each with its tombstones
    s<N>/table.npz        postings per hash and the segment's part table, compressed
    s<N>/postings.npy     uint32: part << 16 | anchor frame within the part, grouped by hash

Segments (segment.py): a segment is written once and never changed. `register` writes a new
segment holding only the songs it adds; `remove` lists a song as a tombstone of its segment in
catalog.json (the matcher skips its postings); a compaction (segment_build.py) merges segments
into a new one without the tombstoned postings (`python -m function catalog --compact` merges
them all; a register run merges its newest small segments once there are more than
MAX_SEGMENTS). The matcher reads a hash's postings from every segment. So adding one song to a
10,000-song catalog writes a segment of that song and catalog.json, not the index again.

Catalogs change under running processes, so:
- each save writes its new segments as new files and then atomically replaces catalog.json; no
  file is ever rewritten in place, since a process may have it mapped;
- a segment a save drops (merged, or every song in it removed) is deleted by the next save, not
  by that one: a reader that read the manifest just before it was replaced still finds its
  segments, and a reader overtaken by two saves reads the manifest again (LOAD_ATTEMPTS);
- a segment's postings are mapped only when whole, and every lookup first checks that no mapped
  file was truncated or rewritten since (segment.py): replace a catalog with `register`/`remove`
  (or by pointing CATALOG_URI at a new one), never by copying over it.
"""

from __future__ import annotations

import json
import shutil
import threading
import zipfile
from dataclasses import asdict

import numpy as np

from function.engine.catalog_location import GcsLocation, LocalLocation, Version, location_for
from function.engine.config import CONFIG
from function.engine.matcher import Vote, piles
from function.engine.segment import Segment, write_new
from function.engine.segment_build import build, compaction_runs, merge, register_run_merge
from function.engine.songs import CatalogError, Fingerprinted, ShardOf, Song

# 4: segments of postings that name a part of a song, not the song (3: one index, song << 16 | frame).
FORMAT = 4
# A reader that finds a segment its manifest names already deleted reads the manifest again, up
# to this many reads in all: only a reader overtaken by two saves between reading catalog.json
# and opening the segments gets there, since a save keeps what the previous one dropped. Saves
# can come in quick succession (`remove`, then `catalog --compact`), and a reader on a busy
# machine was overtaken three times in a row (3 attempts failed once in 500 loads while a writer
# saved 20 times a second); a missing file under an unchanged manifest still fails at once.
LOAD_ATTEMPTS = 10


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
        segments = build([it.song.song_id for it in items], song, hashes, frames, self._name_segment, self.uri)
        self.shard = None
        self.songs.extend(it.song for it in items)
        self.segments.extend(segments)
        self._index_songs()

    def _name_segment(self) -> str:
        name = f"s{self._next_segment:06d}"
        self._next_segment += 1
        return name

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
        saves). `everything`: what `catalog --compact` merges (segment_build.compaction_runs);
        otherwise what a register run merges, one merge after another while there are too many
        segments (segment_build.register_run_merge)."""
        if everything:
            runs = compaction_runs(self.segments)
            for run in runs:
                self._merge(run)
            return bool(runs)
        changed = False
        while (run := register_run_merge(self.segments)) is not None:
            before = len(self.segments)
            self._merge(run)
            changed = True
            if len(self.segments) >= before:  # songs too big to pack tighter: nothing to gain
                return changed
        return changed

    def _merge(self, run: list[Segment]) -> None:
        """Replace these segments with new ones holding their alive postings."""
        merged = merge(run, self._name_segment, self.uri)
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
        write_new(root / "catalog.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
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
