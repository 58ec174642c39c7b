"""The client for Omi's integration API: notifications (POST /v2/integrations/{app_id}/notification)
and memories (POST /v2/integrations/{app_id}/user/memories, the app's `create_memories` action).

It only delivers and reports; whether a notification should be sent at all (cooldown, hourly
limit, a pending Retry-After) is decided in `function/webhook/ingest.py` against the store, so the
decision holds across instances. It reports what Omi says of its own limit: a 429's Retry-After,
and a success whose `X-RateLimit-Remaining` is 0 (the next call this hour would be refused), so
the store defers the user's notifications rather than spending a call to learn it. The app
secret goes in the Authorization header and nowhere else: not in results, not in log lines.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from dataclasses import dataclass

import httpx

from function.config import Settings
from function.logs import log
from function.storage.base import Notification

# Without a usable Retry-After, wait out Omi's window: its limit is per UTC hour.
_HOUR = 3600.0
# Omi answers 403 both to a wrong app secret and to a user without the app. This many different
# users refused in a row, none accepted in between, is taken for a wrong secret: one or two
# users without the app are common while it is being tried out, three at once much less so.
KEY_SUSPECT_USERS = 3


@dataclass(frozen=True)
class NotifyResult:
    status: Notification  # SENT, FAILED, RATE_LIMITED or LOGGED
    reason: str | None = None
    retry_after_seconds: float | None = None
    # Send no notification to this user for this long: Omi's hourly allowance is used up.
    defer_seconds: float | None = None
    # Certainly not delivered and may succeed later: a refused connection, a 429 or a 5xx. A
    # timed-out answer is not: Omi may have shown the notification already, and a retry
    # could show it twice.
    retryable: bool = False


def song_message(title: str, artist: str) -> str:
    return f"🎵 {title} by {artist}" if artist else f"🎵 {title}"


def _to_top_of_hour(now: float) -> float:
    """Seconds until Omi's hourly window ends: its limit is per UTC hour."""
    return math.floor(now / _HOUR) * _HOUR + _HOUR - now


def loggable(message: str) -> str:
    """The song line of a notification: a personal link on the next line stays out of logs."""
    return message.split("\n", 1)[0]


def _until_reset(header: str | None, now: float) -> float:
    """Seconds until Omi's window resets, from X-RateLimit-Reset as epoch seconds or a delta,
    else to the top of the UTC hour, where Omi's window ends."""
    if header and header.strip().isdigit():
        value = float(header.strip())
        return max(0.0, value - now) if value > 1e9 else value
    return _to_top_of_hour(now)


def _retry_after(header: str | None, now: float) -> float:
    """Seconds to wait, from Retry-After as delta-seconds or an HTTP date."""
    if header:
        value = header.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    return _to_top_of_hour(now)


# An Omi call is not started with less than this left of the request Omi is waiting on.
MIN_CALL_SECONDS = 0.5


class Notifier:
    """Sends one notification per call; without OMI_APP_ID/OMI_APP_SECRET it only logs it.

    It remembers, in this process, whether Omi has accepted the secret yet and which users it
    refused with 403 since its last success, to say which of Omi's two 403s a refusal likely is."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._secret_accepted = False
        self._refused_since_success: set[str] = set()
        self._client = httpx.Client(
            base_url=settings.omi_api_url,
            timeout=httpx.Timeout(settings.notify_timeout_seconds, connect=min(2.0, settings.notify_timeout_seconds)),
        )

    def send(self, uid: str, message: str, seconds_left: float = float("inf")) -> NotifyResult:
        """`seconds_left`: of the request Omi is waiting on; the call gets at most that long,
        and is not made (a failure worth retrying on a later chunk) with less than MIN_CALL_SECONDS."""
        s = self._settings
        if not s.notifications_enabled:
            log("NOTICE", "notification (not sent: OMI_APP_ID/OMI_APP_SECRET unset)", uid=uid, notification=loggable(message))
            return NotifyResult(Notification.LOGGED)
        if seconds_left < MIN_CALL_SECONDS:
            return self._failed(uid, "no time left in the request Omi is waiting on", retryable=True)
        try:
            response = self._client.post(
                f"/v2/integrations/{s.omi_app_id}/notification",
                params={"uid": uid, "message": message},
                headers={"Authorization": f"Bearer {s.omi_app_secret}", "Content-Type": "application/json"},
                timeout=self._timeout(seconds_left),
            )
        except httpx.ConnectTimeout:
            return self._failed(uid, "no connection within the timeout", retryable=True)
        except httpx.TimeoutException:
            return self._failed(uid, f"timed out after {min(s.notify_timeout_seconds, seconds_left):g} s")
        except httpx.ConnectError as exc:
            return self._failed(uid, f"ConnectError: {exc}", retryable=True)
        except httpx.HTTPError as exc:
            return self._failed(uid, f"{type(exc).__name__}: {exc}")
        if response.status_code == 429:
            wait = _retry_after(response.headers.get("Retry-After"), time.time())
            log("WARNING", "notification rate limited by Omi", uid=uid, retry_after_seconds=wait)
            return NotifyResult(Notification.RATE_LIMITED, "HTTP 429", retry_after_seconds=wait, defer_seconds=wait, retryable=True)
        if response.is_success:
            with self._lock:
                self._secret_accepted = True
                self._refused_since_success.clear()
            remaining = response.headers.get("X-RateLimit-Remaining")
            log("INFO", "notification sent", uid=uid, notification=loggable(message), remaining=remaining)
            if response.headers.get("X-RateLimit-Remaining", "").strip() == "0":
                return NotifyResult(Notification.SENT, defer_seconds=_until_reset(response.headers.get("X-RateLimit-Reset"), time.time()))
            return NotifyResult(Notification.SENT)
        if response.status_code == 403:
            return self._forbidden(uid)
        retryable = response.status_code >= 500
        return self._failed(uid, f"HTTP {response.status_code}: {response.text[:200]}", retryable)

    def create_memory(
        self, uid: str, title: str, artist: str, song_id: str, link: str | None, seconds_left: float = float("inf")
    ) -> str:
        """Save a notified song as an Omi memory ("Heard <title> by <artist>", tagged music,
        linking to the user's history). Best effort, never retried: the notification already
        told the user, and Omi's allowance of 60 memories an hour is far above our 9
        notifications. `text` is required but sent empty: Omi gives any non-empty one to its LLM
        extractor, which would store the song a second time, paraphrased. Skipped with less than
        MIN_CALL_SECONDS of `seconds_left`. Returns created | failed."""
        s = self._settings
        if seconds_left < MIN_CALL_SECONDS:
            log("WARNING", "memory not created", uid=uid, reason="no time left in the request Omi is waiting on")
            return "failed"
        heard = f"Heard {title} by {artist}" if artist else f"Heard {title}"
        item = {"content": heard, "tags": ["music"], "source_id": song_id, "source_url": link}
        body = {"text": "", "text_source": "other", "text_source_spec": "song recognition", "memories": [item]}
        try:
            response = self._client.post(
                f"/v2/integrations/{s.omi_app_id}/user/memories",
                params={"uid": uid},
                json=body,
                headers={"Authorization": f"Bearer {s.omi_app_secret}"},
                timeout=self._timeout(seconds_left),
            )
        except httpx.HTTPError as exc:
            log("WARNING", "memory not created", uid=uid, reason=type(exc).__name__)
            return "failed"
        if not response.is_success:
            log("WARNING", "memory not created", uid=uid, reason=f"HTTP {response.status_code}")
            return "failed"
        log("INFO", "memory created", uid=uid)
        return "created"

    def _timeout(self, seconds_left: float) -> httpx.Timeout:
        total = min(self._settings.notify_timeout_seconds, seconds_left)
        return httpx.Timeout(total, connect=min(2.0, total))

    def _forbidden(self, uid: str) -> NotifyResult:
        """A 403, never retried: Omi's body does not say whether the secret is wrong or this
        user has not enabled the app, so the reason says what the refusals so far point to."""
        with self._lock:
            self._refused_since_success.add(uid)
            users, accepted = len(self._refused_since_success), self._secret_accepted
        if users >= KEY_SUSPECT_USERS:
            since = "since its last success" if accepted else "and none accepted yet"
            reason = (
                f"HTTP 403 for {users} different users {since}: OMI_APP_SECRET is most likely wrong or revoked"
                " (check the app's API key in Omi); otherwise none of them has enabled the app"
            )
            log("ERROR", "notification failed", uid=uid, reason=reason, retryable=False)
            return NotifyResult(Notification.FAILED, reason)
        if accepted:
            return self._failed(uid, "HTTP 403: this user has not enabled the app in Omi (the app secret works for others)")
        return self._failed(
            uid, "HTTP 403: either this user has not enabled the app in Omi or OMI_APP_SECRET is wrong (Omi does not say which)"
        )

    @staticmethod
    def _failed(uid: str, reason: str, retryable: bool = False) -> NotifyResult:
        log("WARNING", "notification failed", uid=uid, reason=reason, retryable=retryable)
        return NotifyResult(Notification.FAILED, reason, retryable=retryable)
