"""The running tally (function/engine/tally.py) answers as a vote of the whole buffer would, and the
stream's peaks are the peaks of the recording (function/engine/stream.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from function.engine.decode import decode_file, resample, to_internal
from function.engine.fingerprint import QUERY_DENSITY, find_peaks, spectrogram, with_neighbours
from function.engine.matcher import MAX_QUERY_SECONDS, vote
from function.engine.recogniser import Recogniser
from function.engine.stream import StreamState, advance, buffered_peaks, landmarks_of, peaks_of, pending_peaks, step
from tests.webhook_support import DATA, catalog_uri, tracks  # noqa: F401  (fixtures)

RATE = 16000


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 32767 / 32768) * 32768).astype(np.int16).tobytes()


def song_pcm(path: Path, start: float, seconds: float, noise: float = 0.05, reverse: bool = False) -> bytes:
    x, rate = decode_file(path)
    x = resample(x[int(start * rate) : int((start + seconds) * rate)], RATE, rate)
    if reverse:  # the song backwards: music that is in no catalog
        x = x[::-1].copy()
    return pcm16(0.3 * x + noise * np.random.default_rng(0).standard_normal(len(x)).astype(np.float32))


def test_one_chunk_gives_a_recordings_peaks_exactly(tracks) -> None:
    pcm = song_pcm(tracks[0].path, 5, 20, noise=0.0)
    samples = np.frombuffer(pcm, np.int16)

    streamed = peaks_of(samples, RATE)
    t, f = find_peaks(spectrogram(to_internal(samples, RATE)), QUERY_DENSITY)

    assert (streamed["t"].tolist(), streamed["f"].tolist()) == (t.tolist(), f.tolist())


@pytest.mark.parametrize("rate", [8000, 16000])
def test_peaks_streamed_in_uneven_chunks_are_nearly_a_recordings(tracks, rate: int) -> None:
    """Frames that straddle a chunk's edge are rebuilt from magnitudes (stream.py): at most a few
    percent of the peaks move, and no state holds samples."""
    pcm = song_pcm(tracks[1].path, 10, 30, noise=0.0)
    samples = np.frombuffer(pcm, np.int16)
    if rate != RATE:
        samples = np.frombuffer(pcm16(resample(samples.astype(np.float32) / 32768, rate, RATE)), np.int16)
    whole = {(int(a), int(b)) for a, b in zip(*find_peaks(spectrogram(to_internal(samples, rate)), QUERY_DENSITY))}
    sizes = np.random.default_rng(3).integers(rate // 10, 3 * rate, 100)
    state, got, at = StreamState.start(rate), [], 0
    for size in sizes:
        part, state = advance(StreamState.from_bytes(state.to_bytes()), samples[at : at + size].tobytes())
        got.append(part)
        at += size
        if at >= len(samples):
            break
    got.append(pending_peaks(state))
    streamed = {(int(a), int(b)) for p in got for a, b in zip(p["t"], p["f"])}

    assert len(whole & streamed) >= 0.9 * len(whole)
    assert abs(len(streamed) - len(whole)) <= 0.05 * len(whole)
    assert len(state.to_bytes()) < 16_000


@pytest.mark.parametrize("reverse", [False, True], ids=["known song", "unknown music"])
def test_the_tally_answers_as_a_vote_of_the_whole_buffer(catalog_uri: str, tracks, reverse: bool) -> None:
    """Attempt after attempt over a buffer that fills and then slides (12 s kept), the running
    tally's speed-1 answer is the whole buffer's vote with neighbours: same song, pile, offset,
    surprise and rival."""
    recogniser = Recogniser.open(catalog_uri)
    pcm = song_pcm(tracks[2].path, 0, 20, reverse=reverse)
    recogniser.config = type(recogniser.config)(speed_variants=())  # speed 1 only: that is the vote compared
    state, chunks = None, []
    compared = 0
    for second in range(len(pcm) // (2 * RATE)):
        peaks, state = step(state, RATE, pcm[second * 2 * RATE : (second + 1) * 2 * RATE])
        chunks = (chunks + [peaks])[-12:]
        if second < 2:
            continue
        tallied, _ = recogniser._tallied(f"u-{reverse}", chunks, StreamState.from_bytes(state))
        whole, _ = buffered_peaks(chunks, StreamState.from_bytes(state), MAX_QUERY_SECONDS)
        hashes, anchors = landmarks_of(whole, QUERY_DENSITY.fan_out)
        full = vote(recogniser.catalog, *with_neighbours(hashes, anchors, recogniser.config.neighbour_gap_frames))
        assert (tallied.song_index, tallied.score, tallied.offset_frames) == (full.song_index, full.score, full.offset_frames)
        assert tallied.surprise == pytest.approx(full.surprise, abs=1e-6)
        assert tallied.rival == pytest.approx(full.rival, abs=1e-6)
        compared += 1
    assert compared >= 15


@pytest.mark.parametrize("speed", [0.98, 1.02])
def test_a_song_played_two_percent_off_speed_is_named_from_the_stream(catalog_uri: str, tracks, speed: float) -> None:
    """The speed retry moves the buffer's peaks (there is no audio to resample) and runs every
    few attempts: a song 2 % off speed is still named within 10 s of its start."""
    from function.webhook.naming import NAME_AT
    from tests.test_rooms_and_versions import played_at

    recogniser = Recogniser.open(catalog_uri)
    x, rate = decode_file(tracks[3].path)
    pcm = pcm16(0.5 * resample(played_at(x[: 15 * rate], speed), RATE, rate))
    state, chunks, named = None, [], None
    for second in range(10):
        peaks, state = step(state, RATE, pcm[second * 2 * RATE : (second + 1) * 2 * RATE])
        chunks.append(peaks)
        if second >= 2 and named is None:
            match, confidence = recogniser.best_guess_buffer(f"speed-{speed}", chunks, state)
            if match is not None and confidence >= NAME_AT:
                named = match.song_id
    assert named == next(s["song_id"] for s in recogniser.songs if s["title"] == tracks[3].title)
