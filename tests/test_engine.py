"""The recogniser on real music excerpts: decode, fingerprint, index, match, reject."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from function.engine.decode import INTERNAL_RATE, DecodeError, decode_file, decode_query_file, to_internal
from function.engine.catalog import Catalog
from function.engine.fingerprint import CATALOG_DENSITY, HASH_BITS, fingerprint
from function.engine.recogniser import Recogniser
from function.engine.song_tags import read_tags
from function.engine.songs import CatalogError

DATA = Path(__file__).resolve().parent / "data"
MUSIC = sorted((DATA / "music").glob("*.ogg"))
CATALOG_SONGS = MUSIC[:4]
UNKNOWN_SONG = MUSIC[4]
NOISE = DATA / "noise" / "city.ogg"


def excerpt(path: Path, start: float, seconds: float, rate: int) -> np.ndarray:
    samples, native = decode_file(path)
    resampled = resample_poly(samples, rate, native).astype(np.float32)
    return resampled[int(start * rate) : int((start + seconds) * rate)]


def with_noise(clean: np.ndarray, rate: int, snr_db: float) -> np.ndarray:
    noise = excerpt(NOISE, 0, len(clean) / rate, rate)
    gain = np.sqrt(np.mean(clean**2) / np.mean(noise**2)) / 10 ** (snr_db / 20)
    return (clean + gain * noise).astype(np.float32)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory: pytest.TempPathFactory) -> Recogniser:
    uri = str(tmp_path_factory.mktemp("catalog"))
    rec = Recogniser.open(uri, create=True)
    results = rec.register([str(p) for p in CATALOG_SONGS], workers=1)
    assert [r.status for r in results] == ["added"] * 4
    return Recogniser.open(uri)


def test_decode_mixes_to_mono_and_keeps_rate(tmp_path: Path) -> None:
    stereo = np.stack([np.full(4410, 0.5, np.float32), np.full(4410, -0.25, np.float32)], axis=1)
    soundfile.write(tmp_path / "s.flac", stereo, 44100)

    samples, rate = decode_file(tmp_path / "s.flac")

    assert rate == 44100
    assert samples.shape == (4410,)
    assert np.allclose(samples, 0.125, atol=1e-3)


def test_decode_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ogg"
    bad.write_bytes(b"not audio at all")

    with pytest.raises(DecodeError, match="broken.ogg"):
        decode_file(bad)


def test_m4a_without_ffmpeg_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without ffmpeg
    song = tmp_path / "song.m4a"
    song.write_bytes(b"\x00" * 100)

    with pytest.raises(DecodeError, match="song.m4a.*ffmpeg"):
        decode_file(song)


def test_raw_pcm_query_needs_its_rate(tmp_path: Path) -> None:
    raw = tmp_path / "q.pcm"
    raw.write_bytes(np.zeros(800, "<i2").tobytes())

    with pytest.raises(DecodeError, match="sample-rate"):
        decode_query_file(raw)
    samples, rate = decode_query_file(raw, 8000)
    assert (len(samples), rate) == (800, 8000)


def test_8k_and_16k_queries_share_one_internal_band() -> None:
    at_16k = excerpt(CATALOG_SONGS[0], 2, 5, 16000)
    at_8k = excerpt(CATALOG_SONGS[0], 2, 5, 8000)

    a, b = to_internal(at_16k, 16000), to_internal(at_8k, 8000)

    assert len(a) == len(b) == 5 * INTERNAL_RATE
    assert np.corrcoef(a, b)[0, 1] > 0.95


def test_hashes_fit_the_hash_space_and_pack_the_time_gap() -> None:
    samples = to_internal(*decode_file(CATALOG_SONGS[0]))

    hashes, frames = fingerprint(samples, CATALOG_DENSITY)

    assert len(hashes) > 10 * 20  # a dense constellation over 20 s of music
    assert hashes.max() < 1 << HASH_BITS
    assert np.all(np.diff(frames.astype(np.int64)) >= 0)
    time_gaps = hashes & 0x3F
    assert time_gaps.min() >= 1 and len(np.unique(time_gaps)) > 10


def test_silence_has_no_landmarks() -> None:
    hashes, _ = fingerprint(np.zeros(10 * INTERNAL_RATE, np.float32), CATALOG_DENSITY)

    assert len(hashes) == 0


def test_tags_fall_back_to_artist_dash_title_file_name(tmp_path: Path) -> None:
    path = tmp_path / "Some Band - A Song.wav"
    soundfile.write(path, np.zeros(800, np.float32), 8000)

    tags = read_tags(str(path))

    assert (tags.artist, tags.title) == ("Some Band", "A Song")


def test_index_round_trips_through_disk(recogniser: Recogniser) -> None:
    reopened = Catalog(recogniser.catalog.uri)

    assert [s.song_id for s in reopened.songs] == [s.song_id for s in recogniser.catalog.songs]
    for stored, loaded in zip(reopened.landmarks(), recogniser.catalog.landmarks(), strict=True):
        assert np.array_equal(stored, loaded)
    assert reopened.stats()["hashes"] == sum(s.hashes for s in reopened.songs)


def test_same_audio_under_two_paths_is_one_song(recogniser: Recogniser, tmp_path: Path) -> None:
    copy = tmp_path / "renamed copy.ogg"
    shutil.copy(CATALOG_SONGS[1], copy)
    catalog_dir = tmp_path / "cat"
    shutil.copytree(recogniser.catalog.uri, catalog_dir)
    rec = Recogniser.open(str(catalog_dir))

    results = rec.register([str(copy), str(CATALOG_SONGS[1])], workers=1)

    assert [r.status for r in results] == ["duplicate", "duplicate"]
    assert len(rec.songs) == 4
    song = next(s for s in rec.songs if s["song_id"] == results[0].song_id)
    assert str(copy.resolve()) in song["sources"]


def test_registration_is_incremental_and_songs_can_be_removed(tmp_path: Path) -> None:
    uri = str(tmp_path / "cat")
    rec = Recogniser.open(uri, create=True)
    rec.register([str(CATALOG_SONGS[0])], workers=1)
    rec = Recogniser.open(uri)
    rec.register([str(CATALOG_SONGS[1])], workers=1)
    query = excerpt(CATALOG_SONGS[0], 5, 10, 16000)
    assert Recogniser.open(uri).recognise(query, 16000) is not None

    first = rec.songs[0]["song_id"]
    assert rec.remove([first]) == 1

    after = Recogniser.open(uri)
    assert [s["song_id"] for s in after.songs] == [rec.songs[0]["song_id"]]
    assert after.recognise(query, 16000) is None
    assert after.recognise(excerpt(CATALOG_SONGS[1], 5, 10, 16000), 16000) is not None


@pytest.mark.parametrize("rate", [16000, 8000])
def test_noisy_excerpt_is_found_at_its_offset(recogniser: Recogniser, rate: int) -> None:
    query = with_noise(excerpt(CATALOG_SONGS[2], 6.5, 10, rate), rate, snr_db=5)

    match = recogniser.recognise(query, rate)

    assert match is not None
    assert match.title == read_tags(str(CATALOG_SONGS[2])).title
    assert abs(match.offset_seconds - 6.5) < 0.1
    assert 0.5 <= match.confidence <= 1


def test_pcm16_bytes_are_recognised(recogniser: Recogniser) -> None:
    query = excerpt(CATALOG_SONGS[3], 3, 10, 16000)
    pcm = (query * 32767).astype("<i2").tobytes()

    match = recogniser.recognise_pcm(pcm, 16000)

    assert match is not None and match.song_id == recogniser.catalog.songs[3].song_id


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(np.zeros(160000, np.float32), id="silence"),
        pytest.param(np.random.default_rng(1).standard_normal(160000).astype(np.float32) * 0.1, id="white-noise"),
        pytest.param(excerpt(NOISE, 0, 10, 16000), id="street-noise"),
        pytest.param(excerpt(UNKNOWN_SONG, 5, 10, 16000), id="unknown-song"),
    ],
)
def test_not_in_catalog_is_no_match(recogniser: Recogniser, query: np.ndarray) -> None:
    assert recogniser.recognise(query, 16000) is None


def test_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no catalog"):
        Recogniser.open(str(tmp_path / "nowhere"))


def test_corrupt_catalog_is_a_clear_error(recogniser: Recogniser, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(recogniser.catalog.uri, broken)
    for postings in broken.glob("s*/postings.npy"):
        postings.write_bytes(b"garbage")

    with pytest.raises(CatalogError, match="corrupt"):
        Recogniser.open(str(broken))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "function", *args], capture_output=True, text=True, timeout=120)


def test_cli_register_recognise_catalog_remove_json(tmp_path: Path) -> None:
    uri = str(tmp_path / "cat")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    query = tmp_path / "query.wav"
    soundfile.write(query, excerpt(CATALOG_SONGS[0], 4, 10, 16000), 16000, subtype="PCM_16")

    reg = run_cli("register", str(CATALOG_SONGS[0]), str(bad), "--catalog", uri, "--json", "--workers", "1")
    rec = run_cli("recognise", str(query), str(UNKNOWN_SONG), "--catalog", uri, "--json")
    cat = run_cli("catalog", "--catalog", uri, "--json")

    lines = [json.loads(line) for line in reg.stdout.splitlines()]
    assert reg.returncode == 0
    assert [line["status"] for line in lines] == ["added", "error"]
    assert "bad.wav" in lines[1]["error"]
    answers = [json.loads(line) for line in rec.stdout.splitlines()]
    assert [a["file"] for a in answers] == [str(query), str(UNKNOWN_SONG)]
    assert answers[0]["match"]["song_id"] == lines[0]["song_id"]
    assert set(answers[0]["match"]) == {"song_id", "title", "artist", "album", "offset_seconds", "confidence", "score"}
    assert answers[1]["match"] is None and answers[1]["elapsed_ms"] > 0
    songs = [json.loads(line) for line in cat.stdout.splitlines()]
    assert [s["song_id"] for s in songs] == [lines[0]["song_id"]]
    assert set(songs[0]) == {"song_id", "title", "artist", "album", "duration_seconds", "sources", "versions"}

    removed = run_cli("remove", lines[0]["song_id"], "--catalog", uri)
    assert removed.returncode == 0
    assert run_cli("catalog", "--catalog", uri, "--json").stdout == ""
