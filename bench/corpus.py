"""Find the benchmark audio and split it into catalog and held-out music.

Whole packages are held out, not single tracks: tracks of one game share instruments and motifs,
so a held-out track from a registered package would test "same composer", not "not in catalog".
Without the downloaded corpus (CI), the short real excerpts in tests/data/music/ and noise/ stand
in, the reverb is synthesised and speech is left out, so the same code path runs everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
HELD_OUT_FRACTION = 0.2
TEST_DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


@dataclass(frozen=True)
class Track:
    path: Path
    package: str
    seconds: float


@dataclass(frozen=True)
class Corpus:
    """Catalog music, held-out music and the degradation material (empty lists: synthesise)."""

    root: Path
    catalog: list[Track]
    held_out: list[Track]
    noise: list[Path]
    speech: list[Path]
    impulse_responses: list[Path]

    def describe(self) -> str:
        held = sorted({t.package for t in self.held_out})
        hours = sum(t.seconds for t in self.catalog) / 3600
        return (
            f"corpus {self.root}: {len(self.catalog)} catalog tracks ({hours:.2f} h), "
            f"{len(self.held_out)} held out ({', '.join(held) or 'none'}), {len(self.noise)} noise, "
            f"{len(self.speech)} speech clips, {len(self.impulse_responses)} impulse responses"
        )


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _tracks(files: list[Path], package_of) -> list[Track]:
    return [Track(p, package_of(p), soundfile.info(str(p)).duration) for p in files]


def _hold_out(tracks: list[Track], seed: int) -> tuple[list[Track], list[Track]]:
    """Hold out whole packages, in a seeded order, until about HELD_OUT_FRACTION of the tracks."""
    packages = sorted({t.package for t in tracks})
    order = np.random.default_rng(seed).permutation(len(packages))
    target = HELD_OUT_FRACTION * len(tracks)
    held: set[str] = set()
    for i in order[:-1]:  # never hold out every package
        if sum(t.package in held for t in tracks) >= target:
            break
        held.add(packages[i])
    return [t for t in tracks if t.package not in held], [t for t in tracks if t.package in held]


def _quick_subset(tracks: list[Track], count: int, seed: int) -> list[Track]:
    """The `count` shortest tracks of a seeded shuffle of the shorter half: a smoke run stays quick."""
    short = sorted(tracks, key=lambda t: t.seconds)[: max(count, len(tracks) // 2)]
    pick = np.random.default_rng(seed).permutation(len(short))[:count]
    return sorted((short[i] for i in pick), key=lambda t: str(t.path))


def load(root: Path | None, seed: int, quick: bool) -> Corpus:
    """The corpus at `root` (music/, noise/, speech/, ir/), else tests/data/ for a quick run."""
    if root is not None and (root / "music").is_dir():
        tracks = _tracks(_audio_files(root / "music"), lambda p: p.relative_to(root / "music").parts[0])
        catalog, held_out = _hold_out(tracks, seed)
        if quick:
            catalog, held_out = _quick_subset(catalog, 8, seed), _quick_subset(held_out, 2, seed)
        return Corpus(
            root=root,
            catalog=catalog,
            held_out=held_out,
            noise=_audio_files(root / "noise"),
            speech=_audio_files(root / "speech"),
            impulse_responses=_audio_files(root / "ir"),
        )
    if not quick:
        raise SystemExit(f"no corpus at {root}: run ../shared/corpus/fetch.py, or use --quick")
    files = _audio_files(TEST_DATA / "music")
    if len(files) < 2:
        raise SystemExit(f"--quick without a corpus needs at least two audio files in {TEST_DATA / 'music'}")
    # Each test file is its own "package": there are too few to hold out groups.
    tracks = _tracks(files, lambda p: p.stem)
    n_held = max(1, round(HELD_OUT_FRACTION * len(tracks)))
    order = np.random.default_rng(seed).permutation(len(tracks))
    held = {tracks[i].path for i in order[:n_held]}
    return Corpus(
        root=TEST_DATA,
        catalog=[t for t in tracks if t.path not in held],
        held_out=[t for t in tracks if t.path in held],
        noise=_audio_files(TEST_DATA / "noise"),
        speech=[],
        impulse_responses=[],
    )
