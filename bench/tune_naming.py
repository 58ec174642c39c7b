"""Set the naming thresholds on the dev split: the vote's evidence along whole streams.

`python -m bench.tune_naming --corpus /tmp/corpus --split dev [--streams-per-condition 12] [--record]`
`python -m bench.tune_naming --replay [--split dev] [--record]`: the report again from the last
run's trajectories (bench/out/tune_naming), after a threshold in the code was changed.
`python -m bench.tune_naming ... --set neighbour_gap_frames=0 --record`: the same streams with
another value of one of SETTABLE, how a query is voted (the catalog is the same), recorded
as bench/tuning/naming-<split>-<field>-<value>.md beside the run with the engine's own values.

Every stream of bench/streams.py's conditions is attempted in-process exactly as the webhook's
cadence does it (function/config.py, from the environment as the webhook reads it, so another
cadence can be tried: the first attempt after MIN_AUDIO_SECONDS, then every
RECOGNITION_STRIDE_SECONDS, each vote over the whole buffer up to MAX_BUFFER_SECONDS), through
the recogniser's own vote (Recogniser.best_vote: neighbours and the speed retry included), and
every attempt's best song, confidence, gap, surprise and rival are kept.

What it prints, and with --record writes to bench/tuning/naming-<split>.md:
- for each candidate confidence threshold, what naming at it would have given per condition:
  songs named right, the median seconds of audio until then, wrong names;
- the negative streams' evidence (unknown music and no music): the highest gap of each stream,
  the chance that a negative stream ever reaches a threshold's gap (an exponential fitted to
  the highest dozen per-stream maxima, the tail of a maximum), and the rival's distribution,
  which sets EngineConfig.rival_floor.
The thresholds (EngineConfig.threshold, function/webhook/naming.py's NAME_AT) are read off this
on the dev split only; `python -m bench.streams --split test` then reports them out of sample.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import catalog_build, corpus, machine
from bench.streams import CONDITIONS, Stream, plan, render_stream
from bench.wearer import SCENES
from function.config import Settings
from function.engine.config import CONFIG
from function.engine.catalog import Catalog
from function.engine.recogniser import Recogniser
from function.progress import Progress
from function.webhook.naming import NAME_AT

THRESHOLDS = (0.5, 0.55, 0.6, 0.63, 0.65, 0.7, 0.75, 0.8)
RATE = 16000
TAIL = 12  # per-stream maxima the exponential tail is fitted to
RECORDS = Path(__file__).resolve().parent / "tuning"
# The EngineConfig fields --set may change: how a query is voted, not the hash space (a frozen
# field would need the catalog registered again) nor what reads the vote (the thresholds, which
# this run sets).
SETTABLE = {"neighbour_gap_frames": int, "sure_without_neighbours": float, "speed_window_seconds": float}


@dataclass(frozen=True)
class Attempt:
    seconds: float  # of audio so far
    song: str | None  # the best vote's song (its first version's id)
    confidence: float
    gap: float
    surprise: float
    rival: float


def trajectory(recogniser: Recogniser, pcm: bytes, settings: Settings) -> list[Attempt]:
    """Every attempt the webhook's cadence makes on the stream, with its vote's evidence."""
    samples = np.frombuffer(pcm, dtype="<i2")
    total = len(samples) / RATE
    out = []
    at = settings.min_audio_seconds
    while at <= total + 1e-9:
        first = max(0.0, at - settings.max_buffer_seconds)
        v, _ = recogniser.best_vote(samples[int(first * RATE) : int(at * RATE)], RATE)
        if v is None:
            out.append(Attempt(at, None, 0.0, 0.0, 0.0, 0.0))
        else:
            out.append(Attempt(at, v.head.song_id, round(v.confidence, 4), round(v.gap, 2), round(v.surprise, 2), round(v.rival, 2)))
        at += settings.stride_seconds
    return out


def named_at(path: list[Attempt], threshold: float) -> tuple[float | None, str | None]:
    for a in path:
        if a.song is not None and a.confidence >= threshold:
            return a.seconds, a.song
    return None, None


def gap_of(confidence: float) -> float:
    """The gap a confidence threshold stands for (matcher.Vote.confidence inverted)."""
    return CONFIG.gap_at_half * confidence / (1.0 - confidence)


def table(results: list[tuple[Stream, str | None, list[Attempt]]], thresholds: tuple[float, ...]) -> list[str]:
    rows = [
        "| threshold (gap) | condition | streams | named right | median s to right name | wrong |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
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
                    seconds.append(at - SCENES[scene].music_after)
                elif not (truth is None and kind == "known"):
                    wrong += 1
            median = f"{np.median(seconds):.0f}" if seconds else "-"
            shown = f"{right}" if kind == "known" else "-"
            rows.append(
                f"| {threshold:.2f} ({gap_of(threshold):.1f}) | {kind}: {scene} | {len(group)} | {shown} | {median} | {wrong} |"
            )
    return rows


def tail_chance(maxima: np.ndarray, gap: float) -> float:
    """Chance that a negative stream's highest gap reaches `gap`: the share of streams in the
    fitted tail times an exponential fitted (by its mean excess) to the TAIL highest maxima."""
    top = np.sort(maxima)[-TAIL:]
    scale = max(float(np.mean(top - top[0])), 1e-6)
    return float(len(top) / len(maxima) * np.exp(-max(0.0, gap - top[0]) / scale))


def negatives(results: list[tuple[Stream, str | None, list[Attempt]]]) -> list[str]:
    paths = [path for s, _, path in results if s.kind != "known"]
    if not paths:
        return []
    maxima = np.array([max(a.gap for a in path) for path in paths])
    rivals = np.array([a.rival for path in paths for a in path if a.song is not None])
    attempts = sum(len(p) for p in paths)
    chance = ", ".join(f"{gap_of(t):.1f} (confidence {t:g}): {tail_chance(maxima, gap_of(t)):.4f}" for t in (CONFIG.threshold, NAME_AT))
    return [
        f"Negative streams (unknown music and no music): {len(paths)}, {attempts} attempts. Highest gap of each"
        f" stream, the top 8: {', '.join(f'{g:.1f}' for g in np.sort(maxima)[-8:])}.",
        f"Chance that a negative stream ever reaches a gap of {chance} (exponential fitted to the {TAIL} highest).",
        f"Rival surprise on negative attempts: median {np.median(rivals):.1f}, 5th percentile"
        f" {np.percentile(rivals, 5):.1f} (EngineConfig.rival_floor is {CONFIG.rival_floor:g}).",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tune_naming", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, help="the fetched corpus (not needed with --replay)")
    p.add_argument("--replay", action="store_true", help="report from the last run's trajectories, rendering nothing")
    p.add_argument("--split", choices=corpus.SPLITS, default="dev")
    p.add_argument("--streams-per-condition", type=int, default=12)
    p.add_argument("--seconds", type=int, default=45)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/tune_naming"), help="trajectories JSON and the catalog")
    p.add_argument("--record", action="store_true", help=f"also write the report to {RECORDS}/naming-<split>[-<field>-<value>].md")
    p.add_argument("--set", metavar="FIELD=VALUE", help=f"vote with another value of one of {', '.join(SETTABLE)}")
    args = p.parse_args(argv)
    if args.corpus is None and not args.replay:
        p.error("--corpus is required (or --replay)")
    overrides: dict[str, object] = {}
    if args.set:
        field, _, value = args.set.partition("=")
        if field not in SETTABLE:
            p.error(f"--set: {field!r} is not one of {', '.join(SETTABLE)}")
        try:
            overrides[field] = SETTABLE[field](value)
        except ValueError:
            p.error(f"--set: {field} takes a {SETTABLE[field].__name__}, got {value!r}")
    args.config = replace(CONFIG, **overrides)
    suffix = "".join(f"-{k}-{v:g}" for k, v in overrides.items())
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / f"trajectories-{args.split}{suffix}.json"
    if args.replay:
        run = json.loads(saved.read_text())
        described, command, results = run["corpus"], run["command"], [
            (Stream(r["kind"], r["scene"], r["index"], 0, None, None), r["truth"], [Attempt(**a) for a in r["attempts"]])
            for r in run["streams"]
        ]
    else:
        described, command, results = run_streams(args)
        saved.write_text(
            json.dumps(
                {
                    "corpus": described,
                    "command": command,
                    "streams": [
                        {"kind": s.kind, "scene": s.scene, "index": s.index, "truth": t, "attempts": [a.__dict__ for a in path]}
                        for s, t, path in results
                    ],
                }
            )
        )
    m = machine.describe()
    settings = Settings.from_env()
    replayed = " (this report replayed from the run's trajectories)" if args.replay else ""
    text = "\n".join(
        [
            f"## Naming thresholds on the {args.split} split (`{command}`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores{replayed}."
            f" {described}. Cadence: first attempt at"
            f" {settings.min_audio_seconds:g} s, then every {settings.stride_seconds:g} s over the buffer (at most"
            f" {settings.max_buffer_seconds:g} s). Seconds to a right name count from"
            " the start of the song (a scene whose song starts after talk counts from then).",
            "Engine: EngineConfig.rival_floor"
            f" {CONFIG.rival_floor:g}, gap_at_half {CONFIG.gap_at_half:g}; threshold {CONFIG.threshold:g}, NAME_AT {NAME_AT:g};"
            f" neighbour_gap_frames {args.config.neighbour_gap_frames:g}"
            + "".join(f"; {k} set to {v:g} for this run (the engine's: {getattr(CONFIG, k):g})" for k, v in overrides.items())
            + ".",
            "",
            *negatives(results),
            "",
            *table(results, THRESHOLDS),
            "",
        ]
    )
    print(text)
    if args.record:
        RECORDS.mkdir(exist_ok=True)
        (RECORDS / f"naming-{args.split}{suffix}.md").write_text(text)
    return 0


def run_streams(args: argparse.Namespace) -> tuple[str, str, list[tuple[Stream, str | None, list[Attempt]]]]:
    """Render the split's streams and attempt each as the webhook would: the corpus described,
    the command, and (stream, the right song's id, attempts) for every stream."""
    material = corpus.load(args.corpus, args.seed, quick=False, split=args.split)
    index, truth_of, _ = catalog_build.real_catalog(material.catalog, args.out)
    recogniser = Recogniser(Catalog(str(index)), config=args.config)
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
    command = (
        f"python -m bench.tune_naming --corpus CORPUS --split {args.split} --streams-per-condition"
        f" {args.streams_per_condition} --seconds {args.seconds} --seed {args.seed}"
        + (f" --set {args.set}" if args.set else "")
    )
    return f"{material.describe()}; {args.seconds} s per stream", command, results


if __name__ == "__main__":
    raise SystemExit(main())
