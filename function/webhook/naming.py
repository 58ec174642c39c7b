"""When the webhook names a song: one threshold on a vote that accumulates the evidence.

Each attempt votes over all the audio buffered for the user (up to MAX_BUFFER_SECONDS), not over
the newest window: a song playing in a room keeps piling its landmarks on one offset while
chance piles grow no faster than the audio, so the confidence of a true match climbs with every
second of music and that of unknown music, talk or noise does not. The first attempt comes after
MIN_AUDIO_SECONDS (3 s), the next ones every RECOGNITION_STRIDE_SECONDS (2 s) of new audio, so a
clean song is named at the first attempt and a song in a reverberant room a few seconds later,
without the history read-back the earlier two-threshold confirmation needed.

NAME_AT is the vote's confidence (function/engine/matcher.py: the gap, in orders of magnitude,
between how improbable the best song's pile is by chance and how improbable its rival's is) at a
gap of 21. Set on the dev split's streams (bench/tuning/naming-dev.md, 12 streams of 45 s per
condition, harsh rooms, babble and a party among them): no attempt of its 96 negative streams
(unknown music, talk, crowd and party without music) got past a gap of 15.6, and an exponential
fitted to the highest of them puts a negative stream's chance of ever reaching 21 at about
0.06 %; the catalogued songs were named at a median 5 s in the reverberant rooms and 7 s at the
party (7 and 9 s with the pile-ratio rule it replaced, in the design run). Two catalogued songs
at once are the exception: see BENCHMARKS.md.
"""

from __future__ import annotations

from function.engine.recogniser import Match

NAME_AT = 0.7  # a gap of 21 (gap_at_half 9); set on the dev split's streams, see above


def named(guess: Match | None, confidence: float) -> Match | None:
    """The song to name from an attempt's best guess, or None while the evidence is short."""
    return guess if guess is not None and confidence >= NAME_AT else None
