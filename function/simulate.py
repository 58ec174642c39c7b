"""`python -m function simulate`: replay an audio file exactly as the Omi backend streams it.

The webhook's hard cases come from how Omi delivers audio (../shared/omi/CONTRACT.md), not from
the audio itself: batches of N seconds sent as 1-second POSTs in order, one `Idempotency-Key` per
chunk that a retry reuses, retries after 1 s, 5 s, 30 s on timeout/5xx/408/429, and a batch
abandoned on any other 4xx. Driving a local or deployed function through this path is the only way
to see duplicate handling, back-pressure and recognition timing before a real device does.
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
from urllib.parse import urlencode

import httpx
import numpy as np
from scipy.signal import resample_poly

from function.engine.decode import DecodeError, decode_file

OMI_RETRY_DELAYS = (1.0, 5.0, 30.0)
# Omi's client: 2 s to connect, then up to 30 s for the answer.
CONNECT_TIMEOUT_SECONDS = 2.0
DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ChunkResult:
    """One HTTP attempt; a retried chunk yields one result per attempt, all with the same key."""

    batch: int
    chunk: int
    chunks_in_batch: int
    attempt: int
    idempotency_key: str
    bytes: int
    status: int | None
    elapsed_ms: float
    delivered: bool
    error: str | None = None
    buffered_seconds: float | None = None
    recognition: dict | None = None


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


def batches(pcm: bytes, sample_rate: int, batch_seconds: float) -> list[list[bytes]]:
    """Split PCM into batches of `batch_seconds`, each as the 1-s chunks Omi posts one by one."""
    chunk_bytes = sample_rate * 2
    batch_bytes = max(2, int(round(batch_seconds * sample_rate)) * 2)
    out = []
    for start in range(0, len(pcm), batch_bytes):
        end = min(start + batch_bytes, len(pcm))
        out.append([pcm[c : min(c + chunk_bytes, end)] for c in range(start, end, chunk_bytes)])
    return out


def stream(
    pcm: bytes,
    url: str,
    uid: str,
    sample_rate: int,
    *,
    batch_seconds: float = 5.0,
    token: str | None = None,
    realtime: bool = False,
    retry_delays: Sequence[float] = OMI_RETRY_DELAYS,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> Iterator[ChunkResult]:
    """Post `pcm` as Omi does, yielding every attempt as it completes.

    A chunk that still fails after the last retry, or gets a non-retryable 4xx, abandons the rest
    of its batch (Omi never sends a batch with a hole in it); the next batch goes on.
    """
    target = omi_url(url, sample_rate, uid, token)
    headers = {"Content-Type": "application/octet-stream"}
    timeout = httpx.Timeout(timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds))
    started = time.monotonic()
    sent_bytes = 0
    with httpx.Client(timeout=timeout) as client:
        for b, batch in enumerate(batches(pcm, sample_rate, batch_seconds), start=1):
            batch_bytes = sum(len(c) for c in batch)
            if realtime:
                # Omi sends a batch only once its audio has been recorded.
                ready_at = started + (sent_bytes + batch_bytes) / (2 * sample_rate)
                time.sleep(max(0.0, ready_at - time.monotonic()))
            sent_bytes += batch_bytes
            for c, chunk in enumerate(batch, start=1):
                result = None
                for result in _deliver(client, target, headers, chunk, retry_delays):
                    yield ChunkResult(batch=b, chunk=c, chunks_in_batch=len(batch), **result)
                if not (result and result["delivered"]):
                    break


def _deliver(
    client: httpx.Client,
    target: str,
    headers: dict[str, str],
    chunk: bytes,
    retry_delays: Sequence[float],
) -> Iterator[dict]:
    key = str(uuid.uuid4())
    for attempt in range(1, len(retry_delays) + 2):
        t0 = time.perf_counter()
        status, error, body = None, None, {}
        try:
            response = client.post(target, content=chunk, headers={**headers, "Idempotency-Key": key})
            status = response.status_code
            body = _json_object(response)
        except httpx.TimeoutException as exc:
            error = f"timeout ({type(exc).__name__})"
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivered = status is not None and 200 <= status < 300
        yield {
            "attempt": attempt,
            "idempotency_key": key,
            "bytes": len(chunk),
            "status": status,
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
            "delivered": delivered,
            "error": error,
            "buffered_seconds": body.get("buffered_seconds"),
            "recognition": body.get("recognition"),
        }
        if delivered or not _retryable(status) or attempt > len(retry_delays):
            return
        time.sleep(retry_delays[attempt - 1])


def _retryable(status: int | None) -> bool:
    # None is a timeout or a connection failure, which Omi retries like a 5xx.
    return status is None or status >= 500 or status in (408, 429)


def _json_object(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def describe_recognition(recognition: dict) -> str:
    """A human line for the response's `recognition` ({"status": "match", "artist": ..., ...},
    {"status": "no_match"} or {"status": "unavailable" | "error", "reason": ...})."""
    if recognition.get("title"):
        text = f"{recognition.get('artist') or 'unknown artist'} - {recognition['title']}"
        if isinstance(recognition.get("confidence"), (int, float)):
            text += f" (confidence {recognition['confidence']:.2f})"
        if recognition.get("notification_error"):
            text += f"; notification failed: {recognition['notification_error']}"
        return text
    status = recognition.get("status", "no_match")
    if status == "no_match":
        return "no match"
    return f"{status}: {recognition['reason']}" if recognition.get("reason") else str(status)


def format_line(result: ChunkResult) -> str:
    where = f"batch {result.batch} chunk {result.chunk}/{result.chunks_in_batch}"
    if result.attempt > 1:
        where += f" retry {result.attempt - 1}"
    outcome = str(result.status) if result.status is not None else result.error
    line = f"{where:<28} {outcome:<5} {result.bytes:>6} B {result.elapsed_ms:>7.0f} ms"
    if result.buffered_seconds is not None:
        line += f"  buffered {result.buffered_seconds:.1f} s"
    if result.recognition is not None:
        line += f"  recognition: {describe_recognition(result.recognition)}"
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `simulate` subcommand's options, mounted by function.cli."""
    parser.add_argument("file", help="audio to replay (WAV, FLAC, OGG, MP3; mixed to mono)")
    parser.add_argument("--url", required=True, help="webhook URL, as pasted into the Omi app")
    parser.add_argument("--uid", required=True, help="the Omi user id sent in the query")
    parser.add_argument("--sample-rate", type=int, choices=(16000, 8000), default=16000)
    parser.add_argument("--batch-seconds", type=float, default=5.0, help="Omi's 'every X seconds' (default 5)")
    parser.add_argument("--realtime", action="store_true", help="send each batch when its audio would be recorded")
    parser.add_argument("--noise", help="audio file mixed in (looped or cropped to length)")
    parser.add_argument("--snr", type=float, default=10.0, help="signal-to-noise ratio in dB for --noise (default 10)")
    parser.add_argument("--token", help="webhook token, sent as token=T in the query")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds per request (Omi: 15-30)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per request on stdout")


def run(args: argparse.Namespace, retry_delays: Sequence[float] = OMI_RETRY_DELAYS) -> int:
    """Stream the file; 0 when every chunk was delivered, 1 when some were lost, 2 on bad input."""
    if args.batch_seconds <= 0:
        print("error: --batch-seconds must be positive", file=sys.stderr)
        return 2
    try:
        pcm = load_pcm16(args.file, args.sample_rate, args.noise, args.snr)
    except (DecodeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = len(pcm) // 2
    chunks = sum(len(batch) for batch in batches(pcm, args.sample_rate, args.batch_seconds))
    delivered = 0
    for result in stream(
        pcm,
        args.url,
        args.uid,
        args.sample_rate,
        batch_seconds=args.batch_seconds,
        token=args.token,
        realtime=args.realtime,
        retry_delays=retry_delays,
        timeout_seconds=args.timeout,
    ):
        delivered += result.delivered
        print(json.dumps(asdict(result)) if args.json else format_line(result), flush=True)
    print(
        f"{delivered}/{chunks} chunks delivered ({total / args.sample_rate:.1f} s of audio at {args.sample_rate} Hz)",
        file=sys.stderr,
    )
    return 0 if delivered == chunks else 1
