"""Query latency and memory against catalog size, each size in its own single-threaded process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.catalog_build import scaled_catalog
from bench.queries import Condition, Excerpt, render, subset

LATENCY_CONDITION = Condition("music", 10.0, 16000, 0.0)  # a 10-s query in ordinary noise
FALSE_MATCH_CONDITION = Condition("ooc", 10.0, 16000, 0.0)  # music not in the catalog, the same way
SINGLE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def latency_queries(excerpts: list[Excerpt], truth_of: dict[str, str], count: int, path: Path) -> Path:
    """Save `count` 10-s queries (and their true song) for the probe processes to replay, and up
    to `count` of music not in the catalog, which each catalog size must not name."""
    queries = [q for e in subset(excerpts, {LATENCY_CONDITION})[:count] for q in render(e)]
    unknown = [q for e in subset(excerpts, {FALSE_MATCH_CONDITION})[:count] for q in render(e)]
    truth = [truth_of.get(str(Path(q.source).resolve()), "") for q in queries]
    samples = np.stack([q.samples for q in queries])
    np.savez(
        path,
        samples=samples,
        rate=LATENCY_CONDITION.rate,
        truth=np.array(truth),
        unknown=np.stack([q.samples for q in unknown]) if unknown else samples[:0],
    )
    return path


def _probe(catalog_dir: Path, queries: Path, sqlite_max_postings: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.probe", str(catalog_dir), str(queries), str(sqlite_max_postings)],
        capture_output=True,
        text=True,
        env={**os.environ, **SINGLE_THREAD},
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"latency probe failed on {catalog_dir}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def scaling(real_dir: Path, sizes: list[int], out: Path, queries: Path, seed: int, sqlite_max_postings: int) -> list[dict]:
    """One probe result per catalog size: the real catalog first, then synthetic scale-ups."""
    results = []
    for n in sizes:
        catalog_dir = real_dir if n <= 0 else scaled_catalog(real_dir, n, out, seed)
        print(f"latency probe: {catalog_dir.name} ...", file=sys.stderr)
        results.append(_probe(catalog_dir, queries, sqlite_max_postings))
    return results
