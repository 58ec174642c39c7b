"""The benchmark's catalogs: the real one (registered once, cached) and synthetic scale-ups.

The cache key covers the track list and the engine's source, so a change to the fingerprint
code or the split rebuilds the catalog instead of silently measuring a stale one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bench.corpus import Track
from bench.machine import OtherLoad
from function.engine.catalog import Catalog, Fingerprinted, Song
from function.engine.recogniser import Recogniser

ENGINE_DIR = Path(__file__).resolve().parent.parent / "function" / "engine"
# What a registered catalog depends on: every module of the engine package (a change to any
# of them rebuilds the benchmark catalog rather than risk measuring a stale one).
INDEXING_SOURCES = tuple(sorted(p.name for p in ENGINE_DIR.glob("*.py")))


def _key(*parts: object) -> str:
    h = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for name in INDEXING_SOURCES:
        source = ENGINE_DIR / name
        h.update(source.read_bytes() if source.is_file() else name.encode())
    return h.hexdigest()[:12]


def real_catalog(tracks: list[Track], out: Path, workers: int = 2) -> tuple[Path, dict[str, str], dict]:
    """The registered catalog (reused if cached), {resolved path: song_id}, and how it was built."""
    key = _key(*(f"{t.path}:{t.path.stat().st_size}" for t in tracks))
    root = out / f"catalog-{key}"
    meta_file = root / "bench.json"
    if not meta_file.is_file():
        shutil.rmtree(root, ignore_errors=True)
        print(f"registering {len(tracks)} tracks into {root} ...", file=sys.stderr)
        started = time.perf_counter()
        results = Recogniser.open(str(root / "index"), create=True).register(
            [str(t.path) for t in tracks], workers=workers, progress=True
        )
        errors = [r for r in results if r.status == "error"]
        if errors:
            raise SystemExit(f"registration failed: {errors[0].file}: {errors[0].error}")
        meta = {"built_seconds": time.perf_counter() - started, "workers": workers, "built": time.ctime()}
        meta_file.write_text(json.dumps(meta))
    catalog = Catalog(str(root / "index"))
    truth_of = {src: s.song_id for s in catalog.songs for src in s.sources}
    return root / "index", truth_of, json.loads(meta_file.read_text())


def registration_speed(tracks: list[Track], scratch: Path) -> dict[str, float]:
    """Songs/s and real-time factor on one core, from files on disk to a saved catalog."""
    shutil.rmtree(scratch, ignore_errors=True)
    recogniser = Recogniser.open(str(scratch), create=True)
    started = time.perf_counter()
    with OtherLoad() as others:  # workers=1 registers in this process, so its CPU counts as own
        results = recogniser.register([str(t.path) for t in tracks], workers=1)
    wall = time.perf_counter() - started
    audio = sum(r.duration_seconds for r in results)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"songs": len(results), "audio_seconds": audio, "wall_seconds": wall,
            "songs_per_second": len(results) / wall, "real_time_factor": audio / wall, "other_cores": others.cores}


def _songs_postings(catalog: Catalog) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each real song's (hashes, frames), recovered from the index."""
    song, hashes, frames = catalog.landmarks()
    order = np.argsort(song, kind="stable")
    bounds = np.searchsorted(song[order], np.arange(len(catalog.songs) + 1))
    return [(hashes[order[a:b]], frames[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def scaled_catalog(real_dir: Path, n_songs: int, out: Path, seed: int) -> Path:
    """The real catalog plus synthetic songs up to `n_songs`, cached under `out`.

    A synthetic song is a real song's hashes with their times shuffled: the index holds the
    real hash popularity (so lookups cost what they would), but no time alignment, so a fake
    can add chance votes and never a true match.
    """
    real = Catalog(str(real_dir))
    root = out / f"scaled-{_key(real_dir, real.generation, n_songs, seed)}"
    if (root / "catalog.json").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"synthesising a {n_songs}-song catalog in {root} ...", file=sys.stderr)
    per_song = _songs_postings(real)
    rng = np.random.default_rng(seed)
    items = [Fingerprinted(Song(**s.public()), h, f) for s, (h, f) in zip(real.songs, per_song)]
    for k in range(n_songs - len(real.songs)):
        i = k % len(real.songs)
        model = real.songs[i]
        hashes, frames = per_song[i]
        song = Song(f"synthetic-{k:06d}", f"synthetic {k}", "bench", "", model.duration_seconds)
        items.append(Fingerprinted(song, hashes, rng.permutation(frames)))
    scaled = Catalog(str(root), create=True)
    scaled.add(items)
    scaled.save()
    return root
