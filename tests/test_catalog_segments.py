"""Catalog format 4: more than 65,536 songs, songs longer than 35 minutes, and registration in
segments with tombstones and merges. Real files throughout: the catalogs are written to disk and
read back, songs are real excerpts from tests/data (a long one is built from them), and only the
65,536-song catalog's landmarks are synthetic (fingerprinting 65,536 files would take an hour).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from function.engine import segment_build
from function.engine.catalog import Catalog
from function.engine.decode import INTERNAL_RATE, decode_file, to_internal
from function.engine.fingerprint import FRAME_SECONDS, N_HASHES
from function.engine.matcher import vote
from function.engine.recogniser import Recogniser
from function.engine.segment import MAX_PARTS, PART_FRAMES
from function.engine.song_tags import read_tags
from function.engine.songs import CatalogError, Fingerprinted, Song

ROOT = Path(__file__).resolve().parent.parent
MUSIC = sorted((Path(__file__).resolve().parent / "data" / "music").glob("*.ogg"))


def audio(path: Path) -> np.ndarray:
    return to_internal(*decode_file(path))


def excerpt(path: Path, start: float, seconds: float) -> np.ndarray:
    return audio(path)[int(start * INTERNAL_RATE) : int((start + seconds) * INTERNAL_RATE)]


def title(path: Path) -> str:
    return read_tags(str(path)).title


def file_states(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every segment file's (inode, size, mtime): a file rewritten or replaced changes it."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in root.glob("s*/*")}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "function", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


# --- format: no cap on songs or on a song's length --------------------------------------------------


def test_a_catalog_of_70000_songs_round_trips_and_names_a_song_past_65536_at_its_offset(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n_songs, landmarks = 70_000, 20
    items = []
    for i in range(n_songs):
        frames = np.sort(rng.integers(1_000, 5_000, landmarks)).astype(np.uint32)
        items.append(Fingerprinted(Song(f"song-{i:06d}", f"song {i}", "synthetic", "", 160.0), rng.integers(0, N_HASHES, landmarks, dtype=np.uint32), frames))
    # The last song is two hours long: its landmarks lie in its parts 1 to 3.
    last = items[-1]
    last.frames = np.sort(rng.integers(100_000, 220_000, landmarks)).astype(np.uint32)
    last.song.duration_seconds = 7200.0
    catalog = Catalog(str(tmp_path / "catalog"), create=True)
    catalog.add(items)
    catalog.save()

    reopened = Catalog(str(tmp_path / "catalog"))
    v = vote(reopened, last.hashes, last.frames - np.uint32(100_000))

    assert len(reopened.songs) == n_songs and reopened.songs[-1].song_id == "song-069999"
    # One part per song, four for the last (parts 0 to 3): 70,003 parts, 65,536 in a segment.
    assert [len(s.part_song) for s in reopened.segments] == [MAX_PARTS, n_songs + 3 - MAX_PARTS]
    for stored, written in zip(reopened.landmarks(), catalog.landmarks(), strict=True):
        assert np.array_equal(stored, written)
    songs, hashes, frames = reopened.landmarks()
    mine = songs == n_songs - 1
    assert sorted(zip(hashes[mine].tolist(), frames[mine].tolist())) == sorted(zip(last.hashes.tolist(), last.frames.tolist()))
    assert v is not None and (v.song_index, v.offset_frames, v.score) == (n_songs - 1, 100_000, landmarks)


@pytest.fixture(scope="module")
def long_song(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recogniser, str]:
    """A catalog of a 41-minute recording and another song, and the recording's song_id: the
    recording is MUSIC[0] looped, with MUSIC[1] at 2090 s (across the 35-minute boundary between
    its first two parts) and MUSIC[2] at 2440 s, its tail."""
    loop = audio(MUSIC[0])
    song = np.tile(loop, int(41 * 60 * INTERNAL_RATE / len(loop)) + 1)[: 41 * 60 * INTERNAL_RATE]
    for path, at in ((MUSIC[1], 2090), (MUSIC[2], 2440)):
        inserted = audio(path)
        song[at * INTERNAL_RATE : at * INTERNAL_RATE + len(inserted)] = inserted
    folder = tmp_path_factory.mktemp("long")
    path = folder / "Long Mix - Forty-One Minutes.flac"
    soundfile.write(path, song, INTERNAL_RATE)
    recogniser = Recogniser.open(str(folder / "catalog"), create=True)
    [registered, _] = recogniser.register([str(path), str(MUSIC[3])], workers=1)
    assert registered.status == "added" and registered.duration_seconds == 41 * 60
    return Recogniser.open(str(folder / "catalog")), registered.song_id


@pytest.mark.parametrize(
    ("inserted", "at", "start"),
    [(MUSIC[2], 2440, 5.0), (MUSIC[1], 2090, 4.0)],
    ids=["in its tail", "across its part boundary"],
)
def test_a_41_minute_song_is_named_past_35_minutes_at_the_right_offset(
    long_song: tuple[Recogniser, str], inserted: Path, at: int, start: float
) -> None:
    recogniser, song_id = long_song

    match = recogniser.recognise(excerpt(inserted, start, 10), INTERNAL_RATE)

    assert at + start + 10 > PART_FRAMES * FRAME_SECONDS  # ends past the first part's 35 minutes
    assert match is not None and (match.song_id, match.title) == (song_id, "Forty-One Minutes")
    assert abs(match.offset_seconds - (at + start)) < 0.1


def test_a_catalog_of_the_previous_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    Recogniser.open(str(uri), create=True).register([str(MUSIC[0])], workers=1)
    manifest = json.loads((uri / "catalog.json").read_text())
    (uri / "catalog.json").write_text(json.dumps({**manifest, "format": 3}))

    with pytest.raises(CatalogError, match="catalog format 3, expected 4: register the songs again into a new catalog"):
        Catalog(str(uri))


# --- segments and tombstones ---------------------------------------------------------------------


def test_a_removed_song_is_a_tombstone_in_its_segment_until_a_compaction_drops_its_postings(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    rec = Recogniser.open(str(uri), create=True)
    kept, removed = rec.register([str(MUSIC[0]), str(MUSIC[1])], workers=1)
    stored = rec.catalog.postings_count
    score = rec.recognise(excerpt(MUSIC[1], 5, 10), INTERNAL_RATE).score
    files = file_states(uri)

    rec.remove([removed.song_id])
    after_remove = file_states(uri)
    tombstoned = Recogniser.open(str(uri))
    rec.register([str(MUSIC[1])], workers=1)  # registered again: alive in a new segment, dead in the old one
    again = Recogniser.open(str(uri)).recognise(excerpt(MUSIC[1], 5, 10), INTERNAL_RATE)
    rec.remove([removed.song_id])
    compacted_anything = rec.compact()
    compacted = Recogniser.open(str(uri))

    assert after_remove == files  # a removal writes catalog.json only
    assert json.loads((uri / "catalog.json").read_text())["segments"] == [{"name": "s000003", "postings": compacted.catalog.songs[0].hashes, "dead": []}]
    assert [(s.name, s.dead, len(s.postings)) for s in tombstoned.catalog.segments] == [("s000001", {removed.song_id}, stored)]
    assert tombstoned.recognise(excerpt(MUSIC[1], 5, 10), INTERNAL_RATE) is None
    assert tombstoned.recognise(excerpt(MUSIC[0], 5, 10), INTERNAL_RATE).song_id == kept.song_id
    assert again is not None and again.song_id == removed.song_id and again.score == score  # one copy voted, not two
    assert compacted_anything and compacted.catalog.postings_count == compacted.catalog.songs[0].hashes
    assert compacted.recognise(excerpt(MUSIC[0], 5, 10), INTERNAL_RATE).song_id == kept.song_id


def test_adding_one_song_to_a_catalog_of_many_segments_writes_only_a_segment_of_that_song(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    rec = Recogniser.open(str(uri), create=True)
    for path in MUSIC[:4]:
        rec.register([str(path)], workers=1)
    before = file_states(uri)

    [added] = Recogniser.open(str(uri)).register([str(MUSIC[4])], workers=1)

    after = file_states(uri)
    catalog = Catalog(str(uri))
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was touched
    assert sorted(set(after) - set(before)) == ["s000005/postings.npy", "s000005/table.npz"]
    assert catalog.segments[-1].song_ids == [added.song_id]
    assert len(catalog.segments[-1].postings) == catalog.songs[-1].hashes
    assert Recogniser.open(str(uri)).recognise(excerpt(MUSIC[4], 5, 10), INTERNAL_RATE).song_id == added.song_id


def test_a_register_run_merges_the_newest_small_segments_and_never_the_big_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segment_build, "MAX_SEGMENTS", 2)
    uri = tmp_path / "catalog"
    rec = Recogniser.open(str(uri), create=True)
    rec.register([str(p) for p in MUSIC[:3]], workers=1)
    rec.register([str(MUSIC[3])], workers=1)
    big = file_states(uri)["s000001/postings.npy"]

    rec.register([str(MUSIC[4])], workers=1)

    assert [s.name for s in rec.catalog.segments] == ["s000001", "s000004"]
    assert file_states(uri)["s000001/postings.npy"] == big
    reopened = Recogniser.open(str(uri))
    for path in MUSIC:
        assert reopened.recognise(excerpt(path, 5, 10), INTERNAL_RATE).title == title(path)


def test_no_merge_holds_more_than_merge_postings_a_register_run_or_a_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge holds all its postings in memory: at 100,000 songs, merging every segment into one
    would need ~80 GB, so merges stop at MERGE_POSTINGS (here made small: two songs' worth)."""
    catalogs = []
    for name in ("registered", "compacted"):
        rec = Recogniser.open(str(tmp_path / name), create=True)
        for path in MUSIC[:4]:
            rec.register([str(path)], workers=1)
        catalogs.append(rec)
    sizes = [len(s.postings) for s in catalogs[0].catalog.segments]
    assert len(sizes) == 4
    cap = max(a + b for a, b in zip(sizes, sizes[1:])) + 1
    monkeypatch.setattr(segment_build, "MERGE_POSTINGS", cap)
    monkeypatch.setattr(segment_build, "MAX_SEGMENTS", 1)

    catalogs[0].register([str(MUSIC[4])], workers=1)  # over MAX_SEGMENTS: the run merges
    assert catalogs[1].compact()

    merged = [len(s.postings) for s in catalogs[0].catalog.segments]
    compacted = [len(s.postings) for s in catalogs[1].catalog.segments]
    assert len(merged) < 5 and max(merged) <= cap
    assert len(compacted) == 2 and max(compacted) <= cap and sum(compacted) == sum(sizes)
    for rec, count in zip(catalogs, (5, 4)):
        reopened = Recogniser.open(rec.catalog.uri)
        for path in MUSIC[:count]:
            assert reopened.recognise(excerpt(path, 5, 10), INTERNAL_RATE).title == title(path)


def test_versions_are_grouped_across_segments_and_outlive_their_first_version(tmp_path: Path) -> None:
    quieter = tmp_path / "quieter master.flac"
    samples, rate = decode_file(MUSIC[0])
    soundfile.write(quieter, samples * 0.7, rate)  # another master: other samples, the same music
    rec = Recogniser.open(str(tmp_path / "catalog"), create=True)
    first, *_ = rec.register([str(MUSIC[0]), *map(str, MUSIC[1:3])], workers=1)

    [version] = Recogniser.open(str(tmp_path / "catalog")).register([str(quieter)], workers=1)
    named = Recogniser.open(str(tmp_path / "catalog")).recognise(excerpt(quieter, 5, 10), INTERNAL_RATE)
    rec = Recogniser.open(str(tmp_path / "catalog"))
    rec.remove([first.song_id])
    after = Recogniser.open(str(tmp_path / "catalog")).recognise(excerpt(MUSIC[0], 5, 10), INTERNAL_RATE)

    assert [s.name for s in rec.catalog.segments] == ["s000001", "s000002"]
    assert version.version_of == first.song_id
    assert named is not None and named.song_id == first.song_id and named.confidence > 0.9
    assert after is not None and after.song_id == version.song_id


def test_cli_catalog_compact_merges_every_segment_into_one(tmp_path: Path) -> None:
    uri = str(tmp_path / "catalog")
    for path in MUSIC[:3]:
        assert run_cli("register", str(path), "--catalog", uri, "--quiet", "--workers", "1").returncode == 0

    compacted = run_cli("catalog", "--compact", "--catalog", uri)
    again = run_cli("catalog", "--compact", "--catalog", uri)

    assert compacted.returncode == 0, compacted.stderr
    assert "compact: 3 segments merged into 1" in compacted.stderr
    assert "3 songs" in compacted.stdout and "in 1 segment\n" in compacted.stdout
    assert "nothing to merge" in again.stderr
    assert [s["name"] for s in json.loads((Path(uri) / "catalog.json").read_text())["segments"]] == ["s000004"]
