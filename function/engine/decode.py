"""Audio in: files for registration, raw PCM16 for queries, all brought to one internal rate.

Fingerprints only compare if catalog and query see the same band, so everything is resampled
to `INTERNAL_RATE` (8 kHz, the rate of the oldest Omi devices): a 44.1 kHz file and an 8 kHz
query then describe the same 0-4 kHz spectrum.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import firwin, resample_poly

from function.engine.config import CONFIG

INTERNAL_RATE = CONFIG.internal_rate
MIN_RATE, MAX_RATE = 8000, 48000
FFMPEG_SUFFIXES = {".m4a", ".aac", ".mp4", ".alac", ".wma", ".opus"}
# Every file name decode_file reads: what registration picks up from a folder.
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"} | FFMPEG_SUFFIXES


class DecodeError(ValueError):
    """A file could not be decoded; the message names the file."""


@lru_cache(maxsize=16)
def _antialias_filter(up: int, down: int) -> np.ndarray:
    # A shorter Kaiser FIR than scipy's default: the fingerprint ignores the band edge, and
    # float32 taps keep resample_poly in single precision, about 5x faster on long songs.
    half_width = 4 * max(up, down)
    taps = firwin(2 * half_width + 1, 0.95 / max(up, down), window=("kaiser", 5.0)) * up
    return taps.astype(np.float32)


def to_internal(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at INTERNAL_RATE from int16 or float samples at any rate."""
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate == INTERNAL_RATE:
        return samples
    return resample(samples, INTERNAL_RATE, int(sample_rate))


def resample(samples: np.ndarray, up: int, down: int) -> np.ndarray:
    """`samples` resampled by up/down (reduced by their gcd), with the engine's anti-alias filter."""
    g = gcd(up, down)
    up, down = up // g, down // g
    return resample_poly(samples, up, down, window=_antialias_filter(up, down)).astype(np.float32)


# A chunk whose every sample is within this of zero is digital silence (-60 dBFS peak: a muted or
# idle microphone, well below any room's noise floor as a microphone hears it): it can carry no
# fingerprint, so the webhook need not store it. A physical bound, not a tuned one.
SILENCE_PEAK = 32


def is_digital_silence(pcm: bytes) -> bool:
    """Raw PCM16 whose peak is at most SILENCE_PEAK."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
    return samples.size == 0 or int(np.abs(samples.astype(np.int32)).max()) <= SILENCE_PEAK


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Raw signed 16-bit little-endian mono PCM, as Omi sends it, to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def _require_file(path: Path) -> None:
    """A path that is not a readable file is named as such, never as audio that fails to decode
    (libsndfile says "System error." for a file that is not there)."""
    if not path.exists():
        raise DecodeError(f"{path}: no such file")
    if path.is_dir():
        raise DecodeError(f"{path}: is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise DecodeError(f"{path}: permission denied")


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DecodeError(f"{path}: {path.suffix} files need an ffmpeg binary on PATH")
    proc = subprocess.run(
        [ffmpeg, "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(INTERNAL_RATE), "-"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DecodeError(f"{path}: ffmpeg failed: {proc.stderr.decode(errors='replace').strip()[:200]}")
    return np.frombuffer(proc.stdout, dtype=np.float32), INTERNAL_RATE


def decode_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/MP3 (libsndfile) or, with ffmpeg, M4A/AAC; mono float32 and its rate."""
    path = Path(path)
    _require_file(path)
    if path.suffix.lower() in FFMPEG_SUFFIXES:
        return _decode_with_ffmpeg(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError) as exc:
        raise DecodeError(f"{path}: cannot decode audio: {exc}") from None
    if data.shape[0] == 0:
        raise DecodeError(f"{path}: no audio samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return mono, int(rate)


def decode_query_file(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A query file: raw `.pcm`/`.raw` PCM16 needs `sample_rate`; anything else is decoded."""
    path = Path(path)
    if path.suffix.lower() in (".pcm", ".raw"):
        _require_file(path)
        if sample_rate is None:
            raise DecodeError(f"{path}: raw PCM needs --sample-rate")
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise DecodeError(f"{path}: sample rate {sample_rate} outside {MIN_RATE}..{MAX_RATE}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DecodeError(f"{path}: cannot read: {exc.strerror or exc}") from None
        return pcm16_to_float(data[: len(data) // 2 * 2]), sample_rate
    return decode_file(path)
