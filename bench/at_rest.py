"""What a user's stream leaves at rest and what it costs: bytes kept per second of audio, whether
any of the audio can be found in them, CPU per hour, and how an attempt's time grows with the
buffer, for the working tree beside a baseline revision in the same run.

    python -m bench.at_rest --corpus /tmp/corpus --split test --baseline-rev 4f39672 --minutes 10

Each engine serves its own main.py (local backend, its own defaults) on loopback with a catalog
of the split's tracks registered by its own CLI. Each scenario streams, as Omi does (1-s POSTs of
16-kHz PCM, one user), `--minutes` of unknown music (the split's held-out tracks back to back)
or of talk (its speech clips back to back). Measured per scenario: the server's CPU (its whole
process group, from /proc) scaled to an hour; the recognition attempts' latency as the server
reports it, at 5-6 s and at 55-60 s of buffer; and, after the stream, every byte under DATA_DIR
counted as logical bytes (the sum of every SQLite cell, and every other file's size) and
searched for the streamed audio (`audio_found`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from scipy.signal import fftconvolve

from bench import corpus, machine, revisions
from bench.audio import WORK_RATE, read_audio, resample, to_pcm16
from bench.harness import group_cpu_seconds, running_function

OUT = Path("bench/out/at_rest")
CONTAINERS = (b"RIFF", b"WAVE", b"OggS", b"OpusHead", b"fLaC", b"ID3\x03", b"ID3\x04", b"ftypM4A")
PROBE = 256  # samples: 16 ms at 16 kHz, 32 ms at 8 kHz
PROBES = 24
MATCH = 0.9  # normalised correlation that only a copy (scaled, offset, resampled) reaches


def audio_found(blobs: list[bytes], streams: list[tuple[bytes, int]], seed: int = 0, first: bool = False) -> list[str]:
    """Where any of the streamed PCM16 (bytes, rate) shows in the blobs: a container's signature,
    exact windows, or windows correlated with it at 8 or 16 kHz, read as int16 or float32 from
    any byte alignment. With `first`, a blob's search stops at its first finding (a store that
    keeps audio holds megabytes of it, and one finding is the answer)."""
    found: list[str] = []
    rng = np.random.default_rng(seed)
    for index, blob in enumerate(blobs):
        try:
            _search(blob, index, streams, rng, found, first)
        except _Found:
            pass
    return found


class _Found(Exception):
    """The search of one blob is over (`audio_found(first=True)`)."""


def _search(blob: bytes, index: int, streams: list[tuple[bytes, int]], rng: np.random.Generator, found: list[str], first: bool) -> None:
    def note(what: str) -> None:
        found.append(what)
        if first:
            raise _Found

    for s in CONTAINERS:
        if s in blob:
            note(f"blob {index}: a {s!r} signature")
    readings = {}
    for offset in range(2):
        readings[f"int16+{offset}"] = np.frombuffer(blob[offset : offset + (len(blob) - offset) // 2 * 2], "<i2").astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        for offset in range(4):
            floats = np.frombuffer(blob[offset : offset + (len(blob) - offset) // 4 * 4], "<f4").astype(np.float64)
            readings[f"float32+{offset}"] = np.nan_to_num(floats, nan=0.0, posinf=0.0, neginf=0.0)
    for pcm, rate in streams:
        samples = np.frombuffer(pcm, "<i2").astype(np.float32)
        other = 8000 if rate != 8000 else 16000
        for version in (samples, resample(samples, rate, other)):
            loud = np.flatnonzero(np.abs(version[: len(version) - PROBE]) > 300)
            for start in rng.choice(loud, size=min(PROBES, len(loud)), replace=False):
                probe = version[start : start + PROBE]
                if np.round(probe).astype("<i2").tobytes() in blob:
                    note(f"blob {index}: an exact window")
                for name, reading in readings.items():
                    for at in _correlated(reading, probe.astype(np.float64)):
                        # A copy of the audio goes on: the next window must be there too (a
                        # lone match is a heavy-tailed reading of random bytes, not audio).
                        follow = version[start + PROBE : start + 2 * PROBE].astype(np.float64)
                        if len(follow) == PROBE and _alike(reading[at + PROBE : at + 2 * PROBE], follow):
                            note(f"blob {index} read as {name}: a window of the {rate}-Hz stream at item {at}")
                            break


def _correlated(reading: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """Where in `reading` a scaled, offset copy of `probe` may lie (normalised correlation over
    MATCH), at most the first 16 places."""
    if len(reading) < len(probe):
        return np.zeros(0, np.int64)
    probe = probe - probe.mean()
    reading = np.clip(reading, -1e6, 1e6)
    dot = fftconvolve(reading, probe[::-1], mode="valid")
    window = np.ones(len(probe))
    total = fftconvolve(reading, window, mode="valid")
    energy = np.maximum(fftconvolve(reading**2, window, mode="valid") - total**2 / len(probe), 0.0)
    score = np.abs(dot) / np.sqrt(energy * float(probe @ probe) + 1e-12)
    return np.flatnonzero((score > MATCH) & (energy > 1e-6 * len(probe)))[:16]


def _alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two windows are one a scaled, offset copy of the other."""
    if len(a) != len(b):
        return False
    a, b = np.clip(a, -1e6, 1e6) - np.clip(a, -1e6, 1e6).mean(), b - b.mean()
    return bool(abs(float(a @ b)) > MATCH * np.sqrt(float(a @ a) * float(b @ b)) + 1e-12)


def local_bytes(data_dir: Path) -> tuple[int, list[bytes]]:
    """Logical bytes under a local DATA_DIR (every SQLite cell; every other file whole) and the
    raw bytes of every file, for the search."""
    logical = 0
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        if path.name.endswith(".sqlite3"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                    columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
                    for column in columns:
                        logical += db.execute(f"SELECT COALESCE(SUM(LENGTH({column})), 0) FROM {table}").fetchone()[0]
        elif not path.name.startswith("state.sqlite3-"):  # the database's journal: not logical data
            logical += path.stat().st_size
    return logical, [p.read_bytes() for p in data_dir.rglob("*") if p.is_file()]


def _stream(url: str, pcm: bytes) -> list[dict]:
    """POST `pcm` as 1-s chunks for a fresh uid; the recognition answers."""
    uid = f"rest-{uuid.uuid4().hex[:12]}"
    size = 2 * WORK_RATE
    attempts = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for k in range(0, len(pcm) - size + 1, size):
            response = client.post(
                f"/audio?sample_rate={WORK_RATE}&uid={uid}",
                content=pcm[k : k + size],
                headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
            )
            response.raise_for_status()
            recognition = response.json().get("recognition")
            if recognition and "latency_ms" in recognition:
                attempts.append(recognition)
    return attempts


def _material(paths: list[Path], seconds: float) -> bytes:
    """The recordings back to back, cut to `seconds`, as 16-kHz PCM16."""
    parts, total = [], 0
    for path in paths:
        x = read_audio(str(path))
        parts.append(x)
        total += len(x)
        if total >= seconds * WORK_RATE:
            break
    if total < seconds * WORK_RATE:
        raise SystemExit(f"only {total / WORK_RATE:.0f} s of material for a {seconds:.0f}-s stream")
    return to_pcm16(np.concatenate(parts)[: int(seconds * WORK_RATE)]).tobytes()


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def measure(engine: revisions.Engine, catalog: Path, scenarios: dict[str, bytes], out: Path, index: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix="bench-at-rest-"))
    # The stream goes faster than real time: the per-uid audio rate limit, which would shed it, is off.
    env = {**revisions.engine_env(), "DATA_DIR": str(data), "CATALOG_URI": str(catalog), "RATE_LIMIT_AUDIO_SECONDS_PER_SECOND": "0"}
    rows = {}
    try:
        with running_function(env, out / f"server-{index}.log", tree=engine.tree, healthy=True) as served:
            for name, pcm in scenarios.items():
                before = group_cpu_seconds(served.process_group)
                started = time.perf_counter()
                attempts = _stream(served.url, pcm)
                cpu = group_cpu_seconds(served.process_group) - before
                seconds = len(pcm) / (2 * WORK_RATE)
                latency = {
                    "5-6 s": _median([a["latency_ms"] for a in attempts if 5 <= a["audio_seconds"] <= 6]),
                    "55-60 s": _median([a["latency_ms"] for a in attempts if 55 <= a["audio_seconds"] <= 60]),
                }
                rows[name] = {
                    "seconds": seconds,
                    "wall_seconds": round(time.perf_counter() - started, 1),
                    "cpu_seconds_per_hour": round(cpu * 3600 / seconds, 1),
                    "attempts": len(attempts),
                    "named": sum(1 for a in attempts if a.get("status") == "match"),
                    "attempt_ms": latency,
                }
                print(f"{engine.name}: {name}: {rows[name]}", file=sys.stderr)
        logical, blobs = local_bytes(data)
        total_seconds = sum(len(p) for p in scenarios.values()) / (2 * WORK_RATE)
        # One blob of every file end to end: a store that keeps audio in a file per chunk is
        # found at the first probe, not searched file by file.
        found = audio_found([b"".join(blobs)], [(pcm, WORK_RATE) for pcm in scenarios.values()], first=True)
        return {"scenarios": rows, "bytes_per_second": round(logical / total_seconds, 1), "audio_found": len(found), "found_examples": found[:5]}
    finally:
        shutil.rmtree(data, ignore_errors=True)


def markdown(results: dict[str, dict], info: dict[str, str], command: str, setup: str) -> str:
    names = list(results)
    lines = [
        "## At rest and per hour: what a user's stream leaves behind and costs (`python -m bench.at_rest`)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']}; {info['date']}. Command: `{command}`. {setup}",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    scenarios = list(next(iter(results.values()))["scenarios"])
    rows = [("audio found at rest (windows, signatures, correlation)", lambda r: "yes" if r["audio_found"] else "none")]
    rows.append(("logical bytes at rest per second of audio", lambda r: f"{r['bytes_per_second'] / 1000:.2f} kB"))
    for s in scenarios:
        rows.append((f"CPU per hour of {s}", lambda r, s=s: f"{r['scenarios'][s]['cpu_seconds_per_hour']:.0f} s"))
        rows.append(
            (
                f"{s}: median attempt at 5-6 s / 55-60 s of buffer",
                lambda r, s=s: f"{r['scenarios'][s]['attempt_ms']['5-6 s']} / {r['scenarios'][s]['attempt_ms']['55-60 s']} ms",
            )
        )
        rows.append((f"{s}: attempts, named", lambda r, s=s: f"{r['scenarios'][s]['attempts']}, {r['scenarios'][s]['named']}"))
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="the benchmark corpus (see BENCHMARKS.md)")
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument("--baseline-rev", help="also measure this git revision, as shipped")
    p.add_argument("--minutes", type=float, default=10.0, help="of each scenario (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--render", type=Path, metavar="JSON", help="only write at_rest.md again from a run's at_rest.json")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        run = json.loads(args.render.read_text())
        (args.out / "at_rest.md").write_text(markdown(run["results"], run["machine"], run["command"], run["setup"]))
        return 0
    info = machine.describe()
    material = corpus.load(args.corpus, args.seed, False, args.split)
    seconds = args.minutes * 60
    scenarios = {
        "unknown music": _material([t.path for t in material.held_out], seconds),
        "talk": _material(list(material.speech), seconds),
    }
    engines = [revisions.working_tree()] + ([revisions.baseline(args.baseline_rev, args.out)] if args.baseline_rev else [])
    results = {}
    for index, engine in enumerate(engines):
        catalog, _ = revisions.catalog(engine, material.catalog, args.out)
        results[engine.name] = measure(engine, catalog, scenarios, args.out, index)
    command = "python -m bench.at_rest " + shlex.join(sys.argv[1:] if argv is None else argv)
    setup = f"{material.describe()}; {args.minutes:g} min of each scenario per engine, 1-s POSTs at 16 kHz, one user."
    text = markdown(results, info, command, setup)
    print(text)
    (args.out / "at_rest.md").write_text(text)
    (args.out / "at_rest.json").write_text(json.dumps({"machine": info, "command": command, "setup": setup, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
