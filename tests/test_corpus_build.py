"""bench/corpus_build.py, offline: the committed manifest parses, and what the builder plans to take
from which package lands where bench/corpus.py looks for it, in the split it is meant for.

Nothing is downloaded: the packages are stood in for by folders laid out as `dpkg-deb -x` unpacks
them, holding tiny audio files at the manifest's paths (and, for the globs, at names the corpus's
split tables expect), so the whole take-and-load path runs in about a second.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bench import corpus
from bench.corpus_build import (
    BuildError,
    Entry,
    build,
    expected_target,
    is_built,
    plan,
    read_manifest,
    take,
    target,
)

RATE = 8000


def _write_audio(path: Path, seconds: float = 0.2, gain: float = 0.5) -> None:
    """A short stereo tone, in the format its suffix names (libsndfile reads by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = gain * np.sin(2 * np.pi * 440 * t)
    fmt = {".ogg": "OGG", ".wav": "WAV", ".flac": "FLAC"}[path.suffix]
    soundfile.write(str(path), np.stack([tone, tone], axis=1), RATE, format=fmt)


def _fake_package(root: Path, entries: list[Entry]) -> None:
    """Unpacked-package stand-in: a file at each entry's path; a glob gets the names the split
    tables of bench/corpus.py expect (noise) or same-named clips in two folders (speech)."""
    for entry in entries:
        if "!" in entry.path:
            archive, member = entry.path.split("!", 1)
            clip = root / "clip.ogg"
            _write_audio(clip)
            (root / archive.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(root / archive.lstrip("/"), "a") as zipped:
                zipped.write(clip, member)
            clip.unlink()
        elif entry.kind == "noise":
            for recording in (r for names in corpus.NOISE_RECORDINGS.values() for r in names):
                _write_audio(root / entry.path.lstrip("/").replace("*", recording))
        elif entry.kind == "speech":
            for level in ("airplane", "bathroom"):
                _write_audio(root / entry.path.lstrip("/").replace("*", level, 1).replace("*", "hello"))
        else:
            _write_audio(root / entry.path.lstrip("/"))
            for stem in entry.mix_with:
                _write_audio(root / entry.path.lstrip("/").rsplit("/", 1)[0] / stem, seconds=0.3)


def test_manifest_parses_into_the_corpus_kinds_and_packages() -> None:
    entries = read_manifest()
    packages = plan(entries)
    music = {p for p, es in packages.items() if any(e.kind == "music" for e in es)}
    named = {p for table in (corpus.KNOWN_PACKAGES, corpus.UNKNOWN_PACKAGES) for ps in table.values() for p in ps}
    # Every music package sits in a split by name: none is test music by default only.
    assert music == named
    assert {p for p, es in packages.items() if any(e.kind == "ir" for e in es)} == {
        p for ps in corpus.IMPULSE_RESPONSE_PACKAGES.values() for p in ps
    }
    assert {e.kind for e in entries} == {"music", "noise", "speech", "ir"}
    assert list(packages) == sorted(packages)


def test_every_music_track_is_planned_once_in_a_format_the_corpus_reads() -> None:
    tracks = [expected_target(e) for e in read_manifest() if e.kind == "music"]
    assert len(tracks) == 140 and None not in tracks and len(set(tracks)) == len(tracks)
    for track in tracks:
        kind, package, name = track.split("/")
        assert kind == "music" and Path(name).suffix in corpus.CORPUS_SUFFIXES


def test_names_keep_glob_folders_and_mixes_take_their_folder() -> None:
    speech = Entry("speech", "fillets", "/s/*/nl/*.ogg")
    assert target(speech, "/s/airplane/nl/hello.ogg") == "speech/fillets/airplane_nl_hello.ogg"
    assert expected_target(speech) is None
    mix = Entry("music", "fof", "/songs/War of freedom/song.ogg", ("guitar.ogg",))
    assert expected_target(mix) == "music/fof/War of freedom.flac"
    zipped = Entry("music", "nexuiz", "/d/music.pk3!sound/cdtracks/x.ogg")
    assert expected_target(zipped) == "music/nexuiz/x.ogg"


def test_taken_files_load_into_the_splits_bench_corpus_expects(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    for package, entries in plan(read_manifest()).items():
        root = tmp_path / "debs" / package
        _fake_package(root, entries)
        for entry in entries:
            take(root, entry, out)

    for split in corpus.SPLITS:
        loaded = corpus.load(out, seed=0, quick=False, split=split)
        assert {t.package for t in loaded.known} == set(corpus.KNOWN_PACKAGES[split])
        assert {t.package for t in loaded.held_out} == set(corpus.UNKNOWN_PACKAGES[split])
        assert {p.stem for p in loaded.noise} == set(corpus.NOISE_RECORDINGS[split])
        assert {p.parent.name for p in loaded.impulse_responses} == set(corpus.IMPULSE_RESPONSE_PACKAGES[split])
        assert len(loaded.catalog) == 140 - 10 - 18 - 14 - 13  # the unknown packages' tracks
    # Both same-named clips survive, each under its level's name.
    assert sorted(p.name for p in (out / "speech").rglob("*.ogg")) == ["airplane_nl_hello.ogg", "bathroom_nl_hello.ogg"]
    # A mix is as long as its shortest stem and does not clip.
    mixed, rate = soundfile.read(str(out / "music" / "fretsonfire-songs-sectoid" / "Feelings.flac"))
    assert rate == RATE and len(mixed) == int(0.2 * RATE) and np.abs(mixed).max() <= 1.0


def test_a_built_package_is_skipped_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [Entry("ir", "guitarix-common", "/usr/share/gx_head/sounds/greathall.wav")]
    _fake_package(tmp_path / "deb", entries)
    out = tmp_path / "corpus"
    rows = {"guitarix-common": [("ir", "guitarix-common", f) for f in take(tmp_path / "deb", entries[0], out)]}
    assert is_built(entries, rows["guitarix-common"], out)
    (out / "index.tsv").write_text("kind\tpackage\tfile\nir\tguitarix-common\tir/guitarix-common/greathall.wav\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # neither apt-get nor dpkg-deb
    assert build(out, entries) == rows
    # Once a file is gone, the package must be fetched again, and without apt that is named.
    (out / "ir" / "guitarix-common" / "greathall.wav").unlink()
    with pytest.raises(BuildError, match="apt-get and dpkg-deb not found"):
        build(out, entries)
