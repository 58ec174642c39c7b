"""One catalog size, measured in a fresh single-threaded process: query latency and songs found,
false matches on music not in the catalog, the process's peak RSS, and the hash lookup beside the
baselines' lookups.

A fresh process per size keeps the peak RSS that of a query process (not of the benchmark that
built the catalog) and keeps the timings free of the evaluation pool. Run by bench/speed.py:
    python -m bench.probe CATALOG_DIR QUERIES.npz SQLITE_MAX_POSTINGS
It prints one JSON object on stdout. bench/coldstart.py runs it as a cold instance instead:
    python -m bench.probe --cold CATALOG_URI QUERIES.npz MEMORY_LIMIT_BYTES|none budget|no-budget
"""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import OtherLoad
from function.engine.decode import to_internal
from function.engine.catalog import Catalog
from function.engine.catalog_location import GcsLocation, LocalLocation
from function.engine.fingerprint import FRAME_SECONDS, N_HASHES, QUERY_DENSITY, fingerprint
from function.engine.matcher import kept
from function.engine.recogniser import Recogniser

SQLITE_QUERIES = 5  # each one scans the whole table: a few are enough for a median


def _peak_rss_mib() -> float:
    """This process's own peak. ru_maxrss is not: Linux carries it over from the parent across
    the fork and exec, and the parent holds the 10,000-song catalog it has just built."""
    peak = _status_mib("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status, in MiB (VmHWM: peak RSS; RssAnon: the process's own
    memory now; RssShmem: the tmpfs pages it has mapped now, such as a mirror on /dev/shm); NaN
    where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1000


def _linear_scan(catalog: Catalog, fingerprints: list[np.ndarray]) -> list[float]:
    """Every posting is compared with the query's hashes: a numpy stand-in for a table scan, and
    a generous one (a boolean table makes each comparison one gather)."""
    songs, every_hash, frames = catalog.landmarks()

    def scan(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wanted = np.zeros(N_HASHES, dtype=bool)
        wanted[hashes] = True
        hits = np.flatnonzero(wanted[every_hash])
        return songs[hits], frames[hits]

    return [_ms(lambda h=h: scan(h)) for h in fingerprints]


def _sqlite_scan(catalog: Catalog, fingerprints: list[np.ndarray]) -> tuple[list[float], float]:
    """abracadabra's storage: `hash(hash int, offset real, song_id text)` with no index, queried
    with `WHERE hash IN (...)`, so every query scans the table. Returns timings and build seconds."""
    songs, hashes, frames = catalog.landmarks()
    song_ids = np.array([s.song_id for s in catalog.songs])
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(str(Path(tmp) / "hash.db"))
        db.execute("CREATE TABLE hash (hash int, offset real, song_id text)")
        started = time.perf_counter()
        for a in range(0, len(hashes), 1_000_000):
            rows = zip(
                hashes[a : a + 1_000_000].tolist(),
                (frames[a : a + 1_000_000] * FRAME_SECONDS).tolist(),
                song_ids[songs[a : a + 1_000_000]].tolist(),
            )
            db.executemany("INSERT INTO hash VALUES (?, ?, ?)", rows)
        db.commit()
        build = time.perf_counter() - started

        def query(h: np.ndarray) -> None:
            in_values = ",".join(map(str, np.unique(h).tolist()))
            db.execute(f"SELECT hash, offset, song_id FROM hash WHERE hash IN ({in_values})").fetchall()

        timings = [_ms(lambda h=h: query(h)) for h in fingerprints[:SQLITE_QUERIES]]
        db.close()
    return timings, build


def _answers(recogniser: Recogniser, data: np.lib.npyio.NpzFile) -> dict:
    """The first query (it pages the memory-mapped index in), every query's latency and whether
    it named its song, the peak RSS after them, and the false matches on music not in the catalog."""
    samples, rate, truth = data["samples"], int(data["rate"]), data["truth"]
    cold_ms = _ms(lambda: recogniser.recognise(samples[0], rate))
    latencies, correct = [], 0
    with OtherLoad() as others:
        for x, t in zip(samples, truth):
            t0 = time.perf_counter()
            match = recogniser.recognise(x, rate)
            latencies.append((time.perf_counter() - t0) * 1000)
            correct += match is not None and match.song_id == t
    peak_rss = _peak_rss_mib()
    false_matches = sum(recogniser.recognise(x, rate) is not None for x in data["unknown"])
    return {
        "cold_query_ms": cold_ms,
        "latency_ms": latencies,
        "correct": int(correct),
        "queries": len(samples),
        "false_matches": int(false_matches),
        "unknown_queries": len(data["unknown"]),
        "peak_rss_mib": peak_rss,
        "other_cores": others.cores,
    }


def cold_start(uri: str, queries_file: str, memory_limit: int | None, budget: bool = True) -> dict:
    """A cold instance: a gs:// catalog's download (catalog.json and every segment into a fresh
    mirror, in TMPDIR) timed apart from loading the mirrored files, then the queries. Loading
    reads catalog.json again and lists the segments (finding them mirrored), as a reload does.
    Without `budget`, queries read every posting of their hashes below the cap
    (CONFIG.postings_budget off): what the budget costs a big catalog in songs found."""
    location = GcsLocation(uri, memory_limit) if uri.startswith("gs://") else LocalLocation(uri)
    # Since the process began: the interpreter and the imports (numpy, scipy, the storage client).
    started_at = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    since_exec = float(Path("/proc/uptime").read_text().split()[0]) - started_at
    started = time.perf_counter()
    if location.fetch() is None:
        raise SystemExit(f"no catalog at {uri}")
    manifest = json.loads((location.local_dir / "catalog.json").read_text())
    location.mirror([entry["name"] for entry in manifest["segments"]])
    downloaded = time.perf_counter()
    recogniser = Recogniser(Catalog(uri, location=location))
    if not budget:
        recogniser.catalog.budget = None
    loaded = time.perf_counter()
    mirror_bytes = sum(p.stat().st_size for p in location.local_dir.rglob("*") if p.is_file()) if uri.startswith("gs://") else 0
    after_load_rss = _peak_rss_mib()
    stats = recogniser.catalog.stats()
    return {
        "songs": stats["songs"],
        "postings": stats["hashes"],
        "segments": stats["segments"],
        "index_bytes": stats["bytes"],
        "audio_minutes": stats["duration_seconds"] / 60,
        "start_s": since_exec,
        "download_s": downloaded - started if uri.startswith("gs://") else 0.0,
        "load_s": loaded - downloaded,
        "mirror_bytes": mirror_bytes,
        "load_peak_rss_mib": after_load_rss,
        **_answers(recogniser, np.load(queries_file)),
        "rss_anon_mib": _status_mib("RssAnon"),
        "rss_shmem_mib": _status_mib("RssShmem"),
    }


def main(catalog_dir: str, queries_file: str, sqlite_max_postings: int) -> dict:
    data = np.load(queries_file)
    samples, rate = data["samples"], int(data["rate"])
    started = time.perf_counter()
    recogniser = Recogniser.open(catalog_dir)
    open_ms = (time.perf_counter() - started) * 1000
    answers = _answers(recogniser, data)

    catalog = recogniser.catalog
    fingerprints = [fingerprint(to_internal(x, rate), QUERY_DENSITY)[0] for x in samples]
    ours = [_ms(lambda h=h: catalog.lookup(h, kept(*catalog.posting_counts(h), budget=None))) for h in fingerprints]
    retrieved = [len(catalog.lookup(h, kept(*catalog.posting_counts(h), budget=None))[1]) for h in fingerprints]
    linear = _linear_scan(catalog, fingerprints)
    sqlite_ms, sqlite_build = ([], None)
    if catalog.postings_count <= sqlite_max_postings:
        sqlite_ms, sqlite_build = _sqlite_scan(catalog, fingerprints)
    stats = catalog.stats()
    return {
        "songs": stats["songs"],
        "postings": stats["hashes"],
        "index_bytes": stats["bytes"],
        "audio_minutes": stats["duration_seconds"] / 60,
        "open_ms": open_ms,
        **answers,
        "query_hashes": [len(h) for h in fingerprints],
        "postings_per_query": retrieved,
        "lookup_ms": ours,
        "linear_scan_ms": linear,
        "sqlite_scan_ms": sqlite_ms,
        "sqlite_build_seconds": sqlite_build,
    }


if __name__ == "__main__":
    if sys.argv[1] == "--cold":  # bench/coldstart.py: --cold URI QUERIES.npz MEMORY_LIMIT_BYTES|none budget|no-budget
        limit = None if sys.argv[4] == "none" else int(sys.argv[4])
        print(json.dumps(cold_start(sys.argv[2], sys.argv[3], limit, sys.argv[5] == "budget")))
    else:
        print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
