"""Load: N simulated Omi users streaming noisy music to the real function, on loopback.

    python -m bench.load --corpus /tmp/corpus [--users 100] [--minutes 1] [--backends local,gcp]
                         [--gcp-users N] [--out bench/out/load.md]

For each backend it starts the function under functions-framework (gunicorn; WORKERS and
THREADS as in production unless set in this shell), a loopback Omi API that behaves as Omi's
(bench/omi_stand_in.py: Bearer key, 9 notifications per user and UTC hour), and for `gcp` its
own Firestore emulator and fake-gcs-server. Audio needs WEBHOOK_TOKEN and operator endpoints
ADMIN_TOKEN, as in a deployment.

The catalog is every music track of the benchmark corpus (bench/corpus_build.py, layout and splits in
bench/corpus.py; none of it is streamed, so no split is queried and the held-out packages only
add size) except the recordings the streamed excerpts were cut from, plus the streamed excerpts
of tests/data/music; registered once and cached under bench/out/load/ (the key covers the tracks
and the engine's source).

Every user plays the excerpts one after another (20 s each, each user starting at another one)
under a street recording at 10 dB SNR, as 1-s PCM16 chunks, each due one second after the
previous and sent once the previous is answered, as Omi does. 2% of chunks are sent twice with
one Idempotency-Key, as a retrying Omi would; a failed request (transport error, 5xx, 408,
429) is retried with its key, as Omi's developer path does. It stops after `--minutes`.

Reported per backend, with the machine, the date and the served revision: client-side latency
p50/p95/p99/max of plain chunks, of resent ones and of requests that ran a recognition, beside
plain chunks sent one at a time to the idle server before the load; the recognitions run, and
those that were due but found every slot busy (inferred from the replies: a user's requests are
sequential); CPU in cores, sampled every second: the server (gunicorn's process group, from
/proc), the load generator (this process), the emulators and every other process on this shared
machine; and every accounting check, each printed with its numbers: chunks sent / acknowledged /
lost / doubled and the audio balance (stored, each key once = consumed by matches + dropped by the
buffer cap + still buffered, per user); notifications per user and song at the Omi API against
the songs heard and named; /history (one row per song PLAY, `notified` when Omi took it) against
what the Omi API took; /metrics (counters) against the recognitions the users saw. Where plain
chunks spend their time is shown by how many recognition requests were at the server while they
were, how many requests were in flight against the server's threads, and by 10-s window beside
who had the cores then.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench import catalog_build, corpus, revisions
from bench.harness import Served, group_cpu_seconds, running_emulators, running_function
from bench.machine import describe
from bench.omi_stand_in import NOTIFICATION_LIMIT, OmiApi
from function.config import Settings
from function.simulate import load_pcm16
from function.webhook.omi_client import loggable, song_message

RATE = 16000
CHUNK_BYTES = RATE * 2
SNR_DB = 10.0
RESEND_SHARE = 0.02  # chunks sent twice with one Idempotency-Key, as a retrying Omi does
RETRIED_STATUSES = {408, 429, 500, 502, 503, 504}  # what Omi's developer path sends again
RETRIES = 3
REQUEST_TIMEOUT_SECONDS = 30.0
WINDOW_SECONDS = 10  # the latency timeline's step
IDLE_PROBES = 30
TARGET_P99_INGEST_MS = 100.0
MIN_CATALOG_TRACKS = 100  # besides the streamed excerpts
OUT = Path(__file__).resolve().parent / "out" / "load.md"
CATALOG_CACHE = Path(__file__).resolve().parent / "out" / "load"
MUSIC = corpus.TEST_DATA / "music"
NOISE = corpus.TEST_DATA / "noise" / "city.ogg"
APP_ID, APP_SECRET = "load-bench", "load-bench-secret"
WEBHOOK_TOKEN, ADMIN_TOKEN = "load-bench-audio-token", "load-bench-admin-token"
PASSED_SETTINGS = ("WORKERS", "THREADS")  # taken from this shell: the production defaults otherwise
KINDS = ("plain", "resent", "recognition")
KIND_NAMES = {
    "plain": "plain chunk (new, no recognition)",
    "resent": "resent chunk (answered as a duplicate)",
    "recognition": "chunk that ran a recognition",
}


@dataclass(frozen=True)
class Song:
    message: str  # the notification's song line
    pcm: bytes

    @property
    def chunks(self) -> int:
        return len(self.pcm) // CHUNK_BYTES


@dataclass
class Request:
    user: int
    sent: float  # monotonic seconds since the streams' start
    ms: float
    kind: str  # KINDS, "failed", or an answer that stored nothing ("shed", "silent")
    status: str | None = None  # the recognition's
    server_ms: float | None = None  # the recognition's own latency, as the server reports it


@dataclass
class Play:
    song: int
    first_chunk: int
    chunks: int = 0
    named_after: float | None = None  # seconds of this play streamed when a reply named it


@dataclass
class User:
    uid: str
    index: int
    first_song: int
    requests: list[Request] = field(default_factory=list)
    plays: list[Play] = field(default_factory=list)
    keys_sent: int = 0
    keys_acknowledged: int = 0
    keys_new_twice: int = 0  # one key answered as new more than once: a doubled chunk
    new_seconds: float = 0.0  # audio stored: each key answered as new (or only as a duplicate) once
    consumed_seconds: float = 0.0  # read by a recognition that matched (the buffer empties)
    dropped_seconds: float = 0.0  # fell out of MAX_BUFFER_SECONDS when a recognition read
    unstored: Counter = field(default_factory=Counter)  # acknowledged, not stored: status -> chunks
    matches: Counter = field(default_factory=Counter)  # song line -> replies naming it
    deferred: int = 0  # chunks that made a recognition due but ran none (inferred)
    due: int = 0
    failures: Counter = field(default_factory=Counter)


def _songs() -> list[Song]:
    from function.engine.song_tags import read_tags

    songs = []
    for path in sorted(MUSIC.glob("*.ogg")):
        tags = read_tags(str(path))
        songs.append(Song(song_message(tags.title, tags.artist), load_pcm16(path, RATE, noise=NOISE, snr_db=SNR_DB)))
    return songs


def catalog_tracks(root: Path) -> tuple[list[corpus.Track], list[corpus.Track], list[corpus.Track]]:
    """(the corpus's music tracks to register, the streamed excerpts, the corpus tracks left out).

    Left out: the recordings the excerpts were cut from (colobot-common-sounds holds the five
    Emxx52 songs; same title and artist). Registered beside its excerpt, one song would be two
    catalog entries splitting its votes, which a real catalog would not hold."""
    from function.engine.song_tags import read_tags

    found: dict[Path, corpus.Track] = {}
    for split in corpus.SPLITS:
        data = corpus.load(root, seed=0, quick=False, split=split)
        for track in [*data.catalog, *data.held_out]:
            found[track.path] = track
    excerpts = [corpus.Track(p, "tests/data/music", 0.0) for p in sorted(MUSIC.glob("*.ogg"))]
    streamed = {(t.title, t.artist) for t in (read_tags(str(e.path)) for e in excerpts)}
    tracks, left_out = [], []
    for track in sorted(found.values(), key=lambda t: str(t.path)):
        tags = read_tags(str(track.path))
        (left_out if (tags.title, tags.artist) in streamed else tracks).append(track)
    if len(tracks) < MIN_CATALOG_TRACKS:
        raise SystemExit(f"{root} holds {len(tracks)} music tracks to register; the load needs at least {MIN_CATALOG_TRACKS}")
    return tracks, excerpts, left_out


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_seconds() -> tuple[float, float, float]:
    """CPU seconds since boot, summed over the cores: (busy, waiting for I/O, stolen by the
    hypervisor), from /proc/stat's first line."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, iowait / tick, steal / tick


class _CpuSampler:
    """CPU use once a second while the users stream: the server's process group, the
    emulators', this process's (the users and the Omi API) and everything else on the machine
    (other people's jobs: the cores are shared), so a slow window can be matched with who had
    the cores then."""

    PARTS = ("server", "load_generator", "emulators", "other_processes", "iowait", "steal")

    def __init__(self, epoch: float, server: int, emulators: list[int]) -> None:
        self.epoch, self.server, self.emulators = epoch, server, emulators
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        busy, iowait, steal = _machine_seconds()
        server = group_cpu_seconds(self.server)
        emulators = sum(group_cpu_seconds(g) for g in self.emulators)
        own = _own_cpu_seconds()
        values = {"server": server, "load_generator": own, "emulators": emulators,
                  "other_processes": busy - server - emulators - own, "iowait": iowait, "steal": steal}
        self.samples.append((time.monotonic() - self.epoch, values))

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(max(0.0, self.epoch + k - time.monotonic())):
            self._sample()
            k += 1

    def __enter__(self) -> "_CpuSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cores(self, start: float = -math.inf, end: float = math.inf) -> dict[str, float]:
        """Mean cores each part used between the samples nearest `start` and `end` (s since epoch)."""
        inside = [(t, v) for t, v in self.samples if start - 0.5 <= t <= end + 0.5]
        if len(inside) < 2:
            return {k: float("nan") for k in self.PARTS}
        (t0, v0), (t1, v1) = inside[0], inside[-1]
        return {k: max(0.0, (v1[k] - v0[k]) / (t1 - t0)) for k in self.PARTS}


class _Cadence:
    """When the server's rule makes a recognition due (function/webhook/ingest.py): a chunk that
    brings the buffer to MIN_AUDIO_SECONDS, or after a miss RECOGNITION_STRIDE_SECONDS of new
    audio. A due chunk answered without a recognition found every slot busy. A user's requests
    are sequential, so the client can follow the store's state exactly."""

    def __init__(self, settings: Settings) -> None:
        self.min_seconds, self.stride = settings.min_audio_seconds, settings.stride_seconds
        self.attempted, self.new_since_claim = False, 0.0

    def due(self, seconds: float, buffered: float) -> bool:
        self.new_since_claim += seconds
        if buffered + 1e-6 < self.min_seconds:
            return False
        return not self.attempted or self.new_since_claim + 1e-6 >= self.stride

    def ran(self, matched: bool) -> None:
        self.attempted, self.new_since_claim = not matched, 0.0


def _stream(
    user: User,
    songs: list[Song],
    settings: Settings,
    client: httpx.Client,
    epoch: float,
    start: float,
    seconds: int,
    rng: random.Random,
) -> None:
    """`epoch`: the streams' common start, which request times count from; `start`: this user's.
    `client` is made beforehand: making 100 at once (an SSL context each) takes this process's
    GIL for a second or more, which the first requests would count as the server's latency."""
    cadence = _Cadence(settings)
    order = [(user.first_song + i) % len(songs) for i in range(len(songs))]
    timeline = [(song, c) for song in order for c in range(songs[song].chunks)]
    headers = {"Content-Type": "application/octet-stream"}
    with client:
        for k in range(seconds):
            time.sleep(max(0.0, start + k - time.monotonic()))
            song, c = timeline[k % len(timeline)]
            if c == 0 or not user.plays:
                user.plays.append(Play(song, k))
            user.plays[-1].chunks += 1
            chunk = songs[song].pcm[c * CHUNK_BYTES : (c + 1) * CHUNK_BYTES]
            key = str(uuid.uuid4())
            user.keys_sent += 1
            answered_new, answered_duplicate, acknowledged = 0, 0, False
            for copy in range(2 if rng.random() < RESEND_SHARE else 1):
                for attempt in range(1 + RETRIES):
                    sent = time.monotonic()
                    try:
                        response = client.post(
                            f"/audio?token={WEBHOOK_TOKEN}&sample_rate={RATE}&uid={user.uid}",
                            content=chunk,
                            headers={**headers, "Idempotency-Key": key},
                        )
                        status = response.status_code
                    except httpx.TransportError as exc:
                        status = type(exc).__name__
                    ms = (time.monotonic() - sent) * 1000
                    if status == 200:
                        break
                    user.requests.append(Request(user.index, sent - epoch, ms, "failed"))
                    user.failures[status] += 1
                    if status not in RETRIED_STATUSES and not isinstance(status, str):
                        break
                    time.sleep(0.2)
                if status != 200:
                    continue
                body = response.json()
                if body.get("status") != "ok":  # shed over the rate limit, or digital silence
                    user.requests.append(Request(user.index, sent - epoch, ms, body.get("status", "?")))
                    user.unstored[body.get("status", "?")] += 1
                    acknowledged = True
                    continue
                acknowledged = True
                if body["duplicate"]:
                    answered_duplicate += 1
                    user.requests.append(Request(user.index, sent - epoch, ms, "resent"))
                    continue
                answered_new += 1
                due = cadence.due(len(chunk) / (2 * RATE), body["buffered_seconds"])
                user.due += due
                recognition = body.get("recognition")
                if recognition is None:
                    user.deferred += due
                    user.requests.append(Request(user.index, sent - epoch, ms, "plain"))
                    continue
                matched = recognition["status"] == "match"
                cadence.ran(matched)
                read = recognition.get("audio_seconds", 0.0)
                user.dropped_seconds += max(0.0, body["buffered_seconds"] - read)
                user.requests.append(
                    Request(user.index, sent - epoch, ms, "recognition", recognition["status"], recognition.get("latency_ms"))
                )
                if matched:
                    user.consumed_seconds += read
                    line = song_message(recognition["title"], recognition["artist"])
                    user.matches[line] += 1
                    for play in reversed(user.plays):
                        if songs[play.song].message == line:
                            if play.named_after is None:
                                play.named_after = k - play.first_chunk + 1
                            break
            if acknowledged:
                user.keys_acknowledged += 1
            if answered_new or answered_duplicate:  # a duplicate alone: an attempt whose answer was lost stored it
                user.new_seconds += len(chunk) / (2 * RATE)
            user.keys_new_twice += answered_new > 1


def _idle_latency(url: str, chunk: bytes, count: int = IDLE_PROBES) -> list[float]:
    """Plain chunks sent one at a time to the idle server (each for a uid of its own, so none
    makes a recognition due), after one unmeasured request that opens the storage: what a
    chunk costs with nothing else running."""
    latencies = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        for k in range(count + 1):
            sent = time.monotonic()
            response = client.post(
                f"/audio?token={WEBHOOK_TOKEN}&sample_rate={RATE}&uid=idle-probe-{k}",
                content=chunk,
                headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
            )
            response.raise_for_status()
            if k:
                latencies.append((time.monotonic() - sent) * 1000)
    return latencies


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"n": len(values), "p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(max(values))}


def _overlaps(requests: list[Request]) -> tuple[np.ndarray, np.ndarray]:
    """For each request: recognition requests whose time at the server overlapped it, and
    requests in flight (its own included) when it was sent."""
    starts = np.array([r.sent for r in requests])
    ends = starts + np.array([r.ms for r in requests]) / 1000
    recognitions = np.array([r.kind == "recognition" for r in requests])
    r_starts, r_ends = np.sort(starts[recognitions]), np.sort(ends[recognitions])
    overlapping = np.searchsorted(r_starts, ends) - np.searchsorted(r_ends, starts, side="right")
    overlapping = overlapping - recognitions  # not itself
    all_starts, all_ends = np.sort(starts), np.sort(ends)
    in_flight = np.searchsorted(all_starts, starts, side="right") - np.searchsorted(all_ends, starts, side="right")
    return overlapping, in_flight


def _where_time_goes(requests: list[Request], threads: int, wall: float, cpu: _CpuSampler) -> dict:
    """Plain chunks' latency by what else was in flight, and by 10-s window."""
    overlapping, in_flight = _overlaps(requests)
    plain = [i for i, r in enumerate(requests) if r.kind == "plain"]
    by_recognitions = defaultdict(list)
    by_threads = defaultdict(list)
    for i in plain:
        by_recognitions[min(int(overlapping[i]), 3)].append(requests[i].ms)
        by_threads[f"<= {threads}" if in_flight[i] <= threads else f"> {threads}"].append(requests[i].ms)
    windows = []
    for w in range(math.ceil(wall / WINDOW_SECONDS)):
        inside = [r for r in requests if w * WINDOW_SECONDS <= r.sent < (w + 1) * WINDOW_SECONDS]
        windows.append(
            {
                "from_s": w * WINDOW_SECONDS,
                "plain": _stats([r.ms for r in inside if r.kind == "plain"]),
                "recognitions": sum(r.kind == "recognition" for r in inside),
                "server_recognition": _stats([r.server_ms for r in inside if r.kind == "recognition" and r.server_ms is not None]),
                "cores": cpu.cores(w * WINDOW_SECONDS, (w + 1) * WINDOW_SECONDS),
            }
        )
    return {
        "plain_by_recognitions_in_flight": {str(k): _stats(v) for k, v in sorted(by_recognitions.items())},
        "plain_by_requests_in_flight": {k: _stats(v) for k, v in sorted(by_threads.items())},
        "mean_requests_in_flight": float(np.mean(in_flight)) if len(in_flight) else 0.0,
        "windows": windows,
    }


def _by_song(pairs: set[tuple[str, str]]) -> str:
    return f" (by song: {dict(Counter(song for _, song in pairs).most_common())})" if pairs else ""


def _accounting(
    population: list[User], songs: list[Song], omi: OmiApi, client: httpx.Client, settings: Settings, seconds: int
) -> tuple[list[dict], dict]:
    """Every check, each with its numbers and whether it holds."""
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    # --- chunks -----------------------------------------------------------------------------
    sent = sum(u.keys_sent for u in population)
    acknowledged = sum(u.keys_acknowledged for u in population)
    doubled = sum(u.keys_new_twice for u in population)
    resends = sum(1 for u in population for r in u.requests if r.kind == "resent")
    unstored = sum((u.unstored for u in population), Counter())
    check(
        "chunks lost",
        sent == acknowledged and not unstored,
        f"{sent} chunks sent (distinct keys), {acknowledged} acknowledged, {sent - acknowledged} never acknowledged, "
        f"{sum(unstored.values())} acknowledged but not stored {dict(unstored) or ''}".rstrip(),
    )
    check(
        "chunks doubled",
        doubled == 0,
        f"{doubled} keys answered as new more than once; {resends} resends answered as duplicates",
    )
    new = consumed = dropped = buffered_total = 0.0
    unbalanced_users, worst = 0, 0.0
    for u in population:
        buffered = client.get(f"/stats/{u.uid}").json()["buffer_duration_seconds"]
        gap = u.new_seconds - u.consumed_seconds - u.dropped_seconds - buffered
        new, consumed, dropped, buffered_total = (
            new + u.new_seconds, consumed + u.consumed_seconds, dropped + u.dropped_seconds, buffered_total + buffered
        )
        if abs(gap) > 0.01:
            unbalanced_users += 1
            worst = max(worst, abs(gap))
    check(
        "audio balance",
        unbalanced_users == 0,
        f"stored (each acknowledged key once) {new:.0f} s = consumed by matches {consumed:.0f} s + dropped by the "
        f"{settings.max_buffer_seconds:g}-s buffer cap {dropped:.0f} s + still buffered {buffered_total:.0f} s "
        f"(difference {new - consumed - dropped - buffered_total:+.1f} s); users off by more than 10 ms: "
        f"{unbalanced_users} (worst {worst:+.2f} s)",
    )

    # --- notifications: the Omi API against what was played and named ------------------------
    received = omi.notifications()
    accepted: Counter = Counter()
    requested: Counter = Counter()
    refused: Counter = Counter()
    for n in received:
        pair = (n.query.get("uid"), loggable(n.query.get("message", "")))
        requested[pair] += 1
        if n.status == 200:
            accepted[pair] += 1
        else:
            refused[n.status] += 1
    windows = max(1, math.ceil(seconds / settings.notify_cooldown_seconds))  # plays NOTIFY_COOLDOWN apart
    played = {(u.uid, songs[p.song].message) for u in population for p in u.plays}
    named = {(u.uid, line) for u in population for line in u.matches}
    heard_whole = {(u.uid, songs[p.song].message) for u in population for p in u.plays if p.chunks >= songs[p.song].chunks}
    once = sum(1 for pair in heard_whole if 1 <= accepted[pair] <= windows)
    more = {pair: n for pair, n in accepted.items() if n > windows}
    asked_twice = {pair: n for pair, n in requested.items() if n > windows}
    not_played = {pair for pair in requested if pair not in played}
    never_named = {pair for pair in heard_whole if pair not in named}
    named_not_notified = {pair for pair in heard_whole & named if accepted[pair] == 0}
    check(
        "one notification per user and song",
        not more and not asked_twice and not not_played and once == len(heard_whole),
        f"{len(heard_whole)} (user, song) heard whole by {len(population)} users ({len(played)} heard at all); "
        f"notified once: {once}; more than once: {len(more)} (sent to Omi more than once: {len(asked_twice)}); "
        f"for a song the user was not playing: {len(not_played)}; heard whole but not notified: "
        f"{len(heard_whole) - once - len(more)} = never named {len(never_named)} + named but not notified "
        f"{len(named_not_notified)}{_by_song(never_named | named_not_notified)}",
    )
    per_user = Counter(uid for (uid, _), n in accepted.items() for _ in range(n))
    check(
        f"Omi's {NOTIFICATION_LIMIT - 1} notifications per user and hour",
        not refused and max(per_user.values(), default=0) <= NOTIFICATION_LIMIT - 1,
        f"most taken for one user: {max(per_user.values(), default=0)}; refused by the Omi API: "
        f"{dict(refused) or 0} ({sum(requested.values())} requests, {sum(accepted.values())} taken)",
    )

    # --- /history: one row per song play, notified when Omi took it ----------------------------
    rows_per_pair: Counter = Counter()
    notified_in_history: set[tuple[str, str]] = set()
    statuses: Counter = Counter()
    for u in population:
        for row in client.get(f"/history/{u.uid}", params={"limit": 200}).json()["songs"]:
            pair = (u.uid, song_message(row["title"] or "", row["artist"] or ""))
            rows_per_pair[pair] += 1
            statuses[row["notification"]] += 1
            if row["notified"]:
                notified_in_history.add(pair)
    taken = {pair for pair, n in accepted.items() if n}
    history_mismatch = len(notified_in_history ^ taken)
    check(
        "history_mismatch: notified songs in /history vs notifications Omi took",
        history_mismatch == 0,
        f"{len(notified_in_history)} notified rows, {len(taken)} (user, song) taken by Omi, "
        f"{len(notified_in_history - taken)} only in /history, {len(taken - notified_in_history)} only at Omi",
    )
    extra_rows = {pair: n for pair, n in rows_per_pair.items() if n > windows}
    check(
        "one /history row per song play",
        not extra_rows and set(rows_per_pair) == named,
        f"{sum(rows_per_pair.values())} rows for {len(rows_per_pair)} (user, song); with more rows than plays: "
        f"{len(extra_rows)}; named by a reply but no row: {len(named - set(rows_per_pair))}; "
        f"row never named in a reply: {len(set(rows_per_pair) - named)}; rows by notification: {dict(statuses)}",
    )

    # --- /metrics: counters against what the users saw ------------------------------------------
    metrics = client.get("/metrics").json()
    seen = Counter(r.status for u in population for r in u.requests if r.kind == "recognition")
    attempts = seen["match"] + seen["no_match"]
    sent_counted = metrics["notifications"].get("sent", 0)
    check(
        "/metrics counters vs replies",
        metrics["recognition_attempts"] == attempts and metrics["matches"] == seen["match"]
        and sent_counted == sum(accepted.values()),
        f"attempts {metrics['recognition_attempts']} counted / {attempts} in replies "
        f"(other statuses: {dict((k, v) for k, v in seen.items() if k not in ('match', 'no_match')) or 0}); "
        f"matches {metrics['matches']} / {seen['match']}; notifications sent {sent_counted} / "
        f"{sum(accepted.values())} taken by Omi; all notification outcomes counted: {metrics['notifications']}",
    )
    named_after = [
        p.named_after for u in population for p in u.plays if p.named_after is not None and p.chunks >= songs[p.song].chunks
    ]
    facts = {
        "plays": len(heard_whole),
        "notified_once": once,
        "notified_more_than_once": len(more),
        "notified_not_played": len(not_played),
        "named_plays": len(named_after),
        "named_after_seconds": _stats(named_after),
        "notifications_taken": sum(accepted.values()),
        "history_mismatch": history_mismatch,
        "metrics": {k: metrics[k] for k in ("recognition_attempts", "matches", "notifications", "latency_ms")},
    }
    return checks, facts


def run(
    backend: str, users: int, minutes: float, songs: list[Song], catalog: Path, work: Path, stack: ExitStack
) -> dict:
    omi = OmiApi(app_secret=APP_SECRET, app_id=APP_ID)
    omi.start()
    stack.callback(omi.stop)
    env = {
        **revisions.engine_env(),
        **{k: os.environ[k] for k in PASSED_SETTINGS if k in os.environ},
        "STORAGE_BACKEND": backend,
        "DATA_DIR": str(work / f"data-{backend}"),
        "CATALOG_URI": str(catalog),
        "OMI_APP_ID": APP_ID,
        "OMI_APP_SECRET": APP_SECRET,
        "OMI_API_URL": omi.url,
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    emulator_groups: list[int] = []
    if backend == "gcp":
        emulators = stack.enter_context(running_emulators(work))
        emulator_groups = [emulators.firestore.pid, emulators.gcs.pid]
        project, bucket = f"load-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
        env.update(emulators.env, GOOGLE_CLOUD_PROJECT=project, GCS_BUCKET=bucket)
        os.environ.update(emulators.env)
        from google.cloud import storage

        storage.Client(project=project).create_bucket(bucket)
    settings = Settings.from_env(env)
    served: Served = stack.enter_context(running_function(env, work / f"function-{backend}.log"))
    threads = int(env.get("THREADS", (os.cpu_count() or 1) * 4))

    idle = _stats(_idle_latency(served.url, songs[0].pcm[:CHUNK_BYTES]))
    rng = random.Random(5)
    population = [User(f"user-{i:03d}", i, i % len(songs)) for i in range(users)]
    seconds = max(1, int(minutes * 60))
    clients = [httpx.Client(base_url=served.url, timeout=REQUEST_TIMEOUT_SECONDS) for _ in population]
    start = time.monotonic() + 1.0
    workers = [
        threading.Thread(
            target=_stream, args=(u, songs, settings, clients[i], start, start + i / users, seconds, random.Random(rng.random()))
        )
        for i, u in enumerate(population)
    ]
    with _CpuSampler(start, served.process_group, emulator_groups) as cpu:
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=seconds + 120)  # bounded even if the server stalls
        wall = time.monotonic() - start
    cores = cpu.cores(0.0)

    with httpx.Client(base_url=served.url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        checks, facts = _accounting(population, songs, omi, client, settings, seconds)
    requests = sorted((r for u in population for r in u.requests), key=lambda r: r.sent)
    latency = {kind: _stats([r.ms for r in requests if r.kind == kind]) for kind in KINDS}
    latency["without recognition"] = _stats([r.ms for r in requests if r.kind in ("plain", "resent")])
    server_ms = [r.server_ms for r in requests if r.kind == "recognition" and r.server_ms is not None]
    return {
        "backend": backend,
        "users": users,
        "seconds": round(wall, 1),
        "threads": threads,
        "workers": int(env.get("WORKERS", 1)),
        "settings": {
            "min_audio_seconds": settings.min_audio_seconds,
            "stride_seconds": settings.stride_seconds,
            "max_buffer_seconds": settings.max_buffer_seconds,
            "notify_cooldown_seconds": settings.notify_cooldown_seconds,
            "notify_hourly_limit": settings.notify_hourly_limit,
        },
        "requests": len(requests),
        "requests_per_second": len(requests) / wall,
        "latency_ms": latency,
        "idle_plain_ms": idle,
        "recognition_statuses": dict(Counter(r.status for r in requests if r.kind == "recognition")),
        "server_recognition_ms": _stats(server_ms),
        "due": sum(u.due for u in population),
        "deferred": sum(u.deferred for u in population),
        "failed_requests": dict(sum((u.failures for u in population), Counter())),
        "cores": cores,
        "cpu_seconds_per_user_hour": cores["server"] * 3600 / users,
        "checks": checks,
        **facts,
        "where": _where_time_goes(requests, threads, wall, cpu),
        "raw_requests": [[r.user, round(r.sent, 4), round(r.ms, 2), r.kind, r.status, r.server_ms] for r in requests],
    }


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _four(s: dict) -> str:
    return " / ".join(_ms(s[k]) for k in ("p50", "p95", "p99", "max"))


def report(results: list[dict], machine: dict[str, str], minutes: float, command: str, catalog_note: str, served: str) -> str:
    first = results[0]
    s = first["settings"]
    lines = [
        "## Load: simulated Omi users streaming to the function (`python -m bench.load`)",
        "",
        f"{machine['date']}; {machine['cpu']}, {machine['cores']} cores, {machine['ram']}; Python {machine['python']}. "
        f"Command: `{command}`. Served: {served}. Server, load generator, loopback Omi API and (gcp) emulators "
        f"share this machine with whatever else runs on it (its CPU is in the second table). {catalog_note} "
        f"{minutes:g} min per backend: each user plays the {first['songs']} excerpts in turn (20 s each, users "
        f"starting at different ones) under street noise at {SNR_DB:g} dB SNR, as 1-s chunks sent in real time, "
        f"{RESEND_SHARE:.0%} of them resent with their Idempotency-Key. The function: {first['workers']} gunicorn "
        f"worker(s) of {first['threads']} threads, at most one recognition per core at once, first attempt at "
        f"{s['min_audio_seconds']:g} s of audio, then every {s['stride_seconds']:g} s over the whole buffer (cap "
        f"{s['max_buffer_seconds']:g} s) until a song is named; a song is notified once per "
        f"{s['notify_cooldown_seconds']:g} s, at most {s['notify_hourly_limit']} an hour.",
        "",
        "Client-side latency of POST /audio, ms (p50 / p95 / p99 / max, n):",
        "",
        "| backend | users | " + " | ".join(KIND_NAMES[k] for k in KINDS) + " | all without recognition "
        "| before the load: plain chunks one at a time to the idle server |",
        "| --- | --- | " + " | ".join("---" for _ in KINDS) + " | --- | --- |",
    ]
    for r in results:
        cells = [f"{_four(r['latency_ms'][k])} ({r['latency_ms'][k]['n']})" for k in (*KINDS, "without recognition")]
        cells.append(f"{_four(r['idle_plain_ms'])} ({r['idle_plain_ms']['n']})")
        lines.append(f"| {r['backend']} | {r['users']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"| backend | users | requests/s | CPU cores: server / load generator / emulators / other processes = all, of "
        f"{machine['cores']} (iowait, steal) | "
        "server CPU s per user-hour | recognitions (by status) | server-side recognition ms p50 / p95 / p99 / max | "
        "recognitions due but deferred (every slot busy) | failed requests | plays named, seconds of the song "
        "heard p50 / p95 / max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        c = r["cores"]
        named = r["named_after_seconds"]
        lines.append(
            f"| {r['backend']} | {r['users']} | {r['requests_per_second']:.1f} | {c['server']:.2f} / "
            f"{c['load_generator']:.2f} / {c['emulators']:.2f} / {c['other_processes']:.2f} = "
            f"{c['server'] + c['load_generator'] + c['emulators'] + c['other_processes']:.2f} ({c['iowait']:.2f}, "
            f"{c['steal']:.2f}) | "
            f"{r['cpu_seconds_per_user_hour']:.0f} | {sum(r['recognition_statuses'].values())} "
            f"{r['recognition_statuses']} | {_four(r['server_recognition_ms'])} | {r['deferred']} of {r['due']} | "
            f"{r['failed_requests'] or 0} | {r['named_plays']}/{r['plays']}, {_ms(named['p50'])} / "
            f"{_ms(named['p95'])} / {_ms(named['max'])} |"
        )
    lines += ["", "Accounting checks:", ""]
    for r in results:
        for c in r["checks"]:
            lines.append(f"- {r['backend']}, {r['users']} users: {'ok' if c['ok'] else 'FAILED'}: {c['check']}: {c['detail']}")
    lines += ["", "Goals (issue 11, item 9):", "", "| goal | " + " | ".join(f"{r['backend']} ({r['users']} users)" for r in results) + " |",
              "| --- | " + " | ".join("---" for _ in results) + " |"]
    goal_rows = [
        (f"ingest p99 <= {TARGET_P99_INGEST_MS:.0f} ms while recognitions run (chunks without a recognition)",
         lambda r: (r["latency_ms"]["without recognition"]["p99"] or math.inf) <= TARGET_P99_INGEST_MS,
         lambda r: f"{_ms(r['latency_ms']['without recognition']['p99'])} ms"),
        ("0 chunks lost or doubled",
         lambda r: all(c["ok"] for c in r["checks"] if c["check"] in ("chunks lost", "chunks doubled", "audio balance")),
         lambda r: "; ".join(c["detail"].split(";")[0] for c in r["checks"] if c["check"] in ("chunks lost", "chunks doubled"))),
        ("one notification per user and song",
         lambda r: next(c["ok"] for c in r["checks"] if c["check"] == "one notification per user and song"),
         lambda r: f"{r['notified_once']} of {r['plays']} songs heard whole notified once, {r['notified_more_than_once']} more "
         f"than once, {r['notified_not_played']} for a song not played ({r['notifications_taken']} notifications in all)"),
    ]
    for name, ok, figure in goal_rows:
        lines.append(f"| {name} | " + " | ".join(f"{'met' if ok(r) else 'NOT met'}: {figure(r)}" for r in results) + " |")
    lines += ["", "Where plain chunks' time goes (p50 / p95 / p99 / max ms, n):", ""]
    for r in results:
        w = r["where"]
        by_rec = "; ".join(f"{k if k != '3' else '3+'}: {_four(v)} ({v['n']})" for k, v in w["plain_by_recognitions_in_flight"].items())
        by_threads = "; ".join(f"{k}: {_four(v)} ({v['n']})" for k, v in w["plain_by_requests_in_flight"].items())
        timeline = "; ".join(
            f"{x['from_s']}-{x['from_s'] + WINDOW_SECONDS} s: p99 {_ms(x['plain']['p99'])}, {x['recognitions']} "
            f"recognitions (server p99 {_ms(x['server_recognition']['p99'])}), cores server "
            f"{x['cores']['server']:.2f} / others {x['cores']['other_processes']:.2f}"
            for x in w["windows"] if x["plain"]["n"]
        )
        lines += [
            f"- {r['backend']}, {r['users']} users: by recognitions in flight at the server while it was: {by_rec}.",
            f"  By requests in flight when it was sent, against the server's {r['threads']} threads: {by_threads} "
            f"(mean in flight {w['mean_requests_in_flight']:.1f}).",
            f"  By {WINDOW_SECONDS}-s window (plain p99 ms; recognitions run and their server-side p99 ms; CPU cores "
            f"of the server and of other people's processes): {timeline}.",
        ]
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--backends", default="local,gcp")
    parser.add_argument("--gcp-users", type=int, help="users for the gcp backend (default: --users)")
    parser.add_argument("--corpus", type=Path, required=True, help="the benchmark corpus (python -m bench.corpus_build)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    machine = describe()
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    served = revisions.working_tree().name
    tracks, excerpts, left_out = catalog_tracks(args.corpus)
    catalog, _, built = catalog_build.real_catalog([*tracks, *excerpts], CATALOG_CACHE)
    hours = sum(t.seconds for t in tracks) / 3600
    catalog_note = (
        f"Catalog: {len(tracks) + len(excerpts)} tracks: {len(tracks)} music tracks of the corpus at {args.corpus} "
        f"({hours:.1f} h, both splits and the held-out packages: none of it is streamed, it is there for size; "
        f"left out: {', '.join(t.path.name for t in left_out) or 'none'} of {', '.join(sorted({t.package for t in left_out})) or '-'}, "
        f"the recordings the excerpts were cut from) plus the {len(excerpts)} streamed excerpts of tests/data/music; "
        f"registered in {built['built_seconds']:.0f} s on {built['workers']} workers ({built['built']})."
    )
    print(catalog_note, flush=True)
    songs = _songs()
    results = []
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        for backend in args.backends.split(","):
            users = args.gcp_users if backend == "gcp" and args.gcp_users else args.users
            work = Path(tmp) / backend
            work.mkdir()
            with ExitStack() as stack:
                result = run(backend, users, args.minutes, songs, catalog, work, stack)
            result["songs"] = len(songs)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("where", "raw_requests")}, default=str), flush=True)
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, machine, args.minutes, command, catalog_note, served)
    text += f"\nWall time of the whole command: {time.monotonic() - started:.0f} s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
