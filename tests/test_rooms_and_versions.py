"""The recogniser where a wearer meets music: in a reverberant room, played a little fast, and
registered more than once (another encoding of the same recording). Real audio throughout:
tests/data's excerpts, a real great hall's impulse response and real speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

from function.config import Settings
from function.engine.decode import decode_file, to_internal
from function.engine.recogniser import Recogniser
from function.webhook.naming import named

DATA = Path(__file__).resolve().parent / "data"
MUSIC = sorted((DATA / "music").glob("*.ogg"))
RATE = 8000


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def audio(path: Path) -> np.ndarray:
    samples, rate = decode_file(path)
    return to_internal(samples, rate)


def played_at(x: np.ndarray, speed: float) -> np.ndarray:
    """`x` played `speed` times as fast, pitch and tempo together (linear interpolation: a
    different resampler from the engine's own, as a real turntable would be)."""
    n = int(round(len(x) / speed))
    return np.interp(np.arange(n) * speed, np.arange(len(x)), x).astype(np.float32)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory: pytest.TempPathFactory) -> Recogniser:
    r = Recogniser.open(str(tmp_path_factory.mktemp("catalog")), create=True)
    r.register([str(p) for p in MUSIC], workers=1)
    return r


@pytest.fixture(scope="module")
def hall() -> np.ndarray:
    return audio(DATA / "ir" / "greathall.wav")


@pytest.mark.parametrize("path", MUSIC, ids=lambda p: p.stem)
def test_a_song_in_a_great_hall_under_talk_is_named(recogniser, hall, path) -> None:
    song = audio(path)
    talk = audio(DATA / "speech" / "talk.ogg")[: 10 * RATE]
    wet = fftconvolve(song, hall)[len(song) // 4 :][: 10 * RATE]
    room = wet + talk * (rms(wet) / rms(talk) / 10 ** (5 / 20))  # talk at +5 dB SNR

    match = recogniser.recognise(room, RATE)

    assert match is not None and match.title == recogniser.catalog.songs[MUSIC.index(path)].title


@pytest.mark.parametrize("speed", [0.98, 1.02])
def test_a_song_played_two_percent_off_speed_is_named(recogniser, speed) -> None:
    song = audio(MUSIC[0])[3 * RATE : 13 * RATE]

    match = recogniser.recognise(played_at(song, speed), RATE)

    assert match is not None and match.song_id == recogniser.catalog.songs[0].song_id


def test_talk_in_a_reverberant_room_over_street_noise_is_no_match(recogniser, hall) -> None:
    talk = audio(DATA / "speech" / "talk.ogg")
    street = audio(DATA / "noise" / "city.ogg")[: len(talk)]
    room = fftconvolve(talk, hall)[: len(talk)] + street * 0.5 * rms(talk) / rms(street)

    guess, confidence = recogniser.best_guess(room, RATE)

    assert confidence < recogniser.threshold, guess


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs an ffmpeg binary (.ci/run installs it)")
def test_copies_of_one_recording_are_versions_of_one_song_and_each_is_recognised(tmp_path) -> None:
    original = MUSIC[-1]
    copies = []
    for suffix, codec in ((".flac", []), (".mp3", ["-b:a", "128k"]), (".m4a", ["-c:a", "aac"])):
        copy = tmp_path / f"copy{suffix}"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(original), *codec, str(copy)], check=True)
        copies.append(copy)
    r = Recogniser.open(str(tmp_path / "catalog"), create=True)

    results = r.register([str(p) for p in [*MUSIC, *copies]], workers=1)

    head = next(x for x in results if x.file == str(original))
    assert [x.version_of for x in results if x.file in map(str, copies)] == [head.song_id] * 3
    listed = {s["song_id"]: s for s in r.songs}
    assert len(listed) == len(MUSIC)
    assert len(listed[head.song_id]["versions"]) == 3
    for source in [original, *copies]:
        clip = audio(source)[4 * RATE : 14 * RATE]
        match = r.recognise(clip, RATE)
        assert match is not None and match.song_id == head.song_id, source.name
        assert match.confidence > 0.9, (source.name, match)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs an ffmpeg binary (.ci/run installs it)")
def test_removing_a_songs_first_version_leaves_the_others_named(tmp_path) -> None:
    copy = tmp_path / "copy.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(MUSIC[0]), str(copy)], check=True)
    r = Recogniser.open(str(tmp_path / "catalog"), create=True)
    first, second, *_ = r.register([str(MUSIC[0]), str(copy), *map(str, MUSIC[1:])], workers=1)

    r.remove([first.song_id])

    match = r.recognise(audio(copy)[4 * RATE : 14 * RATE], RATE)
    assert match is not None and match.song_id == second.song_id
    assert [s["song_id"] for s in r.songs].count(second.song_id) == 1


@pytest.mark.parametrize("speed", [0.98, 1.02])
def test_a_long_query_named_at_a_speed_gives_the_songs_time_at_its_start(recogniser, speed) -> None:
    """Named by the speed retry over the newest seconds, the match still says where in the song
    the query began, not where those newest seconds began."""
    song = audio(MUSIC[0])[2 * RATE : 24 * RATE]

    match = recogniser.recognise(played_at(song, speed), RATE)

    assert match is not None and match.song_id == recogniser.catalog.songs[0].song_id
    assert abs(match.offset_seconds - 2.0) < 0.3, match.offset_seconds


# --- the webhook's streaming decision (function/webhook/naming.py) on a room under babble ---------


def babble(voices: int, seconds: float) -> np.ndarray:
    """`voices` people talking at once: the talk recording from `voices` different points of
    itself (its five speakers take turns, so every copy is another voice at a given moment)."""
    talk = audio(DATA / "speech" / "talk.ogg")
    n = int(seconds * RATE)
    shifts = np.linspace(0, len(talk), voices, endpoint=False).astype(int)
    return sum(np.resize(np.roll(talk, -s), n) for s in shifts).astype(np.float32)


def first_named(recogniser: Recogniser, stream: np.ndarray) -> tuple[float | None, str | None]:
    """(seconds of audio, title) of the first attempt the webhook's cadence would name, as the
    webhook attempts: after MIN_AUDIO_SECONDS, then every RECOGNITION_STRIDE_SECONDS, each time
    over everything buffered."""
    settings = Settings()
    at = settings.min_audio_seconds
    while at <= len(stream) / RATE:
        guess, confidence = recogniser.best_guess(stream[: int(at * RATE)], RATE)
        match = named(guess, confidence)
        if match is not None:
            return at, match.title
        at += settings.stride_seconds
    return None, None


@pytest.mark.parametrize("path", MUSIC, ids=lambda p: p.stem)
def test_a_song_in_a_great_hall_under_babble_is_named_by_the_streaming_decision(recogniser, hall, path) -> None:
    """Six voices at +5 dB in a real great hall (RT60 2.4 s): the webhook's cadence names the
    song, and no other, within 16 s of audio. (How soon is a benchmark figure, bench.streams; on
    these 20-s excerpts the engine names them at 3-15 s, median 11: the issue's 10-s target is
    met by two of the five. A song's own loops raise its chance rate: see function/engine/matcher.py.)"""
    song = audio(path)
    wet = fftconvolve(song, hall)[: len(song)][2 * RATE :]  # the hall already ringing
    crowd = babble(6, len(wet) / RATE)
    stream = wet + crowd * (rms(wet) / rms(crowd) / 10 ** (5 / 20))

    seconds, title = first_named(recogniser, stream)

    assert title == recogniser.catalog.songs[MUSIC.index(path)].title
    assert seconds is not None and seconds <= 16


def test_talk_over_babble_in_a_hall_is_never_named(recogniser, hall) -> None:
    crowd = fftconvolve(babble(8, 20.0), hall)[: 20 * RATE]
    wearer = audio(DATA / "speech" / "talk.ogg")[: 20 * RATE]
    wearer = np.pad(wearer, (0, 20 * RATE - len(wearer)))
    stream = crowd / rms(crowd) + wearer / rms(wearer)  # the wearer as loud as the party

    assert first_named(recogniser, stream) == (None, None)
