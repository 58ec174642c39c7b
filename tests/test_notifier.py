"""The Omi notification client against a real HTTP server on loopback (tests/omi_server.py)."""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Iterator

import pytest

from function.config import Settings
from function.webhook.omi_client import Notifier, song_message
from tests.omi_server import OmiApi, omi_api  # noqa: F401  (fixture)

SECRET = "s3cret-key-never-logged"


def notifier_for(api: OmiApi, **overrides: str) -> Notifier:
    env = {"OMI_APP_ID": "app123", "OMI_APP_SECRET": SECRET, "OMI_API_URL": api.url, "NOTIFY_TIMEOUT_SECONDS": "0.3"}
    env.update(overrides)
    return Notifier(Settings.from_env(env))


def test_sends_the_v2_integration_request_omi_expects(omi_api: OmiApi) -> None:
    notifier = notifier_for(omi_api)

    result = notifier.send("user_1", song_message("Hv2", "Colobot"))

    assert result.status == "sent"
    [request] = omi_api.notifications()
    assert request.method == "POST"
    assert request.path == "/v2/integrations/app123/notification"
    assert request.query == {"uid": "user_1", "message": "🎵 Hv2 by Colobot"}
    assert request.headers["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_an_error_answer_is_a_failure_with_its_status(omi_api: OmiApi, status: int) -> None:
    omi_api.answer(status)

    result = notifier_for(omi_api).send("u", "🎵 x by y")

    assert result.status == "failed"
    assert f"HTTP {status}" in result.reason
    assert SECRET not in result.reason


def test_429_reports_retry_after_in_seconds(omi_api: OmiApi) -> None:
    omi_api.answer(429, headers={"Retry-After": "120"})

    result = notifier_for(omi_api).send("u", "m")

    assert result.status == "rate_limited"
    assert result.retry_after_seconds == 120


def test_429_reads_retry_after_as_an_http_date(omi_api: OmiApi) -> None:
    omi_api.answer(429, headers={"Retry-After": formatdate(time.time() + 300, usegmt=True)})

    result = notifier_for(omi_api).send("u", "m")

    assert 290 <= result.retry_after_seconds <= 301


def test_429_without_retry_after_waits_for_the_next_utc_hour(omi_api: OmiApi) -> None:
    omi_api.answer(429)

    result = notifier_for(omi_api).send("u", "m")

    until = time.time() + result.retry_after_seconds
    assert 0 < result.retry_after_seconds <= 3600
    assert until % 3600 == pytest.approx(0, abs=2) or until % 3600 == pytest.approx(3600, abs=2)


def test_a_server_that_hangs_past_the_timeout_is_a_failure(omi_api: OmiApi) -> None:
    omi_api.hang(5)
    started = time.monotonic()

    result = notifier_for(omi_api, NOTIFY_TIMEOUT_SECONDS="0.3").send("u", "m")

    assert result.status == "failed"
    assert "timed out" in result.reason
    assert time.monotonic() - started < 2


def test_an_unreachable_api_is_a_failure(omi_api: OmiApi) -> None:
    url = omi_api.url
    omi_api.stop()

    result = notifier_for(omi_api, OMI_API_URL=url).send("u", "m")

    assert result.status == "failed"


def test_without_credentials_it_only_logs(omi_api: OmiApi, capsys: pytest.CaptureFixture[str]) -> None:
    notifier = Notifier(Settings.from_env({"OMI_API_URL": omi_api.url}))

    result = notifier.send("u", "🎵 Hv2 by Colobot")

    assert result.status == "logged"
    assert omi_api.received == []
    assert "🎵 Hv2 by Colobot" in capsys.readouterr().out


def test_the_secret_never_reaches_the_log(omi_api: OmiApi, capsys: pytest.CaptureFixture[str]) -> None:
    notifier = notifier_for(omi_api)
    for status in (200, 401, 429, 500):
        omi_api.answer(status)
        notifier.send("u", "m")

    assert SECRET not in capsys.readouterr().out


def test_song_message_without_an_artist_names_the_title_only() -> None:
    assert song_message("Hv2", "") == "🎵 Hv2"


def test_the_ninth_of_the_hour_is_sent_and_says_to_hold_the_rest_until_the_hour(omi_api: OmiApi) -> None:
    """Omi's counter starts at 2 of 10: after the 9th success X-RateLimit-Remaining is 0, and
    the client reports the wait to the top of the hour instead of spending a call to learn it."""
    notifier = notifier_for(omi_api)

    results = [notifier.send("u", f"🎵 song {i}") for i in range(9)]

    assert [r.status for r in results] == ["sent"] * 9
    assert all(r.defer_seconds is None for r in results[:8])
    to_the_hour = 3600 - time.time() % 3600
    assert to_the_hour - 5 <= results[8].defer_seconds <= to_the_hour + 1


def test_a_user_who_has_not_enabled_the_app_is_a_failure_not_retried(omi_api: OmiApi) -> None:
    """Once the secret has worked for someone, a 403 can only mean this user."""
    omi_api.disable("u")
    notifier = notifier_for(omi_api)
    assert notifier.send("other", "🎵 x by y").status == "sent"

    result = notifier.send("u", "🎵 x by y")

    assert (result.status, result.retryable) == ("failed", False)
    assert "this user has not enabled the app" in result.reason
    assert "OMI_APP_SECRET" not in result.reason


@pytest.fixture
def strict_omi() -> Iterator[OmiApi]:
    """Omi that knows its app secret: a wrong one is 403, as a user without the app is."""
    api = OmiApi(app_secret=SECRET)
    api.start()
    yield api
    api.stop()


def test_a_first_403_names_both_causes_omi_does_not_tell_apart(strict_omi: OmiApi, capsys: pytest.CaptureFixture[str]) -> None:
    result = notifier_for(strict_omi, OMI_APP_SECRET="wrong-secret").send("u", "🎵 x by y")

    assert (result.status, result.retryable) == ("failed", False)
    assert "not enabled the app" in result.reason and "OMI_APP_SECRET" in result.reason
    assert "OMI_APP_SECRET" in capsys.readouterr().out


def test_403s_for_several_users_and_no_success_point_at_the_secret(strict_omi: OmiApi, capsys: pytest.CaptureFixture[str]) -> None:
    notifier = notifier_for(strict_omi, OMI_APP_SECRET="wrong-secret")

    results = [notifier.send(uid, "🎵 x by y") for uid in ("a", "a", "b", "c")]

    assert [r.status for r in results] == ["failed"] * 4
    assert "most likely wrong" not in results[2].reason  # two users could both lack the app
    assert "OMI_APP_SECRET is most likely wrong" in results[3].reason
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["severity"] for line in lines if "most likely wrong" in line.get("reason", "")] == ["ERROR"]
    assert "wrong-secret" not in json.dumps(lines)


def test_a_success_between_403s_starts_the_count_again(strict_omi: OmiApi) -> None:
    notifier = notifier_for(strict_omi)
    for uid in ("a", "b"):
        strict_omi.disable(uid)
        notifier.send(uid, "🎵 x by y")
    notifier.send("ok", "🎵 x by y")
    strict_omi.disable("c")

    result = notifier.send("c", "🎵 x by y")

    assert "this user has not enabled the app" in result.reason


def test_a_memory_is_created_with_the_song_and_the_link(omi_api: OmiApi) -> None:
    outcome = notifier_for(omi_api).create_memory("u", "Hv2", "Colobot", "song1", "https://x.test/me/u?key=k")

    assert outcome == "created"
    [memory] = omi_api.memories()
    assert memory.headers["Authorization"] == f"Bearer {SECRET}"
    assert memory.json["memories"] == [
        {"content": "Heard Hv2 by Colobot", "tags": ["music"], "source_id": "song1", "source_url": "https://x.test/me/u?key=k"}
    ]


def test_a_song_is_stored_as_one_memory_not_two(omi_api: OmiApi) -> None:
    """Omi's extractor turns any non-empty `text` into a second, paraphrased memory: the
    request carries the song only as its explicit memory, with the required `text` empty."""
    notifier_for(omi_api).create_memory("u", "Hv2", "Colobot", "song1", None)

    [memory] = omi_api.memories()
    assert memory.json["text"] == ""
    assert omi_api.stored_memories("u") == ["Heard Hv2 by Colobot"]


def test_a_memory_refused_by_omi_is_reported_not_raised(omi_api: OmiApi) -> None:
    omi_api.disable("u")

    assert notifier_for(omi_api).create_memory("u", "Hv2", "Colobot", "song1", None) == "failed"


def test_a_call_gets_no_more_than_what_is_left_of_omis_wait(omi_api: OmiApi) -> None:
    """Omi waits 15 s for the webhook's answer: a notification or memory call gets at most what
    is left of the request's budget (function/webhook/ingest.py), and none is started with less
    than MIN_CALL_SECONDS left, however long NOTIFY_TIMEOUT_SECONDS allows."""
    notifier = notifier_for(omi_api, NOTIFY_TIMEOUT_SECONDS="10")
    omi_api.hang(5)

    started = time.monotonic()
    cut = notifier.send("u", "m", seconds_left=1.0)
    cut_after = time.monotonic() - started
    started = time.monotonic()
    skipped = notifier.send("u", "m", seconds_left=0.2)
    memory = notifier.create_memory("u", "T", "A", "s1", None, seconds_left=0.2)
    skipped_after = time.monotonic() - started

    assert (cut.status, cut.retryable) == ("failed", False) and cut_after < 2.0
    assert (skipped.status, skipped.retryable) == ("failed", True) and "no time left" in skipped.reason
    assert memory == "failed" and skipped_after < 0.1
    assert len(omi_api.notifications()) == 1 and omi_api.memories() == []
