"""Routes, validation and status codes of the functions-framework app, on both storage backends.

Bad input must get a 4xx with a JSON reason and leave storage exactly as it was, because Omi
drops the rest of a batch on a 4xx and would otherwise keep half-stored garbage.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from function.webhook.user_links import user_key
from tests.webhook_support import build_client, catalog_uri, noise_pcm, post_chunk, tracks, webhook_env  # noqa: F401

ONE_SECOND = noise_pcm(1.0)


def assert_nothing_stored(store, uid: str = "alice") -> None:
    info = store.buffer_info(uid)
    assert (info.buffered_bytes, info.chunks) == (0, 0)
    assert store.active_users(0) == 0


def test_a_chunk_is_stored_and_acknowledged(webhook_env, store) -> None:
    client = build_client()

    response = post_chunk(client, "alice", ONE_SECOND)

    assert response.status_code == 200
    assert response.json == {"status": "ok", "received_bytes": 32000, "buffered_seconds": 1.0, "duplicate": False}
    assert store.buffer_info("alice").buffered_bytes == 32000


@pytest.mark.parametrize(
    "query, reason",
    [
        ("uid=alice", "missing sample_rate"),
        ("sample_rate=&uid=alice", "missing sample_rate"),
        ("sample_rate=16k&uid=alice", "must be an integer"),
        ("sample_rate=16000.0&uid=alice", "must be an integer"),
        ("sample_rate=96000&uid=alice", "unsupported sample_rate"),
        ("sample_rate=4000&uid=alice", "unsupported sample_rate"),
        ("sample_rate=16000", "missing uid"),
        ("sample_rate=16000&uid=", "missing uid"),
        ("sample_rate=16000&uid=al%20ice", "uid must match"),
        ("sample_rate=16000&uid=alice.smith", "uid must match"),
        ("sample_rate=16000&uid=" + "a" * 129, "uid must match"),
    ],
)
def test_bad_query_is_400_and_stores_nothing(webhook_env, store, query: str, reason: str) -> None:
    client = build_client()

    response = client.post(f"/audio?{query}", data=ONE_SECOND, headers={"Content-Type": "application/octet-stream"})

    assert response.status_code == 400
    assert reason in response.json["reason"]
    assert_nothing_stored(store)


@pytest.mark.parametrize("body, reason", [(b"", "empty body"), (ONE_SECOND[:-1], "odd body length")])
def test_bad_body_is_400_and_stores_nothing(webhook_env, store, body: bytes, reason: str) -> None:
    client = build_client()

    response = post_chunk(client, "alice", body)

    assert response.status_code == 400
    assert reason in response.json["reason"]
    assert_nothing_stored(store)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x"])
def test_wrong_content_type_is_415_and_stores_nothing(webhook_env, store, content_type: str) -> None:
    client = build_client()

    response = post_chunk(client, "alice", ONE_SECOND, content_type=content_type)

    assert response.status_code == 415
    assert "Content-Type" in response.json["reason"]
    assert_nothing_stored(store)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "audio/L16; rate=16000"])
def test_raw_audio_content_types_are_accepted(webhook_env, store, content_type: str | None) -> None:
    client = build_client()

    response = post_chunk(client, "alice", ONE_SECOND, content_type=content_type)

    assert response.status_code == 200
    assert store.buffer_info("alice").buffered_bytes == len(ONE_SECOND)


def test_a_body_over_the_cap_is_413_and_stores_nothing(webhook_env, store) -> None:
    webhook_env.setenv("MAX_CHUNK_BYTES", "32000")
    client = build_client()

    accepted = post_chunk(client, "bob", ONE_SECOND)
    refused = post_chunk(client, "alice", ONE_SECOND + b"\0\0")

    assert accepted.status_code == 200
    assert refused.status_code == 413
    assert "32000-byte limit" in refused.json["reason"]
    assert store.buffer_info("alice").buffered_bytes == 0


def test_an_overlong_idempotency_key_is_400(webhook_env, store) -> None:
    client = build_client()

    response = post_chunk(client, "alice", ONE_SECOND, key="k" * 257)

    assert response.status_code == 400
    assert_nothing_stored(store)


def test_the_legacy_double_question_mark_url_is_understood(webhook_env, store) -> None:
    client = build_client()

    response = client.post(
        "/audio?token=abc?sample_rate=16000&uid=alice", data=ONE_SECOND, headers={"Content-Type": "application/octet-stream"}
    )

    assert response.status_code == 200
    assert store.buffer_info("alice").sample_rate == 16000


def test_a_token_query_before_omis_parameters_is_understood(webhook_env, store) -> None:
    client = build_client()

    response = client.post(
        "/audio?token=abc&sample_rate=8000&uid=alice", data=noise_pcm(1.0, 8000), headers={"Content-Type": "application/octet-stream"}
    )

    assert response.status_code == 200
    assert store.buffer_info("alice").sample_rate == 8000


def test_a_repeated_idempotency_key_is_acknowledged_and_stored_once(webhook_env, store) -> None:
    client = build_client()

    first = post_chunk(client, "alice", ONE_SECOND, key="6f1c2a2e-0d7b-4c51-9b1e-6a1c3f0c9a11")
    retry = post_chunk(client, "alice", ONE_SECOND, key="6f1c2a2e-0d7b-4c51-9b1e-6a1c3f0c9a11")

    assert (first.status_code, retry.status_code) == (200, 200)
    assert (first.json["duplicate"], retry.json["duplicate"]) == (False, True)
    assert store.buffer_info("alice").buffered_bytes == len(ONE_SECOND)


def test_the_same_key_for_another_user_is_a_different_chunk(webhook_env, store) -> None:
    client = build_client()

    post_chunk(client, "alice", ONE_SECOND, key="same")
    response = post_chunk(client, "bob", ONE_SECOND, key="same")

    assert response.json["duplicate"] is False
    assert store.buffer_info("bob").buffered_bytes == len(ONE_SECOND)


def test_chunks_without_a_key_are_all_appended(webhook_env, store) -> None:
    client = build_client()

    post_chunk(client, "alice", ONE_SECOND, key=None)
    post_chunk(client, "alice", ONE_SECOND, key=None)

    assert store.buffer_info("alice").buffered_bytes == 2 * len(ONE_SECOND)


def test_setup_check_answers_the_object_omi_requires(webhook_env) -> None:
    client = build_client()

    response = client.get("/audio?uid=alice")

    assert response.status_code == 200
    assert response.json == {"is_setup_completed": True}


def test_setup_check_without_uid_is_400(webhook_env) -> None:
    assert build_client().get("/audio").status_code == 400


def test_health_counts_users_heard_in_the_last_ten_minutes(webhook_env, store) -> None:
    store.append("earlier", None, 16000, ONE_SECOND, time.time() - 3600)
    client = build_client()
    post_chunk(client, "alice", ONE_SECOND)
    post_chunk(client, "bob", ONE_SECOND)

    response = client.get("/health")

    assert response.status_code == 200
    assert response.json["status"] == "healthy"
    assert response.json["service"] == "omi-song-recognition"
    assert response.json["active_users"] == 2


def test_health_is_503_with_the_reason_when_the_catalog_is_missing(webhook_env, tmp_path: Path) -> None:
    webhook_env.setenv("CATALOG_URI", str(tmp_path / "no-catalog-here"))
    client = build_client()

    response = client.get("/health")
    posted = post_chunk(client, "alice", ONE_SECOND)

    assert response.status_code == 503
    assert response.json["status"] == "unhealthy"
    assert "no catalog" in response.json["reason"]
    assert posted.status_code == 200 and posted.json["buffered_seconds"] == 1.0


def test_stats_describe_the_buffer(webhook_env) -> None:
    client = build_client()
    post_chunk(client, "alice", noise_pcm(1.0, 8000), rate=8000)
    post_chunk(client, "alice", noise_pcm(0.5, 8000), rate=8000)

    response = client.get("/stats/alice")

    assert response.status_code == 200
    body = response.json
    assert (body["uid"], body["buffer_size_bytes"], body["buffer_duration_seconds"]) == ("alice", 24000, 1.5)
    assert (body["sample_rate"], body["chunks"], body["last_recognition"]) == (8000, 2, None)


def test_stats_of_an_unknown_user_are_empty(webhook_env) -> None:
    body = build_client().get("/stats/nobody").json

    assert (body["buffer_size_bytes"], body["buffer_duration_seconds"], body["sample_rate"]) == (0, 0.0, None)


def test_delete_buffer_drops_the_users_audio_only(webhook_env, store) -> None:
    client = build_client()
    post_chunk(client, "alice", ONE_SECOND)
    post_chunk(client, "bob", ONE_SECOND)

    first = client.delete("/buffer/alice")
    second = client.delete("/buffer/alice")

    assert (first.status_code, first.json["status"]) == (200, "cleared")
    assert second.json["status"] == "empty"
    assert store.buffer_info("alice").buffered_bytes == 0
    assert store.buffer_info("bob").buffered_bytes == len(ONE_SECOND)


def test_history_of_a_new_user_is_empty(webhook_env) -> None:
    response = build_client().get("/history/alice")

    assert response.status_code == 200
    assert response.json == {"uid": "alice", "songs": []}


@pytest.mark.parametrize("limit", ["0", "-1", "x", "201", "\u00b2", "\u0661"])
def test_history_with_a_bad_limit_is_400(webhook_env, limit: str) -> None:
    response = build_client().get(f"/history/alice?limit={limit}")

    assert response.status_code == 400
    assert "limit" in response.json["reason"]


@pytest.mark.parametrize("method, path", [("GET", "/stats/a.b"), ("DELETE", "/buffer/a.b"), ("GET", "/history/a.b")])
def test_a_bad_uid_in_the_path_is_400(webhook_env, method: str, path: str) -> None:
    response = build_client().open(path, method=method)

    assert response.status_code == 400
    assert "uid must match" in response.json["reason"]


def test_metrics_before_any_recognition(webhook_env) -> None:
    response = build_client().get("/metrics")

    assert response.status_code == 200
    body = response.json
    assert (body["recognition_attempts"], body["success_rate"], body["top_songs"]) == (0, None, [])
    assert body["latency_ms"] == {"mean": None, "p50": None, "p95": None}


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/history/alice"),
        ("GET", "/metrics"),
        ("GET", "/stats/alice"),
        ("GET", f"/me/alice/history?key={user_key('link-secret', 'alice')}"),
        ("DELETE", f"/me/alice/history?key={user_key('link-secret', 'alice')}"),
    ],
)
def test_answers_with_someones_songs_or_the_figures_are_never_cached(webhook_env, method: str, path: str) -> None:
    """Like the pages that show them: a shared browser or proxy must not keep a history."""
    webhook_env.setenv("USER_LINK_SECRET", "link-secret")

    response = build_client().open(path, method=method)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/", "/nope", "/audio/extra", "/stats", "/stats/a/b"])
def test_an_unknown_path_is_404_json(webhook_env, path: str) -> None:
    response = build_client().get(path)

    assert response.status_code == 404
    assert "no such endpoint" in response.json["reason"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [("PUT", "/audio", "POST, GET"), ("POST", "/health", "GET"), ("POST", "/metrics", "GET"), ("GET", "/buffer/alice", "DELETE")],
)
def test_a_wrong_method_is_405_json(webhook_env, method: str, path: str, allowed: str) -> None:
    response = build_client().open(path, method=method)

    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert method in response.json["reason"]


def local_backend(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "local")
    monkeypatch.setenv("DATA_DIR", str(data_dir))


def test_a_storage_outage_is_503_and_the_retried_chunk_is_then_stored(monkeypatch, tmp_path: Path, catalog_uri: str) -> None:
    local_backend(monkeypatch, tmp_path / "data")
    monkeypatch.setenv("CATALOG_URI", catalog_uri)
    client = build_client()
    assert client.get("/health").status_code == 200
    locker = sqlite3.connect(tmp_path / "data" / "state.sqlite3", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the database past the busy timeout

    outage = post_chunk(client, "alice", ONE_SECOND, key="retry-me")
    locker.execute("ROLLBACK")
    retry = post_chunk(client, "alice", ONE_SECOND, key="retry-me")

    assert outage.status_code == 503
    assert outage.json == {"status": "error", "reason": "storage unavailable, retry later"}
    assert (retry.status_code, retry.json["duplicate"], retry.json["buffered_seconds"]) == (200, False, 1.0)


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_only_in_the_log(monkeypatch, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    local_backend(monkeypatch, tmp_path / "a-file" / "data")
    client = build_client()

    response = client.get("/stats/alice")

    assert response.status_code == 500
    assert response.json == {"status": "error", "reason": "internal error"}
    # (main.py also logs the missing catalog at start-up; this test is about the request's line)
    [line] = [e for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["message"] == "unhandled error"]
    assert line["severity"] == "ERROR"
    assert "NotADirectoryError" in line["stack_trace"]


def test_log_lines_are_structured_json_without_audio(webhook_env, capsys) -> None:
    client = build_client()
    capsys.readouterr()

    post_chunk(client, "alice", ONE_SECOND)
    post_chunk(client, "alice", b"\0")

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["severity"], x["message"]) for x in lines] == [("INFO", "chunk stored"), ("WARNING", "request refused")]
    assert (lines[0]["uid"], lines[0]["bytes"], lines[0]["seconds"]) == ("alice", 32000, 1.0)
    assert all(len(json.dumps(x)) < 1000 for x in lines)
