"""Fingerprint audio as it arrives, so that what is kept between requests is peaks, never audio.

Omi delivers a user's audio a second (or a batch) at a time, and the webhook keeps nothing of a
delivery but its spectral peaks: `advance` turns one chunk of PCM into the peaks it settles and a
small `StreamState` that carries the spectrogram across the chunk boundary, and `pending_peaks`
gives, at any moment, the peaks a whole recording ending there would still add. Together they are
the peaks `fingerprint.find_peaks` finds in the whole recording, so the vote sees what a file
would give it:

- A frame that lies inside one chunk is computed exactly as for a file.
- A frame that straddles a boundary cannot be (that would need the previous chunk's samples), so
  each chunk adds the magnitude spectrum of its part of the window and the frame's magnitude is
  their sum. For a sinusoid that lasts across the boundary (what a peak is) the parts are in
  phase and the sum is exact; for noise it is a little high. Between 1 and 2 frames of the ~31
  in a second straddle a boundary of 1-s chunks.
- At 16 kHz each chunk is resampled on its own, so its outermost millisecond sees the
  anti-alias filter's edge; that too falls in the straddling frames.
- Peaks need their neighbours: the smoothing looks one frame ahead and the local-maximum test
  three, so the newest four frames' peaks are settled by the next chunk (or by `pending_peaks`
  as if the recording ended), and a second's peaks are ranked (its quota per band) once the
  whole second is settled; until then its local maxima wait in the state.

The state holds the power of the last 8 frames (0.26 s of spectrum magnitude, without phase),
the magnitude of the one or two frames begun and not finished, and the waiting local maxima:
about 9 kB, overwritten by every chunk. tests/test_stream.py holds a
streamed song's peaks to a file's.

A peak keeps its frame counted from the stream's first sample, its bin, and where between bins
its true frequency lies (a parabola through the bin and its neighbours, in 1/127 bins): a vote
that undoes a 2 % speed change moves the peaks, not audio it no longer has.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from function.engine.config import CONFIG, Density
from function.engine.decode import INTERNAL_RATE, pcm16_to_float, to_internal
from function.engine.fingerprint import (
    BLOCK_FRAMES,
    FRAME_SECONDS,
    N_BINS,
    QUERY_DENSITY,
    frame_spectrum,
    landmarks,
    local_maxima,
    log_smoothed,
    strongest,
)

N_FFT, HOP = CONFIG.n_fft, CONFIG.hop
# Frames of power kept: the smoothing reaches one frame back and the maximum filter three more
# around a frame not yet settled, which is up to four frames before the newest complete one.
CONTEXT_FRAMES = 8
UNSETTLED_FRAMES = 4  # the newest complete frames whose peaks the next chunk can still change
DELTA_SCALE = 127  # sub-bin position in 1/127 bins, so +-0.5 bin fits an int8

PEAK = np.dtype([("t", "<u4"), ("f", "u1"), ("d", "i1")])  # 6 bytes a peak
_HEADER = struct.Struct("<BIQQIHHH")
_VERSION = 1


@dataclass(frozen=True)
class StreamState:
    """What one user's stream needs of the past to fingerprint the next chunk: no samples."""

    rate: int  # the input's sample rate
    samples_in: int  # input samples consumed
    samples: int  # internal-rate samples they became
    settled: int  # frames below this have their local-maximum status settled
    partial: np.ndarray  # float32 [frames, N_BINS]: magnitude so far of frames begun, not complete
    context: np.ndarray  # float32 [<= CONTEXT_FRAMES, N_BINS]: power of the newest complete frames
    waiting: np.ndarray  # local maxima of settled frames in seconds not yet complete: t, f, strength, d

    @classmethod
    def start(cls, rate: int) -> "StreamState":
        empty = np.zeros((0, N_BINS), np.float32)
        return cls(rate, 0, 0, 0, empty, empty, np.zeros(0, _WAITING))

    @property
    def complete(self) -> int:
        """Frames whose every sample has arrived."""
        return complete_frames(self.samples)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            _VERSION, self.rate, self.samples_in, self.samples, self.settled, len(self.partial), len(self.context), len(self.waiting)
        )
        arrays = (self.partial.astype("<f4").tobytes(), self.context.astype("<f4").tobytes(), self.waiting.tobytes())
        # Compressed: a little smaller, and no run of spectrum values sits in storage as a curve
        # that a search for audio could take for a waveform.
        return header + zlib.compress(b"".join(arrays), 1)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "StreamState":
        version, rate, samples_in, samples, settled, n_partial, n_context, n_waiting = _HEADER.unpack_from(blob)
        if version != _VERSION:
            raise ValueError(f"stream state version {version} is not {_VERSION}")
        blob = zlib.decompress(blob[_HEADER.size :])
        at = 0
        arrays = []
        for rows, dtype in ((n_partial, np.dtype("<f4")), (n_context, np.dtype("<f4"))):
            size = rows * N_BINS * dtype.itemsize
            arrays.append(np.frombuffer(blob, dtype, rows * N_BINS, at).reshape(rows, N_BINS).astype(np.float32))
            at += size
        waiting = np.frombuffer(blob, _WAITING, n_waiting, at).copy()
        return cls(rate, samples_in, samples, settled, arrays[0], arrays[1], waiting)


_WAITING = np.dtype([("t", "<u4"), ("f", "u1"), ("d", "i1"), ("s", "<f4")])


def complete_frames(samples: int) -> int:
    return 0 if samples < N_FFT else (samples - N_FFT) // HOP + 1


def advance(state: StreamState, pcm: bytes, density: Density = QUERY_DENSITY) -> tuple[np.ndarray, StreamState]:
    """The peaks (PEAK records) that `pcm` (PCM16 mono at `state.rate`) settles, and the state
    after it. Peaks come in order of frame, then bin, and never twice."""
    return advance_samples(state, pcm16_to_float(pcm[: len(pcm) // 2 * 2]), density)


def advance_samples(state: StreamState, samples: np.ndarray, density: Density = QUERY_DENSITY) -> tuple[np.ndarray, StreamState]:
    """`advance` for mono samples (int16 or float) at `state.rate`."""
    x, samples_in, samples = _internal(state, samples)
    p, n = state.samples, len(x)
    old_complete, new_complete = complete_frames(p), complete_frames(p + n)
    first = old_complete  # the oldest frame still missing samples: this chunk may finish it
    last = (p + n - 1) // HOP if p + n > 0 else -1  # the newest frame this chunk starts or reaches
    power = np.zeros((0, N_BINS), np.float32)
    partial = state.partial
    if n:
        # Each touched frame's window over this chunk's samples only (zeros elsewhere).
        padded = np.concatenate([np.zeros(N_FFT, np.float32), x, np.zeros(N_FFT, np.float32)])
        starts = np.arange(first, last + 1) * HOP - p + N_FFT
        spectrum = frame_spectrum(np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[starts])
        exact = spectrum.real**2 + spectrum.imag**2
        magnitude = np.abs(spectrum).astype(np.float32)
        begun = min(len(state.partial), len(magnitude))
        magnitude[:begun] += state.partial[:begun]
        whole = np.arange(first, last + 1) * HOP >= p  # frames that lie wholly in this chunk
        done = new_complete - first
        power = np.where(whole[:done, None], exact[:done], magnitude[:done] ** 2).astype(np.float32)
        partial = magnitude[done:]
    frames = np.concatenate([state.context, power])
    start = new_complete - len(frames)  # frame number of frames[0]
    settled = max(state.settled, new_complete - UNSETTLED_FRAMES)
    maxima = _maxima(frames, start, state.settled, settled, density)
    waiting = np.concatenate([state.waiting, maxima])
    done_before = (settled // BLOCK_FRAMES) * BLOCK_FRAMES  # seconds wholly settled end here
    ready = waiting["t"] < done_before
    peaks = _strongest(waiting[ready], density)
    after = StreamState(
        rate=state.rate,
        samples_in=samples_in,
        samples=samples,
        settled=settled,
        partial=partial.astype(np.float32),
        context=frames[-CONTEXT_FRAMES:].astype(np.float32),
        waiting=waiting[~ready],
    )
    return peaks, after


def pending_peaks(state: StreamState, density: Density = QUERY_DENSITY) -> np.ndarray:
    """The peaks a recording that ended with this state would still add to those `advance`
    settled: the newest frames' and the unfinished second's."""
    start = state.complete - len(state.context)
    maxima = _maxima(state.context, start, state.settled, state.complete, density)
    return _strongest(np.concatenate([state.waiting, maxima]), density)


def peaks_of(samples: np.ndarray, sample_rate: int, density: Density = QUERY_DENSITY) -> np.ndarray:
    """The peaks of a whole recording (int16 or float mono), the stream's way in one chunk:
    the same as `fingerprint.find_peaks` on its spectrogram."""
    settled, state = advance_samples(StreamState.start(sample_rate), samples, density)
    return np.concatenate([settled, pending_peaks(state, density)])


def _internal(state: StreamState, samples: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The chunk at the internal rate, as many samples as it adds to the stream's count (so
    frames stay on one grid however the chunks are cut), and the counts after it."""
    samples_in = state.samples_in + len(samples)
    total = samples_in * INTERNAL_RATE // state.rate
    want = total - state.samples
    x = to_internal(samples, state.rate) if len(samples) else samples
    x = x[:want] if len(x) >= want else np.concatenate([x, np.zeros(want - len(x), np.float32)])
    return x, samples_in, total


def _maxima(power: np.ndarray, start: int, lo: int, hi: int, density: Density) -> np.ndarray:
    """Local maxima at frames lo..hi-1 of `power` (frames start, start+1, ...), with their
    strength and sub-bin position. The array's ends are taken for the recording's, which is
    right for its last row only when the recording ends there, and for its first only at frame
    0: callers ask only for frames whose neighbourhood lies wholly inside."""
    if hi <= lo or len(power) == 0:
        return np.zeros(0, _WAITING)
    log_spec = log_smoothed(power)
    t, f = local_maxima(log_spec, density)
    keep = (t + start >= lo) & (t + start < hi)
    t, f = t[keep], f[keep]
    out = np.zeros(len(t), _WAITING)
    out["t"], out["f"], out["s"] = t + start, f, log_spec[t, f]
    out["d"] = _sub_bin(log_spec, t, f)
    return out


def _sub_bin(log_spec: np.ndarray, t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Where between bins each peak's frequency lies: the vertex of the parabola through the
    peak's bin and its two neighbours, in 1/DELTA_SCALE bins (0 at the band's edges)."""
    inner = (f > 0) & (f < N_BINS - 1)
    a = np.where(inner, log_spec[t, np.maximum(f - 1, 0)], 0.0)
    b = log_spec[t, f]
    c = np.where(inner, log_spec[t, np.minimum(f + 1, N_BINS - 1)], 0.0)
    curve = a - 2 * b + c
    delta = np.where(inner & (curve < 0), 0.5 * (a - c) / np.where(curve < 0, curve, -1.0), 0.0)
    return np.round(np.clip(delta, -0.5, 0.5) * DELTA_SCALE).astype(np.int8)


def _strongest(maxima: np.ndarray, density: Density) -> np.ndarray:
    """`fingerprint.strongest` over waiting maxima, as PEAK records."""
    order = np.lexsort((maxima["f"], maxima["t"]))
    maxima = maxima[order]
    t, f = strongest(maxima["t"].astype(np.int64), maxima["f"].astype(np.int64), maxima["s"], density)
    index = np.searchsorted(maxima["t"].astype(np.int64) * N_BINS + maxima["f"], t.astype(np.int64) * N_BINS + f)
    out = np.zeros(len(t), PEAK)
    out["t"], out["f"], out["d"] = t, f, maxima["d"][index]
    return out


def landmarks_of(peaks: np.ndarray, fan_out: int, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and anchor frames of PEAK records sorted by frame. With `speed`, the peaks of a
    recording played `speed` times too fast are first brought back to speed 1 (frames times
    `speed`, frequencies over it, from the sub-bin positions), as a turntable or a radio running
    fast changes pitch and tempo together."""
    t = peaks["t"].astype(np.int64)
    f = peaks["f"].astype(np.int64)
    if speed != 1.0 and len(t):
        t = np.round(t * speed).astype(np.int64)
        f = np.round((f + peaks["d"] / DELTA_SCALE) / speed).astype(np.int64)
        inside = (f >= 0) & (f < N_BINS)
        t, f = t[inside], f[inside]
        order = np.lexsort((f, t))
        t, f = t[order], f[order]
        fresh = np.concatenate(([True], (t[1:] != t[:-1]) | (f[1:] != f[:-1])))
        t, f = t[fresh], f[fresh]
    return landmarks(t, f, fan_out)


def step(state: bytes | None, sample_rate: int, pcm: bytes) -> tuple[bytes, bytes]:
    """What a Store keeps of one delivery (function/storage/base.py `Fingerprint`): its settled
    peaks and the stream's state after it, as bytes, from the state before it (None: the
    first chunk of a buffer, or one at another rate)."""
    before = StreamState.from_bytes(state) if state else None
    if before is None or before.rate != sample_rate:
        before = StreamState.start(sample_rate)
    peaks, after = advance(before, pcm)
    return packed(peaks), after.to_bytes()


def packed(peaks: np.ndarray) -> bytes:
    """PEAK records as a buffer keeps them: compressed, so that no run of frame numbers sits in
    storage as a ramp that a search for audio could take for a waveform (and a little smaller)."""
    return zlib.compress(peaks.tobytes(), 1)


def unpacked(blob: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), PEAK)


def buffered(chunks: Sequence[bytes], state: StreamState | None, max_seconds: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A buffer's peaks as a vote reads them, from its chunks' settled peaks (oldest first) and
    the stream's state after the newest: (the settled peaks, those and the peaks a recording
    ending there would still add, the frame the vote's window starts at, the frame it ends at).
    The window starts at the buffer's first second, or `max_seconds` before its end if later."""
    settled = np.concatenate([unpacked(c) for c in chunks]) if chunks else np.zeros(0, PEAK)
    peaks = np.concatenate([settled, pending_peaks(state)]) if state is not None else settled
    end = state.complete if state is not None else (int(peaks["t"].max()) + 1 if len(peaks) else 0)
    first = int(peaks["t"].min()) // BLOCK_FRAMES * BLOCK_FRAMES if len(peaks) else end
    return settled, peaks, max(first, end - int(max_seconds / FRAME_SECONDS)), end


def buffered_peaks(chunks: Sequence[bytes], state: StreamState | None, max_seconds: float) -> tuple[np.ndarray, int]:
    """The peaks of `buffered`'s window with frames counted from its start, and the frames it
    spans: the query a whole-buffer vote takes."""
    _, peaks, start, end = buffered(chunks, state, max_seconds)
    peaks = peaks[peaks["t"] >= start].copy()
    peaks["t"] -= start
    return peaks, max(end - start, 0)
