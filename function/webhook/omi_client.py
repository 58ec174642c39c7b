"""The client for Omi's notification API (POST /v2/integrations/{app_id}/notification).

It only delivers and reports; whether a notification should be sent at all (cooldown, hourly
limit, a pending Retry-After) is decided in `function/webhook/ingest.py` against the store, so the
decision holds across instances. The app secret goes in the Authorization header and nowhere
else: not in results, not in log lines.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass

import httpx

from function.config import Settings
from function.logs import log

# Without a usable Retry-After, wait out Omi's window: its limit is per UTC hour.
_HOUR = 3600.0


@dataclass(frozen=True)
class NotifyResult:
    status: str  # sent | failed | rate_limited | logged
    reason: str | None = None
    retry_after_seconds: float | None = None
    # Certainly not delivered and may succeed later: a refused connection, a 429 or a 5xx. A
    # timed-out answer is not: Omi may have shown the notification already, and a retry
    # could show it twice.
    retryable: bool = False


def song_message(title: str, artist: str) -> str:
    return f"🎵 {title} by {artist}" if artist else f"🎵 {title}"


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
    return math.floor(now / _HOUR) * _HOUR + _HOUR - now


class Notifier:
    """Sends one notification per call; without OMI_APP_ID/OMI_APP_SECRET it only logs it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = httpx.Client(
            base_url=settings.omi_api_url,
            timeout=httpx.Timeout(settings.notify_timeout_seconds, connect=min(2.0, settings.notify_timeout_seconds)),
        )

    def send(self, uid: str, message: str) -> NotifyResult:
        s = self._settings
        if not s.notifications_enabled:
            log("NOTICE", "notification (not sent: OMI_APP_ID/OMI_APP_SECRET unset)", uid=uid, notification=message)
            return NotifyResult("logged")
        try:
            response = self._client.post(
                f"/v2/integrations/{s.omi_app_id}/notification",
                params={"uid": uid, "message": message},
                headers={"Authorization": f"Bearer {s.omi_app_secret}", "Content-Type": "application/json"},
            )
        except httpx.ConnectTimeout:
            return self._failed(uid, "no connection within the timeout", retryable=True)
        except httpx.TimeoutException:
            return self._failed(uid, f"timed out after {s.notify_timeout_seconds:g} s")
        except httpx.ConnectError as exc:
            return self._failed(uid, f"ConnectError: {exc}", retryable=True)
        except httpx.HTTPError as exc:
            return self._failed(uid, f"{type(exc).__name__}: {exc}")
        if response.status_code == 429:
            wait = _retry_after(response.headers.get("Retry-After"), time.time())
            log("WARNING", "notification rate limited by Omi", uid=uid, retry_after_seconds=wait)
            return NotifyResult("rate_limited", "HTTP 429", retry_after_seconds=wait, retryable=True)
        if response.is_success:
            log("INFO", "notification sent", uid=uid, notification=message)
            return NotifyResult("sent")
        retryable = response.status_code >= 500
        return self._failed(uid, f"HTTP {response.status_code}: {response.text[:200]}", retryable)

    @staticmethod
    def _failed(uid: str, reason: str, retryable: bool = False) -> NotifyResult:
        log("WARNING", "notification failed", uid=uid, reason=reason, retryable=retryable)
        return NotifyResult("failed", reason, retryable=retryable)
