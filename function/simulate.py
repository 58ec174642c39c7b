"""`python -m function simulate`: replay an audio file as the Omi backend streams it.

The webhook's hard cases come from how Omi delivers audio (Omi's public backend, BasedHardware/omi:
`backend/routers/pusher.py` and `backend/utils/webhooks.py`), not from the audio itself. Two
delivery paths are reproduced:

- `--mode developer` (the "Realtime audio bytes" developer setting, the default): Omi's buffer
  takes frames of about a second and sends a batch once it holds strictly more than X seconds
  (`--batch-seconds`, an integer, default 5), so a batch is about X+1 s. The batch goes out as
  1-second POSTs (sample_rate*2 bytes) with a short last one, each awaited before the next; every
  chunk has its own `Idempotency-Key`, which a retry reuses; retries after 1 s, 5 s, 30 s on a
  timeout, a refused connection, 5xx, 408, 429 or 3xx (Retry-After ignored, redirects not
  followed); a chunk that still fails, or any other non-2xx, drops the rest of its batch.
- `--mode app` (an Omi app with the `audio_bytes` trigger): the whole batch in one POST, no
  Idempotency-Key, no retry; a failed batch is lost and the stream goes on. Omi fixes X at 4 for
  apps (batches of about 5 s), so that is this mode's default.

With `--signing-secret`, every POST is signed as Omi signs (section 3): `X-Omi-Signature`
(signed again, with a fresh t, on every retry), `X-Omi-Event: audio_bytes` and `X-Omi-Delivery`,
the chunk's Idempotency-Key in developer mode and a fresh uuid per POST in app mode.

The end of a file is the end of a recording session, and Omi never sends the audio left in its
buffer then (X seconds or less: the batch that never filled up), so neither does this by
default; `--send-partial` sends it as a last, shorter batch, to replay a whole file. Omi's circuit
breaker and queue overflow are not reproduced. Older Omi backends, still run by people who
self-host Omi, send the developer setting's whole batch in one POST without an Idempotency-Key
and without retries: `--mode app --batch-seconds X` delivers it that way (their URL form,
`?sample_rate=` appended even after a query, is not reproduced). One thing is not Omi's at all:
if the very first request of a run cannot connect, the run stops at once (a wrong --url should
not take minutes of retries to report).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from math import gcd
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import numpy as np
from scipy.signal import resample_poly

from function.engine.decode import DecodeError, decode_file
from function.progress import plural
from function.webhook.signing import sign

DEVELOPER, APP = "developer", "app"
MODES = (DEVELOPER, APP)
# Omi's "every X seconds" for the developer setting defaults to 5; the app trigger uses a fixed 4.
DEFAULT_BATCH_SECONDS = {DEVELOPER: 5, APP: 4}
# Omi's transcription side forwards the device audio to its batcher about once a second. Frames a
# little under a second make X frames hold at most X s, so the batch closes on frame X+1 (about
# X+1 s, as Omi's backend sends it) and never on a whole second: with X=5, 6 frames of 0.95 s make
# a 5.7-s batch, posted as 1, 1, 1, 1, 1 and 0.7 s.
OMI_FRAME_SECONDS = 0.95
OMI_RETRY_DELAYS = (1.0, 5.0, 30.0)
# Omi's client: 2 s to connect, then up to 15 s for the answer.
CONNECT_TIMEOUT_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class ChunkResult:
    """One HTTP attempt; a retried chunk yields one result per attempt, all with the same key.

    In app mode a "chunk" is the whole batch (`chunks_in_batch` is 1) and `idempotency_key` is
    None. `delivery_id` is the X-Omi-Delivery sent with a signed POST (None when unsigned).
    """

    batch: int
    chunk: int
    chunks_in_batch: int
    attempt: int
    idempotency_key: str | None
    bytes: int
    status: int | None
    elapsed_ms: float
    delivered: bool
    error: str | None = None
    buffered_seconds: float | None = None
    recognition: dict | None = None
    mode: str = DEVELOPER
    delivery_id: str | None = None


class Unreachable(Exception):
    """The very first request of a run could not connect: nothing is listening at the URL."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to {url} ({reason})")
        self.url = url
        self.reason = reason


def load_pcm16(path: str | Path, sample_rate: int, noise: str | Path | None = None, snr_db: float = 10.0) -> bytes:
    """Decode, mono-mix, resample to `sample_rate`, optionally add noise, and encode as Omi's PCM16 LE."""
    samples = _decode_at(path, sample_rate)
    if noise is not None:
        samples = mix_at_snr(samples, _decode_at(noise, sample_rate), snr_db)
    return float_to_pcm16(samples)


def _decode_at(path: str | Path, sample_rate: int) -> np.ndarray:
    samples, rate = decode_file(path)
    if rate == sample_rate:
        return samples.astype(np.float64)
    g = gcd(rate, sample_rate)
    return resample_poly(samples.astype(np.float64), sample_rate // g, rate // g)


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Signal plus noise (looped or cropped to the signal's length) scaled to `snr_db`.

    The level is set from mean power over the whole clip, the usual definition, so a benchmark
    that names an SNR means the same thing as this simulator.
    """
    if len(signal) == 0:
        return signal.astype(np.float64)
    noise = np.resize(np.asarray(noise, dtype=np.float64), len(signal))
    signal_power = float(np.mean(np.square(signal, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise)))
    if noise_power == 0.0:
        raise ValueError("noise file is silent; it cannot be mixed at a given SNR")
    gain = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return signal + gain * noise


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Clip rather than wrap: loud noisy mixes must saturate like a real microphone, not flip sign."""
    return np.clip(np.round(np.asarray(samples) * 32767.0), -32768, 32767).astype("<i2").tobytes()


def omi_url(url: str, sample_rate: int, uid: str, token: str | None = None) -> str:
    """The URL Omi posts to: the user's URL (here with an optional token), then its own query.

    Omi appends `sample_rate` and `uid` with urlencode, joined with `&` when the pasted URL
    already carries a query; the token is part of what the user pastes, so it comes first.
    """
    if token:
        url = f"{url}{'&' if '?' in url else '?'}{urlencode({'token': token})}"
    return f"{url}{'&' if '?' in url else '?'}{urlencode({'sample_rate': sample_rate, 'uid': uid})}"


def omi_batches(
    pcm: bytes,
    sample_rate: int,
    batch_seconds: float,
    frame_seconds: float = OMI_FRAME_SECONDS,
    send_partial: bool = False,
) -> list[bytes]:
    """The batches Omi sends for `pcm`: frames of `frame_seconds` are buffered until the buffer
    holds strictly more than `batch_seconds`, then the buffer goes out whole and starts empty.

    What is left at the end of the file (never more than `batch_seconds`) Omi never sends: the
    session ends before it fills up. `send_partial` makes it a last, shorter batch.
    """
    frame_bytes = max(1, int(round(frame_seconds * sample_rate))) * 2
    threshold = batch_seconds * sample_rate * 2
    out, start, end = [], 0, 0
    while end < len(pcm):
        end = min(end + frame_bytes, len(pcm))
        if end - start > threshold:
            out.append(pcm[start:end])
            start = end
    if send_partial and start < len(pcm):
        out.append(pcm[start:])
    return out


def batches(
    pcm: bytes,
    sample_rate: int,
    batch_seconds: float,
    frame_seconds: float = OMI_FRAME_SECONDS,
    send_partial: bool = False,
) -> list[list[bytes]]:
    """Omi's developer-mode batches, each as the 1-s chunks it posts one by one (the last one short)."""
    chunk_bytes = sample_rate * 2
    return [
        [batch[c : c + chunk_bytes] for c in range(0, len(batch), chunk_bytes)]
        for batch in omi_batches(pcm, sample_rate, batch_seconds, frame_seconds, send_partial)
    ]


def stream(
    pcm: bytes,
    url: str,
    uid: str,
    sample_rate: int,
    *,
    batch_seconds: float | None = None,
    token: str | None = None,
    realtime: bool = False,
    retry_delays: Sequence[float] = OMI_RETRY_DELAYS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    mode: str = DEVELOPER,
    signing_secret: str | None = None,
    frame_seconds: float = OMI_FRAME_SECONDS,
    send_partial: bool = False,
) -> Iterator[ChunkResult]:
    """Post `pcm` as Omi does in `mode`, yielding every attempt as it completes; the end of `pcm`
    that never fills a batch is left out, as Omi leaves it, unless `send_partial`.

    Developer mode: a chunk that still fails after the last retry, or gets a non-retryable
    answer, abandons the rest of its batch (Omi never sends a batch with a hole in it); the next
    batch goes on. App mode: one POST per batch and no retry. Raises `Unreachable` when the very
    first request cannot connect.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if batch_seconds is None:
        batch_seconds = DEFAULT_BATCH_SECONDS[mode]
    target = omi_url(url, sample_rate, uid, token)
    timeout = httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds))
    started = time.monotonic()
    sent_bytes = 0
    first_request = True
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for b, batch in enumerate(omi_batches(pcm, sample_rate, batch_seconds, frame_seconds, send_partial), start=1):
            if realtime:
                # Omi sends a batch only once its audio has been recorded.
                ready_at = started + (sent_bytes + len(batch)) / (2 * sample_rate)
                time.sleep(max(0.0, ready_at - time.monotonic()))
            sent_bytes += len(batch)
            if mode == DEVELOPER:
                posts = [batch[c : c + sample_rate * 2] for c in range(0, len(batch), sample_rate * 2)]
            else:
                posts = [batch]
            for c, body in enumerate(posts, start=1):
                result: dict = {}
                for result in _deliver(
                    client,
                    target,
                    uid,
                    body,
                    retry_delays if mode == DEVELOPER else (),
                    idempotent=mode == DEVELOPER,
                    signing_secret=signing_secret,
                    fail_fast_url=_without_query(url) if first_request else None,
                ):
                    yield ChunkResult(batch=b, chunk=c, chunks_in_batch=len(posts), mode=mode, **result)
                first_request = False
                if not result.get("delivered"):
                    break


def _without_query(url: str) -> str:
    # The query may carry a token; an error line names where, not with what.
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _deliver(
    client: httpx.Client,
    target: str,
    uid: str,
    body: bytes,
    retry_delays: Sequence[float],
    *,
    idempotent: bool = True,
    signing_secret: str | None = None,
    fail_fast_url: str | None = None,
) -> Iterator[dict]:
    """Every attempt at one POST. `fail_fast_url`: this is the run's first request, and failing to
    connect at all raises Unreachable (naming that URL) instead of being retried."""
    key = str(uuid.uuid4()) if idempotent else None
    for attempt in range(1, len(retry_delays) + 2):
        headers = {"Content-Type": "application/octet-stream"}
        if key is not None:
            headers["Idempotency-Key"] = key
        delivery = None
        if signing_secret is not None:
            delivery = key or str(uuid.uuid4())
            headers["X-Omi-Signature"] = sign(signing_secret, uid, body, int(time.time()))
            headers["X-Omi-Event"] = "audio_bytes"
            headers["X-Omi-Delivery"] = delivery
        t0 = time.perf_counter()
        status, error, answer = None, None, {}
        try:
            response = client.post(target, content=body, headers=headers)
            status = response.status_code
            answer = _json_object(response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if fail_fast_url is not None and attempt == 1:
                raise Unreachable(fail_fast_url, f"{type(exc).__name__}: {exc}") from None
            error = f"{type(exc).__name__}: {exc}"
        except httpx.TimeoutException as exc:
            error = f"timeout ({type(exc).__name__})"
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivered = status is not None and 200 <= status < 300
        yield {
            "attempt": attempt,
            "idempotency_key": key,
            "delivery_id": delivery,
            "bytes": len(body),
            "status": status,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
            "delivered": delivered,
            "error": error,
            "buffered_seconds": answer.get("buffered_seconds"),
            "recognition": answer.get("recognition"),
        }
        if delivered or not _retryable(status) or attempt > len(retry_delays):
            return
        time.sleep(retry_delays[attempt - 1])


def _retryable(status: int | None) -> bool:
    # None is a timeout or a connection failure, which Omi retries like a 5xx; so is a 3xx,
    # since Omi does not follow redirects.
    return status is None or status >= 500 or 300 <= status < 400 or status in (408, 429)


def _json_object(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# What the webhook's `notification` of a match means for the wearer (function/storage/base.py).
NOTIFICATION_WORDS = {
    "sent": "notification sent",
    "logged": "notification only logged (OMI_APP_ID/OMI_APP_SECRET unset)",
    "skipped_cooldown": "no notification (already notified of this song within NOTIFY_COOLDOWN_SECONDS)",
    "skipped_limit": "no notification (this hour's notifications for the user are used up)",
    "skipped_deferred": "no notification (Omi's hourly allowance is used up)",
    "failed": "notification failed",
    "retrying": "notification failed, to be retried",
    "rate_limited": "notification refused by Omi's rate limit, to be retried",
}


def describe_recognition(recognition: dict) -> str:
    """A human line for the response's `recognition` ({"status": "match", "artist": ...,
    "notification": ...}, {"status": "no_match"} or {"status": "unavailable" | "error",
    "reason": ...}): the song, and whether the wearer was told of it."""
    if recognition.get("title"):
        text = f"{recognition.get('artist') or 'unknown artist'} - {recognition['title']}"
        if isinstance(recognition.get("confidence"), (int, float)):
            text += f" (confidence {recognition['confidence']:.2f})"
        notification = recognition.get("notification")
        if notification in NOTIFICATION_WORDS:
            text += f"; {NOTIFICATION_WORDS[notification]}"
        elif recognition.get("notification_error"):
            text += "; notification failed"
        if recognition.get("notification_error"):
            text += f": {recognition['notification_error']}"
        return text
    status = recognition.get("status", "no_match")
    if status == "no_match":
        return "no match"
    return f"{status}: {recognition['reason']}" if recognition.get("reason") else str(status)


def recognition_key(recognition: dict) -> tuple:
    """What a recognition says, for telling whether it changed: the song for a match (named
    again on every attempt while it plays), else the status and its reason."""
    if recognition.get("title"):
        return ("match", recognition.get("song_id") or (recognition.get("artist"), recognition["title"]))
    return (recognition.get("status", "no_match"), recognition.get("reason"))


def format_line(result: ChunkResult, show_recognition: bool = True) -> str:
    """One request as a line; its recognition only with `show_recognition` (run() leaves out
    one that says what the last one said)."""
    if result.mode == APP:
        where = f"batch {result.batch}"
    else:
        where = f"batch {result.batch} chunk {result.chunk}/{result.chunks_in_batch}"
    if result.attempt > 1:
        where += f" retry {result.attempt - 1}"
    outcome = str(result.status) if result.status is not None else result.error
    line = f"{where:<28} {outcome:<5} {result.bytes:>6} B {result.elapsed_ms:>7.0f} ms"
    if result.buffered_seconds is not None:
        line += f"  buffered {result.buffered_seconds:.1f} s"
    if result.recognition is not None and show_recognition:
        line += f"  recognition: {describe_recognition(result.recognition)}"
    return line


def _whole_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: Omi takes a whole number of seconds (it silently replaces a decimal with 5)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 second")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` subcommand's options, mounted by function.cli."""
    parser.add_argument("file", help="audio to replay (WAV, FLAC, OGG, MP3; mixed to mono)")
    parser.add_argument("--url", required=True, help="webhook URL, as pasted into the Omi app")
    parser.add_argument("--uid", required=True, help="the Omi user id sent in the query")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=DEVELOPER,
        help="developer: the 'Realtime audio bytes' setting, 1-s POSTs with Idempotency-Key and retries "
        "(default); app: an Omi app's audio_bytes trigger, one POST per batch, no retries",
    )
    parser.add_argument("--sample-rate", type=int, choices=(16000, 8000), default=16000)
    parser.add_argument(
        "--batch-seconds",
        type=_whole_seconds,
        default=None,
        help="Omi's 'every X seconds': a batch goes once more than X s are buffered, so about X+1 s "
        "(default 5; 4 in app mode, which Omi fixes)",
    )
    parser.add_argument("--realtime", action="store_true", help="send each batch when its audio would be recorded")
    parser.add_argument(
        "--send-partial",
        action="store_true",
        help="also send the end of the file that never fills a batch (X s or less) as a last, shorter one; "
        "Omi never sends it",
    )
    parser.add_argument("--noise", help="audio file mixed in (looped or cropped to length)")
    parser.add_argument("--snr", type=float, default=10.0, help="signal-to-noise ratio in dB for --noise (default 10)")
    parser.add_argument("--token", help="webhook token, sent as token=T in the query")
    parser.add_argument(
        "--signing-secret",
        help="sign every POST as Omi does (X-Omi-Signature, X-Omi-Event, X-Omi-Delivery) with this secret",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds per request (Omi: 15)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per request on stdout")


def run(args: argparse.Namespace, retry_delays: Sequence[float] = OMI_RETRY_DELAYS) -> int:
    """Stream the file; 0 when every POST was delivered, 1 when some audio was lost or the URL
    could not be reached at all, 2 on bad input."""
    mode = getattr(args, "mode", DEVELOPER)
    signing_secret = getattr(args, "signing_secret", None)
    batch_seconds = args.batch_seconds if args.batch_seconds is not None else DEFAULT_BATCH_SECONDS[mode]
    if batch_seconds <= 0:
        print("error: --batch-seconds must be positive", file=sys.stderr)
        return 2
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(f"error: --url must be an http:// or https:// URL, not {args.url!r}", file=sys.stderr)
        return 2
    if signing_secret is not None and not args.uid.isascii():
        print("error: a signed delivery needs an ASCII --uid (Omi's are [A-Za-z0-9_-])", file=sys.stderr)
        return 2
    try:
        pcm = load_pcm16(args.file, args.sample_rate, args.noise, args.snr)
    except (DecodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    send_partial = getattr(args, "send_partial", False)
    total_seconds = len(pcm) / 2 / args.sample_rate
    batch_list = batches(pcm, args.sample_rate, batch_seconds, send_partial=send_partial)
    if not batch_list:
        print(
            f"error: {args.file} ({total_seconds:.1f} s) never fills a batch: Omi sends one only once more than"
            f" {batch_seconds} s are buffered, and never the rest of a recording; --send-partial sends it anyway",
            file=sys.stderr,
        )
        return 2
    sent_bytes = sum(len(chunk) for batch in batch_list for chunk in batch)
    expected = sum(len(b) for b in batch_list) if mode == DEVELOPER else len(batch_list)
    delivered = delivered_bytes = 0
    last_said: tuple | None = None
    try:
        for result in stream(
            pcm,
            args.url,
            args.uid,
            args.sample_rate,
            batch_seconds=batch_seconds,
            token=args.token,
            realtime=args.realtime,
            retry_delays=retry_delays,
            timeout_seconds=args.timeout,
            mode=mode,
            signing_secret=signing_secret,
            send_partial=send_partial,
        ):
            delivered += result.delivered
            delivered_bytes += result.bytes if result.delivered else 0
            changed = result.recognition is not None and recognition_key(result.recognition) != last_said
            if changed:
                last_said = recognition_key(result.recognition)
            print(json.dumps(asdict(result)) if args.json else format_line(result, changed), flush=True)
    except Unreachable as exc:
        print(f"error: {exc}; is the function running there?", file=sys.stderr)
        return 1
    what = "chunks" if mode == DEVELOPER else "batches"
    how = plural(len(batch_list), "batch", "batches") if mode == DEVELOPER else "one POST each"
    summary = (
        f"{delivered}/{expected} {what} delivered "
        f"({total_seconds:.1f} s of audio at {args.sample_rate} Hz, {how}"
    )
    if delivered_bytes < sent_bytes:
        summary += f"; {(sent_bytes - delivered_bytes) / 2 / args.sample_rate:.1f} s of it lost"
    if sent_bytes < len(pcm):
        unsent = (len(pcm) - sent_bytes) / 2 / args.sample_rate
        summary += f"; the last {unsent:.1f} s not sent, as Omi never sends a batch that did not fill up: --send-partial sends it"
    print(summary + ")", file=sys.stderr)
    return 0 if delivered == expected else 1
