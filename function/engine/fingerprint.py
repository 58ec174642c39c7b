"""Spectral peak constellation -> paired landmarks -> integer hashes with their anchor time.

A landmark joins an anchor peak to a later peak in its target zone; its hash packs the anchor's
frequency bin, the frequency difference and the time difference (the time gap is what makes a
pair specific: abracadabra's hash left it out). The anchor frame is kept beside the hash so the
matcher can vote on the time offset between query and song.

What defines the hash space is frozen into a catalog (function/engine/config.py); density and
fan-out only change how many landmarks are taken and may differ between catalog and query.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from function.engine.config import CONFIG, Density

FRAME_SECONDS = CONFIG.frame_seconds
HASH_BITS = CONFIG.hash_bits
N_HASHES = 1 << HASH_BITS
MAX_DT = (1 << CONFIG.dt_bits) - 1  # 63 frames, ~2 s
MAX_DF = (1 << (CONFIG.df_bits - 1)) - 1  # +-63 bins, ~1 kHz
SILENCE_LOG_POWER = float(np.log(1e-4))  # about -80 dBFS per bin
CATALOG_DENSITY = CONFIG.catalog_density
QUERY_DENSITY = CONFIG.query_density
N_BINS = CONFIG.max_bin - CONFIG.min_bin
BLOCK_FRAMES = max(1, int(round(1.0 / FRAME_SECONDS)))  # the "second" peaks are shared out in

_WINDOW = np.hanning(CONFIG.n_fft + 2)[1:-1].astype(np.float32)


def spectrogram(samples: np.ndarray) -> np.ndarray:
    """Log-magnitude STFT (frames x bins) of internal-rate audio, limited to the shared band,
    its power averaged over `CONFIG.smooth_frames` frames."""
    if len(samples) < CONFIG.n_fft:
        return np.zeros((0, N_BINS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, CONFIG.n_fft)[:: CONFIG.hop]
    return log_smoothed(frame_power(frames))


def frame_spectrum(frames: np.ndarray) -> np.ndarray:
    """Complex spectra (frames x bins, the shared band) of internal-rate frames of n_fft samples."""
    return np.fft.rfft(frames * _WINDOW, axis=1)[:, CONFIG.min_bin : CONFIG.max_bin]


def frame_power(frames: np.ndarray) -> np.ndarray:
    spectrum = frame_spectrum(frames)
    return spectrum.real**2 + spectrum.imag**2


def log_smoothed(power: np.ndarray) -> np.ndarray:
    """Power averaged over `CONFIG.smooth_frames` frames, as log magnitude. Centred, so a
    smoothed peak stays at its frame (see EngineConfig.smooth_frames); the ends repeat the
    first and last frame."""
    k = CONFIG.smooth_frames
    if k > 1 and len(power):
        # Summed slice by slice rather than with a running sum, so a frame's value depends on its
        # neighbours only, not on where the array starts: the stream (function/engine/stream.py)
        # smooths a few frames at a time and must get the very numbers a whole file gets.
        half = k // 2
        padded = np.concatenate([power[:1].repeat(half, axis=0), power, power[-1:].repeat(k - 1 - half, axis=0)])
        total = padded[: len(power)].copy()
        for shift in range(1, k):
            total += padded[shift : shift + len(power)]
        power = total / np.float32(k)
    return (0.5 * np.log(power + 1e-10)).astype(np.float32)


def find_peaks(log_spec: np.ndarray, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of the log spectrogram: the strongest `peaks_per_second` in each second,
    shared equally between `bands` frequency bands.

    Within a band, peaks are ranked by their plain level, not by their prominence over a
    smoothed envelope: under added noise the loudest peaks are the ones that stay put (whitened
    peaks survived +10 dB city noise a third as often in our measurements). Sharing the quota
    between bands stops the bass from taking every peak, which made a few low-frequency hashes
    so common that reading their postings dominated query time in a large catalog.
    """
    t, f = local_maxima(log_spec, density)
    return strongest(t, f, log_spec[t, f], density)


def local_maxima(log_spec: np.ndarray, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """(frame, bin) of every local maximum over the density's neighbourhood, by frame then bin;
    the neighbourhood stops at the spectrogram's first and last frame."""
    if log_spec.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    local_max = maximum_filter(
        log_spec, size=(density.neighbourhood_frames, density.neighbourhood_bins), mode="constant", cval=-np.inf
    )
    # Silence and digital zeros have no real peaks: require real energy above the floor.
    return np.nonzero((log_spec == local_max) & (log_spec > SILENCE_LOG_POWER))


def strongest(t: np.ndarray, f: np.ndarray, strength: np.ndarray, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """Of local maxima sorted by frame then bin, the strongest of each second (BLOCK_FRAMES) and
    band, sorted the same way. Seconds are counted from frame 0, so a block of maxima can be
    ranked as soon as it is complete (function/engine/stream.py)."""
    if len(t) == 0:
        return t.astype(np.int32), f.astype(np.int32)
    block = (t // BLOCK_FRAMES) * density.bands + f // -(-N_BINS // density.bands)
    order = np.lexsort((-strength, block))
    t, f, block = t[order], f[order], block[order]
    rank = np.arange(len(block)) - np.searchsorted(block, block, side="left")
    keep = rank < density.peaks_per_second * BLOCK_FRAMES * FRAME_SECONDS / density.bands
    t, f = t[keep], f[keep]
    order = np.lexsort((f, t))
    return t[order].astype(np.int32), f[order].astype(np.int32)


def landmarks(t: np.ndarray, f: np.ndarray, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair each anchor with its next `fan_out` peaks inside the target zone.

    Peaks arrive sorted by time, so the candidates for anchor i are peaks i+1, i+2, ...; a
    window of 4 x fan_out later peaks is searched, enough at any density used here.
    """
    n = len(t)
    if n < 2:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    window = min(n - 1, 4 * fan_out)
    anchor = np.arange(n)[:, None]
    target = anchor + np.arange(1, window + 1)[None, :]
    inside = target < n
    target = np.minimum(target, n - 1)
    dt = t[target] - t[anchor]
    df = f[target] - f[anchor]
    valid = inside & (dt >= 1) & (dt <= MAX_DT) & (np.abs(df) <= MAX_DF)
    valid &= np.cumsum(valid, axis=1) <= fan_out
    a_idx, k_idx = np.nonzero(valid)
    hashes = (
        (f[a_idx].astype(np.uint32) << (CONFIG.df_bits + CONFIG.dt_bits))
        | ((df[a_idx, k_idx] + MAX_DF + 1).astype(np.uint32) << CONFIG.dt_bits)
        | dt[a_idx, k_idx].astype(np.uint32)
    )
    return hashes, t[a_idx].astype(np.uint32)


def with_neighbours(hashes: np.ndarray, frames: np.ndarray, gap_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A query's landmarks plus each one's variants with the time gap +-1 .. +-`gap_frames`.

    The gap is the hash's low bits, so a variant is the hash plus or minus a small number; a
    variant whose gap would leave 1..MAX_DT is dropped, never wrapped into another field.
    """
    if gap_frames <= 0 or len(hashes) == 0:
        return hashes, frames
    gap = (hashes & np.uint32(MAX_DT)).astype(np.int64)
    out_h, out_f = [hashes], [frames]
    for step in range(1, gap_frames + 1):
        for d in (-step, step):
            ok = (gap + d >= 1) & (gap + d <= MAX_DT)
            out_h.append((hashes[ok].astype(np.int64) + d).astype(np.uint32))
            out_f.append(frames[ok])
    return np.concatenate(out_h), np.concatenate(out_f)


def fingerprint(samples: np.ndarray, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """Hashes (uint32) and anchor frames (uint32) of internal-rate mono float audio."""
    t, f = find_peaks(spectrogram(samples), density)
    return landmarks(t, f, density.fan_out)
