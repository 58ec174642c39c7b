"""Omi's delivery signatures (shared/omi/CONTRACT.md, section 3), both sides of them.

`X-Omi-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]` where each v1 is
HMAC-SHA256(secret, "<t>.<uid>." + raw body): the signature binds the uid in the query to the
audio, so a captured delivery can neither be replayed later (t is checked against a tolerance)
nor pointed at another user. Two v1 values arrive during Omi's 24-hour secret rotation, and we
may hold two secrets during ours, so any pair that matches verifies.

`sign` is what Omi does; the simulator and the tests use it, so they sign exactly as we verify.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

# Omi's own tolerance; every retry is signed again with a fresh t, so a retry never ages out.
TOLERANCE_SECONDS = 300.0
MAX_HEADER_CHARS = 1024


class BadSignature(ValueError):
    """The delivery is not signed by a secret we hold; the message says why, without secrets."""


def _mac(secret: str, timestamp: str, uid: str, body: bytes) -> str:
    message = timestamp.encode("ascii") + b"." + uid.encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, uid: str, body: bytes, timestamp: int) -> str:
    """The `X-Omi-Signature` value Omi sends for this delivery."""
    return f"t={timestamp},v1={_mac(secret, str(timestamp), uid, body)}"


def _parse(header: str) -> tuple[str, list[str]]:
    if not header:
        raise BadSignature("missing X-Omi-Signature")
    if len(header) > MAX_HEADER_CHARS:
        raise BadSignature("X-Omi-Signature is too long")
    timestamp, candidates = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1" and value:
            candidates.append(value.lower())
    if timestamp is None or not (timestamp.isascii() and timestamp.isdigit()):
        raise BadSignature("X-Omi-Signature has no valid t=")
    if not candidates:
        raise BadSignature("X-Omi-Signature has no v1=")
    return timestamp, candidates


def verify(header: str, uid: str, body: bytes, secrets: Sequence[str], now: float) -> None:
    """Raise BadSignature unless some v1 in `header` is the MAC of (t, uid, body) under some
    secret and t is within TOLERANCE_SECONDS of `now`. Every comparison is constant-time and
    every pair is compared, so timing says nothing about which secret or value came close."""
    timestamp, candidates = _parse(header)
    if abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        raise BadSignature(f"X-Omi-Signature timestamp is more than {TOLERANCE_SECONDS:g} s from now")
    matched = False
    for secret in secrets:
        expected = _mac(secret, timestamp, uid, body).encode("ascii")
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    if not matched:
        raise BadSignature("X-Omi-Signature does not match this uid and body")
