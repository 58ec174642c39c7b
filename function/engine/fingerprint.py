"""Spectral peak constellation -> paired landmarks -> integer hashes with their anchor time.

A landmark joins an anchor peak to a later peak in its target zone; its hash packs the anchor's
frequency bin, the frequency difference and the time difference (the time gap is what makes a
pair specific: abracadabra's hash left it out). The anchor frame is kept beside the hash so the
matcher can vote on the time offset between query and song.

`FROZEN` parameters define the hash space: a catalog built with other values cannot be searched
with these, so the catalog stores them and refuses a mismatch. Density and fan-out only change
how many landmarks are taken and may differ between catalog and query: queries use more, so a
noisy 10-s excerpt still contains most of the catalog's landmarks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from function.engine.decode import INTERNAL_RATE

N_FFT = 512  # 64 ms at 8 kHz: 15.6 Hz bins
HOP = 256  # 32 ms frames
FRAME_SECONDS = HOP / INTERNAL_RATE
MIN_BIN, MAX_BIN = 4, 252  # ~60 Hz .. 3.94 kHz: the band every Omi device delivers
DT_BITS, DF_BITS, F_BITS = 6, 7, 8
# Peak frequencies jitter by a bin under noise; hashing them at half resolution keeps more
# landmarks intact at the cost of specificity, which the offset vote restores.
F_SHIFT = 0
MAX_DT = (1 << DT_BITS) - 1  # 63 frames, ~2 s
MAX_DF = (1 << (DF_BITS - 1)) - 1  # +-63 bins, ~1 kHz
HASH_BITS = F_BITS + DF_BITS + DT_BITS
MAX_FRAMES = 1 << 16
SILENCE_LOG_POWER = float(np.log(1e-4))  # about -80 dBFS per bin  # anchor times are stored in 16 bits: 35 minutes per song

FROZEN = {
    "internal_rate": INTERNAL_RATE,
    "n_fft": N_FFT,
    "hop": HOP,
    "min_bin": MIN_BIN,
    "max_bin": MAX_BIN,
    "hash_bits": [F_BITS, DF_BITS, DT_BITS],
    "f_shift": F_SHIFT,
}


@dataclass(frozen=True)
class Density:
    """How many landmarks to take: peaks per second, targets per anchor, peak neighbourhood,
    and the number of frequency bands the peaks per second are shared between."""

    peaks_per_second: float
    fan_out: int
    neighbourhood_frames: int = 7
    neighbourhood_bins: int = 9
    bands: int = 1

    def as_dict(self) -> dict:
        return asdict(self)


CATALOG_DENSITY = Density(peaks_per_second=20.0, fan_out=5, bands=10)
QUERY_DENSITY = Density(peaks_per_second=40.0, fan_out=10, bands=10)

_WINDOW = np.hanning(N_FFT + 2)[1:-1].astype(np.float32)


def spectrogram(samples: np.ndarray) -> np.ndarray:
    """Log-magnitude STFT (frames x bins) of INTERNAL_RATE audio, limited to the shared band."""
    if len(samples) < N_FFT:
        return np.zeros((0, MAX_BIN - MIN_BIN), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP]
    spectrum = np.fft.rfft(frames * _WINDOW, axis=1)[:, MIN_BIN:MAX_BIN]
    power = spectrum.real**2 + spectrum.imag**2
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
    n_frames = log_spec.shape[0]
    if n_frames == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    local_max = maximum_filter(
        log_spec, size=(density.neighbourhood_frames, density.neighbourhood_bins), mode="constant", cval=-np.inf
    )
    # Silence and digital zeros have no real peaks: require real energy above the floor.
    t, f = np.nonzero((log_spec == local_max) & (log_spec > SILENCE_LOG_POWER))
    if len(t) == 0:
        return t.astype(np.int32), f.astype(np.int32)
    strength = log_spec[t, f]
    block_frames = max(1, int(round(1.0 / FRAME_SECONDS)))
    band_bins = -(-log_spec.shape[1] // density.bands)
    block = (t // block_frames) * density.bands + f // band_bins
    order = np.lexsort((-strength, block))
    t, f, block = t[order], f[order], block[order]
    rank = np.arange(len(block)) - np.searchsorted(block, block, side="left")
    keep = rank < density.peaks_per_second * block_frames * FRAME_SECONDS / density.bands
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
    fq = f >> F_SHIFT
    dfq = fq[target[a_idx, k_idx]] - fq[a_idx]
    hashes = (
        (fq[a_idx].astype(np.uint32) << (DF_BITS + DT_BITS))
        | ((dfq + MAX_DF + 1).astype(np.uint32) << DT_BITS)
        | dt[a_idx, k_idx].astype(np.uint32)
    )
    return hashes, t[a_idx].astype(np.uint32)


def fingerprint(samples: np.ndarray, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """Hashes (uint32) and anchor frames (uint32) of INTERNAL_RATE mono float audio."""
    t, f = find_peaks(spectrogram(samples), density)
    return landmarks(t, f, density.fan_out)
