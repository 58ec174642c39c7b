"""The per-uid audio rate limit: a wearer's stream and Omi's catch-up bursts pass, a sustained
flood is acknowledged and shed (never a 429, which Omi ignores) and changes nothing in storage."""

from __future__ import annotations

import json

import pytest

from function.webhook.ratelimit import BURST_AUDIO_SECONDS, AudioRateLimiter
from tests.webhook_support import build_client, catalog_uri, noise_pcm, post_chunk, tracks, webhook_env  # noqa: F401

T0 = 1_800_000_000.0


def refusals(limiter: AudioRateLimiter, uid: str, chunks_per_second: int, seconds: int, start: float = T0) -> int:
    """Send `chunks_per_second` 1-s chunks in each wall-clock second; how many were refused."""
    return sum(
        limiter.admit(uid, 1.0, start + second + i / chunks_per_second) > 0
        for second in range(seconds)
        for i in range(chunks_per_second)
    )


def test_the_limit_itself_is_sustained_forever() -> None:
    assert refusals(AudioRateLimiter(8), "alice", chunks_per_second=8, seconds=1000) == 0


def test_more_than_the_limit_sustained_is_refused() -> None:
    limiter = AudioRateLimiter(8)

    refused = refusals(limiter, "alice", chunks_per_second=9, seconds=200)

    # The burst allowance absorbs the first 120 s of excess; then every excess second is refused.
    assert 60 <= refused <= 200 - BURST_AUDIO_SECONDS + 10


def test_omi_draining_a_full_queue_after_an_outage_passes() -> None:
    limiter = AudioRateLimiter(8)
    backlog = [limiter.admit("alice", 1.0, T0 + i * 0.01) for i in range(20 * 5)]  # 20 batches of 5 s

    assert backlog == [0.0] * 100
    assert refusals(limiter, "alice", chunks_per_second=1, seconds=60, start=T0 + 1) == 0


def test_a_refusal_says_when_to_come_back_and_is_not_counted() -> None:
    limiter = AudioRateLimiter(1)
    limiter.admit("alice", BURST_AUDIO_SECONDS, T0)

    wait = limiter.admit("alice", 10.0, T0)
    again = limiter.admit("alice", 10.0, T0)

    assert wait == again == 10.0
    assert limiter.admit("alice", 10.0, T0 + wait) == 0.0


def test_uids_are_limited_apart_and_zero_disables() -> None:
    limiter = AudioRateLimiter(1)
    limiter.admit("alice", BURST_AUDIO_SECONDS, T0)

    assert limiter.admit("alice", 1.0, T0) > 0
    assert limiter.admit("bob", 1.0, T0) == 0.0
    assert AudioRateLimiter(0).admit("alice", 10 * BURST_AUDIO_SECONDS, T0) == 0.0


def test_the_longest_accepted_chunk_always_fits_an_idle_limiter() -> None:
    assert AudioRateLimiter(8, largest_chunk_seconds=300).admit("alice", 300.0, T0) == 0.0


@pytest.mark.parametrize("limit,shed", [("1", True), ("0", False)], ids=["limited", "disabled"])
def test_audio_over_the_rate_is_acknowledged_and_shed_never_refused(webhook_env, store, limit: str, shed: bool, capsys) -> None:
    """Omi ignores Retry-After: a 429 would lose the audio all the same and count a failure
    against the whole deployment's webhook, so the answer is 200 and the audio is dropped."""
    webhook_env.setenv("RATE_LIMIT_AUDIO_SECONDS_PER_SECOND", limit)
    webhook_env.setenv("MIN_AUDIO_SECONDS", "600")  # no recognition: only the limit is under test
    webhook_env.setenv("MAX_BUFFER_SECONDS", "600")
    client = build_client()
    minute = noise_pcm(64.0)  # the largest chunk MAX_CHUNK_BYTES allows; the burst admits two
    assert [post_chunk(client, "alice", minute).json["status"] for _ in range(2)] == ["ok", "ok"]
    before = store.buffer_info("alice")

    response = post_chunk(client, "alice", minute)

    assert response.status_code == 200
    if shed:
        assert response.json["status"] == "shed"
        assert "audio per second" in response.json["reason"]
        assert "Retry-After" not in response.headers
        assert store.buffer_info("alice") == before
        assert post_chunk(client, "bob", noise_pcm(1.0)).json["status"] == "ok"
        logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        assert any(entry.get("event") == "audio_shed" and entry["severity"] == "WARNING" for entry in logged)
    else:
        assert response.json["status"] == "ok"
        assert store.buffer_info("alice").buffered_bytes == 3 * len(minute)
