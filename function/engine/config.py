"""Every tunable of the recogniser in one object, and which of them are frozen into a catalog.

A frozen parameter defines the hash space (what a landmark's hash means): a catalog built with
other values cannot be searched with these, so `Catalog` stores `CONFIG.frozen()` and refuses a
catalog whose values differ. Everything else (how many landmarks a query takes, how the vote is
read, the thresholds) may change without registering the music again.

Tuned values say which music set them. The benchmark's split (bench/corpus.py) is by package:
"dev" (drascula-music, fretsonfire-songs-muldjord known; planetblupi-music-ogg, nexuiz-music
unknown) sets constants; "test" (the other packages) is what BENCHMARKS.md reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

_FROZEN = {"frozen": True}


@dataclass(frozen=True)
class Density:
    """How many landmarks to take: peaks per second, targets per anchor, peak neighbourhood,
    and the number of frequency bands the peaks per second are shared between."""

    peaks_per_second: float
    fan_out: int
    neighbourhood_frames: int = 7
    neighbourhood_bins: int = 9
    bands: int = 10


@dataclass(frozen=True)
class EngineConfig:
    # --- frozen into a catalog ------------------------------------------------------------------
    internal_rate: int = field(default=8000, metadata=_FROZEN)  # the oldest Omi devices' rate
    n_fft: int = field(default=512, metadata=_FROZEN)  # 64 ms: 15.6 Hz bins
    hop: int = field(default=256, metadata=_FROZEN)  # 32 ms frames
    # Power averaged over this many frames before peaks are picked. A room turns the fine
    # structure of a reverberant spectrum into random speckle that moves from frame to frame;
    # averaging keeps the music's own peaks and drops most of the speckle's. Set on dev (232
    # 10-s windows: a recorded hall under babble, simulated halls 4-7 m from the speaker with
    # talk, the wearer's voice and Opus): 1 -> 3 frames raised recall from 78 % to 88 % and
    # lowered the highest unknown-music confidence from 0.61 to 0.47; 4 frames did worse.
    smooth_frames: int = field(default=3, metadata=_FROZEN)
    min_bin: int = field(default=4, metadata=_FROZEN)  # ~60 Hz ..
    max_bin: int = field(default=252, metadata=_FROZEN)  # .. 3.94 kHz: the band every device delivers
    f_bits: int = field(default=8, metadata=_FROZEN)  # anchor frequency bin
    df_bits: int = field(default=7, metadata=_FROZEN)  # signed frequency difference, +-63 bins
    dt_bits: int = field(default=6, metadata=_FROZEN)  # time gap, 1..63 frames (~2 s)

    # --- free: landmarks taken --------------------------------------------------------------------
    # Queries take more landmarks than the catalog stores, so a degraded excerpt still holds most
    # of the catalog's; the catalog's density sets the index size (about 24 kB per audio minute).
    catalog_density: Density = Density(peaks_per_second=20.0, fan_out=5)
    query_density: Density = Density(peaks_per_second=40.0, fan_out=10)
    # A query landmark is also looked up with its time gap +-this many frames: reverberation and
    # speed changes move a peak by a frame, and the gap sits in the hash's low bits, so the
    # variants cost one more lookup each and no extra index. Set on dev (the same 232 windows):
    # 0 -> 1 raised recall from 78 % to 92 %, and with smooth_frames 3 from 88 % to 95 %; +-1
    # frequency bin as well added nothing; +-2 frames was not measured.
    neighbour_gap_frames: int = 1
    # A query whose plain vote (no neighbours) is already this sure is answered from it: the
    # neighbour lookups triple the postings a vote sorts (a 10-s query against 1,000 songs went
    # from 23 to 42 ms) and add nothing to a match this clear. Above both thresholds (0.6 here,
    # 0.7 in the webhook), so it never decides whether a song is named, only how fast: no
    # unknown-music, speech or noise query of the dev split got within 0.2 of it.
    sure_without_neighbours: float = 0.8
    # Playback speeds tried when the query at speed 1 is not a match: a vote tolerates about
    # +-1 % (a peak's bin moves by one at 1 kHz), so +-2 % covers the 1-3 % that vinyl, DJ sets
    # and radio run fast or slow. Only the newest `speed_window_seconds` are re-voted: over a
    # longer stretch a residual speed error smears the offset pile. Set on tests/data excerpts
    # (confidence 0.64-0.94 up to 1 %, 0-0.8 at 2 %); not a tuned threshold.
    speed_variants: tuple[float, ...] = (0.98, 1.02)
    speed_window_seconds: float = 12.0

    # --- free: reading the vote -------------------------------------------------------------------
    # Posting lists this many times the mean are skipped: such hashes occur in so many songs that
    # they carry no evidence, yet cost most of the vote's time in a big catalog.
    popular_hash_factor: int = 40
    min_postings_cap: int = 256
    # Postings one query may read, rarest hashes first: bounds a query's time in a big catalog.
    # A speed constant, set on the synthetic 10,000-song scaling catalog (bench/catalog_build.py)
    # for its 100-ms latency target, not on any music split.
    postings_budget: int = 1_200_000
    min_score: int = 5
    # The runner-up is never taken below this pile: in a small catalog the real runner-up can be
    # tiny. Set on dev: with time-gap neighbours and the speed retry a query draws three times
    # the chances it did, and unknown music reached 0.57 against a floor of 6; 8 brought the
    # highest of 168 unknown-music windows to 0.50 and named the same 209 of 232 songs in rooms
    # and halls at 0.6 (10 began to cost songs).
    runner_up_floor: int = 8
    # Chance piles on real music reached twice the Poisson maximum; 1.5 x is the floor used.
    chance_margin: float = 1.5
    # Best/runner-up pile ratio at which confidence is 0.5 (see matcher.Vote.confidence): only
    # the scale of the confidence; the thresholds on it are what is tuned (on dev).
    ratio_at_half: float = 1.75
    # A single query's answer counts as a match at or above this confidence (the CLI; the
    # webhook's streaming rule, function/webhook/naming.py, asks more of its many attempts).
    # Set on dev: 0.1 above the highest of 168 unknown-music windows (0.50; speech, talk and noise
    # windows stayed below 0.58 even before the runner-up floor rose to 8).
    threshold: float = 0.6

    # --- free: versions of one song at registration ---------------------------------------------
    # A new recording is another version of a registered song when its first two minutes' vote
    # names that song this surely and lands this share of its landmarks on one offset. Set on
    # the tests/data excerpts: copies re-encoded as FLAC, MP3 and M4A land 57-100 % of their
    # landmarks, a 12-s cut starting off the frame grid 28 %, a different song 0.5 % at most.
    version_min_confidence: float = 0.9
    version_min_share: float = 0.1

    @property
    def frame_seconds(self) -> float:
        return self.hop / self.internal_rate

    @property
    def hash_bits(self) -> int:
        return self.f_bits + self.df_bits + self.dt_bits

    def frozen(self) -> dict:
        """The parameters a catalog is built with, as stored in it (JSON-able)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("frozen")}


CONFIG = EngineConfig()
