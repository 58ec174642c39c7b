"""A registration run: analyse files in parallel, de-duplicate by content, add (a new segment),
group the versions of one song, merge small segments if there are too many, save once."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from function.engine.catalog import Catalog
from function.engine.config import CONFIG
from function.engine.decode import AUDIO_SUFFIXES, INTERNAL_RATE, DecodeError, decode_file, to_internal
from function.engine.fingerprint import CATALOG_DENSITY, FRAME_SECONDS, fingerprint
from function.engine.matcher import MAX_QUERY_SECONDS, Vote, kept
from function.engine.song_tags import read_tags
from function.engine.songs import Fingerprinted, Song
from function.progress import Progress


@dataclass(frozen=True)
class RegisterResult:
    file: str
    status: str  # added | duplicate | error
    song_id: str | None = None
    title: str | None = None
    artist: str | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    version_of: str | None = None  # set when the file is another recording of a registered song

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "duration_seconds"}


def content_id(samples: np.ndarray) -> str:
    """Song identity is its audio: the same recording under two paths or tags is one song."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    return hashlib.sha256(pcm.tobytes()).hexdigest()[:16]


def analyse_file(path: str) -> Fingerprinted | RegisterResult:
    """Decode, fingerprint and tag one file; an error result instead of raising, so one bad
    file never aborts a registration run (this runs in worker processes)."""
    try:
        samples, rate = decode_file(path)
        internal = to_internal(samples, rate)
        hashes, frames = fingerprint(internal, CATALOG_DENSITY)
        tags = read_tags(path)
    except (DecodeError, OSError, ValueError, MemoryError) as exc:
        return RegisterResult(file=path, status="error", error=str(exc))
    song = Song(
        song_id=content_id(internal),
        title=tags.title,
        artist=tags.artist,
        album=tags.album,
        duration_seconds=round(len(internal) / INTERNAL_RATE, 2),
        sources=[str(Path(path).resolve())],
    )
    return Fingerprinted(song, hashes, frames)


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given (spelled as given, so a message names what the user typed), directories
    searched recursively for audio files, in a stable order."""
    out: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(str(f) for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            out.append(p)
    return out


def _analysed(files: list[str], workers: int) -> Iterator[Fingerprinted | RegisterResult]:
    if workers <= 1 or len(files) <= 1:
        yield from map(analyse_file, files)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(analyse_file, files, chunksize=1)


def register_files(
    catalog: Catalog, files: list[str], workers: int | None = None, progress: bool = False
) -> list[RegisterResult]:
    """One result per file, in input order; bad files come back as errors, never raise."""
    workers = workers or os.cpu_count() or 1
    bar = Progress(len(files), "registering", enabled=progress and bool(files))
    results: list[RegisterResult] = []
    pending: dict[str, Fingerprinted] = {}
    new_sources = False
    for path, item in zip(files, _analysed(files, workers)):
        if isinstance(item, RegisterResult):
            results.append(item)
            bar.step()
            continue
        song = item.song
        duplicate = song.song_id in catalog or song.song_id in pending
        if song.song_id in catalog:
            new_sources |= catalog.add_source(song.song_id, song.sources[0])
        elif song.song_id in pending:
            sources = pending[song.song_id].song.sources
            if song.sources[0] not in sources:
                sources.append(song.sources[0])
        else:
            pending[song.song_id] = item
        results.append(
            RegisterResult(
                file=path,
                status="duplicate" if duplicate else "added",
                song_id=song.song_id,
                title=song.title,
                artist=song.artist,
                duration_seconds=song.duration_seconds,
            )
        )
        bar.step(song.duration_seconds)
    catalog.add(list(pending.values()))
    versions = group_versions(catalog, list(pending.values()))
    results = [
        replace(r, version_of=versions[r.song_id]) if r.song_id in versions else r
        for r in results
    ]
    # Saved only if something changed: a run whose files all failed writes nothing, and in
    # particular no empty catalog, which would then answer "no match" for every song. The new
    # segment is merged with the newest others first if they have grown too many.
    if pending or new_sources:
        catalog.compact()
        catalog.save()
    return results


def group_versions(catalog: Catalog, added: list[Fingerprinted]) -> dict[str, str]:
    """{song_id: the song it is a version of} for the songs just added that are another
    recording of one registered before them (another encoding, master or edit).

    Each song is compared with the songs indexed before it only, so a pair registered together
    is grouped once, under the first; its landmarks are its own catalog landmarks, whose vote
    for another recording of it piles a large share of them on one offset.
    """
    found: dict[str, str] = {}
    for item in sorted(added, key=lambda it: catalog.index_of(it.song.song_id)):
        index = catalog.index_of(item.song.song_id)
        if index == 0:
            continue
        v, landmarks = version_vote(catalog, item, songs_below=index)
        if v is None or v.confidence < CONFIG.version_min_confidence:
            continue
        if v.score < CONFIG.version_min_share * landmarks:
            continue
        catalog.set_version(item.song.song_id, catalog.song(v.song_index).song_id)
        found[item.song.song_id] = catalog.song(index).version_of
    return found


def version_vote(catalog: Catalog, item: Fingerprinted, songs_below: int | None = None) -> tuple[Vote | None, int]:
    """The vote of a recording's first two minutes of catalog landmarks (MAX_QUERY_SECONDS)
    against the songs indexed before `songs_below` (None: all), and how many landmarks voted:
    what group_versions weighs against the version thresholds."""
    head = item.frames < int(MAX_QUERY_SECONDS / FRAME_SECONDS)
    if not head.any():
        return None, 0
    hashes = item.hashes[head]
    keep = kept(*catalog.posting_counts(hashes), catalog.budget)
    return catalog.piles(hashes, item.frames[head], keep, songs_below=songs_below), int(head.sum())
