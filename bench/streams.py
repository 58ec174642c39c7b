"""Whole streams through the real webhook, as a wearer meets them, for the working tree and a
baseline revision side by side.

    python -m bench.streams --corpus /tmp/corpus --split test --baseline-rev d02d65c
        [--streams-per-condition 24] [--seconds 45] [--out bench/out/streams] [--seed 1] [--quick]

Black box, over HTTP: each engine is a source tree (the working tree; the baseline revision
checked out with `git worktree add` under --out) that registers the split's catalog with its
own `python -m function register` and serves it with functions-framework on a loopback port,
with DATA_DIR and CATALOG_URI its only settings (no OMI_APP_ID: notifications are only logged).
So a revision is measured as shipped, with its own catalog format, cadence, naming rule and
defaults, and any two revisions compare, even ones whose engine this code could not import.

Each stream is sent as Omi's developer path sends audio: PCM16 mono at 16 kHz in 1-s POSTs with
`Content-Type: application/octet-stream`, a uuid4 `Idempotency-Key` each and a fresh uid per
stream; Omi's 5-s batches are such POSTs one after the other, and nothing waits for real time.
A stream stops at --seconds or at the first response whose recognition is a match: that is the
notification the user gets, so the seconds of audio sent until then are the user's wait.

Streams are rendered by bench/wearer.py from the split's tracks (bench/corpus.py): known songs
from a seeded offset (with the lead the room's reverb needs), unknown music, and no music at
all. They are paired: stream i of a kind plays the same song from the same offset, and draws
the same room, talkers and noise, in every scene, so scenes differ by their condition alone.
Reported per condition and engine: streams, named right, the median seconds until a right name,
wrong names, and for unknown music and no music the one-sided 95 % upper bound on the
per-stream rate of wrong notifications (Clopper-Pearson; about 3/n when none of n was wrong).
The defaults (22 conditions x 24 streams of up to 45 s, two engines) took 25 minutes on two
shared cores beside other work (2026-12-07), most of it rendering the diffuse rooms' ray-traced
responses, plus about 1.5 minutes the first time, to register the catalog with each engine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
from scipy.stats import beta

from bench import corpus, machine, revisions
from bench.harness import running_function
from bench.audio import WORK_RATE, excerpt_with_context, to_pcm16
from bench.wearer import LEAD_SECONDS, PARTY_SCENE, REVERBERANT_SCENE, SCENES, TARGET_SCENE, render
from function.progress import Progress

# Which scenes each kind of stream is heard in. Unknown music: the plain case, and the
# scenes most likely to push a wrong song over the line (the rooms, where few landmarks survive).
CONDITIONS: tuple[tuple[str, str], ...] = (
    *(("known", name) for name, s in SCENES.items() if s.music),
    *(("unknown", name) for name in ("clean", "crowd 0 dB + opus", TARGET_SCENE, REVERBERANT_SCENE, PARTY_SCENE)),
    *(("none", name) for name, s in SCENES.items() if not s.music),
)
NOT_TARGETS = {"big hall + talk"}  # reported for what it is, not a condition the engine must meet
# Every stream reads this much more music than it plays, so a faster playback has its music too
# and a song's offset is the same in every scene.
SPEED_HEADROOM = max(s.speed for s in SCENES.values())
CHUNK_SECONDS = 1
RETRY_WAITS = (1.0, 5.0, 30.0)  # Omi's retries of a timed-out, 5xx, 408 or 429 POST
HEALTH_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Stream:
    kind: str  # "known", "unknown" (music not in the catalog) or "none" (no music)
    scene: str
    index: int
    seed: int  # the same for stream `index` of `kind` in every scene
    track: corpus.Track | None
    second: corpus.Track | None  # the other song of a two-song scene


@dataclass(frozen=True)
class Outcome:
    kind: str
    scene: str
    index: int
    engine: str
    track: str | None
    start_seconds: float | None
    named: str | None  # song_id of the first match
    seconds: int | None  # audio sent until it
    verdict: str  # "right", "other song" (a two-song scene's second song), "wrong" or "none"


@contextmanager
def _serving(engine: revisions.Engine, catalog: Path, log: Path) -> Iterator[str]:
    """The engine's main.py under functions-framework on a free loopback port, until healthy
    (storage answers and the catalog is loaded); stopped and its data removed afterwards."""
    data = tempfile.mkdtemp(prefix="bench-streams-")
    env = {**revisions.engine_env(), "DATA_DIR": data, "CATALOG_URI": str(catalog)}
    try:
        with running_function(env, log, tree=engine.tree, healthy=True, start_seconds=HEALTH_TIMEOUT_SECONDS) as served:
            yield served.url
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _post(client: httpx.Client, uid: str, chunk: bytes) -> dict:
    """One POST as Omi sends it, retried as Omi retries it (same Idempotency-Key)."""
    key = str(uuid.uuid4())
    for wait in (*RETRY_WAITS, None):
        try:
            response = client.post(
                f"/audio?sample_rate={WORK_RATE}&uid={uid}",
                content=chunk,
                headers={"Content-Type": "application/octet-stream", "Idempotency-Key": key},
            )
            if response.status_code == 200:
                return response.json()
            retryable = response.status_code >= 500 or response.status_code in (408, 429)
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TimeoutException as exc:
            retryable, problem = True, f"timeout: {exc}"
        if not retryable or wait is None:
            raise RuntimeError(f"POST /audio failed ({problem}): Omi would have dropped this batch")
        time.sleep(wait)
    raise AssertionError("unreachable")


def _send(client: httpx.Client, pcm: bytes) -> tuple[str | None, int | None]:
    """The stream's 1-s POSTs until a match: (song_id, seconds of audio sent), or (None, None)."""
    uid = f"bench-{uuid.uuid4().hex}"
    size = CHUNK_SECONDS * WORK_RATE * 2
    for k in range(0, len(pcm), size):
        recognition = _post(client, uid, pcm[k : k + size]).get("recognition") or {}
        if recognition.get("status") == "match":
            return recognition["song_id"], (k + size) // (2 * WORK_RATE)
    return None, None


def plan(material: corpus.Corpus, n: int, seed: int) -> list[Stream]:
    """n streams per condition; stream i of a kind is the same song (and seed) in every scene."""
    pools = {"known": material.known, "unknown": material.held_out, "none": []}
    streams = []
    for kind, scene in CONDITIONS:
        tracks = pools[kind]
        order = np.random.default_rng([seed, zlib.crc32(kind.encode())]).permutation(len(tracks))
        for i in range(n):
            stream_seed = int(np.random.SeedSequence([seed, zlib.crc32(kind.encode()), i]).generate_state(1)[0])
            track = tracks[order[i % len(tracks)]] if tracks else None
            second = tracks[order[(i + len(tracks) // 2) % len(tracks)]] if SCENES[scene].second_song_db is not None else None
            streams.append(Stream(kind, scene, i, stream_seed, track, second))
    return streams


def render_stream(stream: Stream, material: corpus.Corpus, seconds: int) -> tuple[bytes, float | None]:
    """The stream as PCM16 bytes, and where in its song it starts."""
    rng = np.random.default_rng(stream.seed)
    length = seconds * SPEED_HEADROOM + 0.1
    start = None
    if stream.track is None:
        music = np.zeros(int((LEAD_SECONDS + length) * WORK_RATE), np.float32)
    else:
        music, start = excerpt_with_context(str(stream.track.path), stream.track.seconds, length, LEAD_SECONDS, rng)
    second = None
    if stream.second is not None:
        second, _ = excerpt_with_context(str(stream.second.path), stream.second.seconds, length, LEAD_SECONDS, rng)
    audio = render(music, SCENES[stream.scene], stream.seed, material, second)[: seconds * WORK_RATE]
    return to_pcm16(audio).tobytes(), start


def _verdict(stream: Stream, named: str | None, truth: dict[str, str]) -> str:
    if named is None:
        return "none"
    if stream.track is not None and named == truth.get(str(stream.track.path.resolve())):
        return "right"
    if stream.second is not None and named == truth.get(str(stream.second.path.resolve())):
        return "other song"
    return "wrong"


def upper_bound_95(wrong: int, n: int) -> float:
    """One-sided 95 % Clopper-Pearson upper bound on a rate seen `wrong` times in n."""
    return 1.0 if wrong >= n else float(beta.ppf(0.95, wrong + 1, n - wrong))


def summarise(outcomes: list[Outcome], engines: list[str]) -> list[dict]:
    rows = []
    for kind, scene in CONDITIONS:
        for engine in engines:
            mine = [o for o in outcomes if o.kind == kind and o.scene == scene and o.engine == engine]
            if not mine:
                continue
            # From the start of the song: a scene whose song starts after talk counts from then.
            right = [o.seconds - SCENES[scene].music_after for o in mine if o.verdict == "right"]
            wrong = sum(o.verdict == "wrong" for o in mine)
            rows.append({
                "kind": kind, "scene": scene, "engine": engine, "streams": len(mine), "right": len(right),
                "median_seconds_right": float(np.median(right)) if right else None,
                "other_song": sum(o.verdict == "other song" for o in mine), "wrong": wrong,
                "wrong_upper_95": None if kind == "known" else upper_bound_95(wrong, len(mine)),
            })
    return rows


MUSIC = {"known": "catalogued song", "unknown": "unknown music", "none": "no music"}


def markdown(rows: list[dict], info: dict[str, str], command: str, setup: str, seconds: int) -> str:
    lines = [
        "## Streams: what a wearer meets, through the webhook (`python -m bench.streams`)",
        "",
        f"{info['date']}; {info['cpu']}, {info['cores']} cores, {info['ram']}; Python {info['python']}."
        f" Command: `{command}`. {setup}",
        "",
        f"Each stream is up to {seconds} s of audio sent as 1-s POSTs; it is named by the first response"
        " with a match (the user's notification). Seconds are audio sent until a right name, from the"
        " start of the song (the scene whose song starts after talk counts from then). Wrong"
        " names are matches to any song but the one playing; for unknown music and no music every"
        " match is wrong, with the one-sided 95 % upper bound on the per-stream rate (Clopper-Pearson)."
        " Scenes marked * are reported, not targets.",
        "",
        "| music | scene | engine | streams | named right | median s to right name | named the other song | wrong names | wrong rate, 95 % upper bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        median = "-" if r["median_seconds_right"] is None else f"{r['median_seconds_right']:.0f}"
        other = str(r["other_song"]) if SCENES[r["scene"]].second_song_db is not None else "-"
        bound = "-" if r["wrong_upper_95"] is None else f"{100 * r['wrong_upper_95']:.0f} %"
        right = "-" if r["kind"] != "known" else str(r["right"])
        scene = r["scene"] + (" *" if r["scene"] in NOT_TARGETS else "")
        lines.append(
            f"| {MUSIC[r['kind']]} | {scene} | {r['engine']} | {r['streams']} | {right} | {median} | {other} | {r['wrong']} | {bound} |"
        )
    return "\n".join(lines) + "\n"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, help="fetched corpus; --quick without it uses tests/data")
    p.add_argument("--split", choices=corpus.SPLITS, default=corpus.DEFAULT_SPLIT)
    p.add_argument("--baseline-rev", help="also measure this git revision (e.g. d02d65c), as shipped")
    p.add_argument("--streams-per-condition", type=int, help="default 24 (quick: 1)")
    p.add_argument("--seconds", type=int, help="most audio per stream, whole seconds (default 45, quick: 15)")
    p.add_argument("--out", type=Path, default=Path("bench/out/streams"), help="report, JSON, logs, catalogs, worktrees")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke run: few tracks, one stream per condition")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.perf_counter()
    n = args.streams_per_condition or (1 if args.quick else 24)
    seconds = args.seconds or (15 if args.quick else 45)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine.describe()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), file=sys.stderr)
    material = corpus.load(args.corpus, args.seed, args.quick, args.split)
    print(material.describe(), file=sys.stderr)

    engines = [revisions.working_tree()] + ([revisions.baseline(args.baseline_rev, args.out)] if args.baseline_rev else [])
    catalogs = {e.name: revisions.catalog(e, material.catalog, args.out) for e in engines}
    streams = plan(material, n, args.seed)
    outcomes: list[Outcome] = []
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=len(engines) + 1) as pool:
        clients = {}
        for i, e in enumerate(engines):
            url = stack.enter_context(_serving(e, catalogs[e.name][0], args.out / f"server-{i}.log"))
            clients[e.name] = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        bar = Progress(len(streams), "streams")
        rendering = pool.submit(render_stream, streams[0], material, seconds)
        for j, stream in enumerate(streams):
            pcm, start = rendering.result()
            if j + 1 < len(streams):  # render the next stream while the servers work on this one
                rendering = pool.submit(render_stream, streams[j + 1], material, seconds)
            sent = {name: pool.submit(_send, client, pcm) for name, client in clients.items()}
            for name, future in sent.items():
                named, after = future.result()
                track = None if stream.track is None else str(stream.track.path)
                verdict = _verdict(stream, named, catalogs[name][1])
                outcomes.append(Outcome(stream.kind, stream.scene, stream.index, name, track, start, named, after, verdict))
            bar.step(len(pcm) / (2 * WORK_RATE))

    rows = summarise(outcomes, [e.name for e in engines])
    command = "python -m bench.streams " + shlex.join(sys.argv[1:] if argv is None else argv)
    setup = (
        f"{material.describe()}. Engines: {'; '.join(f'{e.name} at {e.tree}' for e in engines)}; each registers"
        f" the catalog with its own CLI and runs with its own defaults. {len(streams)} streams in"
        f" {time.perf_counter() - started:.0f} s."
    )
    text = markdown(rows, info, command, setup, seconds)
    print(text)
    (args.out / "streams.md").write_text(text)
    results = {"machine": info, "command": command, "setup": setup, "rows": rows, "streams": [asdict(o) for o in outcomes]}
    (args.out / "streams.json").write_text(json.dumps(results, indent=1))
    print(f"done in {time.perf_counter() - started:.0f} s; streams.md and streams.json in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
