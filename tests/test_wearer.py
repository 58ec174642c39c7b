"""bench/wearer.py: the wearer's conditions are deterministic, and each does what it says.

Real music from tests/data/, so this runs without the downloaded corpus (as in CI), where the
speech is synthesised; ffmpeg with libopus must be installed (.ci/run installs it).
"""

from __future__ import annotations

import numpy as np
import pyroomacoustics as pra
import pytest
from pyroomacoustics.experimental import measure_rt60
from scipy.signal import freqz

from bench import corpus, wearer
from bench.audio import WORK_RATE, excerpt_with_context, rms

@pytest.fixture(scope="module")
def material() -> corpus.Corpus:
    return corpus.load(None, 0, quick=True, split="dev")


@pytest.fixture(scope="module")
def music(material: corpus.Corpus) -> np.ndarray:
    track = material.known[0]
    audio, _ = excerpt_with_context(str(track.path), track.seconds, 8.0, wearer.LEAD_SECONDS, np.random.default_rng(0))
    return audio


def test_render_is_deterministic_in_seed_and_split(material: corpus.Corpus, music: np.ndarray) -> None:
    scene = wearer.SCENES[wearer.TARGET_SCENE]
    first = wearer.render(music, scene, 3, material)
    again = wearer.render(music, scene, 3, material)
    other_seed = wearer.render(music, scene, 4, material)
    test_split = wearer.render(music, scene, 3, corpus.load(None, 0, quick=True, split="test"))

    assert first.dtype == np.float32 and len(first) == len(music) - wearer.LEAD_SECONDS * WORK_RATE
    assert np.array_equal(first, again)
    assert not np.allclose(first, other_seed)
    assert not np.allclose(first, test_split)


@pytest.mark.parametrize("kind", ["living room", "café", "car", "medium hall", "diffuse hall"])
def test_simulated_room_decays_as_asked(kind: str) -> None:
    low, high = wearer.ROOMS[kind].rt60
    room = wearer.simulate_room(kind, 1, "test")
    response = wearer.impulse_response(kind, 1, "test")

    # T30, another span than the room's own T20; at mid frequencies, where a room's RT60 is
    # quoted (its walls absorb more treble than bass, so the broadband decay is another figure).
    rt60 = measure_rt60(wearer.mid_band(response), fs=WORK_RATE, decay_db=30)

    assert 0.8 * low <= rt60 <= 1.2 * high
    distance = np.linalg.norm(np.subtract(room.speaker, room.microphone))
    arrival = distance / pra.constants.get("c") * WORK_RATE + pra.constants.get("frac_delay_length") // 2
    assert abs(len(room.responses[0]) - len(response) - arrival) <= 1  # starts at the direct sound
    assert np.sum(response.astype(np.float64) ** 2) == pytest.approx(1.0)
    assert wearer.simulate_room(kind, 1, "dev").size != wearer.simulate_room(kind, 1, "test").size


@pytest.mark.parametrize("kind", wearer.ROOMS)
def test_simulated_rooms_put_the_listener_where_people_stand(kind: str) -> None:
    low, high = wearer.ROOMS[kind].distance
    room = wearer.simulate_room(kind, 2, "dev")

    assert low - 1e-6 <= np.linalg.norm(np.subtract(room.speaker, room.microphone)) <= high + 1e-6
    assert wearer.BODY_SHADOW_DB <= room.body_shadow_db[0] <= 0


def test_body_shadow_dims_only_the_treble_of_the_direct_sound() -> None:
    direct, late = 100, 100 + int(0.05 * WORK_RATE)
    h = np.zeros(4000, np.float32)
    h[direct], h[late] = 1.0, 0.5

    shadowed = wearer.body_shadow(h, direct, -6.0)

    spectrum = np.abs(np.fft.rfft(shadowed[: late - 40]))
    frequencies = np.fft.rfftfreq(late - 40, 1 / WORK_RATE)
    assert 20 * np.log10(spectrum[np.argmin(np.abs(frequencies - 100))]) == pytest.approx(0.0, abs=0.5)
    assert 20 * np.log10(spectrum[np.argmin(np.abs(frequencies - 7000))]) == pytest.approx(-6.0, abs=0.5)
    assert np.array_equal(shadowed[late - 5 : late + 5], h[late - 5 : late + 5])  # a reflection, untouched


def test_small_speaker_has_no_bass_and_a_resonance_at_its_corner() -> None:
    b, a = wearer.resonant_high_pass(300.0, 2.0)

    _, response = freqz(b, a, worN=[75.0, 300.0, 3000.0], fs=WORK_RATE)

    bass, corner, mid = 20 * np.log10(np.abs(response))
    assert bass == pytest.approx(-24.0, abs=1.0)  # two octaves below: 12 dB per octave
    assert corner == pytest.approx(20 * np.log10(2.0), abs=0.1)
    assert mid == pytest.approx(0.0, abs=0.2)


@pytest.mark.parametrize("kbps", wearer.OPUS_BITRATES)
def test_opus_round_trip_keeps_length_and_changes_the_signal(music: np.ndarray, kbps: int) -> None:
    x = music * 0.5

    y = wearer.opus(x, kbps)

    assert len(y) == len(x)
    error = y - x
    assert rms(error) > 1e-3  # coded, not copied
    assert rms(x) / rms(error) > 2  # and still the same music, in time (no codec delay)


def test_opus_without_ffmpeg_says_what_is_missing(music: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    wearer._ffmpeg.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="ffmpeg with libopus"):
            wearer.opus(music, 24)
    finally:
        wearer._ffmpeg.cache_clear()


def test_speed_up_shortens_and_raises_pitch_by_two_percent() -> None:
    t = np.arange(4 * WORK_RATE) / WORK_RATE
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)

    faster = wearer.speed_change(tone, 1.02)

    assert abs(len(faster) - len(tone) / 1.02) <= 1
    spectrum = np.abs(np.fft.rfft(faster * np.hanning(len(faster))))
    assert np.fft.rfftfreq(len(faster), 1 / WORK_RATE)[np.argmax(spectrum)] == pytest.approx(1020, abs=1)


def test_talk_is_mixed_at_the_snr_asked(material: corpus.Corpus, music: np.ndarray) -> None:
    room = ("living room",)
    music_only = wearer.render(music, wearer.Scene(rooms=room), 2, material)
    with_talk = wearer.render(music, wearer.Scene(rooms=room, talk_snr=5.0), 2, material)
    talk_only = wearer.render(music, wearer.Scene(rooms=room, talk_snr=5.0, music=False), 2, material)

    talk = with_talk - music_only

    assert 20 * np.log10(rms(music_only) / rms(talk)) == pytest.approx(5.0, abs=0.05)
    assert 20 * np.log10(rms(music_only)) == pytest.approx(wearer.MUSIC_DBFS, abs=0.05)
    assert np.allclose(talk_only, talk, atol=1e-6)  # without music: the same talk, at the same level


def test_own_voice_speaks_the_fraction_of_the_time_asked(material: corpus.Corpus) -> None:
    n = 60 * WORK_RATE

    voice = wearer.own_voice(material, 0.4, 0.1, np.random.default_rng(5), n)

    frames = voice[: n // 4000 * 4000].reshape(-1, 4000)  # quarter seconds: longer than a gap between syllables
    speaking = np.abs(frames).max(axis=1) > 0
    assert speaking.mean() == pytest.approx(0.4, abs=0.05)
    assert rms(voice[np.abs(voice) > 0]) >= 0.1


def test_two_song_scene_needs_the_second_song(material: corpus.Corpus, music: np.ndarray) -> None:
    with pytest.raises(ValueError, match="second song"):
        wearer.render(music, wearer.SCENES["two songs -5 dB"], 1, material)


def test_diffuse_room_is_the_same_room_every_time() -> None:
    """Its ray tracer draws from pyroomacoustics' own generator, seeded from the room's draws."""
    first = wearer.impulse_response("diffuse hall", 2, "dev")
    wearer.simulate_room.cache_clear()
    assert np.array_equal(first, wearer.impulse_response("diffuse hall", 2, "dev"))


def test_song_after_talk_starts_silent_then_plays_at_the_music_level(material: corpus.Corpus, music: np.ndarray) -> None:
    scene = wearer.Scene(music_after=3.0)
    x = wearer.render(music, scene, 1, material)
    start = int(3.0 * WORK_RATE)
    assert np.all(x[:start] == 0)
    assert rms(x[start:]) == pytest.approx(10 ** (wearer.MUSIC_DBFS / 20), rel=0.01)


def test_more_voices_talk_more_of_the_time(material: corpus.Corpus, music: np.ndarray) -> None:
    """Babble: eight voices leave fewer pauses than one (levels are the same, set by the SNR)."""
    quiet = []
    for voices in ((1, 1), (8, 8)):
        x = wearer.render(music, wearer.Scene(talk_snr=0.0, voices=voices, music=False), 1, material)
        frames = x[: len(x) // 400 * 400].reshape(-1, 400)
        quiet.append(np.mean(np.sqrt(np.mean(frames**2, axis=1)) < 0.1 * rms(x)))
    assert quiet[1] < quiet[0]
