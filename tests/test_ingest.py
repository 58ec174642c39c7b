"""Recognition cadence, buffering and notifications, driven through the app on both backends
with the real recogniser, a real catalog of the test tracks, and a real loopback Omi API.

Cadence in these tests (see `webhook_env`): a recognition at 5 s of audio, then every 2 s of new
audio over the whole buffer, at most 8 s buffered.
"""

from __future__ import annotations

import threading
import time

from function.simulate import load_pcm16
from tests.omi_server import OmiApi, omi_api  # noqa: F401  (fixture)
from tests.webhook_support import (  # noqa: F401  (fixtures)
    DATA,
    Track,
    build_client,
    catalog_uri,
    music_pcm,
    noise_pcm,
    post_chunk,
    post_seconds,
    street_noise,
    tracks,
    webhook_env,
)

SECRET = "app-secret-for-tests"


def with_omi(webhook_env, api: OmiApi, **extra: str) -> None:
    webhook_env.setenv("OMI_APP_ID", "songapp")
    webhook_env.setenv("OMI_APP_SECRET", SECRET)
    webhook_env.setenv("OMI_API_URL", api.url)
    for name, value in extra.items():
        webhook_env.setenv(name, value)


def recognitions(responses: list) -> list[dict]:
    return [r.json["recognition"] for r in responses if "recognition" in r.json]


def play(client, uid: str, track: Track, start: float = 5.0) -> dict:
    """Five seconds of the track: exactly one recognition, whose report is returned."""
    [recognition] = recognitions(post_seconds(client, uid, music_pcm(track, start, 5.0)))
    return recognition


def test_no_attempt_before_min_audio_seconds_and_one_at_it(webhook_env, store) -> None:
    client = build_client()

    responses = post_seconds(client, "alice", noise_pcm(5.0))

    assert ["recognition" in r.json for r in responses] == [False, False, False, False, True]
    assert responses[-1].json["recognition"]["status"] == "no_match"
    assert responses[-1].json["recognition"]["audio_seconds"] == 5.0
    # A miss is counted, not kept: the history holds songs only.
    assert store.history("alice") == []
    counted = client.get("/metrics").json
    assert (counted["recognition_attempts"], counted["matches"]) == (1, 0)
    assert counted["latency_ms"]["mean"] > 0


def test_after_a_miss_the_buffer_is_kept_and_each_attempt_votes_over_all_of_it(webhook_env, store) -> None:
    client = build_client()
    post_seconds(client, "alice", noise_pcm(5.0))
    kept = store.buffer_info("alice").buffered_bytes

    responses = post_seconds(client, "alice", noise_pcm(4.0, seed=1))

    assert kept == 5 * 32000
    assert ["recognition" in r.json for r in responses] == [False, True, False, True]
    # Every stride the vote covers the whole buffer, up to MAX_BUFFER_SECONDS (8 here).
    assert [r["audio_seconds"] for r in recognitions(responses)] == [7.0, 8.0]
    assert client.get("/metrics").json["recognition_attempts"] == 3


def test_a_lease_held_elsewhere_blocks_only_until_a_stride_arrived_and_the_buffer_stays_capped(webhook_env, store) -> None:
    """Another instance's attempt (a claim it never releases, as a miss never does) holds this
    uid off for a stride of audio at most; meanwhile and after, the buffer keeps to
    MAX_BUFFER_SECONDS (8 s here), whoever claims."""
    client = build_client()
    post_chunk(client, "alice", noise_pcm(1.0))
    store.claim("alice", min_bytes=0, stride_bytes=0, lease_seconds=60, now=time.time(), max_bytes=12 * 32000)

    responses = post_seconds(client, "alice", noise_pcm(11.0))

    assert [r["audio_seconds"] for r in recognitions(responses)] == [5.0, 7.0, 8.0, 8.0]
    assert max(r.json["buffered_seconds"] for r in responses) == 8.0
    assert store.buffer_info("alice").buffered_bytes == 8 * 32000


def test_without_a_catalog_audio_is_kept_and_the_skip_reported(webhook_env, store, tmp_path) -> None:
    webhook_env.setenv("CATALOG_URI", str(tmp_path / "no-catalog"))
    client = build_client()

    responses = post_seconds(client, "alice", noise_pcm(11.0))

    assert all(r.status_code == 200 for r in responses)
    assert recognitions(responses) == [{"status": "unavailable", "reason": "the song catalog is not available"}] * 4
    assert store.buffer_info("alice").buffered_bytes == 8 * 32000
    assert store.history("alice") == []


def test_a_new_sample_rate_starts_a_new_buffer(webhook_env, store) -> None:
    client = build_client()
    post_seconds(client, "alice", noise_pcm(3.0))

    response = post_chunk(client, "alice", noise_pcm(1.0, 8000), rate=8000)

    assert response.json["buffered_seconds"] == 1.0
    info = store.buffer_info("alice")
    assert (info.sample_rate, info.buffered_bytes) == (8000, 16000)


def test_a_match_is_reported_recorded_and_clears_the_buffer(webhook_env, store, tracks) -> None:
    client = build_client()

    recognition = play(client, "alice", tracks[0])

    assert recognition["status"] == "match"
    assert (recognition["title"], recognition["artist"]) == (tracks[0].title, tracks[0].artist)
    assert recognition["notification"] == "logged"
    assert store.buffer_info("alice").buffered_bytes == 0
    [entry] = client.get("/history/alice").json["songs"]
    assert (entry["title"], entry["notified"], entry["notification"]) == (tracks[0].title, False, "logged")
    assert abs(entry["offset_seconds"] - 5.0) <= 1.0
    assert client.get("/stats/alice").json["last_recognition"]["title"] == tracks[0].title


def test_a_clean_stream_is_named_at_the_first_attempt_before_ten_seconds(webhook_env, tracks) -> None:
    webhook_env.setenv("MAX_BUFFER_SECONDS", "60")
    client = build_client()

    responses = post_seconds(client, "alice", music_pcm(tracks[1], 2.0, 12.0))

    answered = [r.json.get("recognition", {}).get("status") for r in responses]
    assert answered.index("match") + 1 <= 5, answered
    assert recognitions(responses)[0]["title"] == tracks[1].title


def test_talk_over_street_noise_streamed_for_half_a_minute_is_never_named(webhook_env, street_noise) -> None:
    webhook_env.setenv("MAX_BUFFER_SECONDS", "60")
    client = build_client()
    talk = load_pcm16(DATA / "speech" / "talk.ogg", 16000, noise=street_noise, snr_db=0.0)

    responses = post_seconds(client, "bob", (talk * 2)[: 30 * 32000])

    assert len(recognitions(responses)) >= 10
    assert {r["status"] for r in recognitions(responses)} == {"no_match"}


def test_a_match_at_8000_hz_is_recognised(webhook_env, tracks) -> None:
    client = build_client()

    responses = post_seconds(client, "alice", music_pcm(tracks[1], 5.0, 5.0, rate=8000), rate=8000)

    assert recognitions(responses)[0]["title"] == tracks[1].title


def test_a_match_notifies_the_user_through_omi(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api)
    client = build_client()

    recognition = play(client, "alice", tracks[0])

    assert recognition["notification"] == "sent"
    [request] = omi_api.notifications()
    assert request.path == "/v2/integrations/songapp/notification"
    assert request.query == {"uid": "alice", "message": tracks[0].message}
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    assert client.get("/history/alice").json["songs"][0]["notified"] is True


def test_the_same_song_is_not_notified_again_while_it_plays(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api)
    client = build_client()

    first = play(client, "alice", tracks[0], start=5.0)
    second = play(client, "alice", tracks[0], start=10.0)

    assert (first["notification"], second["notification"]) == ("sent", "skipped_cooldown")
    assert len(omi_api.notifications()) == 1
    # One history entry per play of a song, however often it is matched while it plays.
    assert [s["notification"] for s in client.get("/history/alice").json["songs"]] == ["sent"]


def test_no_more_notifications_than_the_hourly_limit(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api, NOTIFY_HOURLY_LIMIT="1", NOTIFY_COOLDOWN_SECONDS="0")
    client = build_client()

    first = play(client, "alice", tracks[0])
    second = play(client, "alice", tracks[1])

    assert (first["notification"], second["notification"]) == ("sent", "skipped_limit")
    assert len(omi_api.notifications()) == 1


def test_a_rejected_notification_is_recorded_and_the_audio_still_acknowledged(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api)
    omi_api.answer(401)
    client = build_client()

    responses = post_seconds(client, "alice", music_pcm(tracks[0], 5.0, 5.0))

    assert all(r.status_code == 200 for r in responses)
    [recognition] = recognitions(responses)
    assert (recognition["notification"], recognition["notification_error"][:8]) == ("failed", "HTTP 401")
    [entry] = client.get("/history/alice").json["songs"]
    assert (entry["title"], entry["notified"], entry["notification_error"][:8]) == (tracks[0].title, False, "HTTP 401")


def test_an_omi_api_that_hangs_costs_one_timeout_and_a_failed_notification(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api, NOTIFY_TIMEOUT_SECONDS="0.3")
    omi_api.hang(5)
    client = build_client()
    started = time.monotonic()

    recognition = play(client, "alice", tracks[0])

    assert recognition["notification"] == "failed"
    assert "timed out" in recognition["notification_error"]
    assert time.monotonic() - started < 4


def test_429_defers_notifications_for_retry_after(webhook_env, omi_api: OmiApi, store, tracks) -> None:
    with_omi(webhook_env, omi_api)
    omi_api.answer(429, headers={"Retry-After": "120"})
    client = build_client()
    before = time.time()

    first = play(client, "alice", tracks[0])
    omi_api.answer(200)
    second = play(client, "alice", tracks[1])

    assert (first["notification"], second["notification"]) == ("rate_limited", "skipped_deferred")
    assert len(omi_api.notifications()) == 1
    assert before + 120 <= store.notifications_deferred_until("alice") <= time.time() + 120


def test_metrics_summarise_the_attempts(webhook_env, tracks) -> None:
    client = build_client()
    post_seconds(client, "alice", noise_pcm(5.0))
    play(client, "bob", tracks[0])

    body = client.get("/metrics").json

    assert (body["recognition_attempts"], body["matches"], body["success_rate"]) == (2, 1, 0.5)
    assert body["latency_ms"]["p95"] >= body["latency_ms"]["mean"] > 0
    assert body["top_songs"][0]["title"] == tracks[0].title
    assert list(body["daily_active_users"].values()) == [2]


def test_two_threads_posting_for_one_user_lose_no_chunk_and_trigger_one_recognition(webhook_env, store) -> None:
    webhook_env.setenv("MIN_AUDIO_SECONDS", "10")
    webhook_env.setenv("MAX_BUFFER_SECONDS", "12")
    first_client = build_client()
    clients = [first_client, first_client.application.test_client()]
    start = threading.Barrier(2)
    responses: list = []

    def send(client, seed: int) -> None:
        start.wait()
        for i in range(5):
            responses.append(post_chunk(client, "alice", noise_pcm(1.0, seed=seed * 10 + i)))

    threads = [threading.Thread(target=send, args=(c, n)) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert [r.status_code for r in responses] == [200] * 10
    assert sorted(r.json["buffered_seconds"] for r in responses) == [float(s) for s in range(1, 11)]
    [attempt] = recognitions(responses)
    assert attempt["audio_seconds"] == 10.0
    assert first_client.get("/metrics").json["recognition_attempts"] == 1


def test_a_chunk_that_finds_every_recognition_slot_busy_is_answered_without_one(webhook_env, store) -> None:
    """Plain chunks never wait behind recognitions: with the instance's slots taken the chunk is
    stored and answered, and the next chunk with a free slot recognises."""
    client = build_client()
    import main  # the module functions-framework just loaded for this app

    slots = main._get_service().slots
    held = sum(slots.acquire(blocking=False) for _ in range(64))
    try:
        busy = post_seconds(client, "alice", noise_pcm(5.0))
    finally:
        for _ in range(held):
            slots.release()
    free = post_chunk(client, "alice", noise_pcm(1.0, seed=3))

    assert all(r.status_code == 200 for r in busy)
    assert recognitions(busy) == []
    assert free.json["recognition"]["audio_seconds"] == 6.0
    assert store.buffer_info("alice").buffered_bytes == 6 * 32000
