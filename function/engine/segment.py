"""One segment of a catalog's index: its files (s<N>/table.npz and s<N>/postings.npy, laid out
as catalog.py says), its postings mapped into memory only when whole, and reading them.

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

Catalogs change under running processes, so postings.npy is mapped only if its size is what its
header and catalog.json say, and every lookup first checks (one fstat per segment) that no mapped
file was truncated or rewritten since, so a catalog copied over a live one is refused with the
reason instead of crashing the process with SIGBUS. That check cannot cover a truncation during
the lookup itself: replace a catalog with `register`/`remove` (or by pointing CATALOG_URI at a
new one), never by copying over it. For the same reason no file is ever rewritten in place
(`write_new`).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from function.engine.fingerprint import N_HASHES
from function.engine.songs import CatalogError

PART_SHIFT = 16
PART_FRAMES = 1 << PART_SHIFT  # a part's frames: 35 minutes
FRAME_MASK = np.uint32(PART_FRAMES - 1)
MAX_PARTS = 1 << (32 - PART_SHIFT)  # per segment
MAX_SEGMENT_POSTINGS = (1 << 32) - 1  # uint32 offsets
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
        write_new(root / self.name / "table.npz", lambda f: np.savez_compressed(f, **table))
        write_new(root / self.name / "postings.npy", lambda f: np.save(f, np.asarray(self.postings)))
        self.written = True
        return [f"{self.name}/table.npz", f"{self.name}/postings.npy"]

    def files(self, root: Path) -> list[Path]:
        return [root / self.name / "table.npz", root / self.name / "postings.npy"]


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


def write_new(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` as a new file renamed over the old one: a process may have the old one
    memory-mapped, and truncating a mapped file kills that process with SIGBUS."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
