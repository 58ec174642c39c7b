"""The webhook names a song at once only when sure; otherwise two attempts must agree."""

from __future__ import annotations

import pytest

from function.confirmation import CONFIDENT, TENTATIVE, candidate, confirms
from function.engine.recogniser import Match
from function.storage.base import Recognition

KEPT = 5.0  # MIN_AUDIO_SECONDS - RECOGNITION_STRIDE_SECONDS with the defaults


def guess(song_id: str = "song-a", offset: float = 42.0) -> Match:
    return Match(song_id, "Title", "Artist", "", offset, 0.5, 20)


def attempt(matched: bool = False, seconds: float = 10.0, extra: dict | None = None) -> Recognition:
    return Recognition(uid="u", at=0.0, latency_ms=5.0, audio_seconds=seconds, matched=matched, extra=extra or {})


def tentative_miss(song_id: str = "song-a", offset: float = 37.0, seconds: float = 10.0) -> Recognition:
    return attempt(seconds=seconds, extra={"candidate": candidate(guess(song_id, offset), 0.4)})


def test_a_weak_guess_is_remembered_and_a_hopeless_one_is_not() -> None:
    assert candidate(guess(), TENTATIVE) == {"song_id": "song-a", "offset_seconds": 42.0, "confidence": TENTATIVE}
    assert candidate(guess(), TENTATIVE - 0.01) is None
    assert candidate(None, 0.9) is None


def test_the_same_song_moved_on_by_the_stride_confirms() -> None:
    # The previous window started 37 s into the song and held 10 s; 5 s were kept, so this
    # window starts 5 s later: 42 s.
    assert confirms(guess(offset=42.0), 0.4, tentative_miss(offset=37.0), KEPT)
    assert confirms(guess(offset=43.4), 0.4, tentative_miss(offset=37.0), KEPT)


@pytest.mark.parametrize(
    "current,previous",
    [
        pytest.param(guess(offset=45.0), tentative_miss(offset=37.0), id="wrong-position"),
        pytest.param(guess(song_id="song-b"), tentative_miss(), id="other-song"),
        pytest.param(guess(), None, id="no-previous-attempt"),
        pytest.param(guess(), attempt(), id="previous-was-a-plain-miss"),
        pytest.param(guess(), attempt(matched=True, extra={"candidate": candidate(guess(offset=37.0), 0.4)}), id="previous-was-a-match"),
    ],
)
def test_anything_else_does_not_confirm(current: Match, previous: Recognition | None) -> None:
    assert not confirms(current, 0.45, previous, KEPT)


def test_a_guess_below_tentative_confirms_nothing() -> None:
    assert not confirms(guess(offset=42.0), TENTATIVE - 0.01, tentative_miss(offset=37.0), KEPT)


def test_a_longer_previous_window_moves_the_expected_position() -> None:
    # A backlog made the previous window 14 s long: this one starts 9 s after it.
    assert confirms(guess(offset=46.0), 0.4, tentative_miss(offset=37.0, seconds=14.0), KEPT)
    assert not confirms(guess(offset=42.0), 0.4, tentative_miss(offset=37.0, seconds=14.0), KEPT)


def test_sure_is_above_the_recognisers_threshold_and_tentative_below() -> None:
    assert TENTATIVE < 0.5 < CONFIDENT <= 1.0
