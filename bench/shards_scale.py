"""python -m bench.shards_scale --corpus DIR --out DIR [--songs 100000] [--shards 10] [--write-md FILE]

A 100,000-song catalog in 10 shards: its accuracy, and the latency of its critical path. Ten
machines are not to be had here, so the shards are held in this process and asked one after
the other, each call timed apart: a recognition's critical path is the coordinator's own time
(fingerprinting, choosing the hashes, merging: everything but the shard calls) plus, for each
phase (matcher.Votes: a vote's counts, then its piles), the slowest shard's call, as if every
shard ran on its own instance at once. The network is not in it: each phase is one round trip
to every shard in parallel, and their count per recognition is reported for the reader to add.

The catalog is bench.coldstart's (bench/catalog_build.scaled_catalog, the same --out and --seed
share its cache), or --catalog. Its shards are its segments, grouped in order (synthetic songs
are added 10,000 to a segment; the real songs, the only ones with versions, are all in the
first), written beside it as `python -m function catalog --split` would write them: the same
songs in the catalog's order, the same postings, songs.ShardOf giving each song's index in the
whole catalog. The segment files are hard links of the catalog's, not copies, so no posting is
held in memory to write them. Beside the shards, in the same run: the whole catalog on one
instance (one instance's postings budget), and the 1,000-song catalog the accuracy target
compares with; a few queries are checked to get the same best guess from the shards as from
the whole catalog read with N instances' budget (the shards' answers must be exactly that).
Last, shard 0 is also served by its own functions-framework process on loopback, and a few
queries' first vote asked of it over HTTP and in-process: what the wire adds to a round trip.
"""

from __future__ import annotations

import os

# One thread, as bench.coldstart's probes run (bench.speed.SINGLE_THREAD), set before numpy loads.
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench import catalog_build, corpus, machine, queries, speed  # noqa: E402
from bench.coldstart import LATENCY_QUERIES  # noqa: E402
from bench.harness import running_function  # noqa: E402
from bench.machine import OtherLoad  # noqa: E402
from function.engine.catalog import Catalog  # noqa: E402
from function.engine.config import CONFIG  # noqa: E402
from function.engine.decode import to_internal  # noqa: E402
from function.engine.fingerprint import QUERY_DENSITY, fingerprint  # noqa: E402
from function.engine.matcher import Vote, kept  # noqa: E402
from function.engine.recogniser import Recogniser  # noqa: E402
from function.engine.shards import encode_piles, fanout_budget, merge, merge_counts, vote_from_json  # noqa: E402
from function.engine.songs import CatalogError, ShardOf  # noqa: E402
from function.progress import Progress  # noqa: E402

# What a round trip to the shards might add on Cloud Run (same region, keep-alive): a range for
# the reader, not a measurement.
ROUND_TRIP_MS = (2.0, 5.0)
CHECKED_QUERIES = 5  # queries whose best guess the shards must share with the whole catalog
WIRE_QUERIES = 20  # queries whose first vote is also asked of one shard over loopback HTTP
TOKEN = "bench-shards-scale-token-0123456789"


# --- the shards -----------------------------------------------------------------------------------
def shard_catalogs(source: Path, shards: int, out: Path) -> list[Path]:
    """The catalog's shards, written once under `out` (keyed by its path and generation, and the
    engine's source) and reused: shard i holds the i-th run of len(segments)/shards consecutive
    segments. SystemExit where that is not a valid split: a segment count the shards do not
    divide, a song in no segment or tombstoned, a shard's songs not a run of the catalog's, or a
    version group across two shards (`shards.split` keeps each in one)."""
    catalog = Catalog(str(source))
    segments = catalog.segments
    if shards < 1 or len(segments) % shards:
        raise SystemExit(
            f"{source}: {len(segments)} segments cannot be {shards} shards of whole segments"
            " (a shard here is a run of segments; split the catalog with `python -m function catalog --split` instead)"
        )
    root = out / f"shards-{catalog_build._key(source.resolve(), catalog.generation, shards)}"
    paths = [root / str(i) for i in range(shards)]
    if (root / "done").is_file():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    # The id `shards.split` would give this split.
    split_id = hashlib.sha256(f"{catalog.uri}|{catalog.generation}|{shards}".encode()).hexdigest()[:12]
    manifest = json.loads((Path(source) / "catalog.json").read_text())
    entries = {entry["name"]: entry for entry in manifest["segments"]}
    per = len(segments) // shards
    covered = 0
    for i in range(shards):
        group = segments[i * per : (i + 1) * per]
        positions = [catalog.index_of(song_id) for segment in group for song_id in segment.song_ids]
        if any(segment.dead for segment in group):
            raise SystemExit(f"{source}: shard {i}'s segments hold removed songs' postings: compact the catalog first")
        if positions != list(range(covered, covered + len(positions))):
            raise SystemExit(f"{source}: shard {i}'s segments do not hold a run of the catalog's songs in its order")
        heads = catalog.group_index[positions]
        if len(positions) and (heads.min() < positions[0] or heads.max() > positions[-1]):
            raise SystemExit(f"{source}: a version group spans two shards at shard {i}: split it with `catalog --split`")
        covered += len(positions)
        print(f"shard {i + 1}/{shards}: songs {positions[0]:,}..{positions[-1]:,}, segments"
              f" {', '.join(s.name for s in group)} (hard links) ...", file=sys.stderr, flush=True)
        for segment in group:
            (paths[i] / segment.name).mkdir(parents=True)
            for name in ("table.npz", "postings.npy"):
                try:
                    os.link(Path(source) / segment.name / name, paths[i] / segment.name / name)
                except OSError:  # another filesystem
                    shutil.copyfile(Path(source) / segment.name / name, paths[i] / segment.name / name)
        shard_manifest = {
            **manifest,
            "generation": 1,
            "segments": [entries[s.name] for s in group],
            "retired": [],
            "songs": [manifest["songs"][p] for p in positions],
            "shard": asdict(ShardOf(split_id, i, shards, positions)),
        }
        (paths[i] / "catalog.json").write_text(json.dumps(shard_manifest, indent=1))
        Catalog(str(paths[i]))  # opens as a shard: CatalogError if the manifest does not hold
    if covered != len(catalog.songs):
        raise SystemExit(f"{source}: {len(catalog.songs) - covered} songs are in no segment (songs without landmarks)")
    (root / "done").write_text(json.dumps({"source": str(source), "generation": catalog.generation, "split": split_id}))
    return paths


class TimedShards:
    """matcher.Votes over shard catalogs held in this process, and what a Recogniser asks of
    shards.Shards beside it (`require_songs`): the same merges (shards.merge_counts,
    shards.merge) and budget (shards.fanout_budget), the shards asked one after the other and
    each call timed. `phases` has one entry per phase that asked the shards: each shard's
    seconds."""

    def __init__(self, shards: list[Catalog]) -> None:
        self.shards = shards
        self.uri = ",".join(shard.uri for shard in shards)
        self.budget = fanout_budget(len(shards))
        self.phases: list[list[float]] = []

    def _each(self, ask: Callable[[Catalog], object]) -> list:
        answers, seconds = [], []
        for shard in self.shards:
            started = time.perf_counter()
            answers.append(ask(shard))
            seconds.append(time.perf_counter() - started)
        self.phases.append(seconds)
        return answers

    def require_songs(self) -> None:
        if not any(shard.songs for shard in self.shards):
            raise CatalogError(f"catalog shards {self.uri}: no shard holds any song")

    # Each shard gets its own copy of the hashes, as each shard process decodes its own request:
    # a catalog reuses the ranges it found for the same array (Catalog._ranges), which a shard
    # asked over HTTP never can between its two requests.
    def posting_counts(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        return merge_counts(self._each(lambda shard: shard.posting_counts(hashes.copy())))

    def piles(self, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray) -> Vote | None:
        if not keep.any():  # as shards.Shards: no hash to read, no round trip
            return None
        return merge(self._each(lambda shard: shard.piles(hashes.copy(), frames.copy(), keep.copy())))


def wire_overhead(shard_dir: Path, coordinator: TimedShards, data: np.lib.npyio.NpzFile, count: int, scratch: Path) -> dict:
    """What the wire adds to a phase beyond the network's own latency: shard 0 also served by its
    own functions-framework process on loopback (as bench.shards serves its shards), each of
    `count` queries' first vote asked of it over HTTP (keep-alive; the request encoded and the
    answer decoded as shards.Shards does) and of the same shard in this process, one after the
    other; milliseconds of each, per phase."""
    shard = coordinator.shards[0]
    rate = int(data["rate"])
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(scratch / "data"),
        "CATALOG_URI": str(shard_dir),
        "SHARD_TOKEN": TOKEN,
        "CATALOG_SHARDS": "",
        "LOG_LEVEL": "WARNING",
    }
    scratch.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {"counts_local": [], "counts_http": [], "piles_local": [], "piles_http": []}
    with running_function(env, scratch / "shard.log", healthy=True) as served, httpx.Client(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        def ms(f: Callable[[], object]) -> float:
            started = time.perf_counter()
            f()
            return (time.perf_counter() - started) * 1000

        def over_http(path: str, body: bytes) -> httpx.Response:
            response = client.post(f"{served.url}{path}", content=body)
            response.raise_for_status()
            return response

        samples = list(data["samples"][: count + 3])
        for i, x in enumerate(samples):
            hashes, frames = fingerprint(to_internal(x, rate), QUERY_DENSITY)
            keep = kept(*coordinator.posting_counts(hashes), coordinator.budget)  # the whole catalog's choice
            got = {
                "counts_local": ms(lambda: shard.posting_counts(hashes.copy())),
                "counts_http": ms(lambda: np.frombuffer(over_http("/shard/counts", hashes.astype("<u4").tobytes()).content, dtype="<i8")),
                "piles_local": ms(lambda: shard.piles(hashes.copy(), frames.copy(), keep.copy())),
                "piles_http": ms(lambda: vote_from_json(over_http("/shard/piles", encode_piles(hashes, frames, keep)).json())),
            }
            if i >= 3:  # the first few warm the server (its imports, its mapped pages) up
                for key, value in got.items():
                    timings[key].append(value)
    return timings


# --- the replay -----------------------------------------------------------------------------------
def replay(single: Recogniser, small: Recogniser | None, sharded: Recogniser, data: np.lib.npyio.NpzFile) -> dict:
    """Every query through the three recognisers, one after the other (so other load falls on
    all three alike): found or false, latency, and for the shards each recognition's parts."""
    coordinator: TimedShards = sharded.catalog  # type: ignore[assignment]
    rate = int(data["rate"])
    runs = [("known", x, str(t)) for x, t in zip(data["samples"], data["truth"])] + [("unknown", x, "") for x in data["unknown"]]
    for recogniser in (single, small, sharded):  # the first query pages the mapped index in
        if recogniser is not None:
            recogniser.recognise(runs[0][1], rate)
    rows: dict[str, list[dict]] = {"single": [], "small": [], "sharded": []}
    bar = Progress(len(runs), "queries")
    with OtherLoad() as others:
        for kind, samples, truth in runs:
            for name, recogniser in (("single", single), ("small", small), ("sharded", sharded)):
                if recogniser is None:
                    continue
                coordinator.phases = []
                started = time.perf_counter()
                match = recogniser.recognise(samples, rate)
                wall = (time.perf_counter() - started) * 1000
                row = {"kind": kind, "ms": wall, "named": match is not None, "correct": match is not None and match.song_id == truth}
                if name == "sharded":
                    phases = [[1000 * s for s in phase] for phase in coordinator.phases]
                    shard_sum = sum(sum(p) for p in phases)
                    slowest = sum(max(p) for p in phases)
                    row.update(phases=len(phases), own_ms=wall - shard_sum, slowest_ms=slowest,
                               critical_ms=wall - shard_sum + slowest, shard_sum_ms=shard_sum,
                               per_shard_ms=[sum(p[i] for p in phases) for i in range(len(coordinator.shards))])
                rows[name].append(row)
            bar.step()
    return {"rows": rows, "other_cores": others.cores}


def check_exact(whole: Catalog, sharded: Recogniser, data: np.lib.npyio.NpzFile, count: int) -> tuple[int, int]:
    """(equal, asked): the shards' best guess against the whole catalog's read with their budget."""
    budget = whole.budget
    whole.budget = sharded.catalog.budget
    try:
        reference = Recogniser(whole)
        rate = int(data["rate"])
        asked = list(data["samples"][:count]) + list(data["unknown"][:count])
        equal = sum(reference.best_guess(x, rate) == sharded.best_guess(x, rate) for x in asked)
    finally:
        whole.budget = budget
    return equal, len(asked)


# --- the report -----------------------------------------------------------------------------------
def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _behind(points: float) -> str:
    return f"{points:.1f} points behind" if points >= 0 else f"{-points:.1f} points ahead"


def _found(rows: list[dict]) -> tuple[int, int, int, int]:
    known = [r for r in rows if r["kind"] == "known"]
    unknown = [r for r in rows if r["kind"] == "unknown"]
    return sum(r["correct"] for r in known), len(known), sum(r["named"] for r in unknown), len(unknown)


def markdown(info: dict, command: str, songs: int, shards: int, held: list[int], result: dict, exact: tuple[int, int],
             built_s: float, wire: dict | None = None) -> str:
    rows = result["rows"]
    known = {name: [r for r in rs if r["kind"] == "known"] for name, rs in rows.items()}
    sharded = known["sharded"]
    lines = [
        f"## {songs:,} songs in {shards} shards: accuracy and the critical path (`python -m bench.shards_scale`)",
        "",
        machine.machine_line(info),
        "",
        f"Command: `{command}`",
        "",
        f"The {songs:,}-song catalog of bench.coldstart split into {shards} shards of {', '.join(f'{n:,}' for n in sorted(set(held)))}"
        f" songs (its segments, in order: the real songs all in the first; written in {built_s:.1f} s as hard links of its"
        " segment files). The shards are held in one single-threaded process and asked one after the other, each call timed:"
        " the *critical path* of a recognition is the coordinator's own time (fingerprinting, choosing the hashes from the"
        " summed counts, merging the piles: everything but the shard calls) plus, for each phase, the slowest shard's call,"
        f" as if each shard were its own instance answering at once. A vote over the shards reads up to {shards} x"
        f" {CONFIG.postings_budget:,} postings (shards.fanout_budget: one instance's budget per shard); the single catalog,"
        f" one instance's {CONFIG.postings_budget:,}. *serial* is the same recognition's wall time in this process, every"
        " shard's work done by one core: what one machine holding every shard would spend. No network is in these"
        f" figures: each phase is one round trip to every shard in parallel (at {ROUND_TRIP_MS[0]:g}-{ROUND_TRIP_MS[1]:g} ms"
        f" a round trip on Cloud Run, add that times the phases). Queries: the {LATENCY_QUERIES} 10-s 0-dB queries of"
        " bench.coldstart (test split), and as many of music not in the catalog; latency is over the known ones. Other"
        f" processes took {result['other_cores']:.1f} of the {info['cores']} cores meanwhile (above 0, the timings are upper bounds).",
        "",
        "| catalog | postings per vote | found (0 dB) | false | p50 ms | p95 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, budget: str, rs: list[dict], key: str = "ms") -> str:
        found, n, false, m = _found(rs)
        lat = [r[key] for r in rs if r["kind"] == "known"]
        return f"| {label} | {budget} | {found}/{n} ({100 * found / n:.0f} %) | {false}/{m} | {_p(lat, 50):,.0f} | {_p(lat, 95):,.0f} |"

    if rows["small"]:
        lines.append(row("1,000 songs, one instance", f"{CONFIG.postings_budget:,}", rows["small"]))
    lines += [
        row(f"{songs:,} songs, one instance", f"{CONFIG.postings_budget:,}", rows["single"]),
        row(f"{songs:,} songs, {shards} shards: critical path", f"{shards * CONFIG.postings_budget:,}", rows["sharded"], "critical_ms"),
        row(f"{songs:,} songs, {shards} shards: serial, one core", f"{shards * CONFIG.postings_budget:,}", rows["sharded"]),
        "",
    ]
    phases = [r["phases"] for r in sharded]
    per_shard = np.array([r["per_shard_ms"] for r in sharded])
    lines += [
        f"Sharded recognitions of the known queries, p50 (p95) ms: coordinator's own {_p([r['own_ms'] for r in sharded], 50):,.1f}"
        f" ({_p([r['own_ms'] for r in sharded], 95):,.1f}); slowest shard, summed over the phases {_p([r['slowest_ms'] for r in sharded], 50):,.1f}"
        f" ({_p([r['slowest_ms'] for r in sharded], 95):,.1f}); every shard's calls summed {_p([r['shard_sum_ms'] for r in sharded], 50):,.1f}"
        f" ({_p([r['shard_sum_ms'] for r in sharded], 95):,.1f}). Each shard's own time per recognition, p50 over the queries:"
        f" {', '.join(f'{v:,.1f}' for v in np.percentile(per_shard, 50, axis=0))} (shards 0..{shards - 1}; shard 0 holds the real songs)."
        f" Phases (round trips to every shard) per recognition: median {int(np.median(phases))}, min {min(phases)}, max {max(phases)}"
        f" (up to 4 votes of 2 phases; music not in the catalog goes through all of them:"
        f" median {int(np.median([r['phases'] for r in rows['sharded'] if r['kind'] == 'unknown']))}).",
        "",
        f"Exactness: {exact[0]}/{exact[1]} queries ({exact[1] // 2} known, {exact[1] // 2} not in the catalog) got the same best guess"
        " (song, offset, confidence, score) from the shards as from the whole catalog read with the shards' budget.",
        "",
    ]
    per_trip = 0.0  # what the wire adds to a round trip beyond the network, where measured
    if wire:
        extra = {k: [h - l for h, l in zip(wire[f"{k}_http"], wire[f"{k}_local"])] for k in ("counts", "piles")}
        # A counts call computes almost nothing (0.1 ms in-process), so its round trip is nearly
        # all wire; a piles call's own ~80 ms varies by more than the wire adds to it.
        per_trip = max(0.0, _p(extra["counts"], 50))
        lines += [
            f"Loopback HTTP (shard 0 also in its own functions-framework process, {len(extra['counts'])} queries' first vote, p50 ms):"
            f" counts {_p(wire['counts_http'], 50):.1f} over HTTP against {_p(wire['counts_local'], 50):.1f} in-process"
            f" ({_p(extra['counts'], 50):+.1f}), piles {_p(wire['piles_http'], 50):.1f} against {_p(wire['piles_local'], 50):.1f}"
            f" ({_p(extra['piles'], 50):+.1f}{', the call faster in a process of its own than in this one, which maps every shard and the whole catalog: the shard times above may be upper bounds' if _p(extra['piles'], 50) < 0 else ''})."
            " So the wire (encoding, HTTP on loopback,"
            f" the server's framework, decoding) costs about {per_trip:.1f} ms a round trip beside the network's own latency"
            " (the counts round trip, whose call computes next to nothing).",
            "",
        ]
    # The targets, stated plainly.
    crit50 = _p([r["critical_ms"] for r in sharded], 50)
    med_phases = int(np.median(phases))
    low, high = crit50 + med_phases * (ROUND_TRIP_MS[0] + per_trip), crit50 + med_phases * (ROUND_TRIP_MS[1] + per_trip)
    found, n, false, m = _found(rows["sharded"])
    single_found, _, _, _ = _found(rows["single"])
    verdict = "meets" if high <= 100 else ("meets only at the low end of the round-trip range:" if low <= 100 else "misses")
    lines.append(
        f"- Latency target (p50 <= 100 ms): the shards' critical path is {crit50:,.0f} ms at p50 before the network; with"
        f" {med_phases} round trips of {ROUND_TRIP_MS[0]:g}-{ROUND_TRIP_MS[1]:g} ms"
        f"{f' and the wire overhead measured on loopback ({per_trip:.1f} ms each)' if wire else ''}, {low:,.0f}-{high:,.0f} ms: it {verdict} the target."
        f" One instance holding all {songs:,} songs: {_p([r['ms'] for r in known['single']], 50):,.0f} ms"
        f" ({'meets' if _p([r['ms'] for r in known['single']], 50) <= 100 else 'misses'});"
        f" all shards on one core: {_p([r['ms'] for r in sharded], 50):,.0f} ms."
    )
    if rows["small"]:
        small_found, small_n, _, _ = _found(rows["small"])
        gap = 100 * (small_found / small_n - found / n)
        lines.append(
            f"- Accuracy target (0 dB within 2 points of the 1,000-song catalog's): shards {found}/{n} ({100 * found / n:.1f} %) against"
            f" {small_found}/{small_n} ({100 * small_found / small_n:.1f} %), {_behind(gap)}: {'met' if gap <= 2 else 'missed'}."
            f" One instance holding all {songs:,}: {single_found}/{n} ({_behind(100 * (small_found / small_n - single_found / n))})."
        )
    else:
        lines.append(f"- Accuracy: shards {found}/{n}, one instance {single_found}/{n} (no 1,000-song catalog in this run to compare with).")
    lines.append(f"- False matches on music not in the catalog: shards {false}/{m}, one instance {_found(rows['single'])[2]}/{m}.")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shards_scale", description=__doc__.split("\n\n")[1])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/out/coldstart"), help="bench.coldstart's --out, to share its catalogs")
    p.add_argument("--songs", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--catalog", type=Path, help="the big catalog (default: bench.coldstart's of --songs songs)")
    p.add_argument("--small-catalog", type=Path, help="the 1,000-song catalog (default: bench.coldstart's; with --catalog: none)")
    p.add_argument("--write-md", type=Path)
    args = p.parse_args(argv)
    command = "python -m bench.shards_scale " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = args.out  # as given, as bench.coldstart takes it: the cached catalogs' keys include the real catalog's path
    out.mkdir(parents=True, exist_ok=True)
    info = machine.describe()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), file=sys.stderr)

    data = corpus.load(args.corpus, args.seed, False, "test")
    if args.catalog is None:
        real, truth, _ = catalog_build.real_catalog(data.catalog, out)
        big = catalog_build.scaled_catalog(real, args.songs, out, args.seed).resolve()
        small = args.small_catalog or catalog_build.scaled_catalog(real, 1000, out, args.seed).resolve()
    else:
        big, small = args.catalog.resolve(), args.small_catalog
        truth = {src: s.song_id for s in Catalog(str(big)).songs for src in s.sources}
    plan = queries.plan(data, LATENCY_QUERIES, args.seed)
    latency = np.load(speed.latency_queries(plan, truth, LATENCY_QUERIES, out.resolve() / "latency_queries.npz"))

    started = time.perf_counter()
    paths = shard_catalogs(big, args.shards, out)
    built_s = time.perf_counter() - started
    whole = Catalog(str(big))
    if len(whole.songs) != args.songs:
        print(f"note: {big} holds {len(whole.songs):,} songs, not --songs {args.songs:,}", file=sys.stderr)
    shard_list = [Catalog(str(path)) for path in paths]
    sharded = Recogniser(TimedShards(shard_list))  # type: ignore[arg-type]
    single = Recogniser(whole)
    small_rec = Recogniser(Catalog(str(small))) if small is not None else None
    print(f"checking {CHECKED_QUERIES} + {CHECKED_QUERIES} queries against the whole catalog with the shards' budget ...", file=sys.stderr, flush=True)
    exact = check_exact(whole, sharded, latency, CHECKED_QUERIES)
    print(f"replaying {len(latency['samples'])} + {len(latency['unknown'])} queries ...", file=sys.stderr, flush=True)
    result = replay(single, small_rec, sharded, latency)
    print(f"timing the wire: shard 0 over loopback HTTP, {WIRE_QUERIES} queries ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-shards-scale-") as scratch:
        wire = wire_overhead(paths[0], sharded.catalog, latency, WIRE_QUERIES, Path(scratch))  # type: ignore[arg-type]

    text = markdown(info, command, len(whole.songs), args.shards, [len(s.songs) for s in shard_list], result, exact, built_s, wire)
    print(text)
    (out / "shards_scale.md").write_text(text)
    (out / "shards_scale.json").write_text(json.dumps({"machine": info, "catalog": str(big), "small": str(small), "exact": exact, "built_s": built_s, "wire": wire, **result}, indent=1))
    if args.write_md:
        args.write_md.parent.mkdir(parents=True, exist_ok=True)
        args.write_md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
