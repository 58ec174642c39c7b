"""When the webhook may name a song: at once when it is sure, else only when two attempts agree.

One 10-s attempt is right or "no match" almost always, but a user streams for hours and the
webhook tries every stride, so a small per-window false-match rate adds up. Streaming the first
90 s of each of the benchmark's 31 held-out (unknown) tracks in 10-s windows sliding by 5 s
(`python -m bench.streams`, figures in BENCHMARKS.md): naming a song from one window at the
recogniser's threshold (0.5) named 3 of them wrongly; the rule below named none. On 28 known
tracks in a reverberant hall under 0 dB street noise it named 17 (single windows: 15), with a
median of 40 s of stream (single windows: 35 s); clean, both named all 28 after 10 s. So:

- confidence >= CONFIDENT (above every unknown-music window the benchmark has seen): a match;
- confidence >= TENTATIVE: a match only if the previous attempt for this user was a tentative
  guess of the same song whose position, moved on by the audio between the two windows' starts,
  lands within OFFSET_TOLERANCE_SECONDS of this one; otherwise it is remembered as that guess;
- below: a miss.
"""

from __future__ import annotations

from function.engine.recogniser import Match
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
