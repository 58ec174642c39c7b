"""Every tunable of the recogniser in one object, and which of them are frozen into a catalog.

A frozen parameter defines the hash space (what a landmark's hash means): a catalog built with
other values cannot be searched with these, so `Catalog` stores `CONFIG.frozen()` and refuses a
catalog whose values differ. Everything else (how many landmarks a query takes, how the vote is
read, the thresholds) may change without registering the music again.

Every field says where its value comes from, in its metadata (tests/test_config_provenance.py
holds each one to it): `tuned` names the split it was set on, the command that set it and the
run's output committed under bench/tuning/; `chosen` says why a value is not tuned on music (a
scale, a speed budget, a range that physics sets). The benchmark's split (bench/corpus.py) is by
package: "dev" (drascula-music, fretsonfire-songs-muldjord known; planetblupi-music-ogg,
nexuiz-music unknown) sets constants; "test" (the other packages) is what BENCHMARKS.md reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

NAMING_RUN = "python -m bench.tune_naming --corpus /tmp/corpus --split dev --record"
NAMING_RECORD = "bench/tuning/naming-dev.md"
VERSIONS_RUN = "python -m bench.tune_versions --corpus /tmp/corpus --split dev --record"


def tuned(split: str, command: str, record: str | tuple[str, ...] | None, frozen: bool = False) -> dict:
    """Field metadata of a value read off a tuning run: the split, the command, and the run's
    output under bench/tuning/ (several files: one run per value tried; None: a run from before
    records were kept, listed in tests/test_config_provenance.py until it is run again)."""
    return {"tuned": {"split": split, "command": command, "record": record}, "frozen": frozen}


def chosen(why: str, frozen: bool = False) -> dict:
    """Field metadata of a value that is not tuned on music, and why."""
    return {"chosen": why, "frozen": frozen}


_HASH = "defines the hash space"


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
    internal_rate: int = field(default=8000, metadata=chosen(_HASH, frozen=True))  # the oldest Omi devices' rate
    n_fft: int = field(default=512, metadata=chosen(_HASH, frozen=True))  # 64 ms: 15.6 Hz bins
    hop: int = field(default=256, metadata=chosen(_HASH, frozen=True))  # 32 ms frames
    # Power averaged over this many frames before peaks are picked. A room turns the fine
    # structure of a reverberant spectrum into random speckle that moves from frame to frame;
    # averaging keeps the music's own peaks and drops most of the speckle's. Set on dev (232
    # 10-s windows: a recorded hall under babble, simulated halls 4-7 m from the speaker with
    # talk, the wearer's voice and Opus): 1 -> 3 frames raised recall from 78 % to 88 % and
    # lowered the highest unknown-music confidence from 0.61 to 0.47; 4 frames did worse.
    smooth_frames: int = field(default=3, metadata=tuned("dev", "python -m bench --split dev (232 windows)", None, frozen=True))
    min_bin: int = field(default=4, metadata=chosen(_HASH, frozen=True))  # ~60 Hz ..
    max_bin: int = field(default=252, metadata=chosen(_HASH, frozen=True))  # .. 3.94 kHz: the band every device delivers
    f_bits: int = field(default=8, metadata=chosen(_HASH, frozen=True))  # anchor frequency bin
    df_bits: int = field(default=7, metadata=chosen(_HASH, frozen=True))  # signed frequency difference, +-63 bins
    dt_bits: int = field(default=6, metadata=chosen(_HASH, frozen=True))  # time gap, 1..63 frames (~2 s)

    # --- free: landmarks taken --------------------------------------------------------------------
    # Queries take more landmarks than the catalog stores, so a degraded excerpt still holds most
    # of the catalog's; the catalog's density sets the index size (about 24 kB per audio minute).
    catalog_density: Density = field(
        default=Density(peaks_per_second=20.0, fan_out=5), metadata=chosen("index size: the 25 kB per audio minute target")
    )
    query_density: Density = field(
        default=Density(peaks_per_second=40.0, fan_out=10), metadata=chosen("twice the catalog's: vote time against recall")
    )
    # A query landmark is also looked up with its time gap +-this many frames: reverberation and
    # speed changes move a peak by a frame, and the gap sits in the hash's low bits, so the
    # variants cost one more lookup each and no extra index. Set on dev streams (bench/tuning/
    # naming-dev*.md, the same 264 streams with 0, 1 and 2): 0 named the reverberant room at a
    # median 10 s and the party at 11 s, 1 at 5 and 7 s; 2 named the party at 5 s but one
    # unknown song wrongly (a negative stream's gap reached 22.5, over NAME_AT's 21).
    neighbour_gap_frames: int = field(
        default=1,
        metadata=tuned(
            "dev",
            NAMING_RUN + " [--set neighbour_gap_frames=0|2]",
            (NAMING_RECORD, "bench/tuning/naming-dev-neighbour_gap_frames-0.md", "bench/tuning/naming-dev-neighbour_gap_frames-2.md"),
        ),
    )
    # A query whose plain vote (no neighbours) is already this sure is answered from it: the
    # neighbour lookups triple the postings a vote sorts (a 10-s query against 1,000 songs went
    # from 23 to 42 ms) and add nothing to a match this clear. Above both thresholds (0.63 here,
    # 0.7 in the webhook; 0.8 is a gap of 36), so it never decides whether a song is named, only
    # how fast: no negative attempt of the dev streams got past a gap of 15.6 (bench/tuning/).
    sure_without_neighbours: float = field(default=0.8, metadata=chosen("a speed shortcut above both thresholds"))
    # Playback speeds tried when the query at speed 1 is not a match: a vote tolerates about
    # +-1 % (a peak's bin moves by one at 1 kHz), so +-2 % covers the 1-3 % that vinyl, DJ sets
    # and radio run fast or slow. Only the newest `speed_window_seconds` are re-voted: over a
    # longer stretch a residual speed error smears the offset pile. Set on tests/data excerpts
    # (confidence 0.64-0.94 up to 1 %, 0-0.8 at 2 %); not a tuned threshold.
    speed_variants: tuple[float, ...] = field(default=(0.98, 1.02), metadata=chosen("the speeds players really run at"))
    speed_window_seconds: float = field(default=12.0, metadata=chosen("a speed error of 2 % smears 12 s by a frame"))

    # --- free: reading the vote -------------------------------------------------------------------
    # Posting lists this many times the mean are skipped: such hashes occur in so many songs that
    # they carry no evidence, yet cost most of the vote's time in a big catalog.
    popular_hash_factor: int = field(default=40, metadata=chosen("a speed constant of big catalogs"))
    min_postings_cap: int = field(default=256, metadata=chosen("a speed constant of big catalogs"))
    # Postings one query may read, rarest hashes first: bounds a query's time in a big catalog.
    # A speed constant, set on the synthetic 10,000-song scaling catalog (bench/catalog_build.py)
    # for its 100-ms latency target, not on any music split.
    postings_budget: int = field(default=1_200_000, metadata=chosen("a speed constant: the 100-ms target at 10,000 songs"))
    min_score: int = field(default=5, metadata=chosen("a pile of 4 votes is a few shared peaks, never a song"))
    # What chance reaches against a catalog of real size, in surprise (matcher: -log10 of the
    # chance piles expected): the rival is never taken below it, so a catalog of a few songs,
    # whose real rival can be nothing, does not name what a big one would not. Set on dev: about
    # the median best-other-song surprise of the dev negative streams' attempts (6.4; 5th
    # percentile 4.8); in a first trial a floor of 5 or 6 named the same songs as none, 10 later.
    rival_floor: float = field(default=6.0, metadata=tuned("dev", NAMING_RUN, NAMING_RECORD))
    # The gap (orders of magnitude between the best song and its rival) at which confidence is
    # 0.5. Only the scale of the confidence, chosen so that 0.7 (the webhook) is a gap of 21:
    # the thresholds on it are what is tuned.
    gap_at_half: float = field(default=9.0, metadata=chosen("only the scale of the confidence"))
    # A single query's answer counts as a match at or above this confidence (the CLI; the
    # webhook's streaming rule, function/webhook/naming.py, asks more of its many attempts).
    # Set on dev: 0.65 is a gap of 16.7, above every one of the 2,112 attempts of the 96 dev
    # negative streams (unknown music in rooms and at a party, talk, crowd and party without
    # music; highest 15.6), where 0.63 (15.3) would not have been.
    threshold: float = field(default=0.65, metadata=tuned("dev", NAMING_RUN, NAMING_RECORD))

    # --- free: versions of one song at registration ---------------------------------------------
    # A new recording is another version of a registered song when its first two minutes' vote
    # names that song this surely and lands this share of its landmarks on one offset. Set on
    # dev (bench/tuning/versions-dev.md: 12 songs remade as MP3, AAC, a remaster and an edit
    # starting 15 s in; 45 other songs): every version had confidence >= 0.996 and share
    # >= 0.19, no other song more than 0.04 and 0.002; both thresholds sit far from either side.
    version_min_confidence: float = field(default=0.9, metadata=tuned("dev", VERSIONS_RUN, "bench/tuning/versions-dev.md"))
    version_min_share: float = field(default=0.1, metadata=tuned("dev", VERSIONS_RUN, "bench/tuning/versions-dev.md"))

    @property
    def frame_seconds(self) -> float:
        return self.hop / self.internal_rate

    @property
    def hash_bits(self) -> int:
        return self.f_bits + self.df_bits + self.dt_bits

    def frozen(self) -> dict:
        """The parameters a catalog is built with, as stored in it (JSON-able)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["frozen"]}


CONFIG = EngineConfig()
