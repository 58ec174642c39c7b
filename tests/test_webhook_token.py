"""Who may call what: WEBHOOK_TOKEN opens audio deliveries only; ADMIN_TOKEN opens the operator's
endpoints; with audio protected and no ADMIN_TOKEN, the operator's endpoints are closed."""

from __future__ import annotations

import uuid

import pytest

from tests.webhook_support import build_client, catalog_uri, noise_pcm, tracks, webhook_env  # noqa: F401

TOKEN = "s3cret-token-for-tests-0123456789"
ADMIN = "admin-token-for-tests-9876543210"
AUDIO_HEADERS = {"Content-Type": "application/octet-stream"}
OPERATOR = [("GET", "/stats/alice"), ("GET", "/history/alice"), ("DELETE", "/buffer/alice"), ("GET", "/metrics"), ("GET", "/dashboard")]


@pytest.fixture
def guarded(webhook_env):  # noqa: F811
    webhook_env.setenv("WEBHOOK_TOKEN", TOKEN)
    webhook_env.setenv("ADMIN_TOKEN", ADMIN)
    return build_client()


@pytest.mark.parametrize("token", ["", "?token=wrong", "?token=" + TOKEN[:-1], "?token=" + ADMIN], ids=["missing", "wrong", "prefix", "admin"])
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


@pytest.mark.parametrize("method,path", OPERATOR)
def test_the_webhook_token_does_not_open_operator_endpoints(guarded, method: str, path: str) -> None:
    """It sits in every webhook URL, which Omi's logs and each user's app settings hold."""
    assert guarded.open(path, method=method).status_code == 401
    assert guarded.open(f"{path}?token={TOKEN}", method=method).status_code == 401


@pytest.mark.parametrize("method,path", OPERATOR)
def test_operator_endpoints_take_the_admin_token_as_bearer_or_query(guarded, method: str, path: str) -> None:
    assert guarded.open(f"{path}?token={ADMIN}", method=method).status_code == 200
    assert guarded.open(path, method=method, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert guarded.open(path, method=method, headers={"Authorization": f"Bearer {ADMIN[:-1]}"}).status_code == 401


@pytest.mark.parametrize("method,path", OPERATOR)
def test_without_an_admin_token_protected_audio_closes_operator_endpoints(webhook_env, method: str, path: str) -> None:
    webhook_env.setenv("WEBHOOK_TOKEN", TOKEN)
    client = build_client()

    response = client.open(f"{path}?token={TOKEN}", method=method)

    assert response.status_code == 403
    assert "ADMIN_TOKEN" in response.json["reason"]


def test_setup_check_and_health_stay_public(guarded) -> None:
    assert guarded.get("/audio?uid=alice").json == {"is_setup_completed": True}
    assert guarded.get("/health").status_code == 200
