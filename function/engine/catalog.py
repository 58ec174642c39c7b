"""The on-disk index: landmark hashes -> postings (song, anchor frame), plus song metadata.

Layout (a directory, or a gs:// prefix mirrored locally):
    catalog.json          format, frozen fingerprint parameters, songs, current generation
    g<N>/counts.npz       postings per hash (uint16, or uint32 once a hash has 65,536), compressed
    g<N>/postings.npy     uint32: song index << 16 | anchor frame, grouped by hash

Hashes are dense (HASH_BITS bits), so a CSR offset table replaces storing a hash per posting:
4 bytes a posting, and a lookup is two array reads instead of a binary search. The postings are
memory-mapped; the offsets (8 MB whatever the catalog's size) are rebuilt at load from the
compressed counts, ~0.6 MB on disk for a 100-song catalog instead of 8 MB.

Catalogs change under running processes, so:
- each save writes a new generation through new files and then atomically replaces
  catalog.json; no file is ever rewritten in place, since a process may have it mapped;
- a save deletes the generation before the previous one, not the previous one: a reader that
  read the manifest just before it was replaced still finds its arrays, and a reader overtaken
  by two saves reads the manifest again (LOAD_ATTEMPTS);
- postings.npy is mapped only if its size is what its header and catalog.json say, and every
  lookup first checks (one fstat) that the mapped file was not truncated or rewritten since, so
  a catalog copied over a live one is refused with the reason instead of crashing the process
  with SIGBUS. That check cannot cover a truncation during the lookup itself: replace a catalog
  with `register`/`remove` (or by pointing CATALOG_URI at a new one), never by copying over it.
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from function.engine.catalog_location import GcsLocation, LocalLocation, Version, location_for
from function.engine.config import CONFIG
from function.engine.fingerprint import HASH_BITS, MAX_FRAMES

# 3: peaks picked on a time-smoothed spectrogram (EngineConfig.smooth_frames); versions.
FORMAT = 3
SONG_SHIFT = 16
MAX_SONGS = 1 << (32 - SONG_SHIFT)
N_HASHES = 1 << HASH_BITS
# A reader that finds the generation its manifest names already deleted reads the manifest again,
# up to this many reads in all: only a reader overtaken by two saves between reading catalog.json
# and opening the arrays gets there, since a save keeps the previous generation.
LOAD_ATTEMPTS = 3
REPLACE_ADVICE = (
    "replace a catalog with `python -m function register` / `remove` (or point CATALOG_URI at a new one),"
    " never by copying files over it"
)


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


@dataclass(frozen=True)
class _Mapped:
    """The open postings.npy a catalog memory-mapped, with its size and mtime when mapped."""

    file: BinaryIO
    size: int
    mtime_ns: int


@dataclass
class Fingerprinted:
    """A song ready to be added: its metadata and its landmarks."""

    song: Song
    hashes: np.ndarray
    frames: np.ndarray


class Catalog:
    def __init__(
        self, uri: str, create: bool = False, location: LocalLocation | GcsLocation | None = None
    ) -> None:
        self.location = location or location_for(uri)
        self.uri = uri
        self.songs: list[Song] = []
        self.generation = 0
        # The stored catalog.json's version when it was read (None: nothing stored yet).
        self.version: Version | None = None
        self.offsets = np.zeros(N_HASHES + 1, dtype=np.uint32)
        self.postings = np.zeros(0, dtype=np.uint32)
        self._mapped: _Mapped | None = None
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
        pair another catalog's postings with this one's offsets. One fstat of the mapped file
        itself, so it runs before every lookup. A file deleted, or replaced by a new one (what a
        save does), leaves the mapped one intact and passes."""
        if self._mapped is None:
            return
        st = os.fstat(self._mapped.file.fileno())
        if (st.st_size, st.st_mtime_ns) != (self._mapped.size, self._mapped.mtime_ns):
            raise CatalogError(
                f"{self.uri}: catalog changed under this process: {self._mapped.file.name} was rewritten in place"
                f" ({self._mapped.size} bytes when loaded, {st.st_size} bytes now); {REPLACE_ADVICE}"
            )

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
                # Missing arrays under a manifest that has since been replaced: a save deleted
                # the generation this read was about to open. Read the new manifest.
                if attempt == LOAD_ATTEMPTS or self.location.version() == version:
                    raise CatalogError(f"{self.uri}: catalog is corrupt or unreadable: {exc}") from None
                attempt += 1
                continue
            self.version = version
            return True

    def _read(self) -> None:
        """catalog.json and the generation it names; FileNotFoundError passes through for `_load`."""
        root = self.location.local_dir
        try:
            manifest = self._manifest()
            songs = [Song(**s) for s in manifest["songs"]]
            generation = int(manifest["generation"].lstrip("g"))
            gen_dir = root / manifest["generation"]
            count = int(manifest["postings"])
            with np.load(gen_dir / "counts.npz") as stored:
                counts = stored["counts"]
        except (CatalogError, FileNotFoundError):
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
            raise CatalogError(f"{self.uri}: catalog is corrupt or unreadable: {exc}") from None
        offsets = np.zeros(len(counts) + 1, dtype=np.uint32)
        np.cumsum(counts, dtype=np.uint32, out=offsets[1:])
        if offsets.shape != (N_HASHES + 1,) or int(offsets[-1]) != count:
            raise CatalogError(f"{self.uri}: catalog is corrupt: offsets and postings disagree")
        self.postings = self._map(gen_dir / "postings.npy", count)
        self.songs, self.generation, self.offsets = songs, generation, offsets

    def _manifest(self) -> dict:
        """catalog.json, refused unless written in this format with these fingerprint parameters."""
        manifest = json.loads((self.location.local_dir / "catalog.json").read_text())
        if manifest.get("format") != FORMAT:
            raise CatalogError(
                f"{self.uri}: catalog format {manifest.get('format')}, expected {FORMAT}:"
                " register the songs again into a new catalog"
            )
        if manifest.get("frozen") != CONFIG.frozen():
            raise CatalogError(
                f"{self.uri}: built with other fingerprint parameters ({manifest.get('frozen')}); re-register"
            )
        return manifest

    def _map(self, path: Path, count: int) -> np.ndarray:
        """Memory-map postings.npy, only if its size is exactly what its header and catalog.json
        say: reading a mapped page beyond the end of its file kills the process with SIGBUS,
        which no Python code can catch, so a partly written or truncated file (a copy over the
        catalog still running) is refused here rather than found out while naming a song."""
        file = open(path, "rb")
        try:
            size = os.fstat(file.fileno()).st_size
            try:
                major, _ = np.lib.format.read_magic(file)
                header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(file)
            except ValueError as exc:
                raise CatalogError(f"{self.uri}: catalog is corrupt: {path} ({size} bytes) has no array header: {exc}") from None
            start = file.tell()
            if dtype != np.dtype("<u4") or len(shape) != 1 or fortran:
                raise CatalogError(f"{self.uri}: catalog is corrupt: {path} holds {dtype} {shape}, not uint32 postings")
            by_header, by_manifest = start + 4 * shape[0], start + 4 * count
            if size != by_header or size != by_manifest:
                raise CatalogError(
                    f"{self.uri}: catalog is corrupt: {path} is {size} bytes, its header says {by_header} and"
                    f" catalog.json {by_manifest} ({count} postings): a copy still running or cut short? {REPLACE_ADVICE}"
                )
            postings = np.memmap(file, dtype=dtype, mode="r", offset=start, shape=shape)
        except BaseException:
            file.close()
            raise
        self._mapped = _Mapped(file, size, os.fstat(file.fileno()).st_mtime_ns)
        weakref.finalize(self, file.close)
        return postings

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
        self.check_mapped()
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

    def add_source(self, song_id: str, source: str) -> bool:
        """Record another path of a registered song; whether it was new."""
        song = self.songs[self._by_id[song_id]]
        if source in song.sources:
            return False
        song.sources.append(source)
        return True

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
        if self._mapped is not None:  # the postings are in memory from here on
            self._mapped.file.close()
            self._mapped = None
        counts = np.bincount(hashes, minlength=N_HASHES)
        self.offsets = np.zeros(N_HASHES + 1, dtype=np.uint32)
        np.cumsum(counts, out=self.offsets[1:])

    def save(self) -> None:
        """Write a new generation, point catalog.json at it, and delete the generation before
        the previous one (see the module docstring for why the previous one stays)."""
        root = self.location.local_dir
        root.mkdir(parents=True, exist_ok=True)
        stale = [f"g{self.generation - 1:06d}"] if self.generation > 1 else []
        self.generation += 1
        gen = f"g{self.generation:06d}"
        (root / gen).mkdir(exist_ok=True)
        counts = np.diff(np.asarray(self.offsets))
        narrow = np.uint16 if len(counts) == 0 or counts.max() <= np.iinfo(np.uint16).max else np.uint32
        _write_new(root / gen / "counts.npz", lambda f: np.savez_compressed(f, counts=counts.astype(narrow)))
        _write_new(root / gen / "postings.npy", lambda f: np.save(f, np.asarray(self.postings)))
        manifest = {
            "format": FORMAT,
            "frozen": CONFIG.frozen(),
            "density": asdict(CONFIG.catalog_density),
            "generation": gen,
            "postings": int(len(self.postings)),
            "songs": [asdict(s) for s in self.songs],
        }
        _write_new(root / "catalog.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        self.location.push([f"{gen}/counts.npz", f"{gen}/postings.npy", "catalog.json"], deleted=[g + "/" for g in stale])
        for g in stale:
            shutil.rmtree(root / g, ignore_errors=True)

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


def _write_new(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` as a new file renamed over the old one: a process may have the old one
    memory-mapped, and truncating a mapped file kills that process with SIGBUS."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
