"""Whole streams, as the webhook hears them: how often a song is named, named wrongly, and when.

`python -m bench.streams --corpus /tmp/corpus [--seconds 90] [--out bench/out/streams.md]`

Each track (held-out packages for unknown music, every fourth catalog track for known music) is
streamed for up to `--seconds` in 10-s windows that slide by 5 s, as the webhook attempts them
with its defaults (MIN_AUDIO_SECONDS 10, stride 5, 5 s kept after a miss), until a window names
a song. Two naming rules are compared in the same run: the baseline names a song from one window
at the recogniser's threshold (0.5); the webhook's rule is function/confirmation.py (sure at once,
else two agreeing windows). The per-window false-match rate of BENCHMARKS.md compounds over a
stream: this is the figure a user actually meets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from bench import catalog_build, corpus, machine
from bench.audio import WORK_RATE, mix as _mix, read_audio
from bench.queries import _impulse_response
from function.confirmation import CONFIDENT, candidate, confirms
from function.progress import Progress
from function.engine.recogniser import DEFAULT_THRESHOLD, Match, Recogniser
from function.storage.base import Recognition

WINDOW_SECONDS, STRIDE_SECONDS = 10.0, 5.0
KEPT_SECONDS = WINDOW_SECONDS - STRIDE_SECONDS


def _name(recogniser: Recogniser, audio: np.ndarray, webhook_rule: bool) -> tuple[Match | None, float | None]:
    """The song a stream gets named as, and after how many seconds of it, or (None, None)."""
    window, stride = int(WINDOW_SECONDS * WORK_RATE), int(STRIDE_SECONDS * WORK_RATE)
    previous: Recognition | None = None
    for start in range(0, len(audio) - window + 1, stride):
        guess, confidence = recogniser.best_guess(audio[start : start + window], WORK_RATE)
        if guess is not None:
            if webhook_rule:
                named = confidence >= CONFIDENT or confirms(guess, confidence, previous, KEPT_SECONDS)
            else:
                named = confidence >= DEFAULT_THRESHOLD
            if named:
                return guess, (start + window) / WORK_RATE
        tentative = candidate(guess, confidence)
        previous = Recognition(
            uid="stream", at=0.0, latency_ms=0.0, audio_seconds=WINDOW_SECONDS, matched=False,
            extra={"candidate": tentative} if tentative else {},
        )
    return None, None


def _conditions(c: corpus.Corpus) -> dict[str, callable]:
    """Clean, and the worst room of the benchmark (the great hall, else the first IR) at 0 dB."""
    noise = read_audio(str(c.noise[0])) if c.noise else None
    rooms = [p for p in c.impulse_responses if "greathall" in p.name] or c.impulse_responses

    def hall(x: np.ndarray) -> np.ndarray:
        wet = fftconvolve(x, _impulse_response(str(rooms[0])))[: len(x)]
        return _mix(wet, np.resize(noise, len(wet)), 0.0).astype(np.float32)

    conditions = {"clean": lambda x: x}
    if rooms and noise is not None:
        conditions["room + street noise, 0 dB"] = hall
    return conditions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=90.0, help="stream length per track")
    p.add_argument("--out", type=Path, default=Path("bench/out/streams.md"))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    c = corpus.load(args.corpus, args.seed, quick=False)
    index, truth_of, _ = catalog_build.real_catalog(c.catalog, args.out.parent)
    recogniser = Recogniser.open(str(index))
    known = c.known[::4]
    groups = [("unknown music", "clean", c.held_out, lambda x: x)]
    groups += [("known music", name, known, f) for name, f in _conditions(c).items()]
    rows = []
    bar = Progress(sum(len(tracks) for _, _, tracks, _ in groups), "streams")
    for kind, condition, tracks, degrade in groups:
        counts = {rule: {"right": 0, "wrong": 0, "seconds": []} for rule in ("single window", "webhook rule")}
        for track in tracks:
            audio = degrade(read_audio(str(track.path), 0.0, args.seconds))
            truth = truth_of.get(str(track.path.resolve()))
            for rule in counts:
                match, seconds = _name(recogniser, audio, webhook_rule=rule == "webhook rule")
                if match is not None:
                    counts[rule]["right" if match.song_id == truth else "wrong"] += 1
                    if match.song_id == truth:
                        counts[rule]["seconds"].append(seconds)
            bar.step(args.seconds)
        for rule, n in counts.items():
            median = f"{np.median(n['seconds']):.0f}" if n["seconds"] else "-"
            rows.append(f"| {kind} | {condition} | {len(tracks)} | {rule} | {n['right']} | {n['wrong']} | {median} |")
    m = machine.describe()
    text = "\n".join(
        [
            "## Streams: songs named per track, as the webhook attempts them (`python -m bench.streams`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores; Python {m['python']}. Command: "
            f"`python -m bench.streams --corpus {args.corpus} --seconds {args.seconds:g}`. The first"
            f" {args.seconds:g} s of each track, 10-s windows sliding by 5 s, until a song is named.",
            "",
            "| music | condition | tracks | naming rule | named right | named wrong | median s to name |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
