"""Load: N simulated Omi users streaming noisy music to the real function, on loopback.

    python -m bench.load [--users 50] [--minutes 1] [--backends local,gcp] [--out bench/out/load.md]

For each backend it starts the function under functions-framework (gunicorn; WORKERS and
THREADS as in production unless given), a loopback Omi notification API, and for `gcp` its own
Firestore emulator and fake-gcs-server. Every user streams 1-s PCM16 chunks of a real test
excerpt mixed with a street recording, each chunk due one second after the previous (as Omi
sends them, awaiting each answer), and resends a few chunks with the same Idempotency-Key as a
retrying Omi would. It stops by itself after `--minutes`.

Reported: requests/s held, p50/p95/p99 latency of plain ingest and of requests that ran a
recognition, server CPU seconds per user-hour (gunicorn's whole process group, from /proc),
chunks lost or duplicated, and notifications per user and song. "Lost or duplicated" balances,
per user, the audio acknowledged as new against where it went: what /stats still buffers, plus
what each recognition reported in its answer consumed (all of it on a match; nothing on a miss,
which keeps the buffer for the next attempt; a stream shorter than MAX_BUFFER_SECONDS never has
audio dropped by the cap). Notifications are counted at the
loopback Omi API and checked against /history.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.machine import describe
from function.config import Settings
from function.engine.recogniser import Recogniser
from function.simulate import load_pcm16
from tests.conftest import running_emulators
from tests.omi_server import OmiApi
from tests.webhook_support import DATA, Served, running_function

RATE = 16000
CHUNK_BYTES = RATE * 2
SNR_DB = 10.0
RESEND_SHARE = 0.02  # chunks sent twice with one Idempotency-Key, as a retrying Omi does
TARGET_P99_INGEST_MS, TARGET_P99_RECOGNITION_MS = 100.0, 1000.0
OUT = Path(__file__).resolve().parent / "out" / "load.md"
DEFAULTS = Settings()  # what the served function runs with: the report states its cadence


@dataclass
class User:
    uid: str
    pcm: bytes
    message: str
    latencies_ms: list[float] = field(default_factory=list)
    recognition_ms: list[float] = field(default_factory=list)
    new_seconds: float = 0.0
    consumed_seconds: float = 0.0
    resent_counted: int = 0  # resends wrongly taken as new chunks
    failures: Counter = field(default_factory=Counter)


def _songs(noise: Path) -> list[tuple[bytes, str]]:
    from function.engine.song_tags import read_tags

    songs = []
    for path in sorted((DATA / "music").glob("*.ogg")):
        tags = read_tags(str(path))
        songs.append((load_pcm16(path, RATE, noise=noise, snr_db=SNR_DB), f"🎵 {tags.title} by {tags.artist}"))
    return songs


def _group_cpu_seconds(group: int) -> float:
    """User + system CPU of every live process in the process group (gunicorn master and
    workers; they live for the whole run, so nothing exits uncounted)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp, field 5 of stat
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _stream(user: User, url: str, start: float, seconds: int, rng: random.Random) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for k in range(seconds):
            time.sleep(max(0.0, start + k - time.monotonic()))
            offset = (k * CHUNK_BYTES) % (len(user.pcm) - CHUNK_BYTES)
            chunk = user.pcm[offset : offset + CHUNK_BYTES]
            key = str(uuid.uuid4())
            for attempt in range(2 if rng.random() < RESEND_SHARE else 1):
                sent = time.perf_counter()
                response = client.post(
                    f"/audio?sample_rate={RATE}&uid={user.uid}",
                    content=chunk,
                    headers={"Content-Type": "application/octet-stream", "Idempotency-Key": key},
                )
                elapsed_ms = (time.perf_counter() - sent) * 1000
                if response.status_code != 200:
                    user.failures[response.status_code] += 1
                    continue
                body = response.json()
                if attempt and not body["duplicate"]:
                    user.resent_counted += 1
                if not body["duplicate"]:
                    user.new_seconds += len(chunk) / (2 * RATE)
                recognition = body.get("recognition")
                if recognition is None:
                    user.latencies_ms.append(elapsed_ms)
                    continue
                user.recognition_ms.append(elapsed_ms)
                seconds_read = recognition.get("audio_seconds", 0.0)
                if recognition["status"] == "match":
                    user.consumed_seconds += seconds_read


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return f"{p50:.0f} / {p95:.0f} / {p99:.0f}"


def run(backend: str, users: int, minutes: float, songs: list[tuple[bytes, str]], catalog: str, work: Path, stack: ExitStack) -> dict:
    omi = OmiApi()
    omi.start()
    stack.callback(omi.stop)
    env = {
        **os.environ,
        "STORAGE_BACKEND": backend,
        "DATA_DIR": str(work / f"data-{backend}"),
        "CATALOG_URI": catalog,
        "OMI_APP_ID": "load-bench",
        "OMI_APP_SECRET": "load-bench-secret",
        "OMI_API_URL": omi.url,
    }
    if backend == "gcp":
        emulators = stack.enter_context(running_emulators(work))
        # An emulator stack: open audio on purpose (a deployment refuses to start that way).
        env.update(emulators.env, GOOGLE_CLOUD_PROJECT="load-bench", GCS_BUCKET="load-bench", ALLOW_UNAUTHENTICATED="true")
        os.environ.update(emulators.env)
        from google.cloud import storage

        storage.Client(project="load-bench").create_bucket("load-bench")
    served: Served = stack.enter_context(running_function(env, work / f"function-{backend}.log"))

    rng = random.Random(5)
    population = [User(f"user-{i:03d}", *songs[i % len(songs)]) for i in range(users)]
    seconds = max(1, int(minutes * 60))
    start = time.monotonic() + 1.0
    threads = [
        threading.Thread(target=_stream, args=(u, served.url, start + i / users, seconds, random.Random(rng.random())))
        for i, u in enumerate(population)
    ]
    cpu_before = _group_cpu_seconds(served.process_group)
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)  # bounded even if the server stalls
    wall = time.monotonic() - start
    cpu = _group_cpu_seconds(served.process_group) - cpu_before

    unbalanced, history_mismatch = 0, 0
    sent_by_user = Counter((n.query["uid"], n.query["message"]) for n in omi.notifications())
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for u in population:
            buffered = client.get(f"/stats/{u.uid}").json()["buffer_duration_seconds"]
            unbalanced += round(abs(u.new_seconds - u.consumed_seconds - buffered))
            notified = [s for s in client.get(f"/history/{u.uid}").json()["songs"] if s["notified"]]
            history_mismatch += abs(len(notified) - sum(n for (uid, _), n in sent_by_user.items() if uid == u.uid))
    ingest = [ms for u in population for ms in u.latencies_ms]
    recognition = [ms for u in population for ms in u.recognition_ms]
    requests = len(ingest) + len(recognition) + sum(sum(u.failures.values()) for u in population)
    return {
        "backend": backend,
        "users": users,
        "seconds": round(wall, 1),
        "requests_per_second": requests / wall,
        "ingest_ms": _percentiles(ingest),
        "ingest_p99": float(np.percentile(ingest, 99)) if ingest else float("nan"),
        "recognition_ms": _percentiles(recognition),
        "recognition_p99": float(np.percentile(recognition, 99)) if recognition else float("nan"),
        "recognitions": len(recognition),
        "cpu_seconds_per_user_hour": cpu / (users * wall / 3600),
        "lost_or_duplicated_chunks": unbalanced + sum(u.resent_counted for u in population),
        "failed_requests": dict(sum((u.failures for u in population), Counter())),
        "notifications_per_user_and_song": sorted(set(sent_by_user.values())) or [0],
        "users_notified": len({uid for uid, _ in sent_by_user}),
        "history_mismatch": history_mismatch,
    }


def report(results: list[dict], machine: dict[str, str], minutes: float) -> str:
    lines = [
        "## Load: simulated Omi users streaming to the function (`python -m bench.load`)",
        "",
        f"{machine['date']}; {machine['cpu']}, {machine['cores']} cores, {machine['ram']}; Python {machine['python']}. "
        f"Server, load generator and (gcp) emulators share this machine. {minutes:g} min per backend, "
        f"1-s chunks of the test excerpts under street noise at {SNR_DB:g} dB SNR, {RESEND_SHARE:.0%} of chunks resent "
        f"with their Idempotency-Key, default settings (first attempt at {DEFAULTS.min_audio_seconds:g} s, then"
        f" every {DEFAULTS.stride_seconds:g} s over the whole buffer until a song is named).",
        "",
        "| backend | users | requests/s | ingest p50/p95/p99 ms | with recognition p50/p95/p99 ms (n) | CPU s per user-hour "
        "| chunks lost or duplicated | notifications per user and song | users notified | failed requests |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['backend']} | {r['users']} | {r['requests_per_second']:.1f} | {r['ingest_ms']} | "
            f"{r['recognition_ms']} ({r['recognitions']}) | {r['cpu_seconds_per_user_hour']:.0f} | "
            f"{r['lost_or_duplicated_chunks']} | {', '.join(map(str, r['notifications_per_user_and_song']))} | "
            f"{r['users_notified']}/{r['users']} | {r['failed_requests'] or 0} |"
        )
    local = next((r for r in results if r["backend"] == "local"), None)
    if local is not None:
        ok = local["ingest_p99"] <= TARGET_P99_INGEST_MS and local["recognition_p99"] <= TARGET_P99_RECOGNITION_MS
        lines += [
            "",
            f"Targets (local backend, 50 users): p99 ingest <= {TARGET_P99_INGEST_MS:.0f} ms, p99 with recognition <= "
            f"{TARGET_P99_RECOGNITION_MS:.0f} ms: {'met' if ok else 'NOT met'} "
            f"({local['ingest_p99']:.0f} ms, {local['recognition_p99']:.0f} ms at {local['users']} users).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--backends", default="local,gcp")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    machine = describe()
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        work = Path(tmp)
        songs = _songs(DATA / "noise" / "city.ogg")
        catalog = str(work / "catalog")
        Recogniser.open(catalog, create=True).register([str(p) for p in sorted((DATA / "music").glob("*.ogg"))], workers=1)
        results = []
        for backend in args.backends.split(","):
            with ExitStack() as stack:
                result = run(backend, args.users, args.minutes, songs, catalog, work, stack)
            print(result, flush=True)
            results.append(result)
    text = report(results, machine, args.minutes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
