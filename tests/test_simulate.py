"""The Omi device simulator against a real HTTP server on loopback that records what arrives.

The server can fail chosen chunks, so every part of Omi's delivery contract that the simulator
claims to reproduce (batch shape, query, headers, key reuse, retries, give-up, app mode, signing,
fail-fast) is observed on the wire rather than inferred from the simulator's own output.

With Omi's default X=5 and frames of 0.95 s, a developer batch is 6 frames = 5.7 s, posted as
five 1-s chunks (32000 B at 16 kHz) and one of 0.7 s (22400 B).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile

from function import simulate
from function.webhook.signing import BadSignature, verify

FAST_RETRIES = (0.01, 0.02, 0.03)
SECOND = 32000  # bytes of one second at 16 kHz
BATCH_5 = [SECOND] * 5 + [22400]  # X=5: 6 frames of 0.95 s = 5.7 s


@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class Recorder:
    """What the server saw, and how it should answer.

    Chunks are numbered 1, 2, ... by the order in which their Idempotency-Key first arrives (a
    POST without one, as in app mode, is a chunk of its own). `fail_first` answers a chunk's first
    attempt with the given status (0 = stall past the client's timeout); `fail_always` answers
    every attempt of that chunk with it. `shutdown()` stops the server mid-run.
    """

    fail_first: dict[int, int] = field(default_factory=dict)
    fail_always: dict[int, int] = field(default_factory=dict)
    stall_seconds: float = 1.0
    recognition_at: dict[int, dict] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    shutdown: object = None

    def delivered_bodies(self) -> list[bytes]:
        return [r.body for r in self.requests if 200 <= r.status < 300]


@pytest.fixture()
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with recorder.lock:
                key = self.headers.get("Idempotency-Key") or f"unkeyed request {len(recorder.requests)}"
                first = key not in recorder.keys
                if first:
                    recorder.keys.append(key)
                n = recorder.keys.index(key) + 1
                status = recorder.fail_always.get(n) or (recorder.fail_first.get(n, 200) if first else 200)
                parts = urlsplit(self.path)
                recorder.requests.append(
                    Received(parts.path, parts.query, dict(self.headers), body, status, time.monotonic())
                )
                rate = int(parse_qs(parts.query)["sample_rate"][0])
                buffered = sum(len(b) for b in recorder.delivered_bodies()) / (2 * rate)
            if status == 0:
                time.sleep(recorder.stall_seconds)
            reply: dict = {"status": "ok" if status == 200 else "error", "buffered_seconds": buffered}
            if status == 200 and n in recorder.recognition_at and first:
                reply["recognition"] = recorder.recognition_at[n]
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def shutdown() -> None:
        httpd.shutdown()
        httpd.server_close()

    recorder.shutdown = shutdown
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def write_tone(path: Path, seconds: float, rate: int = 44100, channels: int = 2, freq: float = 1000.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.4 * np.sin(2 * np.pi * freq * t)
    soundfile.write(str(path), np.repeat(tone[:, None], channels, axis=1), rate)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    return parser.parse_args(argv)


def test_stream_is_one_second_chunks_with_omi_query_and_headers(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.5)

    code = simulate.run(parse([str(song), "--url", f"{url}/audio", "--uid", "user_1"]), FAST_RETRIES)

    assert code == 0
    # 12.5 s: two batches of 5.7 s (five 1-s chunks and a 0.7-s one); the last 1.1 s never fills one.
    assert [len(r.body) for r in rec.requests] == BATCH_5 + BATCH_5
    assert {r.path for r in rec.requests} == {"/audio"}
    assert {r.query for r in rec.requests} == {"sample_rate=16000&uid=user_1"}
    assert {r.headers["Content-Type"] for r in rec.requests} == {"application/octet-stream"}
    keys = [r.headers["Idempotency-Key"] for r in rec.requests]
    assert len(set(keys)) == 12
    assert all(uuid.UUID(k).version == 4 for k in keys)


@pytest.mark.parametrize("mode", ["developer", "app"])
def test_the_end_that_never_fills_a_batch_is_sent_only_when_asked(tmp_path: Path, server, capsys, mode: str) -> None:
    # Omi never sends the last X seconds or less of a recording: the batch never fills up.
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.5)
    clean = simulate.load_pcm16(song, 16000)
    argv = [str(song), "--url", url, "--uid", "u", "--mode", mode, "--batch-seconds", "5"]

    assert simulate.run(parse(argv), FAST_RETRIES) == 0
    as_omi = b"".join(rec.delivered_bodies())
    err = capsys.readouterr().err
    rec.requests.clear()
    assert simulate.run(parse([*argv, "--send-partial"]), FAST_RETRIES) == 0

    assert as_omi == clean[: 2 * sum(BATCH_5)]
    assert "the last 1.1 s not sent" in err and "--send-partial" in err
    assert b"".join(rec.delivered_bodies()) == clean
    # The 1.1 s left: one short POST in app mode, a 1-s chunk and a 0.1-s one in developer mode.
    assert [len(r.body) for r in rec.requests[-2:]] == ([sum(BATCH_5), 35200] if mode == "app" else [SECOND, 3200])
    assert "not sent" not in capsys.readouterr().err


def test_a_file_that_never_fills_a_batch_is_a_usage_error_unless_sent_partial(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    song = write_tone(tmp_path / "short.wav", 3.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u"]), FAST_RETRIES)

    assert code == 2
    assert rec.requests == []
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "short.wav (3.0 s) never fills a batch" in line and "--send-partial" in line
    assert simulate.run(parse([str(song), "--url", url, "--uid", "u", "--send-partial"]), FAST_RETRIES) == 0
    assert [len(r.body) for r in rec.requests] == [SECOND] * 3


def test_audio_is_resampled_mono_pcm16(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.flac", 3.0, rate=44100, channels=2, freq=1000.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--sample-rate", "8000", "--send-partial"]), FAST_RETRIES)

    assert code == 0
    assert [len(r.body) for r in rec.requests] == [16000] * 3
    samples = np.frombuffer(b"".join(rec.delivered_bodies()), dtype="<i2").astype(np.float64) / 32768
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 8000)[spectrum.argmax()] == pytest.approx(1000, abs=2)
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)


def test_query_is_appended_to_an_existing_query_and_token_goes_first(server) -> None:
    url, _ = server

    assert simulate.omi_url(f"{url}/audio?x=1", 8000, "a-b") == f"{url}/audio?x=1&sample_rate=8000&uid=a-b"
    assert simulate.omi_url(f"{url}/audio", 16000, "u", token="s3cr t") == (
        f"{url}/audio?token=s3cr+t&sample_rate=16000&uid=u"
    )


def test_token_reaches_the_server_in_the_query(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 1.0)

    argv = [str(song), "--url", f"{url}/audio", "--uid", "u", "--token", "tok", "--send-partial"]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    assert [r.query for r in rec.requests] == ["token=tok&sample_rate=16000&uid=u"]


@pytest.mark.parametrize("status", [500, 503, 429, 408, 0, 302, 307])
def test_a_retryable_failure_is_retried_with_the_same_key_and_body(tmp_path: Path, server, status: int) -> None:
    url, rec = server
    rec.fail_first = {2: status}
    rec.stall_seconds = 2.5
    song = write_tone(tmp_path / "song.wav", 3.0)

    args = parse([str(song), "--url", url, "--uid", "u", "--timeout", "1", "--send-partial"])
    code = simulate.run(args, FAST_RETRIES)

    assert code == 0
    assert len(rec.keys) == 3
    second = [r for r in rec.requests if r.headers["Idempotency-Key"] == rec.keys[1]]
    assert [r.status for r in second] == [status, 200]
    assert second[0].body == second[1].body
    assert len(rec.delivered_bodies()) == 3


def test_retries_follow_the_given_delays_then_give_up(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.fail_always = {1: 503}
    song = write_tone(tmp_path / "song.wav", 7.0)  # a 5.7-s batch (6 chunks), then 1.3 s (2 chunks)

    started = time.monotonic()
    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--send-partial"]), (0.1, 0.2, 0.3))
    elapsed = time.monotonic() - started

    assert code == 1
    first_chunk = [r for r in rec.requests if r.headers["Idempotency-Key"] == rec.keys[0]]
    assert [r.status for r in first_chunk] == [503] * 4
    gaps = np.diff([r.at for r in first_chunk])
    assert all(g >= d - 0.02 for g, d in zip(gaps, (0.1, 0.2, 0.3)))
    assert elapsed >= 0.6
    # The rest of batch 1 is abandoned; batch 2 (seconds 5.7-7) is still sent.
    assert [len(r.body) for r in rec.requests[4:]] == [SECOND, 9600]
    assert "2/8 chunks delivered" in capsys.readouterr().err


def test_a_client_error_is_not_retried_and_drops_the_rest_of_its_batch(tmp_path: Path, server) -> None:
    url, rec = server
    rec.fail_first = {2: 400}
    song = write_tone(tmp_path / "song.wav", 8.0)
    clean = simulate.load_pcm16(song, 16000)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--send-partial"]), FAST_RETRIES)

    assert code == 1
    assert [r.status for r in rec.requests] == [200, 400, 200, 200, 200]
    assert len(rec.keys) == 5
    # Delivered: second 0, then batch 2 (seconds 5.7-8); seconds 1-5.7 never arrive.
    assert [len(r.body) for r in rec.requests] == [SECOND, SECOND, SECOND, SECOND, 9600]
    assert b"".join(rec.delivered_bodies()) == clean[:SECOND] + clean[sum(BATCH_5) :]


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 15.0])
def test_noise_is_mixed_at_the_requested_snr(tmp_path: Path, server, snr_db: float) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.ogg", 4.0, rate=16000, channels=1, freq=440.0)
    rng = np.random.default_rng(7)
    # Shorter than the song, so it has to be looped; 22.05 kHz, so it has to be resampled.
    soundfile.write(str(tmp_path / "noise.wav"), 0.2 * rng.standard_normal(int(1.3 * 22050)), 22050)
    clean = np.frombuffer(simulate.load_pcm16(song, 16000), dtype="<i2").astype(np.float64)

    argv = [str(song), "--url", url, "--uid", "u", "--noise", str(tmp_path / "noise.wav"), "--snr", str(snr_db), "--send-partial"]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    noisy = np.frombuffer(b"".join(rec.delivered_bodies()), dtype="<i2").astype(np.float64)
    assert len(noisy) == len(clean) == 4 * 16000
    measured = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.5)


def test_prints_status_buffer_and_recognition_per_request(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.recognition_at = {
        2: {"status": "no_match", "latency_ms": 40.0},
        3: {"status": "match", "artist": "Nina Simone", "title": "Sinnerman", "confidence": 0.91},
    }
    song = write_tone(tmp_path / "song.wav", 3.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--send-partial"]), FAST_RETRIES)

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 3
    assert all(" 200 " in line for line in lines)
    assert "buffered 2.0 s" in lines[1]
    assert "recognition: no match" in lines[1]
    assert "recognition: Nina Simone - Sinnerman (confidence 0.91)" in lines[2]
    assert "recognition" not in lines[0]


def test_a_recognition_is_printed_when_it_changes_with_its_notification(tmp_path: Path, server, capsys) -> None:
    """The webhook names a song again on every attempt while it plays: one line for it, not one
    per chunk; a different song, or a change from no match, is a new line."""
    url, rec = server
    one = {"status": "match", "song_id": "s1", "artist": "Nina Simone", "title": "Sinnerman", "confidence": 0.91}
    two = {"status": "match", "song_id": "s2", "artist": "Emxx52", "title": "Humanitarian", "confidence": 0.8}
    rec.recognition_at = {
        2: {"status": "no_match"},
        3: {"status": "no_match"},
        4: {**one, "notification": "sent"},
        5: {**one, "notification": "skipped_cooldown"},
        6: {**two, "notification": "logged"},
        7: {**two, "notification": "skipped_cooldown"},
    }
    song = write_tone(tmp_path / "song.wav", 6.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u"]), FAST_RETRIES)

    lines = capsys.readouterr().out.splitlines()
    shown = [line.split("recognition: ", 1)[1] for line in lines if "recognition: " in line]
    assert code == 0 and len(lines) == 6, lines  # one line per chunk
    assert shown == [
        "no match",
        "Nina Simone - Sinnerman (confidence 0.91); notification sent",
        "Emxx52 - Humanitarian (confidence 0.80); notification only logged (OMI_APP_ID/OMI_APP_SECRET unset)",
    ]


def test_a_failed_notification_says_why() -> None:
    failed = {"status": "match", "title": "T", "artist": "A", "notification": "failed", "notification_error": "HTTP 403: x"}

    assert simulate.describe_recognition(failed) == "A - T; notification failed: HTTP 403: x"


def test_json_output_is_one_object_per_request(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.fail_first = {1: 429}
    rec.recognition_at = {2: {"status": "unavailable", "reason": "the song catalog is not available"}}
    song = write_tone(tmp_path / "song.wav", 2.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--json", "--send-partial"]), FAST_RETRIES)

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(r["chunk"], r["attempt"], r["status"]) for r in records] == [(1, 1, 429), (1, 2, 200), (2, 1, 200)]
    assert records[0]["idempotency_key"] == records[1]["idempotency_key"] != records[2]["idempotency_key"]
    assert records[2]["buffered_seconds"] == 2.0
    assert records[2]["recognition"]["status"] == "unavailable"
    assert simulate.describe_recognition(records[2]["recognition"]) == "unavailable: the song catalog is not available"


def test_realtime_sends_each_batch_once_its_audio_is_recorded(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 4.0)

    started = time.monotonic()
    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--batch-seconds", "1", "--realtime", "--send-partial"]))

    assert code == 0
    # X=1: batches of 2 frames (1.9 s) are ready at 1.9 s and 3.8 s; the last 0.2 s at 4.0 s.
    assert [len(r.body) for r in rec.requests] == [SECOND, 28800, SECOND, 28800, 6400]
    offsets = [rec.requests[i].at - started for i in (0, 2, 4)]
    for offset, ready in zip(offsets, (1.9, 3.8, 4.0)):
        assert ready - 0.05 <= offset <= ready + 0.3

def test_unreadable_file_is_a_usage_error(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    bogus = tmp_path / "not-audio.wav"
    bogus.write_bytes(b"hello")

    code = simulate.run(parse([str(bogus), "--url", url, "--uid", "u"]))

    assert code == 2
    assert "not-audio.wav" in capsys.readouterr().err
    assert rec.requests == []


@pytest.mark.parametrize("x", range(1, 16))
def test_a_developer_batch_is_about_x_plus_one_seconds_with_a_short_last_chunk(x: int) -> None:
    pcm = bytes(2 * 16000 * 60)

    full = simulate.batches(pcm, 16000, x)  # what the file has left after them is not sent

    assert full
    for batch in full:
        seconds = sum(len(c) for c in batch) / SECOND
        assert x < seconds <= x + 1
        assert [len(c) for c in batch[:-1]] == [SECOND] * (len(batch) - 1)
        assert 0 < len(batch[-1]) < SECOND


def test_batches_close_on_the_frame_that_passes_x_and_the_file_end_is_a_last_batch_only_when_asked() -> None:
    pcm = bytes(2 * 16000 * 6)

    sizes = [[len(c) for c in batch] for batch in simulate.batches(pcm, 16000, 2)]
    with_partial = [[len(c) for c in batch] for batch in simulate.batches(pcm, 16000, 2, send_partial=True)]

    # Frames of 0.95 s: 2 frames hold 1.9 s (not more than 2), the third makes 2.85 s.
    assert sizes == [[SECOND, SECOND, 27200], [SECOND, SECOND, 27200]]
    assert with_partial == [*sizes, [9600]]
    assert simulate.omi_batches(pcm, 16000, 2, frame_seconds=1.0) == [pcm[: 3 * SECOND], pcm[3 * SECOND :]]


def test_a_decimal_batch_interval_is_refused_as_omi_would_not_use_it() -> None:
    with pytest.raises(SystemExit):
        parse(["song.wav", "--url", "http://x", "--uid", "u", "--batch-seconds", "2.5"])
    with pytest.raises(SystemExit):
        parse(["song.wav", "--url", "http://x", "--uid", "u", "--batch-seconds", "0"])


def test_app_mode_posts_each_batch_once_without_a_key(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.0)
    clean = simulate.load_pcm16(song, 16000)

    code = simulate.run(parse([str(song), "--url", f"{url}/audio", "--uid", "u", "--mode", "app"]), FAST_RETRIES)

    assert code == 0
    # Omi's app trigger: X=4, so 5 frames = 4.75 s per POST; the last 2.5 s never fill a batch.
    assert [len(r.body) for r in rec.requests] == [152000, 152000]
    assert b"".join(r.body for r in rec.requests) == clean[:304000]
    assert {r.query for r in rec.requests} == {"sample_rate=16000&uid=u"}
    assert {r.headers["Content-Type"] for r in rec.requests} == {"application/octet-stream"}
    assert not any("Idempotency-Key" in r.headers or "X-Omi-Delivery" in r.headers for r in rec.requests)
    out = capsys.readouterr()
    assert [line.split()[:2] for line in out.out.splitlines()] == [["batch", "1"], ["batch", "2"]]
    assert "2/2 batches delivered" in out.err and "the last 2.5 s not sent" in out.err


def test_app_mode_takes_the_batch_interval_too(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.0)

    argv = [str(song), "--url", url, "--uid", "u", "--mode", "app", "--batch-seconds", "5"]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    assert [len(r.body) for r in rec.requests] == [sum(BATCH_5), sum(BATCH_5)]


@pytest.mark.parametrize("status", [503, 429, 0, 400])
def test_app_mode_never_retries_and_a_failed_batch_is_lost(tmp_path: Path, server, capsys, status: int) -> None:
    url, rec = server
    rec.fail_first = {1: status}
    rec.stall_seconds = 2.5
    song = write_tone(tmp_path / "song.wav", 12.0)
    clean = simulate.load_pcm16(song, 16000)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--mode", "app", "--timeout", "1"]), FAST_RETRIES)

    assert code == 1
    assert len(rec.requests) == 2
    assert [r.status for r in rec.requests] == [status, 200]
    assert b"".join(rec.delivered_bodies()) == clean[152000:304000]
    assert "1/2 batches delivered" in capsys.readouterr().err


def _verified(received: Received, secret: str) -> None:
    uid = parse_qs(received.query)["uid"][0]
    verify(received.headers["X-Omi-Signature"], uid, received.body, [secret], time.time())


def test_signed_developer_posts_verify_and_name_the_chunk_as_delivery(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 7.0)

    argv = [str(song), "--url", url, "--uid", "user_7", "--signing-secret", "whsec_1", "--token", "t", "--send-partial"]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    assert len(rec.requests) == 8
    for r in rec.requests:
        _verified(r, "whsec_1")
        assert r.headers["X-Omi-Event"] == "audio_bytes"
        assert r.headers["X-Omi-Delivery"] == r.headers["Idempotency-Key"]
        with pytest.raises(BadSignature):
            verify(r.headers["X-Omi-Signature"], "user_8", r.body, ["whsec_1"], time.time())
        with pytest.raises(BadSignature):
            verify(r.headers["X-Omi-Signature"], "user_7", r.body, ["another"], time.time())
    assert len({r.headers["X-Omi-Delivery"] for r in rec.requests}) == 8


def test_signed_app_posts_carry_a_fresh_delivery_id_and_no_key(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.0)

    argv = [str(song), "--url", url, "--uid", "u", "--mode", "app", "--signing-secret", "whsec_app"]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    assert len(rec.requests) == 2
    for r in rec.requests:
        _verified(r, "whsec_app")
        assert r.headers["X-Omi-Event"] == "audio_bytes"
        assert "Idempotency-Key" not in r.headers
        assert uuid.UUID(r.headers["X-Omi-Delivery"]).version == 4
    assert len({r.headers["X-Omi-Delivery"] for r in rec.requests}) == 2


def test_unsigned_posts_carry_no_signature_headers(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 2.0)

    assert simulate.run(parse([str(song), "--url", url, "--uid", "u", "--send-partial"]), FAST_RETRIES) == 0
    assert rec.requests
    assert not any(name.startswith("X-Omi-") for r in rec.requests for name in r.headers)


def test_a_retry_keeps_its_key_and_delivery_but_is_signed_again(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.fail_first = {1: 503}
    song = write_tone(tmp_path / "song.wav", 1.0)

    argv = [str(song), "--url", url, "--uid", "u", "--signing-secret", "whsec_1", "--json", "--send-partial"]
    code = simulate.run(parse(argv), (1.1,))  # over a second, so the retry's t is a later second

    assert code == 0
    first, retry = rec.requests
    assert (first.status, retry.status) == (503, 200)
    assert first.headers["Idempotency-Key"] == retry.headers["Idempotency-Key"]
    assert first.headers["X-Omi-Delivery"] == retry.headers["X-Omi-Delivery"] == first.headers["Idempotency-Key"]
    assert first.body == retry.body
    t_first, t_retry = (int(r.headers["X-Omi-Signature"].split(",")[0].removeprefix("t=")) for r in rec.requests)
    assert t_retry > t_first
    assert first.headers["X-Omi-Signature"] != retry.headers["X-Omi-Signature"]
    _verified(first, "whsec_1")
    _verified(retry, "whsec_1")
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["delivery_id"] for r in records] == [first.headers["X-Omi-Delivery"]] * 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nothing_listening_stops_at_once_with_one_line(tmp_path: Path, capsys) -> None:
    song = write_tone(tmp_path / "song.wav", 20.0)
    url = f"http://127.0.0.1:{_closed_port()}/audio"

    started = time.monotonic()
    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--token", "secret-token"]))

    assert time.monotonic() - started < 5
    assert code == 1
    out = capsys.readouterr()
    assert out.out == ""
    [line] = out.err.splitlines()
    assert line.startswith(f"error: cannot connect to {url} (")
    assert "secret-token" not in line


def test_an_unknown_host_stops_at_once(tmp_path: Path, capsys) -> None:
    song = write_tone(tmp_path / "song.wav", 20.0)

    code = simulate.run(parse([str(song), "--url", "http://no-such-host.invalid/audio", "--uid", "u"]))

    # No timing bound (a resolver may be slow to say no), but nothing was retried or printed.
    assert code == 1
    out = capsys.readouterr()
    assert out.out == ""
    [line] = out.err.splitlines()
    assert line.startswith("error: cannot connect to http://no-such-host.invalid/audio (")


def test_after_a_first_connection_a_refused_one_is_retried_as_omi_does(tmp_path: Path, server) -> None:
    url, rec = server
    pcm = simulate.load_pcm16(write_tone(tmp_path / "song.wav", 7.0), 16000)

    results = []
    for result in simulate.stream(pcm, url, "u", 16000, retry_delays=FAST_RETRIES, send_partial=True):
        results.append(result)
        if len(results) == 1:
            rec.shutdown()

    assert len(rec.requests) == 1
    # Chunk 2 tries four times and drops the rest of batch 1; batch 2 is tried four times too.
    assert [(r.batch, r.chunk, r.attempt, r.status) for r in results] == [
        (1, 1, 1, 200),
        *[(1, 2, a, None) for a in (1, 2, 3, 4)],
        *[(2, 1, a, None) for a in (1, 2, 3, 4)],
    ]
    assert all("ConnectError" in r.error for r in results[1:])


def test_a_url_without_http_is_a_usage_error(tmp_path: Path, capsys) -> None:
    song = write_tone(tmp_path / "song.wav", 1.0)

    assert simulate.run(parse([str(song), "--url", "localhost:8080/audio", "--uid", "u"])) == 2
    assert "http://" in capsys.readouterr().err
