"""The Omi API stand-in (tests/omi_server.py) behaves as Omi's integration API does
(shared/omi/CONTRACT.md, section 2), so tests written against it hold against Omi."""

from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from tests.omi_server import EXTRACTED_PREFIX, OmiApi, omi_api  # noqa: F401  (fixture)

SECRET = "app-secret"
# 2026-10-05 14:59:00 UTC: a minute before the top of an hour.
T0 = 1791212340.0
assert T0 % 3600 == 3540


@pytest.fixture
def api() -> Iterator[OmiApi]:
    server = OmiApi(app_secret=SECRET, app_id="songapp")
    server.now = lambda: T0
    server.start()
    yield server
    server.stop()


def notify(api: OmiApi, uid: str = "alice", key: str | None = SECRET, app_id: str = "songapp") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(
        f"{api.url}/v2/integrations/{app_id}/notification",
        params={"uid": uid, "message": "🎵 Hv2 by Colobot"},
        headers=headers,
        timeout=5,
    )


def memory_body(content: str = "Heard Hv2 by Colobot") -> dict:
    item = {"content": content, "tags": ["music"], "source_id": "song-1", "source_url": "https://example.test/h"}
    return {"text": content, "text_source": "other", "text_source_spec": "song recognition", "memories": [item]}


def remember(api: OmiApi, body: object, uid: str = "alice", key: str | None = SECRET) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(
        f"{api.url}/v2/integrations/songapp/user/memories", params={"uid": uid}, json=body, headers=headers, timeout=5
    )


def test_nine_notifications_an_hour_then_429_until_the_top_of_the_hour(api: OmiApi) -> None:
    answers = [notify(api) for _ in range(11)]

    assert [r.status_code for r in answers] == [200] * 9 + [429, 429]
    assert all(r.json() == {"status": "Ok"} for r in answers[:9])
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == [str(9 - k) for k in range(1, 10)] + ["0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"10"}
    # Seconds to the top of the UTC hour (as Omi sends it), not an epoch time.
    assert {r.headers["X-RateLimit-Reset"] for r in answers} == {"60"}
    assert "Retry-After" not in answers[0].headers
    assert answers[9].headers["Retry-After"] == "60"
    assert "Rate limit exceeded" in answers[9].json()["detail"]
    assert [r.status for r in api.notifications()] == [200] * 9 + [429, 429]


def test_the_count_starts_again_in_the_next_utc_hour(api: OmiApi) -> None:
    for _ in range(10):
        notify(api)
    api.now = lambda: T0 + 59.5  # still 14:59:59.5

    assert notify(api).status_code == 429
    assert notify(api).headers["Retry-After"] == "1"

    api.now = lambda: T0 + 60  # 15:00:00
    answer = notify(api)

    assert answer.status_code == 200
    assert answer.headers["X-RateLimit-Remaining"] == "8"
    assert answer.headers["X-RateLimit-Reset"] == "3600"


def test_the_count_is_per_user_and_per_app(api: OmiApi) -> None:
    api.app_id = None  # any app exists
    for _ in range(10):
        notify(api, uid="alice")

    assert notify(api, uid="alice").status_code == 429
    assert notify(api, uid="bob").status_code == 200
    assert notify(api, uid="alice", app_id="otherapp").status_code == 200


def test_a_user_who_has_not_enabled_the_app_gets_403(api: OmiApi) -> None:
    api.disable("carol")

    refused = notify(api, uid="carol")

    assert refused.status_code == 403
    assert "detail" in refused.json()
    assert "X-RateLimit-Remaining" not in refused.headers
    api.enable("carol")
    assert notify(api, uid="carol").headers["X-RateLimit-Remaining"] == "8"  # the 403 counted for nothing


def test_a_missing_or_malformed_authorization_is_401_and_a_wrong_key_403(api: OmiApi) -> None:
    missing = notify(api, key=None)
    malformed = httpx.post(
        f"{api.url}/v2/integrations/songapp/notification",
        params={"uid": "alice", "message": "m"},
        headers={"Authorization": SECRET},
        timeout=5,
    )
    wrong = notify(api, key="not-the-secret")

    assert (missing.status_code, malformed.status_code) == (401, 401)
    assert "Bearer" in missing.json()["detail"]
    # As in Omi (CONTRACT.md section 2): a well-formed header with an invalid key is 403.
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "Invalid API key"}
    assert notify(api).headers["X-RateLimit-Remaining"] == "8"


def test_another_app_is_404(api: OmiApi) -> None:
    assert notify(api, app_id="someone-elses").status_code == 404


def test_without_a_secret_any_bearer_key_is_accepted(omi_api: OmiApi) -> None:
    assert notify(omi_api, key="whatever", app_id="any").status_code == 200
    assert notify(omi_api, key=None).status_code == 401


def test_a_notification_without_a_message_is_422(api: OmiApi) -> None:
    answer = httpx.post(
        f"{api.url}/v2/integrations/songapp/notification",
        params={"uid": "alice"},
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=5,
    )

    assert answer.status_code == 422


def test_memories_are_recorded_with_their_body(api: OmiApi) -> None:
    answer = remember(api, memory_body())

    assert answer.status_code == 200
    assert answer.json() == {}
    [received] = api.memories()
    assert received.method == "POST"
    assert received.path == "/v2/integrations/songapp/user/memories"
    assert received.query == {"uid": "alice"}
    assert received.headers["Authorization"] == f"Bearer {SECRET}"
    assert received.json == memory_body()
    assert received.status == 200
    assert api.notifications() == []


def test_sixty_memories_an_hour_then_429(api: OmiApi) -> None:
    answers = [remember(api, memory_body(f"song {n}")) for n in range(61)]

    assert [r.status_code for r in answers] == [200] * 60 + [429]
    assert answers[60].headers["Retry-After"] == answers[60].headers["X-RateLimit-Reset"] == "60"
    assert answers[60].headers["X-RateLimit-Limit"] == "60"
    api.now = lambda: T0 + 60
    assert remember(api, memory_body()).status_code == 200


def test_memories_follow_the_same_auth_and_enabled_rules(api: OmiApi) -> None:
    api.disable("carol")

    assert remember(api, memory_body(), key=None).status_code == 401
    assert remember(api, memory_body(), key="wrong").status_code == 403
    assert remember(api, memory_body(), uid="carol").status_code == 403
    assert remember(api, {"text": " ", "memories": []}).status_code == 422
    assert remember(api, {"memories": [{"tags": ["music"]}]}).status_code == 422  # no content
    assert remember(api, ["not", "an", "object"]).status_code == 422
    assert remember(api, {"memories": [{"content": "no text"}]}).status_code == 422  # text is required
    assert remember(api, {"text": "", "memories": [{"content": "only a memory"}]}).status_code == 200


def test_a_non_empty_text_also_becomes_an_extracted_memory(api: OmiApi) -> None:
    """Omi sends any non-empty `text` to its LLM extractor besides storing the explicit
    memories: the same song twice, once paraphrased. An empty `text` stores the explicit ones only."""
    remember(api, memory_body("Heard Hv2 by Colobot"))
    remember(api, {**memory_body("Heard Track by Band"), "text": ""}, uid="bob")

    assert api.stored_memories("alice") == ["Heard Hv2 by Colobot", EXTRACTED_PREFIX + "Heard Hv2 by Colobot"]
    assert api.stored_memories("bob") == ["Heard Track by Band"]


def test_answer_and_hang_override_omi_until_realistic(api: OmiApi) -> None:
    api.answer(500)
    assert notify(api, key=None).status_code == 500

    api.answer(429, headers={"Retry-After": "120"})
    assert notify(api).headers["Retry-After"] == "120"

    api.hang(0.2)
    assert notify(api, key="wrong").status_code == 200

    api.realistic()
    assert notify(api, key="wrong").status_code == 403
    answer = notify(api)
    assert answer.headers["X-RateLimit-Remaining"] == "8"  # overridden requests counted for nothing
    assert [r.status for r in api.notifications()] == [500, 429, 200, 403, 200]


def test_unknown_paths_are_404(api: OmiApi) -> None:
    assert httpx.get(f"{api.url}/v1/anything", timeout=5).status_code == 404
    assert api.received[0].body == b""
    assert api.received[0].json is None
