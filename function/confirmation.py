"""When the webhook may name a song: at once when it is sure, else only when two attempts agree.

One 10-s attempt is right or "no match" almost always, but a user streams for hours and the
webhook tries every stride, so a small per-window false-match rate adds up: on 90 s of each of
the benchmark's 31 held-out (unknown) tracks in 10-s windows sliding by 5 s, 2 windows were
accepted alone at confidence >= 0.5, naming 2 of the 31 tracks wrongly, and none as two
consecutive windows agreeing on the song and on its position. In a reverberant hall at 0 dB
SNR, requiring that agreement at >= 0.35 named as many tracks (18 of 28) as single windows at
>= 0.5, 5 s later. So:

- confidence >= CONFIDENT (above every unknown-music window the benchmark has seen): a match;
- confidence >= TENTATIVE: a match only if the previous attempt for this user was a tentative
  guess of the same song whose position, moved on by the audio between the two windows' starts,
  lands within OFFSET_TOLERANCE_SECONDS of this one; otherwise it is remembered as that guess;
- below: a miss.
"""

from __future__ import annotations

from function.recogniser import Match
from function.storage.base import Recognition

CONFIDENT = 0.7
TENTATIVE = 0.35
OFFSET_TOLERANCE_SECONDS = 1.5


def candidate(guess: Match | None, confidence: float) -> dict | None:
    """What a miss remembers for the next attempt to confirm: a tentative guess, or nothing."""
    if guess is None or confidence < TENTATIVE:
        return None
    return {"song_id": guess.song_id, "offset_seconds": guess.offset_seconds, "confidence": round(confidence, 4)}


def confirms(guess: Match, confidence: float, previous: Recognition | None, kept_seconds: float) -> bool:
    """True if `previous` (this user's last attempt) saw the same song where this one sees it.

    After a miss the buffer keeps its newest `kept_seconds`, so when the same song is still
    playing this window starts `previous.audio_seconds - kept_seconds` after the previous one
    did, in the song as in the stream.
    """
    if confidence < TENTATIVE or previous is None or previous.matched:
        return False
    earlier = previous.extra.get("candidate")
    if not earlier or earlier["song_id"] != guess.song_id:
        return False
    expected = earlier["offset_seconds"] + previous.audio_seconds - kept_seconds
    return abs(guess.offset_seconds - expected) <= OFFSET_TOLERANCE_SECONDS
