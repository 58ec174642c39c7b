"""Queries: excerpts of real audio, degraded the way a wearable hears them, as PCM16 mono.

The design is paired: one excerpt (song, offset, noise segment, impulse response) is rendered
under every condition of its group, so the accuracy-vs-SNR curve and the 16 kHz-vs-8 kHz gap
compare the same music and the same noise, and differences are not draws of the dice.
Mixing happens at 16 kHz; the 8 kHz query is the 16 kHz one downsampled, as a device would.

Two families of conditions. The grid (recorded noise at fixed SNRs, with and without the
split's recorded rooms; 5, 10 and 15 s; 16 and 8 kHz) measures the fingerprint, and is the
continuity with earlier reports. The wearer's scenes (WINDOW_SCENES, rendered by
bench/wearer.py: simulated rooms, a small speaker, talk, a crowd, the wearer's voice, Opus,
speed, two songs) are what the pendant hears, here as single 10-s windows; bench/streams.py
plays the same scenes as whole streams through the webhook. The grid's groups come first and
keep their random draws whatever is added after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import fftconvolve

from bench.audio import (
    WORK_RATE,
    at_level,
    excerpt_with_context,
    joined_speech,
    mix,
    noise_segment,
    normalise_impulse_response,
    resample,
    rms,
    to_pcm16,
)
from bench.corpus import Corpus, Track
from bench.wearer import LEAD_SECONDS, SCENES, TARGET_ROOMS, TARGET_SCENE, Scene
from bench.wearer import render as render_scene

RATES = (16000, 8000)
SNRS: tuple[float | None, ...] = (None, 10.0, 5.0, 0.0, -5.0, -10.0)  # None: no noise added
NOISE_ONLY_DBFS = -20.0  # ambient recording at a normal level, nothing else
LOW_NOISE_DBFS = -60.0  # a quiet room: the microphone's floor
DRY = "dry"
SYNTHETIC_ROOM = "synthetic-room"  # without the corpus's impulse responses
DIGITAL_SILENCE = "digital silence"  # every silent query is this one input
REVERB_SCENE = "reverb RT60<=1.5 s"
TALK_SCENE = "talk in a room, no music"
# The wearer's scenes heard as single windows: in-catalog music in all but the last; unknown
# music in the full room scene; talk without music in the last.
WINDOW_SCENES: dict[str, Scene] = {
    REVERB_SCENE: Scene(rooms=TARGET_ROOMS),
    f"{REVERB_SCENE}, crowd 0 dB": Scene(rooms=TARGET_ROOMS, crowd_snr=0.0),
    TARGET_SCENE: SCENES[TARGET_SCENE],
    "crowd 0 dB + opus": SCENES["crowd 0 dB + opus"],
    "speed +2 %": SCENES["speed +2 %"],
    "speed -2 %": SCENES["speed -2 %"],
    "speed +2 % at +5 dB": SCENES["speed +2 % at +5 dB"],
    "speed -2 % at +5 dB": Scene(speed=0.98, crowd_snr=5.0),
    "two songs 0 dB": SCENES["two songs 0 dB"],
    "two songs -5 dB": SCENES["two songs -5 dB"],
    # What a wearer's noise mostly is: people talking. An ambient recording with the babble of
    # 6-10 voices (bench/wearer.py's crowd), at the SNRs of the grid.
    **{f"babble+crowd {snr:+g} dB": Scene(crowd_snr=snr) for snr in (5.0, 0.0, -5.0, -10.0)},
    TALK_SCENE: SCENES[TALK_SCENE],
}
# Music read past the window, so a faster playback has its music too.
SPEED_HEADROOM = max(s.speed for s in WINDOW_SCENES.values())


@dataclass(frozen=True)
class Condition:
    """One cell of the results table. `kind`: music (in catalog), ooc, speech, noise, silence."""

    kind: str
    seconds: float
    rate: int
    snr: float | None = None
    room: str = DRY  # DRY, or the impulse response's name: a great hall and a street differ a lot
    level_dbfs: float | None = None  # noise-only queries: their level
    scene: str | None = None  # a key of WINDOW_SCENES (the scene brings its own room and noise)

    @property
    def positive(self) -> bool:
        return self.kind == "music"

    @property
    def reverb(self) -> bool:
        return self.room != DRY

    @property
    def two_songs(self) -> bool:
        return self.scene is not None and WINDOW_SCENES[self.scene].second_song_db is not None

    @property
    def name(self) -> str:
        if self.scene is not None:
            return f"{self.kind} {self.seconds:g}s {self.rate // 1000}k {self.scene}"
        parts = [self.kind, f"{self.seconds:g}s", f"{self.rate // 1000}k", self.room]
        if self.snr is not None:
            parts.append(f"{self.snr:+g}dB")
        elif self.kind in ("music", "ooc"):
            parts.append("clean")
        if self.level_dbfs is not None:
            parts.append(f"{self.level_dbfs:g}dBFS")
        return " ".join(parts)


@dataclass(frozen=True)
class Excerpt:
    """A source excerpt and the conditions it is rendered under; all randomness is in `seed`."""

    kind: str
    sources: tuple[str, ...]  # one music file, or the speech clips to join
    seconds: float
    conditions: tuple[Condition, ...]
    seed: tuple[int, ...]
    source_seconds: float = 0.0  # the music file's duration, to draw the offset
    noise: tuple[str, ...] = field(default=())  # recordings to draw from; empty: synthesise
    impulse_responses: tuple[str, ...] = field(default=())
    second: str | None = None  # another catalogued song, for the two-song scenes
    second_seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.kind} excerpt {'/'.join(map(str, self.seed))}"


@dataclass(frozen=True)
class Query:
    condition: Condition
    samples: np.ndarray  # int16 mono at condition.rate
    source: str | None  # the music file, for positives and out-of-catalog music
    start_seconds: float  # where the excerpt starts in `source`
    # What an interval counts as one: the music file, the noise recording, or (speech, talk,
    # silence) the excerpt itself, whose speech clips are drawn afresh.
    unit: str
    second: str | None = None  # a two-song query's other song


def room_name(impulse_response: str) -> str:
    return Path(impulse_response).stem


def _music_conditions(seconds: float, rates: tuple[int, ...], rooms: tuple[str, ...]) -> tuple[Condition, ...]:
    return tuple(Condition("music", seconds, r, snr, room) for r in rates for room in rooms for snr in SNRS)


def plan(corpus: Corpus, n: int, seed: int) -> list[Excerpt]:
    """Every excerpt of the run: n per positive group (the split's known music), 2n out-of-catalog,
    n speech and noise."""
    noise = tuple(str(p) for p in corpus.noise)
    irs = tuple(str(p) for p in corpus.impulse_responses)
    rooms = (DRY,) + (tuple(room_name(p) for p in irs) or (SYNTHETIC_ROOM,))
    groups: list[tuple[str, float, tuple[Condition, ...], int]] = [
        ("music", 10.0, _music_conditions(10.0, RATES, rooms), n),
        ("music", 5.0, _music_conditions(5.0, (16000,), (DRY,)), n),
        ("music", 15.0, _music_conditions(15.0, (16000,), (DRY,)), n),
    ]
    if corpus.held_out:
        ooc = (Condition("ooc", 10.0, 16000), Condition("ooc", 10.0, 8000), Condition("ooc", 10.0, 16000, 0.0))
        groups.append(("ooc", 10.0, ooc, 2 * n))
    if corpus.speech:
        groups.append(("speech", 10.0, (Condition("speech", 10.0, 16000), Condition("speech", 10.0, 8000)), n))
    groups += [
        ("noise", 10.0, (Condition("noise", 10.0, 16000, level_dbfs=NOISE_ONLY_DBFS),), n),
        ("noise", 10.0, (Condition("noise", 10.0, 16000, level_dbfs=LOW_NOISE_DBFS),), max(1, n // 2)),
        # Digital silence is one input whatever the seed: a few repeats only guard against state.
        ("silence", 10.0, (Condition("silence", 10.0, 16000), Condition("silence", 10.0, 8000)), min(n, 3)),
    ]
    music_scenes = tuple(Condition("music", 10.0, 16000, scene=s) for s in WINDOW_SCENES if s != TALK_SCENE)
    groups.append(("music", 10.0, music_scenes, n))
    if corpus.held_out:
        groups.append(("ooc", 10.0, (Condition("ooc", 10.0, 16000, scene=TARGET_SCENE),), 2 * n))
    groups.append(("speech", 10.0, (Condition("speech", 10.0, 16000, scene=TALK_SCENE),), n))
    excerpts = []
    for g, (kind, seconds, conditions, count) in enumerate(groups):
        tracks = corpus.held_out if kind == "ooc" else corpus.known
        two_songs = any(c.two_songs for c in conditions)
        for i in range(count):
            rng = np.random.default_rng([seed, g, i])
            sources: tuple[str, ...] = ()
            duration = 0.0
            second: Track | None = None
            if kind in ("music", "ooc"):
                k = int(rng.integers(len(tracks)))
                track = tracks[k]
                sources, duration = (str(track.path),), track.seconds
                if two_songs:
                    second = tracks[(k + 1 + rng.integers(len(tracks) - 1)) % len(tracks)]
            elif kind == "speech" and not any(c.scene for c in conditions):
                sources = tuple(str(corpus.speech[j]) for j in rng.integers(len(corpus.speech), size=12))
            excerpts.append(
                Excerpt(
                    kind, sources, seconds, conditions, (seed, g, i), duration, noise, irs,
                    None if second is None else str(second.path), 0.0 if second is None else second.seconds,
                )
            )
    return excerpts


@lru_cache(maxsize=8)
def _impulse_response(path: str) -> np.ndarray:
    """A recorded room's response: its first channel, normalised."""
    with soundfile.SoundFile(path) as f:
        data, rate = f.read(dtype="float32", always_2d=True)[:, 0], f.samplerate
    return normalise_impulse_response(resample(data, rate, WORK_RATE))


def _synthetic_impulse_response(rt60: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(rt60 * WORK_RATE)) / WORK_RATE
    ir = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)
    ir[0] = 1.0 + np.abs(ir).max()
    return normalise_impulse_response(ir)


def _room_responses(excerpt: Excerpt) -> dict[str, np.ndarray]:
    rooms = {c.room for c in excerpt.conditions if c.reverb}
    by_name = {room_name(p): p for p in excerpt.impulse_responses}
    return {r: _synthetic_impulse_response() if r == SYNTHETIC_ROOM else _impulse_response(by_name[r]) for r in rooms}


def _render_scenes(excerpt: Excerpt, material: Corpus) -> list[Query]:
    """The wearer's scenes of one excerpt: the same music, room, talkers and noise in each."""
    rng = np.random.default_rng(excerpt.seed)
    n = int(excerpt.seconds * WORK_RATE)
    length = excerpt.seconds * SPEED_HEADROOM + 0.1
    start = 0.0
    if excerpt.kind in ("music", "ooc"):
        music, start = excerpt_with_context(excerpt.sources[0], excerpt.source_seconds, length, LEAD_SECONDS, rng)
    else:
        music = np.zeros(int(round((LEAD_SECONDS + length) * WORK_RATE)), np.float32)
    second = None
    if excerpt.second is not None:
        second, _ = excerpt_with_context(excerpt.second, excerpt.second_seconds, length, LEAD_SECONDS, rng)
    scene_seed = int(np.random.SeedSequence(list(excerpt.seed)).generate_state(1)[0])
    source = excerpt.sources[0] if excerpt.kind in ("music", "ooc") else None
    queries = []
    for c in excerpt.conditions:
        x = render_scene(music, WINDOW_SCENES[c.scene], scene_seed, material, second)[:n]
        x = resample(x, WORK_RATE, c.rate)
        second_source = excerpt.second if c.two_songs else None
        queries.append(Query(c, to_pcm16(x), source, start, source or excerpt.label, second_source))
    return queries


def render(excerpt: Excerpt, material: Corpus | None = None) -> list[Query]:
    """Every condition's query from one excerpt, deterministic in `excerpt.seed`. The wearer's
    scenes take their speech and noise from `material`, the split the excerpt was planned from."""
    if any(c.scene for c in excerpt.conditions):
        if material is None:
            raise ValueError("the wearer's scenes need the split's material (its speech and noise)")
        return _render_scenes(excerpt, material)
    rng = np.random.default_rng(excerpt.seed)
    n = int(excerpt.seconds * WORK_RATE)
    start, lead = 0.0, 0
    responses = _room_responses(excerpt)
    if excerpt.kind in ("music", "ooc"):
        longest = max((len(ir) for ir in responses.values()), default=0)
        audio, start = excerpt_with_context(excerpt.sources[0], excerpt.source_seconds, excerpt.seconds, longest / WORK_RATE, rng)
        lead = len(audio) - n
    elif excerpt.kind == "speech":
        audio = joined_speech(list(excerpt.sources), n)
    else:
        audio = np.zeros(n, np.float32)
    noise, recording = noise_segment(excerpt.noise, rng, n)
    rooms = {DRY: audio[lead:]}
    for room, ir in responses.items():
        # Convolve with the audio before the excerpt too: a room is never silent at t=0.
        wet = fftconvolve(audio, ir)[lead : lead + n]
        rooms[room] = at_level(wet, rms(rooms[DRY]))
    queries = []
    for c in excerpt.conditions:
        x = rooms[c.room]
        if c.snr is not None:
            x = mix(x, noise, c.snr)
        if c.level_dbfs is not None:
            x = at_level(noise, 10 ** (c.level_dbfs / 20))
        x = resample(x, WORK_RATE, c.rate)
        source = excerpt.sources[0] if excerpt.kind in ("music", "ooc") else None
        unit = source or {"noise": recording, "silence": DIGITAL_SILENCE}.get(excerpt.kind, excerpt.label)
        queries.append(Query(c, to_pcm16(x), source, start, unit))
    return queries


def subset(excerpts: list[Excerpt], keep: set[Condition]) -> list[Excerpt]:
    """The excerpts restricted to some conditions (for the latency set), empty ones dropped."""
    out = []
    for e in excerpts:
        conditions = tuple(c for c in e.conditions if c in keep)
        if conditions:
            out.append(replace(e, conditions=conditions))
    return out
