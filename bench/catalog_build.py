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
from function.engine.catalog import Catalog
from function.engine.config import CONFIG
from function.engine.recogniser import Recogniser
from function.engine.songs import Fingerprinted, Song

ENGINE_DIR = Path(__file__).resolve().parent.parent / "function" / "engine"
# What a registered catalog depends on: every module of the engine package (a change to any
# of them rebuilds the benchmark catalog rather than risk measuring a stale one).
INDEXING_SOURCES = tuple(sorted(p.name for p in ENGINE_DIR.glob("*.py")))
# Songs a scaled catalog adds per segment (see scaled_catalog): up to 10,000 songs, a catalog
# is one segment, as a register run of them would write it.
BUILD_BATCH = 10_000


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


def _music_like(hashes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A real song's hashes with their anchor frequencies permuted as a block: one derangement
    of the anchor bins for the whole song, each bin moved to another in its own band (the bands
    peaks are picked in, config.Density.bands), the frequency difference and time gap kept.

    Kept at their own times, the landmarks repeat where the song repeats (its bars, its loops),
    so a query's chance votes for a copy pile up as they do on real music. Kept in their band,
    anchors keep about the popularity of their region (a derangement over every bin spread it
    out). No anchor keeps its bin, so a copy shares no landmark with its model at the same time
    beyond chance and never truly matches a query of it. This benchmark's copies had their times
    shuffled before: every copy held all of its model's hashes, so in the 10,000-song catalog (117
    copies of each real song) a 10-s query of a real song read its own hashes 117 times over (a
    median 1.86 M postings, 1.29 M now; 1.17 M with every bin) and met 117 rivals holding all its
    landmarks (38 of 40 queries named, 40 now; no false match of 60 either way).
    """
    bins = CONFIG.max_bin - CONFIG.min_bin
    width = -(-bins // CONFIG.catalog_density.bands)
    moved = np.empty(bins, dtype=np.uint32)
    for start in range(0, bins, width):
        band = start + rng.permutation(min(width, bins - start)).astype(np.uint32)
        moved[band] = np.roll(band, -int(rng.integers(1, len(band))))
    anchor_shift = CONFIG.df_bits + CONFIG.dt_bits
    return (moved[hashes >> anchor_shift] << anchor_shift) | (hashes & np.uint32((1 << anchor_shift) - 1))


def scaled_catalog(real_dir: Path, n_songs: int, out: Path, seed: int) -> Path:
    """The real catalog plus synthetic songs up to `n_songs`, cached under `out` (the key covers
    this file's source: a change to the synthesis rebuilds).

    A synthetic song is a real song's landmarks at their own times, its anchor frequencies
    permuted as a block (`_music_like`): the index holds about the real hash popularity (so
    lookups cost about what they would) and chance matches that behave like music's, and no
    true match.
    """
    real = Catalog(str(real_dir))
    synthesis = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    root = out / f"scaled-{_key(real_dir, real.generation, n_songs, seed, synthesis)}"
    if (root / "catalog.json").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"synthesising a {n_songs}-song catalog in {root} ...", file=sys.stderr)
    per_song = _songs_postings(real)
    rng = np.random.default_rng(seed)
    items = [Fingerprinted(Song(**s.public()), h, f) for s, (h, f) in zip(real.songs, per_song)]
    scaled = Catalog(str(root), create=True)
    # A segment of BUILD_BATCH songs at a time, each saved before the next is synthesised: one
    # add of 10,000 songs peaks at ~5.6 GB, so 100,000 in one would need ~56 GB. Catalog.add
    # never merges segments (only a register run does), so the batches stay segments.
    for k in range(n_songs - len(real.songs)):
        i = k % len(real.songs)
        model = real.songs[i]
        hashes, frames = per_song[i]
        song = Song(f"synthetic-{k:06d}", f"synthetic {k}", "bench", "", model.duration_seconds)
        items.append(Fingerprinted(song, _music_like(hashes, rng), frames))
        if len(items) == BUILD_BATCH:
            scaled.add(items)
            scaled.save()
            items = []
    if items:
        scaled.add(items)
        scaled.save()
    return root
