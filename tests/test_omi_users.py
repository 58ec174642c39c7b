"""Serving every Omi user, on both backends: the app path's signed 5-s POSTs, delivery ids,
rates Omi may send, the gap that splits a buffer, Omi's real hourly limit, memories, and each
user's own private history link."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from function.webhook.signing import sign
from function.webhook.user_links import user_key
from tests.omi_server import OmiApi, omi_api  # noqa: F401  (fixture)
from tests.webhook_support import (  # noqa: F401  (fixtures)
    Track,
    build_client,
    catalog_uri,
    music_pcm,
    noise_pcm,
    post_chunk,
    tracks,
    webhook_env,
)

SIGNING = "omi-signing-secret-for-tests"
OLD_SIGNING = "the-secret-being-rotated-out"
APP_SECRET = "app-secret-for-tests"
LINK_SECRET = "user-link-secret-for-tests"
PUBLIC = "https://songs.example.test"


def app_post(client, uid: str, body: bytes, *, rate: int = 16000, secret: str | None = SIGNING, signed_uid: str | None = None,
             t_offset: float = 0.0, delivery: str | None = None, tamper: bool = False):
    """One batch as an Omi app delivers it: one POST, no Idempotency-Key, signed when `secret`."""
    headers = {"Content-Type": "application/octet-stream", "X-Omi-Event": "audio_bytes"}
    if secret is not None:
        stamp = int(time.time() + t_offset)
        headers["X-Omi-Signature"] = sign(secret, signed_uid or uid, body, stamp)
        headers["X-Omi-Delivery"] = delivery or str(uuid.uuid4())
    sent = body[:-2] + bytes([body[-2] ^ 1, body[-1]]) if tamper else body
    return client.post(f"/audio?sample_rate={rate}&uid={uid}", data=sent, headers=headers)


@pytest.fixture
def signed(webhook_env):  # noqa: F811
    webhook_env.setenv("OMI_SIGNING_SECRET", f"{OLD_SIGNING}, {SIGNING}")
    return webhook_env


def with_omi(env, api: OmiApi, **extra: str) -> None:
    env.setenv("OMI_APP_ID", "songapp")
    env.setenv("OMI_APP_SECRET", APP_SECRET)
    env.setenv("OMI_API_URL", api.url)
    for name, value in extra.items():
        env.setenv(name, value)


# --- the app path, signed ---------------------------------------------------------------------
def test_a_signed_app_batch_names_the_song_in_one_post(signed, store, tracks: list[Track]) -> None:
    client = build_client()

    response = app_post(client, "alice", music_pcm(tracks[0], 5.0, 6.0))

    assert response.status_code == 200
    assert response.json["recognition"]["status"] == "match"
    assert response.json["recognition"]["title"] == tracks[0].title


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"secret": None}, "missing X-Omi-Signature"),
        ({"t_offset": -302}, "timestamp"),
        ({"t_offset": 330}, "timestamp"),
        ({"tamper": True}, "does not match"),
        ({"signed_uid": "bob"}, "does not match"),
        ({"secret": "somebody-elses-secret"}, "does not match"),
    ],
    ids=["unsigned", "expired", "from-the-future", "tampered-body", "signed-for-another-uid", "wrong-secret"],
)
def test_a_badly_signed_delivery_is_401_before_storage(signed, store, change: dict, reason: str) -> None:
    client = build_client()

    response = app_post(client, "alice", noise_pcm(5.0), **change)

    assert response.status_code == 401
    assert reason in response.json["reason"]
    assert store.buffer_info("alice").chunks == 0


def test_either_secret_of_a_rotation_verifies(signed, store) -> None:
    client = build_client()

    old = app_post(client, "alice", noise_pcm(1.0), secret=OLD_SIGNING)
    new = app_post(client, "alice", noise_pcm(1.0, seed=1), secret=SIGNING)

    assert (old.status_code, new.status_code) == (200, 200)
    assert store.buffer_info("alice").chunks == 2


def test_a_header_with_two_v1_values_verifies_if_one_matches(signed, store) -> None:
    body = noise_pcm(1.0)
    stamp = int(time.time())
    good = sign(SIGNING, "alice", body, stamp)
    header = f"t={stamp},v1={'0' * 64},{good.split(',')[1]}"

    response = build_client().post(
        "/audio?sample_rate=16000&uid=alice", data=body, headers={"Content-Type": "application/octet-stream", "X-Omi-Signature": header}
    )

    assert response.status_code == 200
    assert store.buffer_info("alice").chunks == 1


def test_a_replayed_delivery_id_is_acknowledged_and_stored_once(signed, store) -> None:
    client = build_client()
    body, delivery = noise_pcm(1.0), str(uuid.uuid4())

    first = app_post(client, "alice", body, delivery=delivery)
    again = app_post(client, "alice", body, delivery=delivery)

    assert (first.json["duplicate"], again.json["duplicate"]) == (False, True)
    assert store.buffer_info("alice").chunks == 1


def test_the_idempotency_key_wins_over_the_delivery_id(webhook_env, store) -> None:
    client = build_client()
    headers = {"Content-Type": "application/octet-stream", "X-Omi-Delivery": "same-delivery"}

    for key in ("key-1", "key-2"):
        client.post("/audio?sample_rate=16000&uid=alice", data=noise_pcm(1.0), headers={**headers, "Idempotency-Key": key})

    assert store.buffer_info("alice").chunks == 2


# --- what Omi may send is taken, not refused ----------------------------------------------------
@pytest.mark.parametrize("rate", [11025, 22050, 44100, 48000])
def test_any_rate_omi_may_send_is_recognised(webhook_env, tracks: list[Track], rate: int) -> None:
    client = build_client()

    response = post_chunk(client, "alice", music_pcm(tracks[1], 5.0, 6.0, rate=rate), rate=rate)

    assert response.status_code == 200
    assert response.json["recognition"]["title"] == tracks[1].title


def test_audio_after_a_gap_longer_than_max_gap_starts_a_new_buffer(webhook_env, store) -> None:
    webhook_env.setenv("MAX_GAP_SECONDS", "1")
    client = build_client()
    post_chunk(client, "alice", noise_pcm(1.0))
    post_chunk(client, "alice", noise_pcm(1.0, seed=1))
    time.sleep(1.3)

    response = post_chunk(client, "alice", noise_pcm(1.0, seed=2))

    assert response.json["buffered_seconds"] == 1.0
    assert store.buffer_info("alice").chunks == 1


# --- notifications within Omi's real limits, links and memories -----------------------------------
def play(client, uid: str, track: Track, start: float = 5.0) -> dict:
    return post_chunk(client, uid, music_pcm(track, start, 6.0)).json["recognition"]


def test_no_tenth_notification_in_an_hour(webhook_env, omi_api: OmiApi, tracks: list[Track]) -> None:
    """Omi's counter starts at 2 of 10: the 10th call of an hour would be refused. The default
    limit never makes it, so Omi never answers 429."""
    with_omi(webhook_env, omi_api, NOTIFY_COOLDOWN_SECONDS="0")
    client = build_client()

    outcomes = [play(client, "alice", tracks[i % len(tracks)], start=5.0 + 6 * (i // len(tracks)))["notification"] for i in range(10)]

    assert outcomes[:9] == ["sent"] * 9
    assert outcomes[9] in ("skipped_limit", "skipped_deferred")  # our count, or Omi's Remaining: 0
    assert len(omi_api.notifications()) == 9


def test_the_days_first_notification_links_to_the_users_own_history(webhook_env, omi_api: OmiApi, tracks: list[Track]) -> None:
    with_omi(webhook_env, omi_api, PUBLIC_URL=PUBLIC, USER_LINK_SECRET=LINK_SECRET, NOTIFY_COOLDOWN_SECONDS="0")
    client = build_client()

    play(client, "alice", tracks[0])
    play(client, "alice", tracks[1])

    first, second = (r.query["message"] for r in omi_api.notifications())
    song, link = first.split("\nYour songs: ")
    assert song == tracks[0].message
    assert link == f"{PUBLIC}/me/alice?key={user_key(LINK_SECRET, 'alice')}"
    assert second == tracks[1].message


def test_no_link_is_built_from_an_unauthenticated_requests_host(webhook_env, omi_api: OmiApi, tracks: list[Track]) -> None:
    with_omi(webhook_env, omi_api, USER_LINK_SECRET=LINK_SECRET)
    client = build_client()

    post_chunk(client, "alice", music_pcm(tracks[0], 5.0, 6.0))

    [notification] = omi_api.notifications()
    assert notification.query["message"] == tracks[0].message


def test_a_notified_song_becomes_an_omi_memory(signed, omi_api: OmiApi, tracks: list[Track]) -> None:
    with_omi(signed, omi_api, OMI_MEMORIES="true", USER_LINK_SECRET=LINK_SECRET)
    client = build_client()

    recognition = app_post(client, "alice", music_pcm(tracks[0], 5.0, 6.0)).json["recognition"]

    assert recognition["notification"] == "sent"
    [memory] = omi_api.memories()
    assert memory.path == "/v2/integrations/songapp/user/memories"
    assert memory.query == {"uid": "alice"}
    [item] = memory.json["memories"]
    assert item["content"] == f"Heard {tracks[0].title} by {tracks[0].artist}"
    assert item["tags"] == ["music"]
    link = urlsplit(item["source_url"])
    assert link.path == "/me/alice"
    assert parse_qs(link.query)["key"] == [user_key(LINK_SECRET, "alice")]


# --- each user's own history, private ------------------------------------------------------------
@pytest.fixture
def linked(webhook_env):  # noqa: F811
    webhook_env.setenv("USER_LINK_SECRET", LINK_SECRET)
    webhook_env.setenv("WEBHOOK_TOKEN", "audio-token-0123456789")
    return webhook_env


def listen(client, uid: str, track: Track) -> None:
    response = client.post(
        f"/audio?token=audio-token-0123456789&sample_rate=16000&uid={uid}",
        data=music_pcm(track, 5.0, 6.0),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.json["recognition"]["status"] == "match"


def test_a_user_reads_their_own_songs_with_their_link(linked, tracks: list[Track]) -> None:
    client = build_client()
    listen(client, "alice", tracks[0])

    mine = client.get(f"/me/alice/history?key={user_key(LINK_SECRET, 'alice')}")
    page = client.get(f"/me/alice?key={user_key(LINK_SECRET, 'alice')}")

    assert mine.status_code == 200
    [song] = mine.json["songs"]
    assert (song["title"], song["artist"]) == (tracks[0].title, tracks[0].artist)
    assert song["offset_seconds"] >= 0 and song["time"] and song["search_url"].startswith("https://")
    assert mine.json["retention_days"] == 90
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("key", ["", "0" * 32, "bob"], ids=["no-key", "made-up-key", "another-users-key"])
def test_a_user_cannot_read_or_delete_another_users_history(linked, store, tracks: list[Track], key: str) -> None:
    client = build_client()
    listen(client, "alice", tracks[0])
    given = user_key(LINK_SECRET, "bob") if key == "bob" else key

    read = client.get(f"/me/alice/history?key={given}")
    delete = client.delete(f"/me/alice/history?key={given}")

    assert (read.status_code, delete.status_code) == (403, 403)
    assert len([r for r in store.history("alice") if r.matched]) == 1


def test_a_user_deletes_their_own_history_and_nobody_elses(linked, store, tracks: list[Track]) -> None:
    client = build_client()
    listen(client, "alice", tracks[0])
    listen(client, "bob", tracks[1])
    key = user_key(LINK_SECRET, "alice")

    deleted = client.delete(f"/me/alice/history?key={key}")

    assert deleted.status_code == 200
    assert deleted.json["status"] == "deleted" and deleted.json["deleted"] >= 1
    assert client.get(f"/me/alice/history?key={key}").json["songs"] == []
    assert store.history("alice") == []
    assert [r.title for r in store.history("bob") if r.matched] == [tracks[1].title]


def test_links_are_off_without_a_secret(webhook_env) -> None:
    response = build_client().get("/me/alice/history?key=whatever")

    assert response.status_code == 404
    assert "USER_LINK_SECRET" in response.json["reason"]


def test_with_signing_a_valid_signature_suffices_and_the_token_alone_does_not(signed, store) -> None:
    """An app's deliveries carry no token; a token without a signature is not Omi."""
    signed.setenv("WEBHOOK_TOKEN", "audio-token-0123456789")
    client = build_client()
    body = noise_pcm(1.0)

    app_delivery = app_post(client, "alice", body)
    token_only = client.post(
        "/audio?token=audio-token-0123456789&sample_rate=16000&uid=alice", data=body, headers={"Content-Type": "application/octet-stream"}
    )

    assert (app_delivery.status_code, token_only.status_code) == (200, 401)
    assert store.buffer_info("alice").chunks == 1
