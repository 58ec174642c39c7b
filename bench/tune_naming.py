"""Set the webhook's naming threshold on the dev split: confidence trajectories of whole streams.

`python -m bench.tune_naming --corpus /tmp/corpus --split dev [--streams-per-condition 12]`

Every stream of bench/streams.py's conditions is attempted in-process exactly as the webhook's
cadence does it (function/config.py, from the environment as the webhook reads it, so another
cadence can be tried: the first attempt after MIN_AUDIO_SECONDS, then
every RECOGNITION_STRIDE_SECONDS, each vote over the whole buffer up to MAX_BUFFER_SECONDS), and
every attempt's best guess and confidence is kept. For each candidate threshold the table shows
what naming at it would have given: songs named right, the median seconds until then, and
wrong names, per condition. The threshold in function/webhook/naming.py is read off this table
on the dev split only; `python -m bench.streams --split test` then reports it out of sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench import catalog_build, corpus, machine
from bench.streams import CONDITIONS, Stream, plan, render_stream
from function.config import Settings
from function.engine.recogniser import Recogniser
from function.progress import Progress

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.91, 0.05))
RATE = 16000


def trajectory(recogniser: Recogniser, pcm: bytes, settings: Settings) -> list[tuple[float, str | None, float]]:
    """(seconds of audio so far, best guess's song_id, confidence) at every attempt."""
    samples = np.frombuffer(pcm, dtype="<i2")
    total = len(samples) / RATE
    out = []
    at = settings.min_audio_seconds
    while at <= total + 1e-9:
        first = max(0.0, at - settings.max_buffer_seconds)
        guess, confidence = recogniser.best_guess(samples[int(first * RATE) : int(at * RATE)], RATE)
        out.append((at, guess.song_id if guess else None, round(confidence, 4)))
        at += settings.stride_seconds
    return out


def named_at(path: list[tuple[float, str | None, float]], threshold: float) -> tuple[float | None, str | None]:
    for seconds, song, confidence in path:
        if song is not None and confidence >= threshold:
            return seconds, song
    return None, None


def table(results: list[tuple[Stream, str | None, list]], thresholds: tuple[float, ...]) -> list[str]:
    rows = ["| threshold | condition | streams | named right | median s | wrong |", "| --- | --- | --- | --- | --- | --- |"]
    for threshold in thresholds:
        for kind, scene in CONDITIONS:
            group = [(truth, path) for s, truth, path in results if (s.kind, s.scene) == (kind, scene)]
            right, wrong, seconds = 0, 0, []
            for truth, path in group:
                at, song = named_at(path, threshold)
                if song is None:
                    continue
                if song == truth:
                    right += 1
                    seconds.append(at)
                elif not (truth is None and kind == "known"):
                    wrong += 1
            median = f"{np.median(seconds):.0f}" if seconds else "-"
            shown = f"{right}" if kind == "known" else "-"
            rows.append(f"| {threshold:.2f} | {kind}: {scene} | {len(group)} | {shown} | {median} | {wrong} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tune_naming", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", choices=corpus.SPLITS, default="dev")
    p.add_argument("--streams-per-condition", type=int, default=12)
    p.add_argument("--seconds", type=int, default=45)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/tune_naming"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    material = corpus.load(args.corpus, args.seed, quick=False, split=args.split)
    index, truth_of, _ = catalog_build.real_catalog(material.catalog, args.out)
    recogniser = Recogniser.open(str(index))
    catalog = recogniser.catalog
    settings = Settings.from_env()
    streams = plan(material, args.streams_per_condition, args.seed)
    bar = Progress(len(streams), "streams")
    results = []
    for stream in streams:
        pcm, _ = render_stream(stream, material, args.seconds)
        truth = None
        if stream.kind == "known" and stream.track is not None:
            own = truth_of.get(str(stream.track.path.resolve()))
            truth = catalog.head(catalog.index_of(own)).song_id if own else None
        results.append((stream, truth, trajectory(recogniser, pcm, settings)))
        bar.step()
    (args.out / f"trajectories-{args.split}.json").write_text(
        json.dumps([{"kind": s.kind, "scene": s.scene, "index": s.index, "truth": t, "attempts": path} for s, t, path in results])
    )
    m = machine.describe()
    text = "\n".join(
        [
            f"## Naming threshold on the {args.split} split (`python -m bench.tune_naming --split {args.split}`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores. Cadence: first attempt at {settings.min_audio_seconds:g} s,"
            f" then every {settings.stride_seconds:g} s over the buffer (at most {settings.max_buffer_seconds:g} s);"
            f" {args.seconds} s per stream.",
            "",
            *table(results, THRESHOLDS),
            "",
        ]
    )
    print(text)
    (args.out / f"tune-{args.split}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
