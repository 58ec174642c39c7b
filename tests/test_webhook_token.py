"""WEBHOOK_TOKEN: audio and personal data only for callers that hold it."""

from __future__ import annotations

import uuid

import pytest

from tests.webhook_support import build_client, catalog_uri, noise_pcm, tracks, webhook_env  # noqa: F401

TOKEN = "s3cret-token-for-tests-0123456789"
AUDIO_HEADERS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def guarded(webhook_env):  # noqa: F811
    webhook_env.setenv("WEBHOOK_TOKEN", TOKEN)
    return build_client()


@pytest.mark.parametrize("token", ["", "?token=wrong", "?token=" + TOKEN[:-1]], ids=["missing", "wrong", "prefix"])
def test_audio_without_the_token_is_401_and_stores_nothing(guarded, store, token: str, capsys) -> None:
    query = (token + "&" if token else "?") + "sample_rate=16000&uid=alice"

    response = guarded.post("/audio" + query, data=noise_pcm(1.0), headers=AUDIO_HEADERS)

    assert response.status_code == 401
    assert response.json["reason"] == "missing or wrong token"
    assert store.buffer_info("alice").chunks == 0
    assert TOKEN not in capsys.readouterr().out


@pytest.mark.parametrize(
    "query",
    [f"?token={TOKEN}&sample_rate=16000&uid=alice", f"?token={TOKEN}?sample_rate=16000&uid=alice"],
    ids=["current", "legacy-second-question-mark"],
)
def test_audio_with_the_token_is_stored(guarded, store, query: str, capsys) -> None:
    headers = {**AUDIO_HEADERS, "Idempotency-Key": str(uuid.uuid4())}

    response = guarded.post("/audio" + query, data=noise_pcm(1.0), headers=headers)

    assert response.status_code == 200
    assert store.buffer_info("alice").chunks == 1
    assert TOKEN not in capsys.readouterr().out


@pytest.mark.parametrize("method,path", [("GET", "/stats/alice"), ("GET", "/history/alice"), ("DELETE", "/buffer/alice"), ("GET", "/metrics")])
def test_personal_data_needs_the_token(guarded, method: str, path: str) -> None:
    assert guarded.open(path, method=method).status_code == 401
    assert guarded.open(f"{path}?token={TOKEN}", method=method).status_code == 200


def test_setup_check_and_health_stay_public(guarded) -> None:
    assert guarded.get("/audio?uid=alice").json == {"is_setup_completed": True}
    assert guarded.get("/health").status_code == 200
