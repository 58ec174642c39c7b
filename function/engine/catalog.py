"""The on-disk index: landmark hashes -> postings (song, anchor frame), plus song metadata.

Layout (a directory, or a gs:// prefix mirrored locally):
    catalog.json          format, frozen fingerprint parameters, songs, current generation
    g<N>/counts.npz       postings per hash (uint16, or uint32 once a hash has 65,536), compressed
    g<N>/postings.npy     uint32: song index << 16 | anchor frame, grouped by hash

Hashes are dense (HASH_BITS bits), so a CSR offset table replaces storing a hash per posting:
4 bytes a posting, and a lookup is two array reads instead of a binary search. The postings are
memory-mapped; the offsets (8 MB whatever the catalog's size) are rebuilt at load from the
compressed counts, ~0.6 MB on disk for a 100-song catalog instead of 8 MB. Each save writes a
new generation and then atomically replaces catalog.json, so a reader in another process never
sees half a catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np

from function.engine.catalog_location import location_for
from function.engine.config import CONFIG
from function.engine.fingerprint import HASH_BITS, MAX_FRAMES

# 3: peaks picked on a time-smoothed spectrogram (EngineConfig.smooth_frames); versions.
FORMAT = 3
SONG_SHIFT = 16
MAX_SONGS = 1 << (32 - SONG_SHIFT)
N_HASHES = 1 << HASH_BITS


class CatalogError(RuntimeError):
    """The catalog is missing, corrupt or incompatible; the message says which and where."""


@dataclass
class Song:
    song_id: str
    title: str
    artist: str
    album: str
    duration_seconds: float
    sources: list[str] = field(default_factory=list)
    hashes: int = 0
    # Another recording of a song registered earlier (another encoding, master or edit): the
    # song_id of that song, which a match names; None for a song's first version.
    version_of: str | None = None

    def public(self) -> dict:
        d = asdict(self)
        d.pop("hashes")
        return d


@dataclass
class Fingerprinted:
    """A song ready to be added: its metadata and its landmarks."""

    song: Song
    hashes: np.ndarray
    frames: np.ndarray


class Catalog:
    def __init__(self, uri: str, create: bool = False) -> None:
        self.location = location_for(uri)
        self.uri = uri
        self.songs: list[Song] = []
        self.generation = 0
        self.offsets = np.zeros(N_HASHES + 1, dtype=np.uint32)
        self.postings = np.zeros(0, dtype=np.uint32)
        if self.location.exists():
            self._load()
        elif not create:
            raise CatalogError(f"no catalog at {uri} (register songs first: python -m function register PATH)")
        self._index_songs()

    def _index_songs(self) -> None:
        self._by_id = {s.song_id: i for i, s in enumerate(self.songs)}
        # The song each song is a version of (itself for a first version): the matcher compares
        # songs, never two versions of one song.
        self.group_index = np.array(
            [self._by_id.get(s.version_of or s.song_id, i) for i, s in enumerate(self.songs)], dtype=np.int64
        )

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
    def _load(self) -> None:
        root = self.location.local_dir
        try:
            manifest = json.loads((root / "catalog.json").read_text())
            if manifest.get("format") != FORMAT:
                raise CatalogError(
                    f"{self.uri}: catalog format {manifest.get('format')}, expected {FORMAT}:"
                    " register the songs again into a new catalog"
                )
            if manifest.get("frozen") != CONFIG.frozen():
                raise CatalogError(
                    f"{self.uri}: built with other fingerprint parameters ({manifest.get('frozen')}); re-register"
                )
            self.songs = [Song(**s) for s in manifest["songs"]]
            self.generation = int(manifest["generation"].lstrip("g"))
            gen_dir = root / manifest["generation"]
            with np.load(gen_dir / "counts.npz") as stored:
                counts = stored["counts"]
            self.offsets = np.zeros(len(counts) + 1, dtype=np.uint32)
            np.cumsum(counts, dtype=np.uint32, out=self.offsets[1:])
            self.postings = np.load(gen_dir / "postings.npy", mmap_mode="r")
        except CatalogError:
            raise
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise CatalogError(f"{self.uri}: catalog is corrupt or unreadable: {exc}") from None
        if self.offsets.shape != (N_HASHES + 1,) or int(self.offsets[-1]) != len(self.postings):
            raise CatalogError(f"{self.uri}: catalog is corrupt: offsets and postings disagree")
        if len(self.postings) != manifest.get("postings"):
            raise CatalogError(f"{self.uri}: catalog is corrupt: expected {manifest.get('postings')} postings")

    def __contains__(self, song_id: str) -> bool:
        return song_id in self._by_id

    def song(self, index: int) -> Song:
        return self.songs[index]

    def lookup(self, hashes: np.ndarray, max_postings: int, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(index into `hashes`, packed posting) for every posting of every query hash.

        Hashes with more than `max_postings` postings are skipped: they occur in so many songs
        that they carry no evidence, and they would dominate the lookup time in a big catalog.
        With a `budget`, the most common of the remaining hashes are skipped too until at most
        that many postings are read: the rarest hashes say the most about which song it is.
        """
        starts = self.offsets[hashes].astype(np.int64)
        lengths = self.offsets[hashes + 1].astype(np.int64) - starts
        lengths[lengths > max_postings] = 0
        if budget is not None and lengths.sum() > budget:
            order = np.argsort(lengths, kind="stable")
            lengths[order[np.cumsum(lengths[order]) > budget]] = 0
        query_index = np.repeat(np.arange(len(hashes)), lengths)
        run_start = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        return query_index, self.postings[run_start + np.arange(int(lengths.sum()))]

    # --- writing --------------------------------------------------------------------------------
    def add(self, items: list[Fingerprinted]) -> None:
        """Merge new songs into the index in one pass (callers batch their songs)."""
        items = [it for it in items if it.song.song_id not in self._by_id]
        if not items:
            return
        if len(self.songs) + len(items) > MAX_SONGS:
            raise CatalogError(f"{self.uri}: a catalog holds at most {MAX_SONGS} songs")
        new_hashes, new_postings = [], []
        for item in items:
            index = len(self.songs)
            frames = np.minimum(item.frames, MAX_FRAMES - 1).astype(np.uint32)
            item.song.hashes = len(item.hashes)
            self.songs.append(item.song)
            new_hashes.append(item.hashes.astype(np.uint32))
            new_postings.append((np.uint32(index) << np.uint32(SONG_SHIFT)) | frames)
        self._index_songs()
        self._rebuild(np.concatenate(new_hashes), np.concatenate(new_postings), keep=None)

    def add_source(self, song_id: str, source: str) -> None:
        song = self.songs[self._by_id[song_id]]
        if source not in song.sources:
            song.sources.append(source)

    def remove(self, song_ids: list[str]) -> int:
        doomed = {self._by_id[s] for s in song_ids if s in self._by_id}
        if not doomed:
            return 0
        remap = np.full(len(self.songs), -1, dtype=np.int64)
        kept = [i for i in range(len(self.songs)) if i not in doomed]
        remap[kept] = np.arange(len(kept))
        removed = {self.songs[i].song_id for i in doomed}
        self.songs = [self.songs[i] for i in kept]
        # A removed song's other versions stay: the earliest left becomes the one they name.
        for head in removed:
            members = [s for s in self.songs if s.version_of == head]
            for s in members:
                s.version_of = members[0].song_id if s is not members[0] else None
        self._index_songs()
        self._rebuild(np.zeros(0, np.uint32), np.zeros(0, np.uint32), keep=remap)
        return len(doomed)

    def _rebuild(self, new_hashes: np.ndarray, new_postings: np.ndarray, keep: np.ndarray | None) -> None:
        old_hashes = np.repeat(np.arange(N_HASHES, dtype=np.uint32), np.diff(self.offsets.astype(np.int64)))
        old_postings = np.asarray(self.postings)
        if keep is not None:
            new_index = keep[old_postings >> SONG_SHIFT]
            alive = new_index >= 0
            old_hashes = old_hashes[alive]
            old_postings = (new_index[alive].astype(np.uint32) << np.uint32(SONG_SHIFT)) | (
                old_postings[alive] & np.uint32(MAX_FRAMES - 1)
            )
        hashes = np.concatenate([old_hashes, new_hashes])
        postings = np.concatenate([old_postings, new_postings])
        order = np.argsort(hashes, kind="stable")
        self.postings = postings[order]
        counts = np.bincount(hashes, minlength=N_HASHES)
        self.offsets = np.zeros(N_HASHES + 1, dtype=np.uint32)
        np.cumsum(counts, out=self.offsets[1:])

    def save(self) -> None:
        root = self.location.local_dir
        root.mkdir(parents=True, exist_ok=True)
        previous = f"g{self.generation:06d}"
        self.generation += 1
        gen = f"g{self.generation:06d}"
        (root / gen).mkdir(exist_ok=True)
        counts = np.diff(np.asarray(self.offsets))
        narrow = np.uint16 if len(counts) == 0 or counts.max() <= np.iinfo(np.uint16).max else np.uint32
        np.savez_compressed(root / gen / "counts.npz", counts=counts.astype(narrow))
        np.save(root / gen / "postings.npy", np.asarray(self.postings))
        manifest = {
            "format": FORMAT,
            "frozen": CONFIG.frozen(),
            "density": asdict(CONFIG.catalog_density),
            "generation": gen,
            "postings": int(len(self.postings)),
            "songs": [asdict(s) for s in self.songs],
        }
        tmp = root / "catalog.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, root / "catalog.json")
        self.location.push([f"{gen}/counts.npz", f"{gen}/postings.npy", "catalog.json"], deleted=[previous + "/"])
        shutil.rmtree(root / previous, ignore_errors=True)

    def stats(self) -> dict:
        root = self.location.local_dir
        generation = root / f"g{self.generation:06d}"
        files = [*generation.glob("*"), root / "catalog.json"] if generation.is_dir() else []
        index_bytes = sum(p.stat().st_size for p in files)
        return {
            "songs": int(len(set(self.group_index.tolist()))),
            "recordings": len(self.songs),
            "duration_seconds": round(sum(s.duration_seconds for s in self.songs), 1),
            "hashes": int(len(self.postings)),
            "bytes": int(index_bytes),
        }
