"""Dependencies failing under the webhook, on both backends: Omi's notification API down, slow or
refusing; a recogniser that dies holding its lease; a missing or corrupt catalog. Whatever
fails, the audio is acknowledged, the recognition kept, and no notification is sent twice.
(Storage itself failing is in tests/test_storage_outage.py.)
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.omi_server import OmiApi, omi_api  # noqa: F401  (fixture)
from tests.test_ingest import recognitions, with_omi
from tests.webhook_support import (  # noqa: F401  (fixtures)
    build_client,
    catalog_uri,
    music_pcm,
    noise_pcm,
    post_chunk,
    post_seconds,
    tracks,
    webhook_env,
)

FIRST_STATUS = {"down": "retrying", "500": "retrying", "429": "rate_limited"}


def song_entry(client, uid: str = "alice") -> dict:
    [entry] = client.get(f"/history/{uid}").json["songs"]
    return entry


def post_at_once(client, uid: str, count: int) -> list:
    """`count` chunks for one uid at the same moment, as several instances would take them."""
    clients = [client] + [client.application.test_client() for _ in range(count - 1)]
    start = threading.Barrier(count)
    responses: list = []

    def send(c, seed: int) -> None:
        start.wait()
        responses.append(post_chunk(c, uid, noise_pcm(1.0, seed=seed)))

    threads = [threading.Thread(target=send, args=(c, n)) for n, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


@pytest.mark.parametrize("fault", list(FIRST_STATUS))
def test_a_notification_omi_could_not_take_is_sent_exactly_once_on_a_later_chunk(webhook_env, tracks, fault: str) -> None:
    port = free_port()
    api = OmiApi(port)
    api.start()
    with_omi(webhook_env, api)
    if fault == "down":
        api.stop()  # nothing listens on the port any more: connections are refused
    else:
        api.answer(int(fault), headers={"Retry-After": "1"} if fault == "429" else None)
    client = build_client()
    try:
        played = post_seconds(client, "alice", music_pcm(tracks[0], 5.0, 5.0))
        [recognition] = recognitions(played)
        failed_entry = song_entry(client)
        tried = len(api.notifications())

        if fault == "down":
            api = OmiApi(port)
            api.start()
        else:
            api.answer(200)
        time.sleep(1.2)  # the first retry is due a second after the failure
        concurrent = post_at_once(client, "alice", 3)
        delivered = api.notifications()[tried:]
        time.sleep(2.2)
        later = post_seconds(client, "alice", noise_pcm(2.0))
    finally:
        api.stop()

    assert [r.status_code for r in played + concurrent + later] == [200] * 10
    assert (recognition["status"], recognition["notification"]) == ("match", FIRST_STATUS[fault])
    assert (failed_entry["title"], failed_entry["notified"]) == (tracks[0].title, False)
    assert tried == (0 if fault == "down" else 1)
    assert [n.query["message"] for n in delivered] == [tracks[0].message]
    assert len(api.notifications()) == tried + 1
    entry = song_entry(client)
    assert (entry["notification"], entry["notified"], entry["notification_error"]) == ("sent", True, None)


def test_a_timed_out_notification_is_never_retried_since_omi_may_have_shown_it(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api, NOTIFY_TIMEOUT_SECONDS="0.3")
    omi_api.hang(3)
    client = build_client()

    recognition = recognitions(post_seconds(client, "alice", music_pcm(tracks[0], 5.0, 5.0)))[0]
    omi_api.answer(200)
    time.sleep(1.2)
    later = post_seconds(client, "alice", noise_pcm(2.0))

    assert recognition["notification"] == "failed"
    assert all(r.status_code == 200 for r in later)
    assert len(omi_api.notifications()) == 1
    assert song_entry(client)["notification"] == "failed"


def test_a_notification_that_keeps_failing_is_given_up_when_its_song_cooldown_ends(webhook_env, omi_api: OmiApi, tracks) -> None:
    with_omi(webhook_env, omi_api, NOTIFY_COOLDOWN_SECONDS="3")
    omi_api.answer(500)
    client = build_client()

    post_seconds(client, "alice", music_pcm(tracks[0], 5.0, 5.0))
    responses = []
    for _ in range(10):  # a chunk every half second for five seconds
        time.sleep(0.5)
        responses.append(post_chunk(client, "alice", noise_pcm(1.0)))

    # Sent at t, retried at t+1 s; the next retry (t+3 s) would fall past the cooldown.
    assert all(r.status_code == 200 for r in responses)
    assert len(omi_api.notifications()) == 2
    entry = song_entry(client)
    assert (entry["notification"], entry["notified"]) == ("failed", False)
    assert "gave up after 2 attempts" in entry["notification_error"]


def test_a_recogniser_that_died_holding_the_lease_holds_the_uid_off_only_for_a_stride(webhook_env, store, tracks) -> None:
    """A lease that is never released (its instance died mid-vote) and would not expire for an
    hour: the song is still named here, a stride of audio later."""
    client = build_client()
    post_chunk(client, "alice", noise_pcm(1.0))
    store.claim("alice", min_bytes=0, stride_bytes=0, lease_seconds=3600, now=time.time(), max_bytes=10 * 32000)
    song = music_pcm(tracks[0], 5.0, 7.0)

    responses = post_seconds(client, "alice", song)

    named = [r for r in recognitions(responses) if r["status"] == "match"]
    assert named and named[0]["title"] == tracks[0].title
    assert song_entry(client)["title"] == tracks[0].title


def _corrupt_manifest(catalog: Path) -> None:
    (catalog / "catalog.json").write_text("{not json")


def _truncated_index(catalog: Path) -> None:
    manifest = json.loads((catalog / "catalog.json").read_text())
    postings = catalog / manifest["segments"][0]["name"] / "postings.npy"
    postings.write_bytes(postings.read_bytes()[:100])


@pytest.mark.parametrize("damage", [_corrupt_manifest, _truncated_index], ids=["manifest", "index"])
def test_a_corrupt_catalog_is_an_error_at_start_up_and_on_health_and_audio_is_still_buffered(
    webhook_env, catalog_uri: str, tmp_path: Path, capsys, damage
) -> None:
    broken = tmp_path / "catalog"
    shutil.copytree(catalog_uri, broken)
    damage(broken)
    webhook_env.setenv("CATALOG_URI", str(broken))

    client = build_client()
    start_up = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    health = client.get("/health")
    posted = post_chunk(client, "alice", noise_pcm(1.0))

    [line] = [e for e in start_up if e["message"].startswith("catalog unavailable at start-up")]
    assert line["severity"] == "ERROR" and "corrupt" in line["reason"]
    assert health.status_code == 503
    assert health.json["reason"].startswith("catalog unavailable") and "corrupt" in health.json["reason"]
    assert posted.status_code == 200 and posted.json["buffered_seconds"] == 1.0
