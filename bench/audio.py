"""Signal helpers shared by the query benchmark (bench/queries.py) and the wearer's conditions
(bench/wearer.py), so an excerpt is read, leveled, mixed and quantised the same way in both.

Everything is mono float32 at WORK_RATE (16 kHz, what Omi sends); a level is an RMS over the
whole signal, and an SNR compares two such levels.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np
import soundfile
from scipy.signal import resample_poly

WORK_RATE = 16000
MIN_EXCERPT_DBFS = -45.0  # quieter excerpts (fades, rests) have no meaningful SNR: redraw
SPEECH_GAP_SECONDS = 0.3


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x.astype(np.float32)
    g = gcd(rate, target)
    return resample_poly(x, target // g, rate // g).astype(np.float32)


def read_audio(path: str, start: float = 0.0, seconds: float | None = None) -> np.ndarray:
    """Mono float32 at WORK_RATE; seeks instead of decoding the whole file."""
    with soundfile.SoundFile(path) as f:
        first = int(start * f.samplerate)
        f.seek(max(0, min(first, f.frames)))
        frames = -1 if seconds is None else int(round(seconds * f.samplerate))
        data = f.read(frames, dtype="float32", always_2d=True)
        rate = f.samplerate
    return resample(data.mean(axis=1), rate, WORK_RATE)


@lru_cache(maxsize=32)
def whole(path: str) -> np.ndarray:
    """A whole recording (noise), decoded once per process."""
    return read_audio(path)


def normalise_impulse_response(ir: np.ndarray, direct: int | None = None) -> np.ndarray:
    """Starting at the direct sound (sample `direct`; unknown: the largest sample), so the
    reverberant signal stays time-aligned with the dry one; unit energy, so it leaves the level
    about where it was."""
    ir = ir[int(np.argmax(np.abs(ir))) if direct is None else direct :]
    return (ir / np.sqrt(np.sum(np.square(ir, dtype=np.float64)))).astype(np.float32)


def synthetic_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Brown-ish noise (integrated white, high-passed): most energy low, like street rumble."""
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(800) / 800, mode="same")
    return (brown + 0.3 * rng.standard_normal(n)).astype(np.float32)


SYNTHETIC_NOISE = "synthetic noise"


def noise_segment(recordings: tuple[str, ...] | list[str], rng: np.random.Generator, n: int) -> tuple[np.ndarray, str]:
    """n samples of one of the recordings from a random start, tiled if it is shorter, and which
    recording; brown-ish noise (SYNTHETIC_NOISE) when there is no recording."""
    if not recordings:
        return synthetic_noise(rng, n), SYNTHETIC_NOISE
    name = str(recordings[rng.integers(len(recordings))])
    recording = whole(name)
    start = rng.integers(max(1, len(recording) - n))
    return np.resize(recording[start:], n), name


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(max(rms(x), 1e-12))


def at_level(x: np.ndarray, level: float) -> np.ndarray:
    """`x` scaled to an RMS of `level` (silence stays silence)."""
    return x * (level / max(rms(x), 1e-12))


def mix(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    return signal + at_level(noise, rms(signal) / 10 ** (snr_db / 20))


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Scale down only if the mix would clip (a device's gain control), then quantise."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 1.0:
        x = x / peak
    return np.round(x * 32767).astype(np.int16)


def excerpt_with_context(path: str, source_seconds: float, seconds: float, context: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """`seconds` of the song at a random start, after `context` seconds of what precedes it (for
    the reverb tail at t=0; silence before the song's start), and that start. Quiet excerpts
    (fades, rests) are redrawn, up to ten times."""
    n, lead = int(round(seconds * WORK_RATE)), int(round(context * WORK_RATE))
    latest = max(0.0, source_seconds - seconds - 0.05)
    for _ in range(10):
        start = float(rng.uniform(0, latest))
        before = min(context, start)
        audio = read_audio(path, start - before, seconds + before)
        audio = np.pad(audio, (lead - int(round(before * WORK_RATE)), 0))
        if dbfs(audio[lead:]) > MIN_EXCERPT_DBFS:
            break
    return np.pad(audio, (0, max(0, lead + n - len(audio))))[: lead + n], start


def joined_speech(paths: list[str], n: int) -> np.ndarray:
    """Speech clips one after another with a short pause between them, tiled to n samples."""
    gap = np.zeros(int(SPEECH_GAP_SECONDS * WORK_RATE), np.float32)
    pieces: list[np.ndarray] = []
    for path in paths:
        pieces += [read_audio(path), gap]
        if sum(map(len, pieces)) >= n:
            break
    return np.resize(np.concatenate(pieces), n)
