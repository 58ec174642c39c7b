"""Find the benchmark audio and split it, once and for all, into a dev and a test split.

Every tuned constant of the engine is tuned on the dev split and reported on the test split, so
a figure in BENCHMARKS.md is never one the constants were fitted to. The split is a fixed table,
not a seeded draw: a draw that moves with the seed (or with a package added to the corpus) would
let a track tuned on yesterday be reported on today.

Whole packages are split, not single tracks: tracks of one game share instruments and motifs, so
a held-out track from a registered package would test "same composer", not "not in catalog", and
a dev track would leak its composer's sound into the test. Both splits query ONE catalog (dev
known + test known), as the service has one catalog: a test query competes with the dev songs
too. Speech clips are split by a stable hash of their file name, ambient noise and impulse
responses by recording, so no degradation heard while tuning is heard again in the report.

Without the downloaded corpus (CI), the short real excerpts in tests/data/music/ and noise/ stand
in, unsplit (five files cannot be split by package): the reverb is synthesised and speech is left
out, so the same code path runs everywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

# The formats the corpus is built in (bench/corpus_build.py), deliberately not the decoder's
# list (function.engine.decode.AUDIO_SUFFIXES): a format the decoder learns must never change
# which tracks the benchmark's splits hold.
CORPUS_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
SPLITS = ("dev", "test")
# Registered songs, queried in their split.
KNOWN_PACKAGES = {
    "dev": ("drascula-music", "fretsonfire-songs-muldjord"),
    "test": ("wesnoth-1.16-music", "colobot-common-sounds", "fretsonfire-songs-sectoid"),
}
# Never registered: out-of-catalog music.
UNKNOWN_PACKAGES = {
    "dev": ("planetblupi-music-ogg", "nexuiz-music"),
    "test": ("hyperrogue-music", "singularity-music"),
}
NOISE_RECORDINGS = {"dev": ("city", "forest", "horror"), "test": ("country", "space", "swamp")}
# By package: street2-L and -R are one street, and must not sit in both splits.
IMPULSE_RESPONSE_PACKAGES = {"dev": ("jconvolver-config-files",), "test": ("guitarix-common",)}
# Packages, recordings and responses named nowhere above are test material (music: known), so a
# corpus that grows never adds to what the constants are tuned on without a change here.
DEFAULT_SPLIT = "test"
QUICK_HELD_OUT_FRACTION = 0.2  # tests/data: files held out of the catalog
TEST_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


@dataclass(frozen=True)
class Track:
    path: Path
    package: str
    seconds: float


@dataclass(frozen=True)
class Corpus:
    """One split's queries and degradation material (empty lists: synthesise), and the catalog."""

    root: Path
    split: str
    catalog: list[Track]  # everything registered: the known music of both splits
    known: list[Track]  # registered music this split queries
    held_out: list[Track]  # this split's unknown music, never registered
    noise: list[Path]
    speech: list[Path]
    impulse_responses: list[Path]

    def describe(self) -> str:
        known = sorted({t.package for t in self.known})
        held = sorted({t.package for t in self.held_out})
        hours = sum(t.seconds for t in self.catalog) / 3600
        return (
            f"corpus {self.root}, {self.split} split: {len(self.catalog)} catalog tracks ({hours:.2f} h), "
            f"{len(self.known)} of them queried ({', '.join(known)}), "
            f"{len(self.held_out)} held out ({', '.join(held) or 'none'}), {len(self.noise)} noise, "
            f"{len(self.speech)} speech clips, {len(self.impulse_responses)} impulse responses"
        )


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CORPUS_SUFFIXES)


def _tracks(files: list[Path], package_of) -> list[Track]:
    return [Track(p, package_of(p), soundfile.info(str(p)).duration) for p in files]


def _quick_subset(tracks: list[Track], count: int, seed: int) -> list[Track]:
    """The `count` shortest tracks of a seeded shuffle of the shorter half: a smoke run stays quick."""
    short = sorted(tracks, key=lambda t: t.seconds)[: max(count, len(tracks) // 2)]
    pick = np.random.default_rng(seed).permutation(len(short))[:count]
    return sorted((short[i] for i in pick), key=lambda t: str(t.path))


def speech_split(path: Path) -> str:
    """"dev" or "test" for a speech clip, from its file name alone: stable across machines,
    Python versions and corpus growth (Python's own hash() is salted per process)."""
    return SPLITS[hashlib.sha256(path.name.encode()).digest()[0] % 2]


def _in_split(name: str, table: dict[str, tuple[str, ...]], split: str) -> bool:
    """Named under `split`, or (test only) named under no split at all."""
    if split == "test":
        return not any(name in names for s, names in table.items() if s != "test")
    return name in table[split]


def _music_split(tracks: list[Track], split: str) -> tuple[list[Track], list[Track], list[Track]]:
    """(catalog, this split's known tracks, this split's unknown tracks)."""
    unknown_anywhere = {p for names in UNKNOWN_PACKAGES.values() for p in names}
    catalog = [t for t in tracks if t.package not in unknown_anywhere]
    known = [t for t in catalog if _in_split(t.package, KNOWN_PACKAGES, split)]
    unknown = [t for t in tracks if t.package in UNKNOWN_PACKAGES[split]]
    return catalog, known, unknown


def load(root: Path | None, seed: int, quick: bool, split: str = DEFAULT_SPLIT) -> Corpus:
    """The `split` ("dev" or "test") of the corpus at `root` (music/, noise/, speech/, ir/), else
    tests/data/ for a quick run. `seed` only picks a quick run's few tracks."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if root is not None and (root / "music").is_dir():
        tracks = _tracks(_audio_files(root / "music"), lambda p: p.relative_to(root / "music").parts[0])
        catalog, known, held_out = _music_split(tracks, split)
        if quick:
            other = [t for t in catalog if t not in known]
            known, held_out = _quick_subset(known, 6, seed), _quick_subset(held_out, 2, seed)
            catalog = sorted(known + _quick_subset(other, 2, seed), key=lambda t: str(t.path))
        return Corpus(
            root=root,
            split=split,
            catalog=catalog,
            known=known,
            held_out=held_out,
            noise=[p for p in _audio_files(root / "noise") if _in_split(p.stem, NOISE_RECORDINGS, split)],
            speech=[p for p in _audio_files(root / "speech") if speech_split(p) == split],
            impulse_responses=[
                p for p in _audio_files(root / "ir")
                if _in_split(p.relative_to(root / "ir").parts[0], IMPULSE_RESPONSE_PACKAGES, split)
            ],
        )
    if not quick:
        raise SystemExit(f"no corpus at {root}: run python -m bench.corpus_build {root}, or use --quick")
    files = _audio_files(TEST_DATA / "music")
    if len(files) < 2:
        raise SystemExit(f"--quick without a corpus needs at least two audio files in {TEST_DATA / 'music'}")
    # Each test file is its own "package": there are too few to hold out groups.
    tracks = _tracks(files, lambda p: p.stem)
    n_held = max(1, round(QUICK_HELD_OUT_FRACTION * len(tracks)))
    order = np.random.default_rng(seed).permutation(len(tracks))
    held = {tracks[i].path for i in order[:n_held]}
    catalog = [t for t in tracks if t.path not in held]
    return Corpus(
        root=TEST_DATA,
        split=split,
        catalog=catalog,
        known=catalog,
        held_out=[t for t in tracks if t.path in held],
        noise=_audio_files(TEST_DATA / "noise"),
        speech=[],
        impulse_responses=[],
    )
